"""
Hardening: slow and hostile peers.

  - 200 clients dribbling one byte a second do not delay a normal client,
    and once they stall the read/write timeout closes every one of them;
  - many peers half-closing at once each get everything echoed before the
    close;
  - peers that reset the connection in the middle of a large write, and a
    peer that never reads (write back-pressure), are handled without an
    unhandled error, without unbounded buffering, and without disturbing
    anyone else.

Each case runs through C{ServerSocket} with Gecko streams and, where a
Twisted protocol makes a difference, through a C{gecko:} endpoint.  The
single-connection versions of these rules are in C{test_transport.py}
(C{test_peerHalfClose}, C{test_isAliveFalseAfterPeerReset},
C{test_readWriteTimeoutClosesIdleConnection}, ...) and C{test_streams.py}
(C{test_outputBackPressure}); these are the same under load.
"""

from __future__ import annotations

import select
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from twisted_serversock import NSError, ServerSocket, results

from .conftest import Client, connect, eventually, theReactor, timeout
from .soak.echoserver import StreamEchoListener

pytestmark = pytest.mark.usefixtures("noUnhandledErrors")


async def roundTrip(port: int, size: int = 1024) -> None:
    """
    Connect, send C{size} bytes, wait for their echo, close.
    """
    c = await connect(port)
    payload = bytes(range(256)) * (size // 256)
    c.transport.write(payload)
    assert await c.waitFor(len(payload)) == payload
    c.transport.loseConnection()
    await c.whenClosed()


async def many(n: int, port: int) -> list[Client]:
    return list(await defer.gatherResults([defer.ensureDeferred(connect(port)) for _ in range(n)]))


# ----------------------------------------------------------------------
# Slow peers


@pytest_twisted.ensureDeferred
async def test_slowPeersDoNotDelayOthersAndTimeOut(io: Any) -> None:
    """
    200 clients each send one byte a second for three seconds and then go
    quiet, on a server whose read/write timeout is 1.5 s.  While they
    dribble, a normal client is served between two of their bytes (a
    server that waited for slow peers would serve it only after their next
    byte) and no slow client is cut off (each byte is activity); once they
    stall, the timeout closes every one of them, none before it is due.
    """
    rwTimeout = 1.5
    srv = ServerSocket(ioService=io)
    srv.init(-1, True, -1)
    listener = StreamEchoListener(timeout=rwTimeout)
    srv.asyncListen(listener)
    try:
        slow = await many(200, srv.port)
        await eventually(lambda: len(listener.echoes) == 200)
        ticks: defer.DeferredQueue[int] = defer.DeferredQueue()
        sent = 0
        #: How many of the slow connections the server still had open just
        #: before their timeout could first be due.
        aliveBeforeDue: list[int] = []

        def justBeforeDue() -> None:
            aliveBeforeDue.append(sum(e.transport.isAlive() for e in listener.echoes[:200]))

        def dribble() -> None:
            nonlocal sent
            for c in slow:
                c.transport.write(b"x")
            sent += 1
            if sent == 4:
                # The server's timers for these connections restart when
                # it reads this byte, after this call: this one is due
                # earlier, so the reactor runs it first however late.
                theReactor().callLater(rwTimeout - 0.1, justBeforeDue)
            ticks.put(sent)

        loop = task.LoopingCall(dribble)
        loop.clock = theReactor()
        done = loop.start(1.0)
        for tick in (1, 2, 3):
            assert await timeout(ticks.get()) == tick
            await roundTrip(srv.port)
            assert sent == tick, "the normal client was served only after the slow peers' next byte"
        assert await timeout(ticks.get()) == 4
        loop.stop()
        await timeout(done)
        assert not any(c.closed.called for c in slow), "a dribbling client was cut off"
        await defer.gatherResults([c.waitFor(4) for c in slow])  # every byte echoed: t = 0, 1, 2, 3
        # Stalled: closed by the read/write timeout, not before it is due.
        await defer.gatherResults([c.whenClosed() for c in slow])
        assert aliveBeforeDue == [200]
        for echo in listener.echoes[:200]:
            with pytest.raises(NSError) as e:
                echo.inp.available()
            assert e.value.result == results.NS_ERROR_NET_TIMEOUT
        # The listener is unaffected.
        await roundTrip(srv.port)
    finally:
        srv.close()


# ----------------------------------------------------------------------
# Half-closing peers


@implementer(IHalfCloseableProtocol)
class HalfCloseableEcho(protocol.Protocol):
    """
    Echo, and close once the peer has finished sending.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


async def _listen(kind: str, io: Any, factory: Any = None) -> tuple[int, Any]:
    """
    Listen with stream echo (C{"streams"}) or through a C{gecko:} endpoint
    with C{factory}; return the port and a closer.
    """
    if kind == "streams":
        srv = ServerSocket(ioService=io)
        srv.init(-1, True, -1)
        srv.asyncListen(StreamEchoListener())
        return srv.port, srv.close
    port = await timeout(serverFromString(theReactor(), "gecko:port=0:loopback=1").listen(factory))
    return port.getHost().port, port.stopListening


@pytest.mark.parametrize("kind", ["streams", "gecko"])
@pytest_twisted.ensureDeferred
async def test_manyHalfClosedPeers(io: Any, kind: str) -> None:
    """
    100 clients each send 64 KiB and shut down their sending side at once:
    every one gets all of it back, then the close.
    """
    port, close = await _listen(kind, io, protocol.Factory.forProtocol(HalfCloseableEcho))
    try:
        clients = await many(100, port)
        payloads = [bytes([i]) * 65536 for i in range(100)]
        for c, p in zip(clients, payloads):
            c.transport.write(p)
            c.transport.loseWriteConnection()
        received = await defer.gatherResults([c.whenClosed() for c in clients])
        assert received == payloads
        assert all(c.eof for c in clients)
        await roundTrip(port)  # and it serves on
    finally:
        await timeout(defer.maybeDeferred(close))


# ----------------------------------------------------------------------
# Resets in the middle of a write, and peers that never read


class Blaster:
    """
    An C{nsIServerSocketListener} that writes endlessly to every connection
    through its output stream, waiting whenever the stream is full, and
    records how each ended.

    @ivar written: bytes the output stream accepted, per connection.
    @ivar ended: the status each connection's writing ended with.
    """

    chunk = b"z" * 65536

    def __init__(self, rwTimeout: float | None = None) -> None:
        self.rwTimeout = rwTimeout
        self.written: list[int] = []
        self.ended: list[int | None] = []
        self.waiting: list[bool] = []
        self.transports: list[Any] = []

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        i = len(self.written)
        self.written.append(0)
        self.ended.append(None)
        self.waiting.append(False)
        self.transports.append(transport)
        if self.rwTimeout is not None:
            transport.setTimeout(transport.TIMEOUT_READ_WRITE, self.rwTimeout)
        out = transport.openOutputStream(0, 0, 0)

        def ready(stream: Any) -> None:
            self.waiting[i] = False
            while True:
                try:
                    self.written[i] += stream.write(self.chunk)
                except NSError as e:
                    if e.result == results.NS_BASE_STREAM_WOULD_BLOCK:
                        self.waiting[i] = True
                        stream.asyncWait(ready)
                    else:
                        self.ended[i] = e.result
                        transport.close(e.result)
                    return

        ready(out)

    def onStopListening(self, serv: Any, status: int) -> None:
        pass


class Blasted(protocol.Protocol):
    """
    A Twisted protocol that writes endlessly, as a producer that pauses
    under back-pressure (the C{gecko:} endpoint's counterpart of
    L{Blaster}).
    """

    chunk = b"z" * 65536

    def connectionMade(self) -> None:
        self.factory.protocols.append(self)  # type: ignore[attr-defined]
        self.written = 0
        self.paused = False
        self.lost: Any = None
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.lost is None:
            self.transport.write(self.chunk)
            self.written += len(self.chunk)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class Reader(protocol.Protocol):
    """
    A client that resets the connection (RST) after reading C{limit} bytes.
    """

    limit = 200_000

    def connectionMade(self) -> None:
        self.received = 0
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.limit and not self.done.called:
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


async def resetters(port: int, n: int) -> list[Reader]:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    endpoint = TCP4ClientEndpoint(theReactor(), "127.0.0.1", port)
    factory = protocol.Factory.forProtocol(Reader)
    return list(await defer.gatherResults([timeout(endpoint.connect(factory)) for _ in range(n)]))


@pytest_twisted.ensureDeferred
async def test_resetMidWriteStreams(io: Any) -> None:
    """
    30 peers reset their connection while the server is writing to them:
    each connection ends with a network error reported through the stream,
    nothing is logged as unhandled, and the listener serves on.
    """
    srv = ServerSocket(ioService=io)
    srv.init(-1, True, -1)
    blaster = Blaster()
    srv.asyncListen(blaster)
    try:
        readers = await resetters(srv.port, 30)
        await defer.gatherResults([timeout(r.done) for r in readers])
        await eventually(lambda: len(blaster.ended) == 30 and None not in blaster.ended)
        assert set(blaster.ended) <= {results.NS_ERROR_NET_RESET, results.NS_BASE_STREAM_CLOSED}, [
            results.nameOf(s) for s in blaster.ended if s is not None
        ]
        assert results.NS_ERROR_NET_RESET in blaster.ended
        assert not any(t.isAlive() for t in blaster.transports)
    finally:
        srv.close()


@pytest_twisted.ensureDeferred
async def test_resetMidWriteGecko() -> None:
    factory = protocol.Factory.forProtocol(Blasted)
    factory.protocols = []  # type: ignore[attr-defined]
    port = await timeout(serverFromString(theReactor(), "gecko:port=0:loopback=1").listen(factory))
    try:
        readers = await resetters(port.getHost().port, 30)
        await defer.gatherResults([timeout(r.done) for r in readers])
        await eventually(lambda: len(factory.protocols) == 30 and all(p.lost is not None for p in factory.protocols))  # type: ignore[attr-defined]
    finally:
        await timeout(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_peerThatNeverReads(io: Any) -> None:
    """
    A peer that never reads: the server's output stream fills (kernel
    buffers plus the stream's bounded buffer), then says WOULD_BLOCK and
    waits - memory stays bounded and others are served meanwhile - until
    the read/write timeout ends the connection.  That timeout is itself
    the proof that writing stopped for good: it fires only after a whole
    second without a successful write.
    """
    srv = ServerSocket(ioService=io)
    srv.init(-1, True, -1)
    blaster = Blaster(rwTimeout=1.0)
    srv.asyncListen(blaster)
    try:
        sink = await connect(srv.port)
        sink.transport.pauseProducing()  # never read
        await eventually(lambda: blaster.waiting and blaster.waiting[0])
        echo = ServerSocket(ioService=io)
        echo.init(-1, True, -1)
        echo.asyncListen(StreamEchoListener())
        try:
            await roundTrip(echo.port)
        finally:
            echo.close()
        # The kernel's buffers take a few MiB first; then it stops for good.
        await eventually(lambda: blaster.ended[0] is not None)
        assert blaster.ended[0] == results.NS_ERROR_NET_TIMEOUT
        assert blaster.written[0] < 32 * 1024 * 1024
        assert not blaster.transports[0].isAlive()
        sink.transport.resumeProducing()
        await sink.whenClosed()
    finally:
        srv.close()


@pytest_twisted.ensureDeferred
async def test_peerThatNeverReadsGecko() -> None:
    """
    Through a C{gecko:} endpoint: the protocol's producer is paused by
    Twisted's back-pressure (what was written stays bounded) and other
    connections are served meanwhile.
    """
    factory = protocol.Factory.forProtocol(Blasted)
    factory.protocols = []  # type: ignore[attr-defined]
    port = await timeout(serverFromString(theReactor(), "gecko:port=0:loopback=1").listen(factory))
    try:
        sink = await connect(port.getHost().port)
        sink.transport.pauseProducing()
        await eventually(lambda: factory.protocols and factory.protocols[0].paused)  # type: ignore[attr-defined]
        blasted = factory.protocols[0]  # type: ignore[attr-defined]
        # The kernel's buffers take a few MiB first; then it stops for good:
        # the producer paused and the socket not writable (the send queue
        # full, and the peer's window shut as it never reads).
        handle = blasted.transport.getHandle()
        await eventually(lambda: blasted.paused and not select.select([], [handle], [], 0)[1])
        assert blasted.written < 32 * 1024 * 1024
        other = await connect(port.getHost().port)
        await eventually(lambda: len(factory.protocols) == 2)  # type: ignore[attr-defined]
        assert await other.waitFor(65536)
        other.transport.abortConnection()
        sink.transport.abortConnection()
        await eventually(lambda: all(p.lost is not None for p in factory.protocols))  # type: ignore[attr-defined]
    finally:
        await timeout(port.stopListening())
