# -*- test-case-name: tests.test_ipc -*-
"""
The messages of the worker channel (L{twisted_serversock.ipc.channel}); the
first byte says which kind::

    C  conn     parent -> child   ">QI": connection id, route id; exactly one fd
    A  ack      child  -> parent  ">Q" repeated: connection ids adopted
    R  report   child  -> parent  ">I" connections closed since the last
                                  report, then ">Q" repeated (maybe none):
                                  connection ids adopted
    J  control  both directions   a UTF-8 JSON object with a "type" string
                                  (a child's "refused": the ids of connections
                                  it had no descriptors for, never adopted)

Anything else (a wrong length, stray or extra descriptors, an oversized or
truncated message, JSON that is not an object with a string "type") is a
L{ProtocolError}: the message is dropped, every descriptor that came with it
is closed, and the channel stays up.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_MESSAGE", "MAX_FDS", "ProtocolError", "Conn", "Ack", "Control", "Message"]
__all__ += ["encodeReport", "decode", "encodeConn", "encodeAck", "encodeControl", "channelPair"]

#: The largest message either side accepts, in bytes.
MAX_MESSAGE = 65536
#: The most descriptors read with one message (more is a protocol error).
MAX_FDS = 4
_CONN = struct.Struct(">QI")
_ID = struct.Struct(">Q")
# Whole messages, packed in one call (the hand-off path runs these once per
# connection, so they are kept cheap).
_CONN_MESSAGE = struct.Struct(">cQI")
_ACK_ONE = struct.Struct(">cQ")
_CLOSED = struct.Struct(">I")
_C, _A, _J, _R = ord("C"), ord("A"), ord("J"), ord("R")


class ProtocolError(ValueError):
    """A message that breaks the wire format; the text says how."""


@dataclass(slots=True)
class Conn:
    """A connection handed to a child: C{fd} is the child's descriptor."""

    connId: int
    route: int
    fd: int


@dataclass(slots=True)
class Ack:
    """The child adopted C{connIds}, and C{closed} of those it adopted before have ended since its last report."""

    connIds: tuple[int, ...]
    closed: int = 0


@dataclass(slots=True)
class Control:
    """A control message: C{type} and the other JSON fields in C{fields}."""

    type: str
    fields: dict[str, Any]


Message = Conn | Ack | Control


def encodeConn(connId: int, route: int) -> bytes:
    """The bytes of a C{conn} message (its descriptor travels beside them)."""
    return _CONN_MESSAGE.pack(b"C", connId, route)


def encodeAck(connIds: tuple[int, ...] | list[int]) -> bytes:
    """The bytes of an C{ack} message for C{connIds} (at least one)."""
    if len(connIds) == 1:
        return _ACK_ONE.pack(b"A", connIds[0])
    return struct.pack(f">c{len(connIds)}Q", b"A", *connIds)


def encodeReport(connIds: tuple[int, ...] | list[int], closed: int) -> bytes:
    """The bytes of a report: C{closed} connections ended, C{connIds} adopted (either may be empty; without closes this is an ack)."""
    if not closed:
        return encodeAck(connIds)
    return b"R" + _CLOSED.pack(min(closed, 0xFFFFFFFF)) + struct.pack(f">{len(connIds)}Q", *connIds)


def encodeControl(type: str, **fields: Any) -> bytes:
    """The bytes of a control message; L{ProtocolError} if it would be larger than L{MAX_MESSAGE}."""
    fields["type"] = type
    data = b"J" + json.dumps(fields, separators=(",", ":")).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"control message {type!r} is {len(data)} bytes; the limit is {MAX_MESSAGE}")
    return data


def decode(data: bytes, fds: list[int]) -> Message:
    """Decode one message and its descriptors; a L{ProtocolError} names what is wrong (the caller closes C{fds})."""
    size = len(data)
    if not size:
        raise ProtocolError("empty message")
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes is over the {MAX_MESSAGE}-byte limit")
    kind, bodySize = data[0], size - 1
    if kind == _C:
        if bodySize != _CONN.size:
            raise ProtocolError(f"conn message has {bodySize} bytes of body, not {_CONN.size}")
        if len(fds) != 1:
            raise ProtocolError(f"conn message came with {len(fds)} descriptors, not 1")
        connId, route = _CONN.unpack_from(data, 1)
        return Conn(connId, route, fds[0])
    if fds:
        raise ProtocolError(f"unexpected {len(fds)} descriptor(s) on a {data[:1]!r} message")
    if kind == _A:
        if bodySize == _ID.size:
            return Ack(_ID.unpack_from(data, 1))
        if not bodySize or bodySize % _ID.size:
            raise ProtocolError(f"ack message has {bodySize} bytes of body, not a positive multiple of {_ID.size}")
        return Ack(struct.unpack_from(f">{bodySize // _ID.size}Q", data, 1))
    if kind == _R:
        idsSize = bodySize - _CLOSED.size
        if idsSize < 0 or idsSize % _ID.size:
            raise ProtocolError(f"report message has {bodySize} bytes of body, not {_CLOSED.size} plus a multiple of {_ID.size}")
        (closed,) = _CLOSED.unpack_from(data, 1)
        return Ack(struct.unpack_from(f">{idsSize // _ID.size}Q", data, 1 + _CLOSED.size), closed)
    if kind == _J:
        try:
            fields = json.loads(data[1:].decode("utf-8"))
        except ValueError as e:  # UnicodeDecodeError included
            raise ProtocolError(f"control message is not UTF-8 JSON: {e}") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("type"), str):
            raise ProtocolError("control message is not a JSON object with a string 'type'")
        return Control(fields.pop("type"), fields)
    raise ProtocolError(f"unknown message kind {data[:1]!r}")


def channelPair() -> tuple[socket.socket, socket.socket]:
    """A new C{SOCK_SEQPACKET} pair (close-on-exec: hand one end on explicitly)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
