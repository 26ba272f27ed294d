"""
The public test doubles of L{twisted_serversock.testing}: each helper does
what its documentation promises, and the fake connection has the real
stream semantics (it is the real L{SocketTransport} over a
C{StringTransport}).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_serversock import results
from twisted_serversock.interfaces import IServerSocket, IServerSocketListener, ISocketTransport
from twisted_serversock.results import NSError
from twisted_serversock.testing import MemoryConnection, MemoryServerSocket, RecordingListener, flush
from twisted_serversock.transport import SocketTransport


def code(call: Any, *args: Any) -> int:
    with pytest.raises(NSError) as e:
        call(*args)
    return e.value.result


def listening() -> tuple[MemoryServerSocket, RecordingListener]:
    serv = MemoryServerSocket(Clock())
    serv.init(8080, True, -1)
    listener = RecordingListener()
    serv.asyncListen(listener)
    return serv, listener


def test_interfaces() -> None:
    assert IServerSocket.providedBy(MemoryServerSocket())
    assert IServerSocketListener.providedBy(RecordingListener())
    conn = MemoryConnection()
    assert type(conn.transport) is SocketTransport
    assert ISocketTransport.providedBy(conn.transport)


def test_initFamilyRecordsTheAddress() -> None:
    serv = MemoryServerSocket()
    assert code(serv.getAddress) == results.NS_ERROR_NOT_INITIALIZED
    assert code(serv.init, 65536, True, -1) == results.NS_ERROR_INVALID_ARG
    serv.init(8080, True, -1)
    assert serv.getAddress() == IPv4Address("TCP", "127.0.0.1", 8080)
    assert serv.port == 8080
    assert serv.backlog is not None and serv.backlog > 0
    assert code(serv.init, 8081, True, -1) == results.NS_ERROR_ALREADY_INITIALIZED
    serv.close()  # before asyncListen: can be initialised again
    serv.initIPv6(0, False, 5)
    address = serv.getAddress()
    assert isinstance(address, IPv6Address) and address.host == "::"
    assert serv.port > 0 and serv.backlog == 5
    other = MemoryServerSocket()
    other.initWithAddress(("::1", 7000), -1)
    assert other.getAddress() == IPv6Address("TCP", "::1", 7000)
    assert code(MemoryServerSocket().initWithAddress, ("localhost", 1), -1) == results.NS_ERROR_INVALID_ARG
    unix = MemoryServerSocket()
    unix.initWithFilename("/run/app.sock", 0o600, -1)
    assert unix.getAddress() == UNIXAddress("/run/app.sock")
    assert code(lambda: unix.port) == results.NS_ERROR_FAILURE
    abstract = MemoryServerSocket()
    abstract.initWithAbstractAddress("app", -1)
    assert abstract.getAddress() == UNIXAddress("\0app")


def test_asyncListenChecksAndCallsNothingInline() -> None:
    serv = MemoryServerSocket()
    listener = RecordingListener()
    assert code(serv.asyncListen, listener) == results.NS_ERROR_NOT_INITIALIZED
    serv.init(0, True, -1)
    assert code(serv.asyncListen, object()) == results.NS_ERROR_INVALID_ARG
    serv.connect()  # waits in the "kernel queue" until asyncListen
    serv.asyncListen(listener)
    assert code(serv.asyncListen, listener) == results.NS_ERROR_IN_PROGRESS
    assert listener.events == []
    serv.flush()
    assert len(listener.accepted) == 1


def test_closeStopsExactlyOnce() -> None:
    serv, listener = listening()
    serv.close()
    serv.close()
    assert listener.stopped == []  # through the reactor, never inside close()
    serv.flush()
    assert listener.stopped == [results.NS_BINDING_ABORTED]
    serv.clock.advance(10)
    assert listener.stopped == [results.NS_BINDING_ABORTED]
    assert code(serv.connect) == results.NS_ERROR_CONNECTION_REFUSED
    # As the real one: closed is not initialised (and can be initialised again).
    assert code(serv.asyncListen, listener) == results.NS_ERROR_NOT_INITIALIZED


def test_connectionsInOrderAndNotAfterStop() -> None:
    serv, listener = listening()
    first, second = serv.connect(), serv.connect()
    assert serv.connections == [first, second]
    serv.flush()
    assert listener.accepted == [first.transport, second.transport]
    late = serv.connect()
    serv.close()
    serv.flush()
    assert [kind for kind, _ in listener.events] == ["accepted", "accepted", "stopped"]
    assert late.closed  # refused: never seen by the listener
    assert late.written() == b"" and late.protocol is None


def test_recordingListenerReacts() -> None:
    seen: list[Any] = []
    serv = MemoryServerSocket()
    serv.init(0, True, -1)
    serv.asyncListen(RecordingListener(lambda s, t: seen.append((s, t))))
    conn = serv.connect()
    serv.flush()
    assert seen == [(serv, conn.transport)]


def test_streamModeReadWriteClose() -> None:
    serv, listener = listening()
    conn = serv.connect(("192.0.2.7", 4321))
    serv.flush()
    [t] = listener.accepted
    assert (t.host, t.port) == ("192.0.2.7", 4321)
    assert t.getSelfAddr() == IPv4Address("TCP", "127.0.0.1", 8080)
    inp = t.openInputStream(0, 0, 0)
    out = t.openOutputStream(0, 0, 0)
    ready: list[Any] = []
    inp.asyncWait(ready.append)
    conn.feed(b"hello")
    assert ready == [inp]  # from the reactor event, as on a real socket
    assert inp.read(100) == b"hello"
    assert code(inp.read, 100) == results.NS_BASE_STREAM_WOULD_BLOCK
    assert out.write(b"world") == 5
    assert conn.written() == b"world"
    assert t.isAlive()
    t.close(results.NS_OK)
    assert not conn.closed
    serv.flush()
    assert conn.closed and not conn.aborted
    assert code(out.write, b"x") == results.NS_BASE_STREAM_CLOSED


def test_feedEndIsAHalfClose() -> None:
    conn = MemoryConnection()
    t = conn.transport
    inp, out = t.openInputStream(0, 0, 0), t.openOutputStream(0, 0, 0)
    conn.feed(b"last")
    conn.feedEnd()
    assert not t.isAlive()
    assert inp.read(100) == b"last"
    assert inp.read(100) == b""
    assert out.write(b"reply") == 5
    out.close()
    flush(conn.clock)
    assert conn.written() == b"reply"
    assert conn.closed


def test_resetFailsBothStreams() -> None:
    conn = MemoryConnection()
    t = conn.transport
    inp, out = t.openInputStream(0, 0, 0), t.openOutputStream(0, 0, 0)
    woken: list[Any] = []
    out.asyncWait(woken.append, out.WAIT_CLOSURE_ONLY)
    conn.reset()
    assert woken == [out]
    assert code(inp.available) == results.NS_ERROR_NET_RESET
    assert code(out.write, b"x") == results.NS_ERROR_NET_RESET


def test_backPressureHoldsFedBytes() -> None:
    conn = MemoryConnection()
    inp = conn.transport.openInputStream(0, 4, 1)
    conn.feed(b"12345")  # past the bound of 4: reading pauses
    conn.feed(b"678")  # held back, as by the kernel
    assert inp.available() == 5
    assert inp.read(5) == b"12345"  # below the bound: reading resumes
    assert inp.read(10) == b"678"


def test_idleTimeoutWithTheClock() -> None:
    conn = MemoryConnection()
    t = conn.transport
    inp = t.openInputStream(0, 0, 0)
    t.setTimeout(t.TIMEOUT_READ_WRITE, 5)
    conn.clock.advance(3)
    conn.feed(b"x")
    conn.clock.advance(3)
    assert not conn.closed
    conn.clock.advance(2)
    flush(conn.clock)
    assert conn.aborted
    assert code(inp.read, 1) == results.NS_ERROR_NET_TIMEOUT
    assert code(inp.available) == results.NS_ERROR_NET_TIMEOUT


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.transport.write(data.upper())  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = ConnectionDone()) -> None:  # type: ignore[assignment]
        self.reason = reason


def test_attachedProtocolIsDrivenDirectly() -> None:
    serv = MemoryServerSocket()
    serv.init(0, True, -1)
    protocols: list[Recorder] = []

    def attach(s: Any, t: Any) -> None:
        protocols.append(Recorder())
        t.attachProtocol(protocols[-1])

    serv.asyncListen(RecordingListener(attach))
    conn, other = serv.connect(), serv.connect()
    serv.flush()
    p, q = protocols
    assert conn.protocol is p and p.transport is not None
    conn.feed(b"abc")
    assert p.data == b"abc" and conn.written() == b"ABC"
    conn.feedEnd()  # not half-closeable: the connection is lost
    flush(serv.clock)
    assert p.reason is not None and p.reason.check(ConnectionDone)
    other.reset()
    assert q.reason is not None and q.reason.check(ConnectionLost)


def test_bytesBeforeAttachAreReplayed() -> None:
    conn = MemoryConnection()
    conn.accept()  # the server socket built it in stream mode
    conn.feed(b"early")
    p = Recorder()
    conn.transport.attachProtocol(p)
    assert p.data == b"early"
    assert conn.protocol is p


def test_unixConnection() -> None:
    serv = MemoryServerSocket()
    serv.initWithFilename("/run/app.sock", 0o600, -1)
    serv.asyncListen(RecordingListener())
    conn = serv.connect()
    conn.accept()
    t = conn.transport
    assert t.host == "" and t.port == 0
    assert t.getPeerCredentials() == (os.getpid(), os.getuid(), os.getgid())
    assert code(lambda: t.setKeepaliveVals(1, 1)) == results.NS_ERROR_NOT_AVAILABLE


def test_flushRunsChains() -> None:
    clock = Clock()
    ran: list[int] = []
    clock.callLater(0, lambda: clock.callLater(0, ran.append, 2))
    clock.callLater(1, ran.append, 3)
    flush(clock)
    assert ran == [2]  # no time passed
    assert clock.seconds() == 0

