"""
The child acknowledges the connections of one read in one message, before
it adopts any of them, and keeps their order relative to control messages.
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.child import ParentLink

from .conftest import theReactor


def sendConn(skt: socket.socket, connId: int, route: int, fd: int) -> None:
    skt.sendmsg([wire.encodeConn(connId, route)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def receiveAll(skt: socket.socket) -> list[Any]:
    messages = []
    while True:
        try:
            data, _anc, _flags, _addr = skt.recvmsg(wire.MAX_MESSAGE)
        except BlockingIOError:
            return messages
        messages.append(wire.decode(data, []))


class Pair:
    def __init__(self) -> None:
        self.parentEnd, childEnd = wire.channelPair()
        self.parentEnd.setblocking(False)
        self.link = ParentLink(childEnd, theReactor())
        self.events: list[Any] = []
        self.link.onConnection = self._connection
        self.link.onControl = lambda message: self.events.append(("control", message.type))
        self.peers: list[socket.socket] = []

    def _connection(self, route: int, skt: socket.socket) -> None:
        # Whatever was acknowledged had reached the parent's end already.
        self.events += [("ack", m.connIds) for m in receiveAll(self.parentEnd)]
        self.events.append(("adopt", route))
        skt.close()

    def conn(self, connId: int, route: int) -> None:
        ours, theirs = socket.socketpair()
        self.peers += [ours, theirs]
        sendConn(self.parentEnd, connId, route, theirs.fileno())

    def close(self) -> None:
        self.link.channel.loseConnection()
        self.parentEnd.close()
        for s in self.peers:
            s.close()


def test_oneAckPerRead() -> None:
    """
    Three connections read on one readable event: one ack naming all
    three reaches the parent before the first is adopted; they are adopted
    in the order they came.
    """
    pair = Pair()
    try:
        for connId, route in ((1, 7), (2, 8), (3, 9)):
            pair.conn(connId, route)
        pair.link.channel.doRead()
        assert pair.events == [("ack", (1, 2, 3)), ("adopt", 7), ("adopt", 8), ("adopt", 9)]
        assert receiveAll(pair.parentEnd) == []
    finally:
        pair.close()


def test_controlAfterConnections() -> None:
    """
    A control message that follows connections in the same read is handled
    after they are acknowledged and adopted, as if one at a time.
    """
    pair = Pair()
    try:
        pair.conn(1, 7)
        pair.parentEnd.send(wire.encodeControl("stop", grace=1))
        pair.conn(2, 8)
        pair.link.channel.doRead()
        assert pair.events == [
            ("ack", (1,)),
            ("adopt", 7),
            ("control", "stop"),
            ("ack", (2,)),
            ("adopt", 8),
        ]
    finally:
        pair.close()


def test_lostBeforeAck() -> None:
    """
    When the parent's end closes right after connections in the same read,
    none is acknowledged or adopted, and the child closes its copies.
    """
    pair = Pair()
    lost: list[Any] = []
    pair.link.onLost = lost.append
    before = set(os.listdir("/proc/self/fd"))
    try:
        pair.conn(1, 7)
        pair.conn(2, 8)
        for s in pair.peers:
            s.close()
        pair.peers = []
        pair.parentEnd.shutdown(socket.SHUT_WR)
        pair.link.channel.doRead()
        assert lost and pair.events == []
        assert not pair.link.connected
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        pair.close()
