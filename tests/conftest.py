"""
Shared test helpers.

pytest-twisted runs one reactor for the whole session and has no timeouts:
a Deferred that never fires would hang the run, and a test killed from
outside takes the reactor down for every later test.  So every Deferred a
test waits on goes through L{timeout}.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from twisted_serversock import IOService

#: Seconds any single wait in a test may take before it fails.
WAIT = 10.0


def timeout(d: defer.Deferred[Any], seconds: float = WAIT) -> defer.Deferred[Any]:
    """
    Give C{d} a timeout, so a test that waits on it fails instead of hanging.
    """
    return d.addTimeout(seconds, reactor)


def sleep(seconds: float) -> defer.Deferred[None]:
    """
    A Deferred that fires after C{seconds} of reactor time.
    """
    return deferLater(reactor, seconds, lambda: None)


async def eventually(predicate: Any, seconds: float = WAIT, step: float = 0.01) -> None:
    """
    Wait (without blocking the reactor) until C{predicate()} is true.
    """
    waited = 0.0
    while not predicate():
        if waited >= seconds:
            raise AssertionError(f"condition not met within {seconds}s: {predicate}")
        await sleep(step)
        waited += step


class Recorder:
    """
    An C{nsIServerSocketListener} that records every event in order.

    @ivar events: C{("accepted", transport)} and C{("stopped", status)}
        tuples, in the order they were delivered.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.servers: list[Any] = []
        self._accepted: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.stopped: defer.Deferred[int] = defer.Deferred()

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        self.events.append(("accepted", transport))
        self.servers.append(serv)
        self._accepted.put(transport)

    def onStopListening(self, serv: Any, status: int) -> None:
        self.events.append(("stopped", status))
        self.servers.append(serv)
        self.stopped.callback(status)

    def nextAccepted(self) -> defer.Deferred[Any]:
        return timeout(self._accepted.get())

    def whenStopped(self) -> defer.Deferred[int]:
        return timeout(self.stopped)

    @property
    def statuses(self) -> list[int]:
        return [s for kind, s in self.events if kind == "stopped"]


@implementer(IHalfCloseableProtocol)
class Client(protocol.Protocol):
    """
    A test client: collects what it receives and says when it is closed.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred[Any] = defer.Deferred()
        self.eof = False
        self.reason: Any = None
        self._waiters: list[tuple[int, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for n, d in list(self._waiters):
            if len(self.received) >= n:
                self._waiters.remove((n, d))
                d.callback(bytes(self.received))

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = ConnectionDone) -> None:
        self.reason = reason
        for n, d in self._waiters:
            d.errback(AssertionError(f"closed with {len(self.received)} of {n} bytes"))
        self._waiters = []
        self.closed.callback(bytes(self.received))

    def waitFor(self, n: int) -> defer.Deferred[bytes]:
        """
        Fire with everything received once at least C{n} bytes have arrived.
        """
        if len(self.received) >= n:
            return defer.succeed(bytes(self.received))
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((n, d))
        return timeout(d)

    def whenClosed(self) -> defer.Deferred[bytes]:
        return timeout(self.closed)


async def connect(port: int, host: str = "127.0.0.1") -> Client:
    """
    Connect a L{Client} over TCP.
    """
    factory = protocol.Factory.forProtocol(Client)
    if ":" in host:
        endpoint: Any = TCP6ClientEndpoint(reactor, host, port, timeout=WAIT)
    else:
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=WAIT)
    return await timeout(endpoint.connect(factory))  # type: ignore[no-any-return]


async def connectUNIX(path: str) -> Client:
    """
    Connect a L{Client} over a UNIX-domain socket.
    """
    factory = protocol.Factory.forProtocol(Client)
    return await timeout(UNIXClientEndpoint(reactor, path, timeout=WAIT).connect(factory))  # type: ignore[no-any-return]


def hasIPv6Loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needsIPv6 = pytest.mark.skipif(not hasIPv6Loopback(), reason="this host has no IPv6 loopback")


@pytest.fixture
def io() -> IOService:
    """
    A private I/O service, so offline tests never touch the default one.
    """
    return IOService()


@pytest.fixture
def logged() -> Any:
    """
    Collect the log events emitted during the test.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The logged events that carry a failure (unhandled errors).
    """
    return [e for e in events if e.get("log_failure") is not None or e.get("isError")]
