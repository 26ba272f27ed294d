"""
The dispatcher on a memory reactor's clock, with real worker links over
real channels whose child ends the test holds: least-loaded choice, the
per-child window (grown by fast acks, halved by slow ones), a stalled
child passed over, back-pressure into the listening port, and a lost
child's connections re-sent - each in milliseconds, in the order the test
makes.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import pytest
from twisted.internet.testing import MemoryReactorClock

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import channelPair
from twisted_serversock.ipc.dispatch import ACK_DEADLINE, FULL_RETRY, INITIAL_WINDOW, MAX_WAITING, Dispatcher, Route
from twisted_serversock.ipc.parent import WorkerLink

from ._memoryworkers import pump, receive


class _Port:
    """
    A listening port that records its pauses.
    """

    def __init__(self) -> None:
        self.accepting = True

    def pauseAccepting(self) -> None:
        self.accepting = False

    def resumeAccepting(self) -> None:
        self.accepting = True


class Setup:
    """
    A dispatcher with one route and its children (links), on a clock.
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dispatcher = Dispatcher(self.reactor.seconds)
        self.route: Route = self.dispatcher.addRoute("test")
        self.port = _Port()
        self.route.watchPort(self.port)
        self.links: list[WorkerLink] = []
        self.children: list[socket.socket] = []
        self.clients: list[socket.socket] = []
        self.kept: list[socket.socket] = []

    def child(self) -> WorkerLink:
        parentEnd, childEnd = channelPair()
        link = WorkerLink(self.dispatcher, parentEnd, self.reactor, f"child {len(self.links)}")
        self.links.append(link)
        self.children.append(childEnd)
        self.dispatcher.join(self.route, link)
        return link

    def connect(self, n: int = 1) -> None:
        for _ in range(n):
            client, accepted = socket.socketpair()
            self.clients.append(client)
            self.dispatcher.submit(self.route, accepted)

    def given(self, n: int, keep: bool = False) -> list[int]:
        """
        The connection ids child C{n} was sent since last asked (their
        descriptors closed, or kept open as an adopting child does).
        """
        ids = []
        for message in receive(self.children[n]):
            if isinstance(message, wire.Conn):
                skt = socket.socket(fileno=message.fd)
                if keep:
                    self.kept.append(skt)
                else:
                    skt.close()
                ids.append(message.connId)
        return ids

    def ack(self, n: int, ids: list[int], closed: int = 0) -> None:
        self.children[n].sendmsg([wire.encodeReport(ids, closed)])
        pump(self.reactor)

    def refuse(self, n: int, ids: list[Any]) -> None:
        """Child C{n} refuses C{ids} (at its descriptor limit)."""
        self.children[n].sendmsg([wire.encodeControl("refused", ids=ids)])
        pump(self.reactor)

    def closedByServer(self, i: int) -> bool:
        """Whether client C{i} sees its connection closed (no copy of it is left open)."""
        self.clients[i].setblocking(False)
        try:
            return self.clients[i].recv(1) == b""
        except BlockingIOError:
            return False

    def close(self) -> None:
        for link in self.links:
            link.channel.loseConnection()
        for skt in self.children + self.clients + self.kept:
            skt.close()
        for held in list(self.dispatcher.held.values()):
            held.socket.close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    made = Setup()
    yield made
    made.close()


def test_leastLoadedChildGetsTheConnection(setup: Setup) -> None:
    """
    A connection goes to the child with the fewest in hand: unacknowledged
    plus adopted and still open.
    """
    setup.child()
    setup.child()
    setup.connect()
    [first] = setup.given(0) + setup.given(1)
    busy = 0 if setup.links[0].inflight else 1
    setup.ack(busy, [first])
    assert setup.links[busy].open == 1 and setup.dispatcher.adopted == 1
    setup.connect()
    assert len(setup.given(1 - busy)) == 1 and setup.given(busy) == []


def test_windowGrowsWithFastAcksAndHalvesWithSlowOnes(setup: Setup) -> None:
    """
    A child has at most its window unacknowledged; an ack at once grows it
    by one, an ack later than the deadline halves it; the rest wait.
    """
    link = setup.child()
    setup.connect(INITIAL_WINDOW + 1)
    ids = setup.given(0)
    assert len(ids) == INITIAL_WINDOW and setup.dispatcher.waiting == 1
    setup.ack(0, ids[:1])
    assert link.window == INITIAL_WINDOW + 1
    ids = ids[1:] + setup.given(0)
    setup.reactor.advance(ACK_DEADLINE * 2)
    setup.ack(0, ids[:1])
    assert link.window == (INITIAL_WINDOW + 1) // 2 and link.adopted == 2


def test_stalledChildIsPassedOver(setup: Setup) -> None:
    """
    A child whose oldest hand-over is unacknowledged past the deadline gets
    no more; another child does.
    """
    setup.child()
    setup.connect()
    assert len(setup.given(0)) == 1
    setup.reactor.advance(ACK_DEADLINE * 2)
    setup.child()
    setup.connect()
    assert setup.given(0) == [] and len(setup.given(1)) == 1


def test_noChildPausesThePortAndAChildResumesIt(setup: Setup) -> None:
    """
    With no child to take them, accepted connections wait; at the bound
    the port stops accepting (the rest wait in the kernel's backlog), and
    resumes once children have taken half of them.
    """
    setup.connect(MAX_WAITING)
    assert not setup.port.accepting and setup.dispatcher.pauses == 1
    setup.child()
    assert not setup.port.accepting and setup.dispatcher.waiting == MAX_WAITING - INITIAL_WINDOW
    while not setup.port.accepting:
        setup.child()
    assert setup.dispatcher.waiting <= MAX_WAITING // 2 and setup.dispatcher.paused == 0


def test_lostChildsConnectionsGoToAnother(setup: Setup) -> None:
    """
    A child lost before acknowledging: what it held goes to another child,
    in order, counted as re-sent.
    """
    setup.child()
    setup.connect(2)
    sent = setup.given(0)
    setup.child()
    setup.children[0].close()
    pump(setup.reactor)
    assert setup.links[0].lost and setup.links[0].inflight == {}
    assert setup.given(1) == sent and setup.dispatcher.redispatched == 2


def test_limitCallsBackOnce(setup: Setup) -> None:
    """
    A link with a limit calls its C{onLimit} when the connection that
    makes it is sent, once.
    """
    link = setup.child()
    calls: list[Any] = []
    link.limit = 2
    link.onLimit = calls.append
    setup.connect(3)
    assert calls == [link] and link.sent == 3


class _TwistedPort:
    """
    A Twisted port (no C{pauseAccepting}): it pauses by not reading.
    """

    connected, disconnecting, reading = True, False, True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_twistedPortsPauseByNotReading(setup: Setup) -> None:
    """
    A Twisted port of a saturated route stops reading (accepting) and
    starts again with the others; a closed one is left alone.
    """
    port, closed = _TwistedPort(), _TwistedPort()
    closed.connected = False
    setup.route.watchPort(port)
    setup.route.watchPort(closed)
    setup.connect(MAX_WAITING)
    assert not port.reading and closed.reading
    while setup.route.paused:
        setup.child()
    assert port.reading and setup.port.accepting


def test_refusedConnectionGoesToAnotherChild(setup: Setup) -> None:
    """
    A connection its child refuses (at its descriptor limit; never adopted)
    goes to another child of the route, counted as refused and re-sent;
    the refusing child gets no more while the other can take them, even
    with more in hand.
    """
    setup.child()
    setup.child()
    setup.connect()
    n = 0 if setup.links[0].inflight else 1
    full = setup.links[n]
    [connId] = setup.given(n)
    setup.refuse(n, [connId])
    assert full.full and not full.accepting and full.inflight == {}
    assert setup.given(1 - n) == [connId] and setup.dispatcher.refused == 1 and setup.dispatcher.redispatched == 1
    setup.ack(1 - n, [connId])
    setup.connect(3)
    assert setup.given(n) == [] and len(setup.given(1 - n)) == 3
    assert setup.dispatcher.dropped == 0


def test_fullChildGetsConnectionsOnceItReportsRoom(setup: Setup) -> None:
    """
    A full child has room again once it reports a closed connection (or
    adopts one): it is offered connections again, least-loaded first.
    """
    setup.child()
    setup.child()
    setup.connect(2)
    first, second = setup.given(0), setup.given(1)
    setup.ack(1, second)
    setup.refuse(0, first)
    assert setup.given(1) == first
    setup.ack(1, first)
    setup.ack(0, [], closed=1)
    assert not setup.links[0].full and setup.links[0].accepting
    setup.connect()
    assert len(setup.given(0)) == 1


def test_fullChildIsProbedAfterTheRetryTime(setup: Setup) -> None:
    """
    A full child that reports nothing is offered one connection again once
    L{FULL_RETRY} has passed, the others meanwhile getting the rest;
    taking it gives it room again.
    """
    setup.child()
    setup.child()
    setup.connect()
    refused = setup.given(0) + setup.given(1)
    full = 0 if setup.links[0].inflight else 1
    setup.refuse(full, refused)
    setup.ack(1 - full, setup.given(1 - full))
    setup.reactor.advance(FULL_RETRY / 2)
    setup.connect()
    assert setup.given(full) == []
    setup.ack(1 - full, setup.given(1 - full))
    setup.reactor.advance(FULL_RETRY)
    setup.connect(2)
    probe = setup.given(full)
    assert len(probe) == 1 and len(setup.given(1 - full)) == 1
    setup.ack(full, probe)
    assert not setup.links[full].full


def test_theOnlyChildFullClosesWhatItRefuses(setup: Setup) -> None:
    """
    With every child of the route full, a refused connection is closed
    (its client sees the end), and counted as dropped; the next is still
    offered to it, which it may take once it has room.
    """
    setup.child()
    setup.connect()
    refused = setup.given(0)
    setup.refuse(0, refused)
    assert setup.dispatcher.dropped == 1 and setup.closedByServer(0)
    assert setup.dispatcher.held == {}
    setup.connect()
    [again] = setup.given(0, keep=True)
    setup.ack(0, [again])
    assert setup.dispatcher.adopted == 1 and not setup.links[0].full and not setup.closedByServer(1)


def test_refusalOfWhatAChildWasNotGivenChangesNothing(setup: Setup) -> None:
    """
    A refusal of an id the child was not given, or has adopted, re-sends
    nothing (no connection is served twice) and closes nothing.
    """
    setup.child()
    setup.child()
    setup.connect()
    n = 0 if setup.links[0].inflight else 1
    ids = setup.given(n, keep=True)
    setup.ack(n, ids)
    setup.refuse(n, ids + [999])
    assert setup.given(1 - n) == [] and setup.dispatcher.refused == 0 and not setup.links[n].full
    assert setup.dispatcher.dropped == 0 and not setup.closedByServer(0)


def test_aRetiredChildStaysRetiredWhenItHasRoom(setup: Setup) -> None:
    """
    A retiring child that refused, then reports room, still gets nothing;
    one whose successor failed (resumed) while full waits for room.
    """
    link = setup.child()
    setup.child()
    setup.connect()
    n = 0 if link.inflight else 1
    setup.refuse(n, setup.given(n))
    setup.links[n].stopAccepting()
    setup.ack(n, [], closed=1)
    assert not setup.links[n].accepting
    setup.links[n].markFull(setup.reactor.seconds())
    setup.links[n].resumeAccepting()
    assert not setup.links[n].accepting
    setup.links[n].hasRoom()
    assert setup.links[n].accepting


def test_malformedRefusalIsRejected(setup: Setup) -> None:
    """A refusal whose ids are not integers is rejected, and counted."""
    link = setup.child()
    setup.connect()
    setup.refuse(0, ["1"])
    assert link.channel.rejected == 1 and not link.full and len(link.inflight) == 1
