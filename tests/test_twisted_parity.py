"""
The gecko endpoints behave like Twisted's own ports where Twisted's users
look: a reactor that stops, a factory that builds no protocol, log lines,
addresses and the listening port object itself.  (The broad check is
C{python3 -m tests.conformance}, Twisted's own tests; these pin each fix on
real sockets.)
"""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.internet.endpoints import serverFromString
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import log as legacyLog
from twisted.python.reflect import qual

from twisted_serversock import ServerSocket, results
from twisted_serversock.endpoints import GeckoServerEndpoint, GeckoUNIXServerEndpoint

from .conftest import Recorder, connect, connectUNIX, eventually, theReactor, timeout

# ----------------------------------------------------------------------
# Part 2: a listener still open when the reactor stops.


def _reactorFactories() -> list[Any]:
    from twisted.internet import _threadedselect, epollreactor, pollreactor, selectreactor

    return [
        pytest.param(selectreactor.SelectReactor, id="select"),
        pytest.param(pollreactor.PollReactor, id="poll"),
        pytest.param(epollreactor.EPollReactor, id="epoll"),
        pytest.param(_threadedselect.ThreadedSelectReactor, id="threadedselect"),
        pytest.param("asyncio", id="asyncio"),
    ]


@pytest.fixture
def errors() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("isError") or event.get("log_failure") is not None or event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            found.append(event)

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


def _newReactor(factory: Any) -> tuple[Any, Any]:
    """
    A private reactor of the kind C{factory} names (not the session's), and
    what must be closed after it.
    """
    if factory == "asyncio":
        import asyncio

        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        loop = asyncio.new_event_loop()
        return AsyncioSelectorReactor(loop), loop
    return factory(), None


def _run(reactor: Any, loop: Any) -> None:
    """
    Run a private reactor until it stops.  A private asyncio loop runs in a
    thread of its own: under C{--reactor=asyncio} the session's loop is
    already running in this one, and asyncio allows one running loop per
    thread.
    """
    if loop is None:
        reactor.run(installSignalHandlers=False)
        return
    import threading

    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the private asyncio reactor did not stop"


class _Factory(protocol.ServerFactory):
    protocol = protocol.Protocol
    stops = 0

    def stopFactory(self) -> None:
        self.stops += 1


@pytest.mark.parametrize("reactorFactory", _reactorFactories())
@pytest.mark.parametrize("kind", ["serversocket", "endpoint"])
def test_reactorStopStopsListenerCleanly(reactorFactory: Any, kind: str, errors: list[Any], logged: Any) -> None:
    """
    A listener still open when the reactor stops: exactly one
    onStopListening(NS_BINDING_ABORTED), the factory's doStop(), nothing
    logged as an error, no delayed call left behind - on every reactor.
    """
    reactor, loop = _newReactor(reactorFactory)
    try:
        recorder = Recorder()
        factory = _Factory()
        if kind == "serversocket":
            serv = ServerSocket(reactor)
            serv.init(-1, True, -1)
            serv.asyncListen(recorder)
            port = serv.port
        else:
            results_: list[Any] = []
            GeckoServerEndpoint(reactor, port=0, loopback=True).listen(factory).addBoth(results_.append)
            port = results_[0].getHost().port
        client = socket.create_connection(("127.0.0.1", port))  # queued in the kernel
        reactor.callLater(0.05, reactor.stop)
        _run(reactor, loop)
        client.close()
        # (The asyncio reactor's stop() leaves one of its own.)
        leftover = [
            call
            for call in reactor.getDelayedCalls()
            if call.active() and getattr(call.func, "__module__", "").startswith("twisted_serversock")
        ]
        assert leftover == [], f"delayed calls left behind: {leftover}"
    finally:
        if loop is not None:
            loop.close()
        # The threadedselect reactor's select thread is not a daemon thread,
        # and whether stop() ends it is a race inside Twisted: a thread left
        # behind keeps the interpreter (pytest) from exiting.
        endSelectThread = getattr(reactor, "_cleanUpThread", None)
        if endSelectThread is not None:
            endSelectThread()
    assert errors == [], [formatEvent(e) for e in errors]
    if kind == "serversocket":
        assert recorder.statuses == [results.NS_BINDING_ABORTED]
    else:
        assert factory.stops == 1
        assert f"(TCP Port {port} Closed)" in [formatEvent(e) for e in logged]


# ----------------------------------------------------------------------
# Part 3: no connection without an owner.


@pytest_twisted.ensureDeferred
async def test_nonProtocolClosedAtOnceAndLogged(logged: Any) -> None:
    class Confused(protocol.ServerFactory):
        def buildProtocol(self, addr: Any) -> Any:
            return "not a protocol"

    factory = Confused()
    port = await timeout(GeckoServerEndpoint(theReactor(), port=0, loopback=True).listen(factory))
    try:
        client = await connect(port.getHost().port)
        await client.whenClosed()  # before the fix: the peer hung forever
        texts = [formatEvent(e) for e in logged if e.get("log_level") is not None and e["log_level"].name == "error"]
        assert any("Confused" in t and "not a protocol" in t for t in texts), texts
    finally:
        await timeout(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_sessionNumbersAndLogPrefix(logged: Any) -> None:
    """
    Only a connection that got a protocol takes a session number; a
    log.msg in buildProtocol is in the factory's log context (Twisted's
    port's logPrefix()); a connectionMade that raises is logged naming the
    protocol.
    """
    made: list[Any] = []

    class Boom(protocol.Protocol):
        def connectionMade(self) -> None:
            made.append(self)
            if len(made) == 2:
                raise RuntimeError("connectionMade bug")

    class Choosy(protocol.ServerFactory):
        calls = 0

        def buildProtocol(self, addr: Any) -> Any:
            legacyLog.msg("building")
            Choosy.calls += 1
            if Choosy.calls == 1:
                return None
            return Boom()

    factory = Choosy()
    port = await timeout(GeckoServerEndpoint(theReactor(), port=0, loopback=True).listen(factory))
    try:
        refused = await connect(port.getHost().port)
        await refused.whenClosed()
        first = await connect(port.getHost().port)
        await eventually(lambda: len(made) == 1)
        assert made[0].transport.sessionno == 0  # the refused one took none
        assert repr(made[0].transport) == f"<Boom #0 on {port.getHost().port}>"
        second = await connect(port.getHost().port)
        await eventually(lambda: len(made) == 2)
        systems = {e.get("system") for e in logged if "building" in formatEvent(e)}
        assert systems == {qual(Choosy)}
        failures = [formatEvent(e) for e in logged if e.get("log_failure") is not None]
        assert any("Boom" in t for t in failures), failures
        assert not any("_Listener" in t or "onSocketAccepted" in t for t in failures), failures
        for c in (first, second):
            c.transport.loseConnection()
    finally:
        await timeout(port.stopListening())


# ----------------------------------------------------------------------
# Part 4: addresses and log lines.


def _linkLocal() -> str | None:
    try:
        from twisted.internet.test.test_tcp import getLinkLocalIPv6Address

        return str(getLinkLocalIPv6Address())
    except Exception:
        return None


@pytest_twisted.ensureDeferred
async def test_ipv6ScopeKept() -> None:
    address = _linkLocal()
    if address is None:
        pytest.skip("this host has no link-local IPv6 address")
    endpoint = serverFromString(theReactor(), "gecko:port=0:interface=" + address.replace(":", "\\:"))
    port = await timeout(endpoint.listen(protocol.Factory.forProtocol(protocol.Protocol)))
    try:
        host = port.getHost()
        assert isinstance(host, IPv6Address)
        assert host.host == address  # with its "%eth0"
        client = await connect(host.port, host.host)  # reachable as reported
        client.transport.loseConnection()
    finally:
        await timeout(port.stopListening())


async def _acceptedOnFile(path: str) -> tuple[ServerSocket, Recorder, Any, Any]:
    """
    A server socket listening at C{path}, its recorder, a client connected
    to it and the accepted connection.
    """
    serv = ServerSocket(theReactor())
    serv.initWithFilename(path, 0o600, -1)
    recorder = Recorder()
    serv.asyncListen(recorder)
    client = await connectUNIX(path)
    return serv, recorder, client, await recorder.nextAccepted()


@pytest_twisted.ensureDeferred
async def test_connectionHostFixedAtAccept() -> None:
    d = tempfile.mkdtemp(prefix="/tmp/tsp")
    first, second = os.path.join(d, "a"), os.path.join(d, "b")
    serv, recorder, client, accepted = await _acceptedOnFile(first)
    serv.close()
    await recorder.whenStopped()
    serv.initWithFilename(second, 0o600, -1)
    try:
        # The connection accepted on the first path still says so.
        assert accepted.getSelfAddr() == UNIXAddress(first)
    finally:
        serv.close()
        client.transport.loseConnection()
        accepted.close(0)
        os.rmdir(d)


@pytest_twisted.ensureDeferred
async def test_unixLogLines(logged: Any) -> None:
    d = tempfile.mkdtemp(prefix="/tmp/tsp")
    path = os.path.join(d, "s")
    port = await timeout(GeckoUNIXServerEndpoint(theReactor(), path=path).listen(_Factory()))
    await timeout(port.stopListening())
    texts = [formatEvent(e) for e in logged]
    assert f"_Factory starting on {path!r}" in texts
    assert f"(UNIX Port {path} Closed)" in texts
    os.rmdir(d)


# ----------------------------------------------------------------------
# Part 5 (listen never raises) and part 8 (the port under the transports).


def test_listenNeverRaises() -> None:
    class Broken(protocol.ServerFactory):
        def doStart(self) -> None:
            raise RuntimeError("doStart bug")

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    number = busy.getsockname()[1]
    busy.close()
    endpoint = GeckoServerEndpoint(theReactor(), port=number, loopback=True)
    outcome: list[Any] = []
    endpoint.listen(Broken()).addBoth(outcome.append)  # must not raise
    (failure,) = outcome
    assert failure.check(RuntimeError)
    # ... and left nothing bound: the port can be listened on again.
    again: list[Any] = []
    endpoint.listen(protocol.ServerFactory()).addBoth(again.append)
    again[0].stopListening()


@pytest_twisted.ensureDeferred
async def test_transportServerIsAListeningPort() -> None:
    """
    The port a transport names as its C{server} reports the right address
    (not an IPv4 one) and stops the server socket cleanly.
    """
    d = tempfile.mkdtemp(prefix="/tmp/tsp")
    path = os.path.join(d, "s")
    serv, recorder, client, accepted = await _acceptedOnFile(path)
    received: list[Any] = []

    class Keep(protocol.Protocol):
        def makeConnection(self, transport: Any) -> None:
            received.append(transport)

    accepted.attachProtocol(Keep())
    listening = received[0].server
    assert listening.getHost() == UNIXAddress(path)
    listening.stopListening()
    assert await recorder.whenStopped() == results.NS_BINDING_ABORTED
    assert recorder.statuses == [results.NS_BINDING_ABORTED]
    client.transport.loseConnection()
    received[0].loseConnection()
    os.rmdir(d)
