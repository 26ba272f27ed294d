# -*- test-case-name: tests.test_transport -*-
"""
L{SocketTransport}: an accepted connection (Gecko's C{nsISocketTransport}).

A thin facade with the Gecko API over what an accepted connection is at
each moment:

  - until its Twisted transport is built, an
    L{AcceptedSocket<twisted_serversock._accepted.AcceptedSocket>};
  - when the listener uses it Gecko's way (streams, timeouts), a Twisted
    transport whose protocol is the stream-mode protocol
    (C{_streammode.StreamMode}), which feeds the streams;
  - when the listener attaches a protocol (L{SocketTransport.attachProtocol}),
    a Twisted transport whose protocol is the user's, with no layer (and no
    per-byte work) in between.

The Twisted transport is built once, for the protocol that will own it:
when the listener attaches a protocol from C{onSocketAccepted} (as the
endpoints do), it is built for that protocol directly, exactly as Twisted's
own port would build it; otherwise it is built in stream mode as soon as
anything needs it, and at the latest when C{onSocketAccepted} returns (the
server socket sees to that, with L{SocketTransport.startStreaming}).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _args
from ._accepted import AcceptedSocket
from ._streammode import NO_TIMEOUT, TIMEOUT_CONNECT, TIMEOUT_READ_WRITE, StreamMode, checkTimeoutType, goOffline
from ._twistedcompat import bufferedOutput, isReadable, relabel
from ._unix import peerCredentials
from .interfaces import ISocketTransport
from .netaddr import NetAddr, unixName
from .results import (
    NS_BASE_STREAM_CLOSED,
    NS_BINDING_ABORTED,
    NS_ERROR_IN_PROGRESS,
    NS_ERROR_INVALID_ARG,
    NS_ERROR_NOT_AVAILABLE,
    NS_ERROR_NOT_IMPLEMENTED,
    NS_OK,
    NSError,
    nameOf,
    succeeded,
)
from .streams import InputStream, OutputStream, bufferLimit

if TYPE_CHECKING:
    from ._callqueue import CallQueue
    from ._types import Address, ServerTransport

__all__ = ["SocketTransport", "bufferedOutput"]

OPEN_BLOCKING = 1
OPEN_UNBUFFERED = 2
_MAX_KEEPALIVE = 32767


@implementer(ISocketTransport)
class SocketTransport:
    """
    An accepted connection.  See L{ISocketTransport}.

    @ivar _twisted: the Twisted transport (a C{tcp.Server} or
        C{unix.Server}) once this object built it, else C{None} (see
        L{_tcp}).
    @ivar _accepted: the accepted socket, and what building the Twisted
        transport takes.
    @ivar _queue: the server socket's FIFO for deferred notifications.
    @ivar _mode: the stream-mode protocol, created when streams, timeouts
        or stream mode are first asked for; else C{None}.
    @ivar _attached: whether L{attachProtocol} handed the connection over.
    @cvar _streamModeClass: the stream-mode protocol's class (a TLS
        connection's counts what waits in TLS as buffered output).
    """

    __slots__ = ("_twisted", "_accepted", "_queue", "_mode", "_attached", "__weakref__")

    _streamModeClass: type[StreamMode] = StreamMode

    OPEN_BLOCKING = OPEN_BLOCKING
    OPEN_UNBUFFERED = OPEN_UNBUFFERED
    TIMEOUT_CONNECT = TIMEOUT_CONNECT
    TIMEOUT_READ_WRITE = TIMEOUT_READ_WRITE

    def __init__(self, queue: CallQueue, accepted: AcceptedSocket) -> None:
        """
        @param queue: the server socket's FIFO for deferred notifications
            (a C{CallQueue}).
        @param accepted: the accepted socket; its Twisted transport is built
            when first needed.
        """
        self._twisted: ServerTransport | None = None
        self._accepted = accepted
        self._queue = queue
        self._mode: StreamMode | None = None
        self._attached = False

    def __repr__(self) -> str:
        mode = self._mode
        status = nameOf(NS_OK if mode is None else mode.status)
        accepted = self._accepted
        if accepted.pending:
            return f"<SocketTransport accepted from {accepted.peer!r} {status}>"
        return f"<SocketTransport {self._twisted!r} {status}>"

    @property
    def _tcp(self) -> ServerTransport:
        """
        The Twisted transport, built on first use in stream mode if it was
        not built yet.

        @raise NSError: C{NS_ERROR_FAILURE} if building it failed before.
        """
        tcp = self._twisted
        if tcp is None:
            tcp = self.startStreaming()
        return tcp

    def _streams(self) -> StreamMode:
        """
        The stream-mode protocol, created on first use.
        """
        mode = self._mode
        if mode is None:
            mode = self._mode = self._streamModeClass(self._queue, self.startStreaming)
            if self._twisted is not None:
                # Attached directly: the mode only closes the connection.
                mode.makeConnection(self._twisted)
            if self._attached:
                mode.handOver()
        return mode

    def startStreaming(self) -> ServerTransport:
        """
        Package-internal: the Twisted transport, built now with the
        stream-mode protocol if nothing built it yet.  The server socket
        calls it once C{onSocketAccepted} returned without attaching a
        protocol, and before the listener sees a connection the I/O service
        must watch.

        @raise NSError: C{NS_ERROR_FAILURE} if building it failed before (or
            the connection was refused).
        @raise Exception: whatever building raised (the socket is closed).
        """
        tcp = self._twisted
        if tcp is None:
            mode = self._streams()
            tcp = self._twisted = self._accepted.build(mode)
            mode.makeConnection(tcp)
        return tcp

    def builtTransport(self) -> ServerTransport | None:
        """
        Package-internal: the Twisted transport if it was built (for an
        attached protocol or in stream mode), else C{None} (not yet, or the
        connection was refused); builds nothing.
        """
        return self._twisted

    def goOffline(self) -> None:
        """
        Package-internal: the I/O service went offline (while the listener
        was still deciding, or later): close with C{NS_ERROR_OFFLINE} at
        once, building the transport in stream mode if nothing did yet (the
        streams and C{attachProtocol} then report C{NS_ERROR_OFFLINE}).
        Nothing for a connection that was refused.
        """
        if self._twisted is None and not self._accepted.pending:
            return
        goOffline(self.startStreaming())

    def refuse(self) -> None:
        """
        Package-internal: close a connection no protocol was built for, at
        once: without building its Twisted transport (nor taking a session
        number) if it was not built yet.  Its status is
        C{NS_BINDING_ABORTED}.
        """
        accepted = self._accepted
        if accepted.pending:
            accepted.close()
            self._streams().abandon(NS_BINDING_ABORTED)
            return
        self._streams().closeWithStatus(NS_BINDING_ABORTED, abort=True)

    def _socket(self) -> socket.socket:
        """
        The connection's socket, its Twisted transport built (a TLS
        transport's C{getHandle()} is its TLS connection, not the socket).
        """
        self._tcp
        return self._accepted.socket

    def _isUnix(self) -> bool:
        return bool(self._socket().family == socket.AF_UNIX)

    # ------------------------------------------------------------------
    # ISocketTransport: timeouts.

    def getTimeout(self, type: int) -> float:
        mode = self._mode
        if mode is None:
            checkTimeoutType(type)
            return NO_TIMEOUT
        return mode.getTimeout(type)

    def setTimeout(self, type: int, seconds: float) -> None:
        self._streams().setTimeout(type, seconds)

    # ------------------------------------------------------------------
    # ISocketTransport: addresses.

    @property
    def host(self) -> str:
        # A peer IP literal, or a UNIX peer's path ("" if unnamed/abstract).
        return unixName(self._tcp.hostname)

    @property
    def port(self) -> int:
        return int(self._tcp.client[1] or 0)

    def getPeerAddr(self) -> Address:
        accepted = self._accepted
        if accepted.pending:
            # What the Twisted transport's getPeer() will say, without
            # building it: a listener that attaches a protocol asks first.
            # (AcceptedSocket.peerAddress, inlined: every connection an
            # endpoint accepts comes here.)
            addr = accepted.peer
            if isinstance(addr, tuple):
                return (IPv4Address if len(addr) == 2 else IPv6Address)("TCP", *addr)
            return UNIXAddress(addr or None)
        return self._tcp.getPeer()

    def getSelfAddr(self) -> Address:
        return self._tcp.getHost()

    def getScriptablePeerAddr(self) -> NetAddr:
        return NetAddr.fromTwisted(self._tcp.getPeer())

    def getScriptableSelfAddr(self) -> NetAddr:
        return NetAddr.fromTwisted(self._tcp.getHost())

    # ------------------------------------------------------------------
    # ISocketTransport: streams and protocols.

    def _checkOpen(self, flags: int) -> None:
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise NSError(NS_ERROR_INVALID_ARG, f"flags must be an integer, not {flags!r}")
        if flags & OPEN_BLOCKING:
            raise NSError(
                NS_ERROR_NOT_IMPLEMENTED,
                "OPEN_BLOCKING streams would block the reactor; use asyncWait",
            )
        if self._attached:
            raise NSError(NS_ERROR_IN_PROGRESS, "the connection was handed to a protocol")

    def openInputStream(self, flags: int = 0, segsize: int = 0, segcount: int = 0) -> InputStream:
        self._checkOpen(flags)
        return self._streams().openInput(bufferLimit(segsize, segcount))

    def openOutputStream(self, flags: int = 0, segsize: int = 0, segcount: int = 0) -> OutputStream:
        self._checkOpen(flags)
        return self._streams().openOutput(bufferLimit(segsize, segcount))

    def attachProtocol(self, protocol: Any) -> None:
        """
        See L{ISocketTransport.attachProtocol}.

        @raise NSError: C{NS_ERROR_IN_PROGRESS} if a stream was opened or a
            protocol attached already; C{NS_ERROR_INVALID_ARG} if
            C{protocol} is not a protocol instance (it needs
            C{makeConnection}, C{dataReceived} and C{connectionLost}); the
            close status if the connection is already closed.
        """
        if self._attached:
            raise NSError(NS_ERROR_IN_PROGRESS, "a protocol is already attached")
        mode = self._mode
        if mode is not None and mode.streamsInUse():
            raise NSError(NS_ERROR_IN_PROGRESS, "the connection's streams are in use")
        # (A class has these as unbound functions: calling them would raise
        # TypeError half-way through the hand-over.  This runs for every
        # connection an endpoint accepts, so an instance of Twisted's
        # Protocol, which has all three, skips the duck-typing checks.)
        if not isinstance(protocol, Protocol) and (
            isinstance(protocol, type)
            or not callable(getattr(protocol, "makeConnection", None))
            or not callable(getattr(protocol, "dataReceived", None))
            or not callable(getattr(protocol, "connectionLost", None))
        ):
            raise NSError(NS_ERROR_INVALID_ARG, f"not a Twisted protocol instance: {protocol!r}")
        if mode is not None and mode.status != NS_OK:
            raise NSError(mode.status, "the connection is already closed")
        self._attached = True
        accepted = self._accepted
        if accepted.pending:
            # Nothing has used the connection yet (no byte read, no timer):
            # build the Twisted transport for the protocol itself, as
            # Twisted's own port does.
            if mode is not None:
                mode.handOver()
            tcp = self._twisted = accepted.build(protocol)
            protocol.makeConnection(tcp)
            return
        tcp = self._tcp
        handed = None if mode is None else mode.handOver()
        self._rehome(tcp, protocol)
        if handed is not None and handed[1]:
            # The unopened input stream held reading back.  Resume before
            # the protocol runs, so that a pauseProducing() it does in
            # connectionMade or dataReceived is not undone.  (Nothing is
            # read before this call returns: the reactor is ours.)
            tcp.resumeProducing()
        protocol.makeConnection(tcp)
        if handed is not None:
            assert mode is not None
            self._replay(handed[0], mode.peerClosed, protocol)

    def _rehome(self, tcp: Any, protocol: Any) -> None:
        """
        Make C{protocol} the protocol of Twisted transport C{tcp}, which
        was built for the stream-mode protocol.
        """
        tcp.protocol = protocol
        # Twisted formats the log prefix and the repr of a connection from
        # its protocol at construction: redo both for the new protocol.
        relabel(tcp, protocol)

    def _replay(self, chunks: list[bytes], peerClosed: bool, protocol: Any) -> None:
        # Bytes (and an end of stream) that arrived before the protocol,
        # unless the protocol already closed the connection.
        tcp = self._tcp
        for chunk in chunks:
            if not isReadable(tcp):
                return
            protocol.dataReceived(chunk)
        if peerClosed and isReadable(tcp):
            tcp.readConnectionLost(Failure(ConnectionDone()))

    def close(self, reason: int = NS_OK) -> None:
        if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= 0xFFFFFFFF:
            raise NSError(NS_ERROR_INVALID_ARG, f"reason must be a result code, not {reason!r}")
        if succeeded(reason):
            reason = NS_BASE_STREAM_CLOSED
        if self._attached:
            self._tcp.loseConnection()
            return
        self._streams().close(reason)

    def isAlive(self) -> bool:
        tcp = self._tcp
        mode = self._mode
        if mode is not None and (mode.status != NS_OK or mode.peerClosed):
            return False
        if not tcp.connected or tcp.disconnecting:
            return False
        try:
            return bool(self._accepted.socket.recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------
    # ISocketTransport: socket options.

    def _tcpSocket(self, what: str) -> socket.socket:
        if self._isUnix():
            raise NSError(NS_ERROR_NOT_AVAILABLE, f"{what} applies to TCP connections only")
        return self._socket()

    @property
    def keepaliveEnabled(self) -> bool:
        if self._isUnix():
            return False
        try:
            return bool(self._socket().getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        except OSError as e:
            raise NSError.fromOSError(e, "getsockopt(SO_KEEPALIVE)") from None

    @keepaliveEnabled.setter
    def keepaliveEnabled(self, enabled: bool) -> None:
        # A string such as "false" is refused, not taken as true.
        enabled = _args.asNSError(_args.boolean, enabled, "keepaliveEnabled")
        skt = self._tcpSocket("keepalive")
        try:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if enabled else 0)
        except OSError as e:
            raise NSError.fromOSError(e, "setsockopt(SO_KEEPALIVE)") from None

    def setKeepaliveVals(self, idleTime: int, retryInterval: int) -> None:
        for name, value in (("idleTime", idleTime), ("retryInterval", retryInterval)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= _MAX_KEEPALIVE
            ):
                raise NSError(
                    NS_ERROR_INVALID_ARG,
                    f"{name} must be an integer from 1 to {_MAX_KEEPALIVE}, not {value!r}",
                )
        skt = self._tcpSocket("keepalive")
        try:
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idleTime)
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, retryInterval)
        except OSError as e:
            raise NSError.fromOSError(e, "setsockopt(TCP_KEEPIDLE/TCP_KEEPINTVL)") from None

    def getPeerCredentials(self) -> tuple[int, int, int]:
        if not self._isUnix():
            raise NSError(NS_ERROR_NOT_AVAILABLE, "peer credentials exist for UNIX connections only")
        try:
            return peerCredentials(self._socket())
        except OSError as e:
            raise NSError.fromOSError(e, "getsockopt(SO_PEERCRED)") from None
