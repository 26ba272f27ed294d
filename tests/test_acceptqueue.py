"""
A listener that stops for good serves the connections already in its
kernel accept queue instead of resetting them: C{close()} and
C{stopListening()} accept what is queued (even while accepting is paused)
and deliver each as any accepted connection, then close the socket, then
report C{onStopListening}; a cluster primary that stops hands its queued
connections to its workers before it tells them to stop, and a worker that
adopts one while it drains finishes it like the others.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.testing import MemoryReactorClock

from twisted_serversock import results
from twisted_serversock._port import ListeningPort
from twisted_serversock.endpoints import GeckoServerEndpoint, GeckoUNIXServerEndpoint
from twisted_serversock.ipc.dispatch import INITIAL_WINDOW, MAX_WAITING

from ._procs import PRIMARY_LISTENING, READY, SERVERSOCK, TWISTD, Proc, alive, listenQueue, serving, spawn, workerPids
from .conftest import Client, Recorder, connect, connectUNIX, eventually, sleep, theReactor, timeout

N = 8


class _Answer(protocol.Protocol):
    """Answers the first bytes it gets with C{served:} and them, then closes."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"served:" + data)
        self.transport.loseConnection()


class _Factory(protocol.Factory):
    """Builds L{_Answer}s and records C{("built", peer)} and C{("stopped",)} in order."""

    protocol = _Answer

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def buildProtocol(self, addr: Any) -> protocol.Protocol | None:
        self.events.append(("built", addr))
        return super().buildProtocol(addr)

    def doStop(self) -> None:
        self.events.append(("stopped",))
        super().doStop()


@pytest.fixture
def shortdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="/tmp/aq")
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _queuedThenStopped(port: Any, clients: list[Client], factory: _Factory, queued: Any) -> None:
    """
    With C{port}'s accepting paused and every client in its kernel queue
    (C{queued()} says how many, if the kernel tells: C{ss} lists no UNIX
    socket in some containers, and a UNIX client is connected only once
    queued), stop it: each client is served, and the factory stops after
    the last protocol was built.
    """
    for i, client in enumerate(clients):
        client.transport.write(b"%d" % i)
    if queued is not None:
        await eventually(lambda: queued() == len(clients))
    else:
        await sleep(0.1)
    assert factory.events == []  # nothing accepted yet
    stopped = port.stopListening()
    for i, client in enumerate(clients):
        assert await client.whenClosed() == b"served:%d" % i
        assert client.eof  # an orderly close after the answer, not a reset
    await timeout(stopped)
    assert [e[0] for e in factory.events] == ["built"] * len(clients) + ["stopped"]


@pytest_twisted.ensureDeferred
async def test_geckoPortServesItsQueueWhenItStops() -> None:
    """
    A C{gecko:} port with accepting paused and clients waiting in its
    kernel queue: C{stopListening()} serves every one of them (none is
    reset) and its factory stops after the last was built.
    """
    factory = _Factory()
    port = await timeout(GeckoServerEndpoint(theReactor(), 0, loopback=True).listen(factory))
    number = port.getHost().port
    port.pauseAccepting()
    clients = [await connect(number) for _ in range(N)]
    await _queuedThenStopped(port, clients, factory, lambda: listenQueue(number))
    # The port is closed: a new connection is refused.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", number)).close()


@pytest_twisted.ensureDeferred
async def test_geckounixPortServesItsQueueWhenItStops(shortdir: str) -> None:
    """
    The same for a C{geckounix:} port: every queued client is served, and
    the socket file is gone.
    """
    path = os.path.join(shortdir, "s")
    factory = _Factory()
    port = await timeout(GeckoUNIXServerEndpoint(theReactor(), path).listen(factory))
    port.pauseAccepting()
    clients = [await connectUNIX(path) for _ in range(N)]
    await _queuedThenStopped(port, clients, factory, None)
    assert not os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_closeDeliversTheQueueBeforeOnStopListening(servers: Any) -> None:
    """
    C{close()} on a server socket whose accepting is paused: nothing is
    delivered inside C{close()}; then one C{onSocketAccepted} per queued
    connection, each a working connection, and exactly one
    C{onStopListening(NS_BINDING_ABORTED)} after the last.
    """
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    srv.pauseAccepting()
    raw = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(N)]
    try:
        await eventually(lambda: listenQueue(srv.port) == N)
        srv.close()
        assert rec.events == []  # delivered through the reactor, never inside close()
        assert await rec.whenStopped() == results.NS_BINDING_ABORTED
        assert [kind for kind, _ in rec.events] == ["accepted"] * N + ["stopped"]
        peers = sorted(t.getPeerAddr().port for kind, t in rec.events if kind == "accepted")
        assert peers == sorted(s.getsockname()[1] for s in raw)
        for kind, transport in rec.events[:-1]:
            out = transport.openOutputStream(0, 0, 0)
            out.write(b"hi")
            transport.close(0)
        got = {s: b"" for s in raw}

        def answered() -> bool:
            for s in raw:
                try:
                    got[s] += s.recv(10, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
            return all(data == b"hi" for data in got.values())

        await eventually(answered)
    finally:
        for s in raw:
            s.close()


class _Flood:
    """A listening socket under a flood: C{accept()} always has one more, until C{failAfter}, then C{error}."""

    family = socket.AF_INET

    def __init__(self, failAfter: int = 1 << 30, error: int = errno.EAGAIN) -> None:
        self.accepted: list[socket.socket] = []
        self._failAfter, self._error = failAfter, error

    def fileno(self) -> int:
        return -1

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if len(self.accepted) >= self._failAfter:
            raise OSError(self._error, os.strerror(self._error))
        a, b = socket.socketpair()
        b.close()
        self.accepted.append(a)
        return a, ("127.0.0.1", 40000 + len(self.accepted))

    def close(self) -> None:
        pass


def _portOn(skt: Any, backlog: int) -> ListeningPort:
    from twisted.internet.address import IPv4Address

    reactor = MemoryReactorClock()
    return ListeningPort(
        skt, IPv4Address("TCP", "127.0.0.1", 1), reactor,  # type: ignore[arg-type]
        accept=lambda s, a: None, failed=lambda e: None, removed=lambda: None, close=lambda: None, backlog=backlog,
    )  # fmt: skip


def test_takingTheQueueIsBoundedByTheBacklog() -> None:
    """
    Under a flood that refills the queue as fast as it is taken, stopping
    takes at most what the queue holds (the backlog plus one) and closes.
    """
    flood = _Flood()
    port = _portOn(flood, backlog=5)
    port.connected = True
    taken = port.stop(takeQueued=True)
    try:
        assert len(taken) == 6 and not port.connected
    finally:
        for s in flood.accepted:
            s.close()


def test_shortageWhileTakingTheQueueStopsIt(logged: list[dict[str, Any]]) -> None:
    """
    Out of descriptors while taking the queue: what was taken is kept, the
    rest is reset with the close, and that is logged once (no retry is
    scheduled on a port that is closing).
    """
    flood = _Flood(failAfter=2, error=errno.EMFILE)
    port = _portOn(flood, backlog=50)
    port.connected = True
    taken = port.stop(takeQueued=True)
    try:
        assert len(taken) == 2 and port._retry is None
        warned = [e for e in logged if "cannot accept the connections still queued" in e.get("log_format", "")]
        assert len(warned) == 1 and warned[0]["error"] == "EMFILE" and warned[0]["n"] == 2
    finally:
        for s in flood.accepted:
            s.close()


def test_workerAdoptingWhileStoppingFinishesIt() -> None:
    """
    A connection a worker adopts after it was told to stop is asked to
    finish (C{stopGracefully}) like those it had, once, and the worker
    waits for it before it exits.
    """
    from twisted_serversock.ipc.channel import channelPair
    from twisted_serversock.ipc.worker import Worker

    class Stoppable(protocol.Protocol):
        stopped = 0

        def stopGracefully(self) -> None:
            self.stopped += 1

    class Transport:
        def __init__(self, proto: Stoppable) -> None:
            self.protocol = proto

        def connectionLost(self, reason: Any) -> None:
            pass

    class Reactor(MemoryReactorClock):
        stops = 0  # (not hasStopped: Twisted 24.11's MemoryReactor starts with it True)

        def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> Any:
            return Transport(factory.buildProtocol(None))

        def stop(self) -> None:
            self.stops += 1
            super().stop()

    reactor = Reactor()
    ours, parentEnd = channelPair()
    worker = Worker(reactor, ours, 1, 5.0, protocol.Factory.forProtocol(Stoppable))
    try:
        pairs = [socket.socketpair() for _ in range(2)]
        worker._adopt(1, pairs[0][0])
        (first,) = worker._transports
        worker.stop(10)
        worker._adopt(1, pairs[1][0])
        (second,) = worker._transports - {first}
        assert first.protocol.stopped == second.protocol.stopped == 1
        first.connectionLost(None)
        reactor.advance(1)
        assert worker._transports == {second} and reactor.stops == 0  # it waits for this one
        assert second.protocol.stopped == 1  # told once, not again at the drain's next look
        second.connectionLost(None)
        reactor.advance(1)
        assert not worker._transports and reactor.stops == 1
        for a, b in pairs:
            b.close()
    finally:
        worker.link.channel.loseConnection()
        parentEnd.close()


@pytest_twisted.ensureDeferred
async def test_childClosingItsListenerClosesItsQueueQuietly(logged: list[dict[str, Any]]) -> None:
    """
    A child that closes the listener it asked its parent for wants no more
    connections: what the parent's kernel queue held at the close is
    closed there, not sent to the child for a route it no longer has (no
    error is logged; the client sees the connection end).
    """
    from twisted.logger import LogLevel

    from twisted_serversock.ipc.channel import channelPair
    from twisted_serversock.ipc.child import ParentLink, TCPServerSocketChild
    from twisted_serversock.ipc.parent import Dispatcher, WorkerLink

    parentEnd, childEnd = channelPair()
    dispatcher = Dispatcher(theReactor().seconds)
    link = WorkerLink(dispatcher, parentEnd, theReactor(), "child 1", listenPorts=range(65536))
    parent = ParentLink(childEnd, theReactor())
    try:
        server = TCPServerSocketChild(parent, reactor=theReactor())
        server.init(None)
        server.listen(0, None, -1)
        await eventually(lambda: server.localPort > 0 and link.listeners)
        (serv, route), = link.listeners.values()
        serv.pauseAccepting()
        client = await connect(server.localPort)
        await eventually(lambda: listenQueue(server.localPort) == 1)
        server.close()
        await timeout(client.closed)
        await eventually(lambda: not dispatcher.routes)
        assert dispatcher.accepted == 0 and not dispatcher.held
        assert [e for e in logged if e.get("log_level") in (LogLevel.error, LogLevel.critical)] == []
    finally:
        parent.channel.loseConnection()


def test_queueTakenAtTheCloseDoesNotPauseAClosedRoute(logged: list[dict[str, Any]]) -> None:
    """
    Connections submitted to a route after its listener closed (what its
    kernel queue held) wait for a worker however many they are, without
    pausing a listener that is gone nor saying so.
    """
    from twisted_serversock.ipc.dispatch import Dispatcher

    dispatcher = Dispatcher(lambda: 0.0)
    route = dispatcher.addRoute("closed")
    dispatcher.closeRoute(route)
    for _ in range(MAX_WAITING + 1):
        dispatcher.submit(route, socket.socket())
    try:
        assert dispatcher.waiting == MAX_WAITING + 1
        assert dispatcher.paused == dispatcher.pauses == 0 and not route.paused
        assert not [e for e in logged if "pausing accepts" in e.get("log_format", "")]
    finally:
        assert dispatcher.dropAll("test") == MAX_WAITING + 1


# ----------------------------------------------------------------------
# Cluster mode, with the installed twistd.

PID_RPY = """\
import os
from twisted.web.resource import Resource


class Pid(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"%d" % os.getpid()


resource = Pid()
"""


@pytest.fixture
def site() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="/tmp/aqs")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "pid.rpy"), "w") as f:
        f.write(PID_RPY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _stopWithAQueue(proc: Proc, port: int, workers: set[int], request: bytes, gecko: bool = True) -> list[Client]:
    """
    Stop both C{workers} (SIGSTOP), connect until the primary pauses
    accepting and the kernel queues the rest, each client sending
    C{request}; SIGTERM the primary and wait until it holds every
    connection for its workers; wake them.  The clients.
    """
    # Twisted's own port accepts up to 100 a read before the pause it was
    # asked for mid-read takes effect: as many more clients (and a backlog
    # above its default 50 for them), so that some still wait in the
    # kernel's queue.
    total = MAX_WAITING + 2 * INITIAL_WINDOW + 40 + (0 if gecko else 100)
    assert len(workers) == 2, proc.output
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        clients = [await connect(port) for _ in range(total)]
        for client in clients:
            client.transport.write(request)
        await proc.waitFor(r"pausing accepts; new connections wait in the kernel's backlog")
        await eventually(lambda: listenQueue(port) >= 30, 20)
        proc.transport.signalProcess(signal.SIGTERM)
        held = int((await proc.waitFor(r"Handing (\d+) held connection\(s\) to workers before stopping")).group(1))
        assert held == total, proc.output  # the kernel's queue too
        if gecko:  # (Twisted's own port says nothing)
            took = re.search(r"took (\d+) connection\(s\) the kernel had queued, to be served", proc.output)
            assert took and int(took.group(1)) >= 30, proc.output
        assert listenQueue(port) == 0
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    return clients


async def _endedCleanly(proc: Proc, workers: set[int]) -> None:
    code = await timeout(proc.ended, 40)
    assert code == 0 and proc.signal is None, proc.output  # a graceful stop exits 0, not by the signal
    assert not re.search(r"\b[1-9]\d*( held connection\(s\))? closed unserved", proc.output), proc.output
    await eventually(lambda: not any(alive(p) for p in workers), 10)


@pytest_twisted.ensureDeferred
async def test_clusterHandsItsQueueToWorkersWhenItStops(site: str) -> None:
    """
    C{twistd web} on C{gecko:...:workers=2} with both workers stopped
    (SIGSTOP): the primary holds what it can and pauses accepting, the rest
    wait in its kernel queue.  SIGTERM: the primary takes that queue too
    and holds every connection for its workers before it tells them to
    stop; woken, they answer every client, and the cluster exits 0.
    """
    proc = spawn([*TWISTD, "-n", "--pidfile=", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    workers = {int(m.group(2)) for m in re.finditer(READY, proc.output)}
    clients = await _stopWithAQueue(proc, port, workers, b"GET /pid.rpy HTTP/1.0\r\nHost: x\r\n\r\n")
    replies = [bytes(await timeout(client.closed, 30)) for client in clients]
    bad = [r for r in replies if not (r.startswith(b"HTTP/1.0 200 ") and int(r.rsplit(b"\r\n\r\n", 1)[1]) in workers)]
    assert not bad, (bad[:3], len(bad))
    await _endedCleanly(proc, workers)


@pytest.mark.parametrize("listen", ["gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1:backlog=512"])
@pytest_twisted.ensureDeferred
async def test_serversockHandsItsQueueToWorkersWhenItStops(site: str, listen: str) -> None:
    """
    The same with C{twistd serversock --workers 2} (its echo factory):
    every client queued at SIGTERM is echoed, on a C{gecko:} listener and
    on Twisted's own C{tcp:} port.
    """
    # (--timeout: stopped workers are never taken for hung, however slow the machine.)
    proc = spawn([*SERVERSOCK, "--workers", "2", "--timeout", "600", "--listen", listen], site)
    port = await serving(proc, 2)
    workers = set(workerPids(proc).values())
    clients = await _stopWithAQueue(proc, port, workers, b"echo me", gecko=listen.startswith("gecko:"))
    for client in clients:
        assert await client.waitFor(7) == b"echo me"
        client.transport.loseConnection()
    await _endedCleanly(proc, workers)
