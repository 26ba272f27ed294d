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
from twisted_serversock.ipc.channel import Channel, channelPair
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
        self.parentEnd, childEnd = channelPair()
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


def test_failedAckNeverAdopts() -> None:
    """
    If the ack cannot be sent (the parent's end no longer reads), the
    connection is not adopted: the parent never learns of the adoption and
    would give it to another child, so adopting it would let two processes
    serve one connection.
    """
    pair = Pair()
    adopted: list[int] = []
    pair.link.onConnection = lambda route, skt: (adopted.append(route), skt.close())
    try:
        pair.conn(1, 7)
        pair.parentEnd.shutdown(socket.SHUT_RD)  # the child's sends now fail (EPIPE)
        pair.link.channel.doRead()
        assert adopted == []
    finally:
        pair.close()


def test_closesTravelWithTheAcks() -> None:
    """
    Closes the child reports are counted into its next ack (one message),
    or sent alone at the end of the reactor turn if no ack comes.
    """
    pair = Pair()
    seen: list[Any] = []
    pair.link.onConnection = lambda route, skt: (seen.extend(receiveAll(pair.parentEnd)), skt.close())
    try:
        pair.link.reportClosed()
        pair.link.reportClosed()
        pair.conn(1, 7)
        pair.link.channel.doRead()
        assert [(m.connIds, m.closed) for m in seen] == [((1,), 2)]
        pair.link.reportClosed()
        pair.link._report()  # what the end of the reactor turn does
        assert [(m.connIds, m.closed) for m in receiveAll(pair.parentEnd)] == [((), 1)]
    finally:
        pair.close()


def test_reportMessage() -> None:
    """
    The report message: closes and acknowledged ids, either may be alone;
    wrong sizes are protocol errors.
    """
    report = wire.decode(wire.encodeReport((5, 6), 3), [])
    assert isinstance(report, wire.Ack) and report.connIds == (5, 6) and report.closed == 3
    alone = wire.decode(wire.encodeReport((), 2), [])
    assert isinstance(alone, wire.Ack) and alone.connIds == () and alone.closed == 2
    plain = wire.decode(wire.encodeReport((9,), 0), [])
    assert isinstance(plain, wire.Ack) and plain.connIds == (9,) and plain.closed == 0
    for bad in (b"R", b"R\x00\x00\x00", b"R\x00\x00\x00\x01\x00"):
        try:
            wire.decode(bad, [])
        except wire.ProtocolError as e:
            assert "report message" in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def messageReceived(self, message: Any) -> None:
        self.events.append(message)

    def channelLost(self, reason: Any) -> None:
        self.events.append("lost")


def test_parentReadsTheLastAcksBeforeClosing() -> None:
    """
    The parent's end (drainOnLoss) reads every message the child sent
    before it closes: a dead child's last acks are seen, so what it adopted
    is not re-sent to another child.
    """
    parentEnd, childEnd = channelPair()
    recorder = Recorder()
    channel = Channel(parentEnd, recorder, theReactor(), "parent", drainOnLoss=True)
    try:
        for connId in range(1, 100):
            childEnd.send(wire.encodeAck((connId,)))
        childEnd.close()
        channel.loseConnection()
        acks = [m.connIds[0] for m in recorder.events if isinstance(m, wire.Ack)]
        assert acks == list(range(1, 100))
        assert recorder.events[-1] == "lost"
    finally:
        childEnd.close()
