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
from twisted_serversock.ipc.dispatch import ACK_DEADLINE, INITIAL_WINDOW, MAX_WAITING, Dispatcher, Route
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

    def given(self, n: int) -> list[int]:
        """
        The connection ids child C{n} was sent since last asked (their
        descriptors closed).
        """
        ids = []
        for message in receive(self.children[n]):
            if isinstance(message, wire.Conn):
                socket.socket(fileno=message.fd).close()
                ids.append(message.connId)
        return ids

    def ack(self, n: int, ids: list[int], closed: int = 0) -> None:
        self.children[n].sendmsg([wire.encodeReport(ids, closed)])
        pump(self.reactor)

    def close(self) -> None:
        for link in self.links:
            link.channel.loseConnection()
        for skt in self.children + self.clients:
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
