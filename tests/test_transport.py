"""
The accepted connection (C{ISocketTransport}): addresses, opening
streams, close, half-close, isAlive, timeouts, keepalive and
attachProtocol, on real loopback sockets with the real reactor.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_serversock import (
    IAsyncInputStream,
    IAsyncOutputStream,
    INetAddr,
    ISocketTransport,
    NSError,
    ServerSocket,
    results,
)

from twisted_serversock.testing import MemoryConnection, flush

from .conftest import (
    Recorder,
    Served,
    code,
    connectUNIX,
    eventually,
    needsIPv6,
    sleep,
    timeout,
)


pytestmark = pytest.mark.usefixtures("noUnhandledErrors")


def serverBuffered(t: Any) -> int:
    """
    Bytes the server has read from the socket but nobody consumed yet
    (white box: before the input stream is opened there is no public way
    to see them).
    """
    inp = None if t._mode is None else t._mode._input
    return 0 if inp is None else inp._size


# ----------------------------------------------------------------------
# Addresses


@pytest_twisted.ensureDeferred
async def test_hostAndPort(served: Served) -> None:
    client, t = await served.pair()
    local = client.transport.getHost()
    assert t.host == "127.0.0.1"
    assert t.port == local.port
    assert isinstance(t.port, int)


@pytest_twisted.ensureDeferred
async def test_twistedAddresses(served: Served) -> None:
    client, t = await served.pair()
    local = client.transport.getHost()
    assert t.getPeerAddr() == IPv4Address("TCP", "127.0.0.1", local.port)
    assert t.getSelfAddr() == IPv4Address("TCP", "127.0.0.1", served.srv.port)


@pytest_twisted.ensureDeferred
async def test_scriptableAddresses(served: Served) -> None:
    client, t = await served.pair()
    peer = t.getScriptablePeerAddr()
    me = t.getScriptableSelfAddr()
    assert (peer.family, peer.address, peer.port) == (
        1,
        "127.0.0.1",
        client.transport.getHost().port,
    )
    assert peer.family == peer.FAMILY_INET == 1
    assert (me.family, me.address, me.port) == (1, "127.0.0.1", served.srv.port)


@needsIPv6
@pytest_twisted.ensureDeferred
async def test_ipv6Addresses() -> None:
    served = Served(ipv6=True)
    try:
        client, t = await served.pair("::1")
        local = client.transport.getHost()
        assert t.host == "::1"
        assert t.port == local.port
        peer = t.getPeerAddr()
        assert isinstance(peer, IPv6Address)
        assert (peer.host, peer.port) == ("::1", local.port)
        me = t.getSelfAddr()
        assert isinstance(me, IPv6Address)
        assert (me.host, me.port) == ("::1", served.srv.port)
        speer = t.getScriptablePeerAddr()
        assert (speer.family, speer.address, speer.port) == (2, "::1", local.port)
        assert speer.family == speer.FAMILY_INET6
        sme = t.getScriptableSelfAddr()
        assert (sme.family, sme.address, sme.port) == (2, "::1", served.srv.port)
        assert verifyObject(INetAddr, speer)
        # Round trip through the streams works over IPv6 too.
        inp = t.openInputStream()
        out = t.openOutputStream()
        client.transport.write(b"ping6")
        await eventually(lambda: inp.available() == 5)
        assert out.write(inp.read(5)) == 5
        assert await client.waitFor(5) == b"ping6"
    finally:
        await served.cleanup()


# ----------------------------------------------------------------------
# Interfaces


@pytest_twisted.ensureDeferred
async def test_verifyObjects(served: Served) -> None:
    client, t = await served.pair()
    assert verifyObject(ISocketTransport, t)
    assert verifyObject(IAsyncInputStream, t.openInputStream())
    assert verifyObject(IAsyncOutputStream, t.openOutputStream())


@pytest_twisted.ensureDeferred
async def test_verifyScriptableAddr(served: Served) -> None:
    client, t = await served.pair()
    assert verifyObject(INetAddr, t.getScriptablePeerAddr())
    assert verifyObject(INetAddr, t.getScriptableSelfAddr())


# ----------------------------------------------------------------------
# Opening streams


@pytest_twisted.ensureDeferred
async def test_streamsOpenOnce(served: Served) -> None:
    client, t = await served.pair()
    t.openInputStream()
    t.openOutputStream()
    with pytest.raises(NSError) as e:
        t.openInputStream()
    assert code(e) == "NS_ERROR_IN_PROGRESS"
    with pytest.raises(NSError) as e:
        t.openOutputStream()
    assert code(e) == "NS_ERROR_IN_PROGRESS"


@pytest_twisted.ensureDeferred
async def test_openBlockingNotImplemented(served: Served) -> None:
    client, t = await served.pair()
    assert t.OPEN_BLOCKING == 1
    for opener in (t.openInputStream, t.openOutputStream):
        with pytest.raises(NSError) as e:
            opener(t.OPEN_BLOCKING)
        assert code(e) == "NS_ERROR_NOT_IMPLEMENTED"
        with pytest.raises(NSError) as e:
            opener(t.OPEN_BLOCKING | t.OPEN_UNBUFFERED)
        assert code(e) == "NS_ERROR_NOT_IMPLEMENTED"
    # A refused open does not use up the one open each stream has.
    inp = t.openInputStream()
    out = t.openOutputStream()
    assert inp.isNonBlocking() is True
    assert out.isNonBlocking() is True


@pytest_twisted.ensureDeferred
async def test_openUnbuffered(served: Served) -> None:
    client, t = await served.pair()
    assert t.OPEN_UNBUFFERED == 2
    inp = t.openInputStream(t.OPEN_UNBUFFERED)
    out = t.openOutputStream(t.OPEN_UNBUFFERED)
    assert inp.isNonBlocking() and out.isNonBlocking()
    client.transport.write(b"unbuffered")
    await eventually(lambda: inp.available() == 10)
    assert inp.read(100) == b"unbuffered"
    assert out.write(b"reply") == 5
    assert await client.waitFor(5) == b"reply"


@pytest.mark.parametrize(
    "args",
    [(0, -1, 0), (0, 0, -1), (0, "4096", 0), (0, 0, 1.5), (0, None, 0), (0, True, 0)],
)
@pytest_twisted.ensureDeferred
async def test_badSegmentArgs(served: Served, args: tuple[Any, ...]) -> None:
    client, t = await served.pair()
    for opener in (t.openInputStream, t.openOutputStream):
        with pytest.raises(NSError) as e:
            opener(*args)
        assert code(e) == "NS_ERROR_INVALID_ARG"
    # Still openable with good arguments.
    t.openInputStream(0, 1024, 4)
    t.openOutputStream(0, 1024, 4)


# ----------------------------------------------------------------------
# close(reason)


@pytest_twisted.ensureDeferred
async def test_closeSuccessReason(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    notified: defer.Deferred[Any] = defer.Deferred()
    inp.asyncWait(notified.callback)
    t.close(results.NS_OK)
    assert await timeout(notified) is inp
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_BASE_STREAM_CLOSED"
    assert inp.read(10) == b""
    with pytest.raises(NSError) as e:
        out.write(b"late")
    assert code(e) == "NS_BASE_STREAM_CLOSED"
    assert await client.whenClosed() == b""
    assert client.reason.check(ConnectionDone)
    assert not t.isAlive()


@pytest.mark.parametrize("reason", ["NS_ERROR_ABORT", "NS_BINDING_ABORTED", "NS_ERROR_FAILURE"])
@pytest_twisted.ensureDeferred
async def test_closeErrorReason(served: Served, reason: str) -> None:
    client, t = await served.pair()
    status = getattr(results, reason)
    inp = t.openInputStream()
    out = t.openOutputStream()
    client.transport.write(b"unread")
    await eventually(lambda: inp.available() == 6)
    inNotified: defer.Deferred[Any] = defer.Deferred()
    outClosed: defer.Deferred[Any] = defer.Deferred()
    out.asyncWait(outClosed.callback, out.WAIT_CLOSURE_ONLY)
    t.close(status)
    inp.asyncWait(inNotified.callback)
    await timeout(inNotified)
    await timeout(outClosed)
    # Our close drops unread input; both streams report the reason.
    for call in (inp.available, lambda: inp.read(10), lambda: out.write(b"x")):
        with pytest.raises(NSError) as e:
            call()
        assert e.value.result == status
    await client.whenClosed()


@pytest.mark.parametrize("reason", [results.NS_OK, results.NS_ERROR_ABORT])
@pytest_twisted.ensureDeferred
async def test_closeFlushesWrittenBytes(served: Served, reason: int) -> None:
    client, t = await served.pair()
    data = os.urandom(1 << 20)
    out = t.openOutputStream(0, 65536, 32)
    assert out.write(data) == len(data)
    t.close(reason)
    received = await client.whenClosed()
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


@pytest_twisted.ensureDeferred
async def test_closeFlushesAfterPeerStopsReadingForAWhile(served: Served) -> None:
    """
    Bytes written while the peer does not read are still all delivered
    when it reads again after close().
    """
    client, t = await served.pair()
    client.transport.pauseProducing()
    data = os.urandom(3 << 20)
    out = t.openOutputStream(0, 1 << 20, 4)
    assert out.write(data) == len(data)
    t.close(0)
    await sleep(0.1)
    assert client.received == b""
    client.transport.resumeProducing()
    received = await client.whenClosed()
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


@pytest_twisted.ensureDeferred
async def test_closeTwiceKeepsFirstReason(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    t.close(results.NS_ERROR_ABORT)
    t.close(results.NS_OK)
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_ERROR_ABORT"
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_closeBadReason(served: Served) -> None:
    client, t = await served.pair()
    for bad in ("nope", None, -1, 1 << 32, 1.0):
        with pytest.raises(NSError) as e:
            t.close(bad)
        assert code(e) == "NS_ERROR_INVALID_ARG"
    assert t.isAlive()


@pytest_twisted.ensureDeferred
async def test_closeBothStreamsClosesConnection(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    out.write(b"bye")
    inp.close()
    assert not client.closed.called
    out.close()
    assert await client.whenClosed() == b"bye"


@pytest_twisted.ensureDeferred
async def test_closeOutputOnlyShutsDownSending(served: Served) -> None:
    """
    Closing only the output stream half-closes: the peer reads end of
    stream and can still send.
    """
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    out.write(b"last words")
    out.close()
    await eventually(lambda: client.eof)
    assert bytes(client.received) == b"last words"
    # The Client answers end of stream by closing; the input ends cleanly.
    await client.whenClosed()
    await eventually(lambda: not t._tcp.connected)
    assert inp.read(10) == b""
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_BASE_STREAM_CLOSED"


# ----------------------------------------------------------------------
# Half-close by the peer


@pytest_twisted.ensureDeferred
async def test_peerHalfClose(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    client.transport.write(b"request")
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())
    assert inp.available() == 7
    assert inp.read(100) == b"request"
    assert inp.read(100) == b""
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_BASE_STREAM_CLOSED"
    # The output stream is still usable; what is written is delivered.
    assert not client.closed.called
    reply = os.urandom(300_000)
    sent = 0
    while sent < len(reply):
        try:
            sent += out.write(reply[sent:])
        except NSError as e2:
            assert e2.result == results.NS_BASE_STREAM_WOULD_BLOCK
            ready: defer.Deferred[Any] = defer.Deferred()
            out.asyncWait(ready.callback)
            await timeout(ready)
    out.close()
    received = await client.whenClosed()
    assert received == reply
    assert client.reason.check(ConnectionDone)


@pytest_twisted.ensureDeferred
async def test_peerHalfCloseWakesWaiter(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    ready: defer.Deferred[Any] = defer.Deferred()
    inp.asyncWait(ready.callback)
    client.transport.loseWriteConnection()
    assert await timeout(ready) is inp
    assert inp.read(10) == b""
    assert not t.isAlive()


@pytest_twisted.ensureDeferred
async def test_peerHalfCloseBeforeStreamOpened(served: Served) -> None:
    client, t = await served.pair()
    client.transport.write(b"early")
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())
    inp = t.openInputStream()
    out = t.openOutputStream()
    assert inp.read(10) == b"early"
    assert inp.read(10) == b""
    assert out.write(b"late reply") == 10
    out.close()
    assert await client.whenClosed() == b"late reply"


# ----------------------------------------------------------------------
# isAlive


@pytest_twisted.ensureDeferred
async def test_isAliveOnLiveConnection(served: Served) -> None:
    client, t = await served.pair()
    assert t.isAlive() is True
    inp = t.openInputStream()
    client.transport.write(b"x")
    await eventually(lambda: inp.available() == 1)
    assert t.isAlive() is True


@pytest_twisted.ensureDeferred
async def test_isAliveFalseAfterClose(served: Served) -> None:
    client, t = await served.pair()
    t.close(0)
    assert t.isAlive() is False
    await client.whenClosed()
    assert t.isAlive() is False


@pytest_twisted.ensureDeferred
async def test_isAliveFalseAfterPeerClose(served: Served) -> None:
    client, t = await served.pair()
    client.transport.loseConnection()
    await client.whenClosed()
    await eventually(lambda: not t.isAlive())


@pytest_twisted.ensureDeferred
async def test_isAliveFalseAfterPeerReset(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    ready: defer.Deferred[Any] = defer.Deferred()
    inp.asyncWait(ready.callback)
    client.transport.abortConnection()
    await client.whenClosed()
    await timeout(ready)
    assert not t.isAlive()
    with pytest.raises(NSError) as e:
        inp.read(1)
    assert code(e) == "NS_ERROR_NET_RESET"


@pytest_twisted.ensureDeferred
async def test_peerResetClosesBothStreamsBeforeCallbacks(served: Served) -> None:
    """
    When the connection dies, a callback of one stream already sees the
    other closed with the same status.
    """
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    seen: list[Any] = []
    done: defer.Deferred[None] = defer.Deferred()

    def onInput(stream: Any) -> None:
        try:
            out.write(b"into the void")
        except NSError as e:
            seen.append(results.nameOf(e.result))
        else:
            seen.append("written")

    def onOutput(stream: Any) -> None:
        try:
            inp.available()
        except NSError as e:
            seen.append(results.nameOf(e.result))
        else:
            seen.append("open")
        done.callback(None)

    inp.asyncWait(onInput)
    out.asyncWait(onOutput, out.WAIT_CLOSURE_ONLY)
    client.transport.abortConnection()
    await timeout(done)
    assert seen == ["NS_ERROR_NET_RESET", "NS_ERROR_NET_RESET"]


# ----------------------------------------------------------------------
# Timeouts


@pytest_twisted.ensureDeferred
async def test_timeoutDefaults(served: Served) -> None:
    client, t = await served.pair()
    assert t.TIMEOUT_CONNECT == 0
    assert t.TIMEOUT_READ_WRITE == 1
    assert t.getTimeout(t.TIMEOUT_CONNECT) == 0xFFFF
    assert t.getTimeout(t.TIMEOUT_READ_WRITE) == 0xFFFF


@pytest.mark.parametrize("bad", [2, 3, -1, "1", None])
@pytest_twisted.ensureDeferred
async def test_timeoutBadType(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    with pytest.raises(NSError) as e:
        t.getTimeout(bad)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    with pytest.raises(NSError) as e:
        t.setTimeout(bad, 5)
    assert code(e) == "NS_ERROR_INVALID_ARG"


@pytest_twisted.ensureDeferred
async def test_timeoutBadValue(served: Served) -> None:
    client, t = await served.pair()
    for bad in (-1, "5", None, float("nan")):
        with pytest.raises(NSError) as e:
            t.setTimeout(t.TIMEOUT_READ_WRITE, bad)
        assert code(e) == "NS_ERROR_INVALID_ARG"
    assert t.getTimeout(t.TIMEOUT_READ_WRITE) == 0xFFFF


@pytest_twisted.ensureDeferred
async def test_timeoutSetGet(served: Served) -> None:
    client, t = await served.pair()
    t.setTimeout(t.TIMEOUT_CONNECT, 7)
    assert t.getTimeout(t.TIMEOUT_CONNECT) == 7
    assert t.getTimeout(t.TIMEOUT_READ_WRITE) == 0xFFFF
    t.setTimeout(t.TIMEOUT_READ_WRITE, 100000)
    assert t.getTimeout(t.TIMEOUT_READ_WRITE) == 0xFFFF


@pytest_twisted.ensureDeferred
async def test_readWriteTimeoutClosesIdleConnection(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    ready: defer.Deferred[Any] = defer.Deferred()
    inp.asyncWait(ready.callback)
    start = reactor.seconds()
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0.3)
    assert t.getTimeout(t.TIMEOUT_READ_WRITE) == 0.3
    assert await timeout(ready) is inp
    assert reactor.seconds() - start >= 0.29
    for call in (inp.available, lambda: inp.read(1), lambda: out.write(b"x")):
        with pytest.raises(NSError) as e:
            call()
        assert code(e) == "NS_ERROR_NET_TIMEOUT"
    await client.whenClosed()
    assert not t.isAlive()


@pytest_twisted.ensureDeferred
async def test_readWriteTimeoutWithoutStreams(served: Served) -> None:
    client, t = await served.pair()
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0.2)
    await client.whenClosed()
    inp = t.openInputStream()
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_ERROR_NET_TIMEOUT"


def test_activityKeepsConnectionAlive() -> None:
    """
    Bytes read restart the read/write idle timer; once nothing arrives for
    the timeout, the connection is closed with NS_ERROR_NET_TIMEOUT, not
    before.  (The timer runs on the reactor's clock: driven here by a
    Clock, with the real transport and streams; the real-socket timeout is
    tested above.)
    """
    conn = MemoryConnection()
    t = conn.transport
    inp = t.openInputStream()
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0.5)
    for _ in range(12):
        conn.feed(b".")
        conn.clock.advance(0.1)
        assert not conn.closed
    assert t.isAlive()
    assert inp.available() == 12
    # Nothing more: it times out 0.5 s after the last byte, not earlier.
    conn.clock.advance(0.35)
    flush(conn.clock)
    assert not conn.closed
    conn.clock.advance(0.05)
    flush(conn.clock)
    assert conn.aborted
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_ERROR_NET_TIMEOUT"


def test_writingKeepsConnectionAlive() -> None:
    conn = MemoryConnection()
    t = conn.transport
    out = t.openOutputStream()
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0.5)
    for _ in range(12):
        out.write(b".")
        conn.clock.advance(0.1)
        assert not conn.closed
    assert t.isAlive()
    conn.clock.advance(0.4)
    flush(conn.clock)
    assert conn.aborted
    assert conn.written() == b"." * 12


def test_noTimeoutAt0xFFFF() -> None:
    conn = MemoryConnection()
    t = conn.transport
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0.2)
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0xFFFF)
    t.setTimeout(t.TIMEOUT_CONNECT, 0.1)
    conn.clock.advance(100000)
    flush(conn.clock)
    assert not conn.closed
    assert t.isAlive()
    t.setTimeout(t.TIMEOUT_READ_WRITE, 0.1)
    t.setTimeout(t.TIMEOUT_READ_WRITE, 70000)
    assert t.getTimeout(t.TIMEOUT_READ_WRITE) == 0xFFFF
    conn.clock.advance(100000)
    flush(conn.clock)
    assert not conn.closed
    assert t.isAlive()


@pytest_twisted.ensureDeferred
async def test_keepaliveEnabled(served: Served) -> None:
    client, t = await served.pair()
    skt = t._tcp.getHandle()
    t.keepaliveEnabled = True
    assert t.keepaliveEnabled is True
    assert skt.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
    t.keepaliveEnabled = False
    assert t.keepaliveEnabled is False
    assert skt.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


@pytest_twisted.ensureDeferred
async def test_setKeepaliveVals(served: Served) -> None:
    client, t = await served.pair()
    skt = t._tcp.getHandle()
    t.setKeepaliveVals(30, 5)
    assert skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    assert skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5


@pytest.mark.parametrize(
    "vals", [(0, 5), (30, 0), (40000, 5), (30, 40000), (-1, 5), (30, "5"), (1.5, 5), (True, 5)]
)
@pytest_twisted.ensureDeferred
async def test_setKeepaliveValsOutOfRange(served: Served, vals: tuple[Any, Any]) -> None:
    client, t = await served.pair()
    skt = t._tcp.getHandle()
    before = (
        skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    )
    with pytest.raises(NSError) as e:
        t.setKeepaliveVals(*vals)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert before == (
        skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        skt.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    )


@pytest_twisted.ensureDeferred
async def test_peerCredentialsNotForTCP(served: Served) -> None:
    client, t = await served.pair()
    with pytest.raises(NSError) as e:
        t.getPeerCredentials()
    assert code(e) == "NS_ERROR_NOT_AVAILABLE"


# ----------------------------------------------------------------------
# attachProtocol


class Recording(protocol.Protocol):
    """
    A Twisted protocol that records what happens to it.
    """

    def __init__(self) -> None:
        self.transportMade: Any = None
        self.events: list[Any] = []
        self.data = bytearray()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.reason: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transportMade = transport
        self.events.append("makeConnection")
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        self.events.append("connectionMade")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append(("lost", reason.type))
        self.reason = reason
        # (A Failure passed to callback() would become an errback.)
        self.lost.callback(None)


@implementer(IHalfCloseableProtocol)
class HalfCloseRecording(Recording):
    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")
        self.transport.write(b"reply:" + bytes(self.data))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")


@pytest_twisted.ensureDeferred
async def test_attachProtocolGetsRealTransport(served: Served) -> None:
    client, t = await served.pair()
    p = Recording()
    t.attachProtocol(p)
    assert p.transportMade is t._tcp
    assert p.transport is t._tcp
    assert p.events == ["makeConnection", "connectionMade"]
    client.transport.write(b"hello")
    await eventually(lambda: p.data == b"hello")
    p.transport.write(b"world")
    assert await client.waitFor(5) == b"world"
    client.transport.loseConnection()
    await timeout(p.lost)
    assert p.reason.check(ConnectionDone)


@pytest_twisted.ensureDeferred
async def test_attachProtocolEarlyBytesFirstInOrder(served: Served) -> None:
    client, t = await served.pair()
    client.transport.write(b"first,")
    await eventually(lambda: serverBuffered(t) == 6)
    client.transport.write(b"second,")
    await eventually(lambda: serverBuffered(t) == 13)
    p = Recording()
    t.attachProtocol(p)
    assert p.events[:2] == ["makeConnection", "connectionMade"]
    assert p.data == b"first,second,"
    client.transport.write(b"third")
    await eventually(lambda: p.data == b"first,second,third")


@pytest_twisted.ensureDeferred
async def test_attachProtocolAfterBackPressure(served: Served) -> None:
    """
    More than the default input bound arrived before the protocol was
    attached: reading had paused, and it resumes for the protocol.
    """
    client, t = await served.pair()
    data = os.urandom(2 << 20)
    client.transport.write(data)
    client.transport.loseWriteConnection()
    await eventually(lambda: serverBuffered(t) > 0)
    p = HalfCloseRecording()
    t.attachProtocol(p)
    received = await client.whenClosed()
    assert p.data == data
    assert received == b"reply:" + data
    assert p.events[-1] == ("lost", ConnectionDone)


@pytest_twisted.ensureDeferred
async def test_attachProtocolThenStreamsRefused(served: Served) -> None:
    client, t = await served.pair()
    t.attachProtocol(Recording())
    for opener in (t.openInputStream, t.openOutputStream):
        with pytest.raises(NSError) as e:
            opener()
        assert code(e) == "NS_ERROR_IN_PROGRESS"
    with pytest.raises(NSError) as e:
        t.attachProtocol(Recording())
    assert code(e) == "NS_ERROR_IN_PROGRESS"


@pytest.mark.parametrize("which", ["input", "output"])
@pytest_twisted.ensureDeferred
async def test_attachAfterStreamOpenedRefused(served: Served, which: str) -> None:
    client, t = await served.pair()
    if which == "input":
        t.openInputStream()
    else:
        t.openOutputStream()
    p = Recording()
    with pytest.raises(NSError) as e:
        t.attachProtocol(p)
    assert code(e) == "NS_ERROR_IN_PROGRESS"
    assert p.events == []


class OnlyMakeConnection:
    def makeConnection(self, transport: Any) -> None:
        raise AssertionError("must not be called")


@pytest.mark.parametrize("bad", [object(), None, "protocol", Recording, OnlyMakeConnection()])
@pytest_twisted.ensureDeferred
async def test_attachNonProtocol(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    with pytest.raises(NSError) as e:
        t.attachProtocol(bad)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    # Nothing was consumed: a real protocol can still be attached.
    p = Recording()
    t.attachProtocol(p)
    assert p.transport is t._tcp


@pytest_twisted.ensureDeferred
async def test_attachAfterPeerHalfClose(served: Served) -> None:
    client, t = await served.pair()
    client.transport.write(b"question")
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())
    p = HalfCloseRecording()
    t.attachProtocol(p)
    assert await client.whenClosed() == b"reply:question"
    assert p.events[:4] == [
        "makeConnection",
        "connectionMade",
        ("data", b"question"),
        "readConnectionLost",
    ]
    await timeout(p.lost)


@pytest_twisted.ensureDeferred
async def test_attachAfterPeerHalfCloseNotHalfCloseable(served: Served) -> None:
    """
    A protocol that is not half-closeable sees the peer's end of stream as
    the end of the connection, as Twisted does.
    """
    client, t = await served.pair()
    client.transport.write(b"question")
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())
    p = Recording()
    t.attachProtocol(p)
    await timeout(p.lost)
    assert p.reason.check(ConnectionDone)
    assert p.data == b"question"
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_attachAfterCloseRefused(served: Served) -> None:
    client, t = await served.pair()
    t.close(results.NS_ERROR_ABORT)
    with pytest.raises(NSError) as e:
        t.attachProtocol(Recording())
    assert code(e) == "NS_ERROR_ABORT"
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_closeAttached(served: Served) -> None:
    client, t = await served.pair()
    p = Recording()
    t.attachProtocol(p)
    p.transport.write(b"from the protocol")
    t.close(0)
    assert await client.whenClosed() == b"from the protocol"
    await timeout(p.lost)
    assert p.reason.check(ConnectionDone)


@pytest_twisted.ensureDeferred
async def test_attachProtocolMayPauseDuringReplay(served: Served) -> None:
    """
    Reading had paused (more than the default bound arrived before the
    attach); a protocol that pauses the transport while the early bytes are
    replayed stays paused: the hand-over does not resume behind its back.
    """
    client, t = await served.pair()
    data = os.urandom(1 << 20)
    client.transport.write(data)
    await eventually(lambda: serverBuffered(t) > 4096 * 24)
    early = serverBuffered(t)

    class Pausing(Recording):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            self.transport.pauseProducing()

    p = Pausing()
    t.attachProtocol(p)
    assert len(p.data) == early
    await sleep(0.2)
    assert len(p.data) == early
    p.transport.resumeProducing()
    await eventually(lambda: len(p.data) > early)


@pytest_twisted.ensureDeferred
async def test_attachProtocolClosingDuringReplay(served: Served) -> None:
    """
    A protocol that closes the connection from dataReceived gets no more
    replayed data nor the peer's end of stream after it.
    """
    client, t = await served.pair()
    client.transport.write(b"one")
    await eventually(lambda: serverBuffered(t) == 3)
    client.transport.write(b"two")
    await eventually(lambda: serverBuffered(t) == 6)
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())

    @implementer(IHalfCloseableProtocol)
    class Closing(Recording):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            self.transport.loseConnection()

        def readConnectionLost(self) -> None:
            self.events.append("readConnectionLost")

        def writeConnectionLost(self) -> None:
            pass

    p = Closing()
    t.attachProtocol(p)
    await timeout(p.lost)
    assert p.data == b"one"
    assert "readConnectionLost" not in p.events
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_unixConnection(tmp_path: Any) -> None:
    """
    Over a UNIX socket: no TCP options, and the streams (with a peer
    half-close) work as over TCP.
    """
    srv = ServerSocket()
    path = str(tmp_path / "t.sock")
    srv.initWithFilename(path, 0o600, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    client = await connectUNIX(path)
    try:
        t = await rec.nextAccepted()
        assert (t.host, t.port) == ("", 0)
        assert t.keepaliveEnabled is False
        with pytest.raises(NSError) as e:
            t.keepaliveEnabled = True
        assert code(e) == "NS_ERROR_NOT_AVAILABLE"
        with pytest.raises(NSError) as e:
            t.setKeepaliveVals(30, 5)
        assert code(e) == "NS_ERROR_NOT_AVAILABLE"
        assert t.getPeerCredentials() == (os.getpid(), os.getuid(), os.getgid())
        inp = t.openInputStream()
        out = t.openOutputStream()
        client.transport.write(b"question")
        client.transport.loseWriteConnection()
        closed = Waiter()
        inp.asyncWait(closed, inp.WAIT_CLOSURE_ONLY)
        await closed.wait()
        assert not t.isAlive()
        assert inp.read(100) == b"question"
        assert inp.read(100) == b""
        assert out.write(b"answer") == 6
        out.close()
        assert await client.whenClosed() == b"answer"
    finally:
        if client.transport.connected:
            client.transport.abortConnection()
        await client.whenClosed()
        srv.close()
        await rec.whenStopped()


class Waiter:
    def __init__(self) -> None:
        self.fired: defer.Deferred[Any] = defer.Deferred()

    def onInputStreamReady(self, stream: Any) -> None:
        self.fired.callback(stream)

    def wait(self) -> defer.Deferred[Any]:
        return timeout(self.fired)
