"""
The one worker model's single places, on a memory reactor's clock: the
count of a slot's failed starts is the pool's (C{Slot.restarts}), which
both front doors share; only cluster mode asks the pool to give up on a
program that never starts.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from twisted_serversock.cluster.primary import STARTS_BEFORE_GIVING_UP, ClusterPrimary, PrimaryPort
from twisted_serversock.ipc.dispatch import Dispatcher
from twisted_serversock.ipc.logs import LogRelay
from twisted_serversock.ipc.pool import WorkerPool
from twisted_serversock.ipc.spawn import GRACE, Command

from ._memoryworkers import Pool, StandInReactor, primary, pump, send  # noqa: F401 (primary: a fixture)

__all__ = ["primary"]


def _dies(reactor: StandInReactor, n: int) -> None:
    """
    Worker process C{n} (in start order) exits with status 1, and the
    clock runs past its restart's backoff.
    """
    reactor.protocols[n].processEnded(Failure(ProcessTerminated(1)))
    reactor.advance(11.0)


def test_primaryGivesUpOnAProgramThatNeverStarts(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A worker that dies before any worker was ready is restarted; at its
    fourth start the primary stops the cluster, naming the three exits.
    """
    clusterPrimary, reactor, port = primary
    for n in range(STARTS_BEFORE_GIVING_UP - 2):
        _dies(reactor, n)
        assert not clusterPrimary.failed
    _dies(reactor, STARTS_BEFORE_GIVING_UP - 2)
    assert len(reactor.children) == STARTS_BEFORE_GIVING_UP
    assert clusterPrimary.failed and not reactor.running
    assert clusterPrimary.pool is not None
    assert clusterPrimary.pool.slot(1).restarts == STARTS_BEFORE_GIVING_UP - 1


def test_primaryKeepsRestartingOnceAWorkerWasReady(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    Once some worker was ready the program can run as a worker: deaths are
    restarts with backoff, never a reason to stop the cluster.
    """
    clusterPrimary, reactor, port = primary
    send(reactor.children[0], "ready", pid=1001)
    pump(reactor)
    for n in range(STARTS_BEFORE_GIVING_UP + 1):
        _dies(reactor, n)
    assert not clusterPrimary.failed and len(reactor.children) == STARTS_BEFORE_GIVING_UP + 2


def test_serversockPoolNeverGivesUp(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without C{onGiveUp} (C{twistd serversock}'s pool) a worker that never
    starts is restarted for good.
    """
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    reactor = StandInReactor()
    pool = WorkerPool(reactor, Dispatcher(reactor.seconds), lambda index, heartbeat: Command(["w"], {}), 1)
    pool.start()
    try:
        for n in range(STARTS_BEFORE_GIVING_UP + 1):
            _dies(reactor, n)
        assert len(reactor.children) == STARTS_BEFORE_GIVING_UP + 2
        assert pool.slot(1).restarts == STARTS_BEFORE_GIVING_UP + 1
    finally:
        for child in reactor.children:
            child.close()


def test_workerWrapsForPROXYRoutes() -> None:
    """
    A worker told that a route's connections carry a PROXY header serves
    them with its factory wrapped to parse it, once however often it is
    told; its other routes keep the factory as it is.  (Only C{twistd
    serversock}'s parent says so: a cluster worker's program wraps its own
    factory, C{haproxy:} in its endpoint string.)
    """
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.ipc.channel import channelPair
    from twisted_serversock.ipc.worker import Worker

    reactor = MemoryReactorClock()
    ours, parentEnd = channelPair()
    factory = Factory.forProtocol(Protocol)
    worker = Worker(reactor, ours, 1, 5.0, factory)
    try:
        send(parentEnd, "route", id=2, proxy=True)
        send(parentEnd, "route", id=2, proxy=True)
        pump(reactor)
        assert worker.factoryFor(1) is factory
        assert worker.factoryFor(2) is not factory and worker.factoryFor(2).wrappedFactory is factory
    finally:
        worker.link.channel.loseConnection()
        parentEnd.close()


def test_clusterWorkerIgnoresPROXYRouteMessages() -> None:
    """
    A cluster worker's program wraps its own factory (C{haproxy:} in its
    endpoint string): told that a route carries a PROXY header, it keeps
    the program's factory (no second parse), and a listener the primary
    closes leaves no factory behind for that route.
    """
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.cluster.worker import ClusterWorker
    from twisted_serversock.ipc.channel import channelPair

    class Endpoint:
        def clusterDescription(self) -> str:
            return "gecko:port=8080:workers=2"

    reactor = MemoryReactorClock()
    ours, primaryEnd = channelPair()
    startup = {"index": 1, "heartbeat": 5.0, "argv": ["p"], "listeners": {"gecko:port=8080:workers=2": [7, ["TCP4", "127.0.0.1", 8080]]}}
    worker = ClusterWorker(reactor, ours, startup)
    factory = Factory.forProtocol(Protocol)
    try:
        port = worker.listen(Endpoint(), factory).result
        send(primaryEnd, "route", id=7, proxy=True)
        pump(reactor)
        assert worker.factoryFor(7) is factory
        send(primaryEnd, "cluster-closed", id=1)  # the answer to its first listen
        pump(reactor)
        assert worker.factoryFor(7) is None and not port.listening
    finally:
        worker.link.channel.loseConnection()
        primaryEnd.close()


def test_finishGracefullyReachesTheProtocolInsideItsWrappers() -> None:
    """
    A draining worker calls the C{stopGracefully} of the protocol inside
    its wrappers, and makes Twisted's HTTP/1.1 channel close after the
    response it is writing; a protocol with neither is left alone.
    """
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
    from twisted.web.http import HTTPChannel

    from twisted_serversock.ipc.worker import finishGracefully

    class Stoppable(Protocol):
        stopped = 0

        def stopGracefully(self) -> None:
            self.stopped += 1

    inner = Stoppable()
    wrapping = WrappingFactory(Factory.forProtocol(Stoppable))
    finishGracefully(ProtocolWrapper(wrapping, ProtocolWrapper(wrapping, inner)))
    assert inner.stopped == 1
    channel = HTTPChannel()
    finishGracefully(ProtocolWrapper(wrapping, channel))

    class Request:
        def __init__(self) -> None:
            from twisted.web.http_headers import Headers

            self.responseHeaders = Headers()

    request = Request()
    assert channel.checkPersistence(request, b"HTTP/1.1") is False
    assert request.responseHeaders.getRawHeaders(b"Connection") == [b"close"]
    finishGracefully(Protocol())


def test_clusterListenThePrimaryNeverAnswers() -> None:
    """
    A cluster worker's listen on a description the primary did not have at
    the worker's start waits for the primary's answer a bounded time, then
    fails with C{CannotListenError}; a late answer then attaches nothing.
    """
    from twisted.internet.error import CannotListenError
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.cluster.worker import ATTACH_TIMEOUT, ClusterWorker
    from twisted_serversock.ipc.channel import channelPair

    class Endpoint:
        def clusterDescription(self) -> str:
            return "gecko:port=8080:workers=2"

    reactor = MemoryReactorClock()
    ours, primaryEnd = channelPair()
    startup = {"worker": "cluster", "index": 1, "heartbeat": 5.0, "argv": ["program"], "listeners": {}}
    worker = ClusterWorker(reactor, ours, startup)
    try:
        failures: list[Failure] = []
        worker.listen(Endpoint(), Factory.forProtocol(Protocol)).addErrback(failures.append)
        reactor.advance(ATTACH_TIMEOUT)
        [failure] = failures
        assert failure.check(CannotListenError) and "did not answer in 30.0 s" in str(failure.value)
        send(primaryEnd, "cluster-attached", id=1, route=3, address=["TCP4", "127.0.0.1", 8080])
        pump(reactor)
        assert worker.factoryFor(3) is None
    finally:
        worker.link.channel.loseConnection()
        primaryEnd.close()


class _Port:
    """
    A listening port whose stop the test ends.
    """

    def __init__(self, log: list[str]) -> None:
        from twisted.internet import defer

        self.log = log
        self.stopped: defer.Deferred[None] = defer.Deferred()

    def stopListening(self) -> Any:
        self.log.append("port")
        return self.stopped


class _Pool:
    def __init__(self, log: list[str]) -> None:
        from twisted.internet import defer

        self.log = log
        self.ended: defer.Deferred[None] = defer.Deferred()

    def stop(self, grace: float) -> Any:
        self.log.append(f"pool {grace}")
        return self.ended


def test_parentStopsOnceWhoeverAsks() -> None:
    """
    Both front doors stop on one path: listeners first, then the workers
    with the grace period, once however many ask (a signal, the reactor's
    shutdown, C{stopService}); each asker's Deferred fires when all of it
    is done, and a signal then stops the reactor.
    """
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.ipc.signals import ParentStop

    reactor = MemoryReactorClock()
    # Running, not stopped (Twisted before 25 starts a MemoryReactor with
    # hasStopped already true).
    reactor.running, reactor.hasStopped = True, False
    log: list[str] = []
    port, pool = _Port(log), _Pool(log)
    stopper = ParentStop(reactor, 7.0, lambda: [port])
    stopper.pool = pool
    assert not stopper.stopping
    first = stopper.stop()
    stopper.terminate("SIGTERM")
    assert stopper.stopping and log == ["port"] and not first.called
    port.stopped.callback(None)
    assert log == ["port", "pool 7.0"] and not first.called and not reactor.hasStopped
    pool.ended.callback(None)
    assert first.called and reactor.hasStopped
    assert stopper.stop().called and log == ["port", "pool 7.0"]


def test_parentStopWithoutWorkers() -> None:
    """
    Serving in this process: a signal tells systemd it is stopping, the
    listeners stop, and so does the reactor.
    """
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.ipc.signals import ParentStop

    class Notifier:
        said: list[str] = []

        def stopping(self, status: str) -> None:
            self.said.append(status)

    reactor = MemoryReactorClock()
    reactor.running = True
    log: list[str] = []
    port = _Port(log)
    port.stopped.callback(None)
    stopper = ParentStop(reactor, 1.0, lambda: [port])
    stopper.notifier = notifier = Notifier()
    stopper.terminate("SIGINT")
    assert log == ["port"] and notifier.said == ["stopping"] and reactor.hasStopped


def test_lameDuckDelaysASignalsStop() -> None:
    """
    With a lame-duck delay, a signal tells systemd it is stopping, but the
    listeners stay open for the delay (on the reactor's clock); then the
    stop runs as without one.
    """
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.ipc.signals import ParentStop

    reactor = MemoryReactorClock()
    reactor.running, reactor.hasStopped = True, False
    log: list[str] = []
    port, pool = _Port(log), _Pool(log)
    port.stopped.callback(None)
    stopper = ParentStop(reactor, 7.0, lambda: [port], lameDuck=5.0)
    stopper.pool = pool
    said: list[str] = []
    stopper.notifier = type("Notifier", (), {"stopping": lambda self, status: said.append(status)})()
    stopper.terminate("SIGTERM")
    assert said == ["stopping"] and log == [] and not stopper.stopping
    reactor.advance(4.9)
    assert log == [] and not stopper.stopping
    reactor.advance(0.1)
    assert log == ["port", "pool 7.0"] and stopper.stopping and said == ["stopping"]
    pool.ended.callback(None)
    assert reactor.hasStopped and not reactor.getDelayedCalls()


def test_secondSignalOrShutdownEndsTheLameDuck() -> None:
    """
    A second signal during the lame-duck delay stops at once, as does the
    reactor's shutdown (C{stop()}); the delay's end then does nothing more.
    """
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.ipc.signals import ParentStop

    for second in ("signal", "stop"):
        reactor = MemoryReactorClock()
        reactor.running, reactor.hasStopped = True, False
        log: list[str] = []
        port = _Port(log)
        port.stopped.callback(None)
        stopper = ParentStop(reactor, 1.0, lambda: [port], lameDuck=30.0)
        stopper.terminate("SIGTERM")
        reactor.advance(1)
        assert log == []
        if second == "signal":
            stopper.terminate("SIGINT")
            assert reactor.hasStopped
        else:
            assert stopper.stop().called
        assert log == ["port"] and not reactor.getDelayedCalls()
        reactor.advance(60)
        assert log == ["port"]


def test_primaryTakesTheLargestGraceAndLameDuck() -> None:
    """
    A cluster primary's grace and lame-duck delay are the largest its
    listeners gave (the default until one gives it); its stop and its pool
    use them.
    """
    from twisted.internet.testing import MemoryReactorClock

    from twisted_serversock.ipc.primary import Primary

    primary = Primary(MemoryReactorClock(), 10.0, list)
    primary.allow(None, None)
    assert (primary.stopper.grace, primary.stopper.lameDuck) == (10.0, 0.0)
    primary.allow(3.0, None)
    assert primary.stopper.grace == 3.0
    primary.allow(5.0, 2.0)
    primary.allow(4.0, 1.0)
    assert (primary.stopper.grace, primary.stopper.lameDuck) == (5.0, 2.0)
    pool = primary.makePool(lambda index, heartbeat: Command(["true"], {}), 1)
    assert pool._grace == 5.0


def test_idleHTTPIsAKeepAliveConnectionBetweenRequests() -> None:
    """
    What a stopping worker closes (L{idleHTTP}): Twisted's HTTP/1.1
    channel (inside its HTTP/1-or-2 wrapper) between requests, a response
    sent, with nothing of a next request in the socket; not a connection
    whose first request has not arrived, whose next one is half-received
    or waits unread in the socket.  Those get C{Connection: close}.
    """
    import socket

    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from twisted_serversock.ipc.worker import finishGracefully, idleHTTP

    class Hi(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            return b"hi"

    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    sockets: list[socket.socket] = []

    class Transport(StringTransport):
        def __init__(self) -> None:
            super().__init__()
            self.ours, self.peer = socket.socketpair()
            sockets.extend((self.ours, self.peer))

        def getHandle(self) -> socket.socket:
            return self.ours

    def channel(*data: bytes) -> Transport:
        transport = Transport()
        transport.protocol = protocol = Site(Hi()).buildProtocol(None)
        protocol.makeConnection(transport)
        for chunk in data:
            protocol.dataReceived(chunk)
        return transport

    try:
        idle = channel(request)
        assert b"200 OK" in idle.value() and not idle.disconnecting
        assert idleHTTP(idle) is idle.protocol._channel
        idle.peer.send(b"G")  # the next request, not read yet
        assert idleHTTP(idle) is None
        for data in ((), (request, request[:10])):
            waiting = channel(*data)
            assert idleHTTP(waiting) is None
            finishGracefully(waiting.protocol)
            waiting.clear()
            waiting.protocol.dataReceived(request[len(data[1]) if data else 0 :])
            assert b"\r\nConnection: close\r\n" in waiting.value() and waiting.disconnecting, waiting.value()
    finally:
        for skt in sockets:
            skt.close()


def test_reloadIsDoneWhenItsWorkersServeOrEnd(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A reload is done (systemd is told READY=1 again) once each of its
    workers serves, retires or ends: one that died before it was ready
    no longer keeps the reload pending for good.
    """
    from twisted.logger import globalLogPublisher


    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    pool = Pool()
    said: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        said.append(event.get("log_format") or "")

    globalLogPublisher.addObserver(observe)
    try:
        pool.ready(0)
        pool.end(0, signal=9)  # dies; its restart is pending
        pool.pool.reload()  # the empty slot gets the reload's worker at once
        assert len(pool.reactor.children) == 2
        pool.end(1, signal=9)  # ... which dies before it is ready
        pool.wait(1.0)
        assert len(pool.reactor.children) == 3 and not [f for f in said if f.startswith("Reload done")]
        pool.ready(2)
        assert [f for f in said if f.startswith("Reload done")]
    finally:
        globalLogPublisher.removeObserver(observe)
        pool.close()


# ----------------------------------------------------------------------
# The start-up message: one way for both kinds of worker.


def _startupPair(**fields: Any) -> Any:
    """
    A channel pair whose worker end holds one start-up message with
    C{fields} (none sent without them).
    """
    from twisted_serversock.ipc.channel import channelPair

    workerEnd, parentEnd = channelPair()
    if fields:
        send(parentEnd, "start", **fields)
    return workerEnd, parentEnd


def test_startupMessageIsTheChannelsFirstMessage() -> None:
    """
    The pool starts a worker with its command's start-up fields as the
    channel's first message, which the worker reads checked, before any
    reactor runs: a C{twistd serversock} worker gets its factory and the
    parent's C{sys.path} there, not in its command line or environment.
    """
    import sys

    from twisted_serversock.ipc.spawn import WORKER_MODULE, readStartup, serversockCommand

    command = serversockCommand("myapp.factory", 2, 1.5)
    assert command.argv == [sys.executable, "-m", WORKER_MODULE]
    assert not any("myapp" in value for value in [*command.argv, *command.env.values()])
    reactor = StandInReactor()
    pool = WorkerPool(reactor, Dispatcher(reactor.seconds), lambda index, heartbeat: serversockCommand("myapp.factory", index, heartbeat), 1)
    pool.start()
    try:
        [child] = reactor.children
        startup = readStartup(child, timeout=5)
        assert startup == {"worker": "serversock", "index": 1, "heartbeat": pool.heartbeat, "grace": GRACE, "factory": "myapp.factory", "path": command.startup["path"], "tls": {}, "files": {}}
    finally:
        pool.stop(0)
        for child in reactor.children:
            child.close()


def test_startupMessageTooLargeStartsNoProcess() -> None:
    """
    A start-up message too large for the channel is found before the
    worker process is started: no process starts only to die waiting for
    it, the failure is logged, and the slot tries again after its backoff
    (it starts once the message fits).
    """
    from twisted_serversock.ipc.spawn import readStartup, serversockCommand
    from twisted_serversock.ipc.wire import MAX_MESSAGE

    padding = ["x" * 1024] * (MAX_MESSAGE // 1024 + 1)
    sizes = {"path": padding}

    def command(index: int, heartbeat: float) -> Command:
        made = serversockCommand("myapp.factory", index, heartbeat)
        assert made.startup is not None
        made.startup["path"] = sizes["path"]
        return made

    reactor = StandInReactor()
    pool = WorkerPool(reactor, Dispatcher(reactor.seconds), command, 1)
    pool.start()
    try:
        assert reactor.children == [] and reactor.processes == []
        sizes["path"] = ["/srv/app"]
        reactor.advance(10)
        [child] = reactor.children
        assert readStartup(child, timeout=5)["path"] == ["/srv/app"]
    finally:
        pool.stop(0)
        for child in reactor.children:
            child.close()


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"worker": "serversock", "index": "1", "heartbeat": 1, "factory": "f", "path": []}, "field 'index' is '1', not an integer"),
        ({"worker": "serversock", "index": 1, "heartbeat": 1, "path": []}, "missing field 'factory'"),
        ({"worker": "cluster", "index": 1, "heartbeat": 1, "argv": ["p"], "listeners": {}, "key": "x"}, "unexpected field 'key'"),
        ({"worker": "thread", "index": 1, "heartbeat": 1}, "field 'worker' is 'thread'"),
        # A bad "files" is named without showing its value (keys).
        ({"worker": "cluster", "index": 1, "heartbeat": 1, "argv": ["p"], "listeners": {}, "files": ["k"]}, "field 'files' is not an object"),
        ({"worker": "cluster", "index": 1, "heartbeat": 1, "argv": ["p"], "listeners": {}, "files": {"D": "k"}}, "field 'files'['D'] is not an object"),
        (
            {"worker": "cluster", "index": 1, "heartbeat": 1, "argv": ["p"], "listeners": {}, "files": {"D": {"/k.pem": "SECRET*"}}},
            "field 'files'['D']['/k.pem'] is not a base64 string",
        ),
    ],
)
def test_badStartupMessageNamesTheField(fields: dict[str, Any], error: str) -> None:
    """
    A start-up message whose fields do not fit is refused with one line
    naming the field, as a control message's are.
    """
    from twisted_serversock.ipc.spawn import readStartup

    workerEnd, parentEnd = _startupPair(**fields)
    try:
        with pytest.raises(ValueError, match="bad start-up message: " + re.escape(error)) as raised:
            readStartup(workerEnd, timeout=5)
        assert "SECRET" not in str(raised.value)
    finally:
        workerEnd.close()
        parentEnd.close()


def test_startupFilesWellFormed() -> None:
    """
    A cluster worker's start-up message may carry the TLS files its
    primary read, by listener description, each path's bytes in base64;
    left out, there are none.
    """
    import base64

    from twisted_serversock.ipc.spawn import readStartup

    base = {"worker": "cluster", "index": 1, "heartbeat": 1, "argv": ["p"], "listeners": {}}
    files = {"geckotls:0:privateKey=/k.pem": {"/k.pem": base64.b64encode(b"\x00key\xff").decode()}}
    for fields, expected in ((dict(base, files=files), files), (base, {})):
        workerEnd, parentEnd = _startupPair(**fields)
        try:
            assert readStartup(workerEnd, timeout=5)["files"] == expected
        finally:
            workerEnd.close()
            parentEnd.close()


def test_serversockStartupNamesItsTLSRoutes() -> None:
    """
    A C{twistd serversock} worker's start-up message names the routes
    whose TLS it runs (route id -> the C{geckotls:} description) and
    carries their files; without TLS listeners, neither.
    """
    from twisted_serversock.ipc.spawn import readStartup, serversockCommand

    tls = {"tls": {"1": "geckotls:0:privateKey=/k.pem"}, "files": {"geckotls:0:privateKey=/k.pem": {"/k.pem": "a2V5"}}}
    for command, expected in ((serversockCommand("f", 1, 1.0, lambda: tls), tls), (serversockCommand("f", 1, 1.0), {"tls": {}, "files": {}})):
        assert command.startup is not None
        workerEnd, parentEnd = _startupPair(**command.startup)
        try:
            startup = readStartup(workerEnd, timeout=5)
            assert {"tls": startup["tls"], "files": startup["files"]} == expected
        finally:
            workerEnd.close()
            parentEnd.close()


def test_startupMessageThatNeverComes() -> None:
    """
    A worker waits for its start-up message a bounded time, and a parent
    that closes the channel first is no start-up message either.
    """
    from twisted_serversock.ipc.spawn import readStartup

    workerEnd, parentEnd = _startupPair()
    try:
        with pytest.raises(ValueError, match="no start-up message from the parent within 0.05 s"):
            readStartup(workerEnd, timeout=0.05)
        parentEnd.close()
        with pytest.raises(ValueError, match="the parent closed the channel"):
            readStartup(workerEnd, timeout=5)
    finally:
        workerEnd.close()


def test_workerWithoutStartupMessageExitsWithOneLine() -> None:
    """
    A worker process whose parent never sends its start-up message exits
    non-zero with one line saying so, having imported nothing it serves.
    """
    import subprocess
    import sys

    workerEnd, parentEnd = _startupPair()
    parentEnd.close()
    runAsWorker = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.execv(sys.executable, [sys.executable, '-m', 'twisted_serversock.ipc'])"
    try:
        done = subprocess.run(
            [sys.executable, "-c", runAsWorker, str(workerEnd.fileno())], pass_fds=[workerEnd.fileno()], capture_output=True, text=True, timeout=60
        )
    finally:
        workerEnd.close()
    assert done.returncode == 2, done
    # One event, at critical, as the parent's log will have it.
    events: list[dict[str, Any]] = []
    relay = LogRelay("worker 1 pid 1", events.append)
    relay.dataReceived(2, done.stderr.encode())
    relay.flush()
    assert [(e["log_level"], formatEvent(e)) for e in events] == [(LogLevel.critical, "bad start-up message: the parent closed the channel")], done
