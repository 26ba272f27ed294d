"""
The Twisted transport of an accepted connection from a local peer is built
lazily (see L{twisted_serversock.transport}): for the protocol a listener
attaches from C{onSocketAccepted}, else in stream mode.  These tests pin
down that either way the connection behaves as before, on real sockets.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, tcp
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from twisted_serversock import NSError, ServerSocket, results
from twisted_serversock._accepted import AcceptedSocket

from .conftest import connect, connectUNIX, eventually, needsIPv6, timeout


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Listener:
    """
    A listener that runs C{react(transport)} in C{onSocketAccepted} and
    records what it saw: the peer address and whether the Twisted
    transport existed yet.
    """

    def __init__(self, react: Any) -> None:
        self.react = react
        self.seen: list[tuple[Any, bool]] = []
        self.accepted: defer.DeferredQueue[Any] = defer.DeferredQueue()

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        self.seen.append((transport.getPeerAddr(), transport._twisted is not None))
        try:
            self.react(transport)
        finally:
            # Last: put() may resume the waiting test right here.
            self.accepted.put(transport)

    def onStopListening(self, serv: Any, status: int) -> None:
        pass


def attachEcho(transport: Any) -> None:
    transport.attachProtocol(Echo())


@pytest.fixture
def accept() -> Any:
    """
    C{await accept(react, where)}: a server socket on C{where} (C{"ipv4"},
    C{"ipv6"} or a UNIX socket path) whose listener runs C{react(transport)}
    in C{onSocketAccepted}, and one client connected to it; returns
    C{(client, transport, listener)}.  The server sockets are closed after
    the test.
    """
    made: list[ServerSocket] = []

    async def accept(react: Any, where: str = "ipv4") -> tuple[Any, Any, Listener]:
        listener = Listener(react)
        srv = ServerSocket()
        made.append(srv)
        if where == "ipv4":
            srv.init(-1, True, -1)
        elif where == "ipv6":
            srv.initIPv6(-1, True, -1)
        else:
            srv.initWithFilename(where, 0o600, -1)
        srv.asyncListen(listener)
        if where == "ipv4":
            client = await connect(srv.port)
        elif where == "ipv6":
            client = await connect(srv.port, "::1")
        else:
            client = await connectUNIX(where)
        transport = await timeout(listener.accepted.get())
        return client, transport, listener

    yield accept
    for s in made:
        s.close()


async def roundTrip(client: Any, data: bytes = b"ping") -> None:
    client.transport.write(data)
    assert await client.waitFor(len(data)) == data
    client.transport.loseConnection()
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_attachInCallbackBuildsForTheProtocol(accept: Any) -> None:
    """
    Attached from C{onSocketAccepted}: the Twisted transport is built for
    the protocol itself - its repr and log prefix name the protocol - and
    the peer address given before it existed is the one it reports.
    """
    client, t, listener = await accept(attachEcho)
    address, builtBefore = listener.seen[0]
    assert not builtBefore
    tcpTransport = t._tcp
    assert isinstance(tcpTransport, tcp.Server)
    assert isinstance(tcpTransport.protocol, Echo)
    assert tcpTransport.protocol.transport is tcpTransport
    assert repr(tcpTransport).startswith("<Echo #")
    assert tcpTransport.logstr.startswith("Echo,")
    assert address == tcpTransport.getPeer() == t.getPeerAddr()
    await roundTrip(client)


@needsIPv6
@pytest_twisted.ensureDeferred
async def test_peerAddressBeforeBuildIPv6(accept: Any) -> None:
    client, t, listener = await accept(attachEcho, "ipv6")
    address, builtBefore = listener.seen[0]
    assert not builtBefore
    assert address == t._tcp.getPeer()
    assert address.host == "::1"
    await roundTrip(client)


@pytest_twisted.ensureDeferred
async def test_peerAddressBeforeBuildUNIX(accept: Any, tmp_path: Any) -> None:
    client, t, listener = await accept(attachEcho, os.path.join(str(tmp_path), "s"))
    address, builtBefore = listener.seen[0]
    assert not builtBefore
    assert address == t._tcp.getPeer()
    assert repr(t._tcp).startswith("<Echo #")
    await roundTrip(client)


@pytest_twisted.ensureDeferred
async def test_untouchedConnectionIsStreamMode(accept: Any) -> None:
    """
    A listener that only keeps the transport gets a stream-mode connection
    once C{onSocketAccepted} returns: bytes that arrive before it opens the
    input stream are waiting there.
    """
    client, t, listener = await accept(lambda t: None)
    assert t._twisted is not None and t._twisted.protocol is t._mode
    client.transport.write(b"early")
    await eventually(lambda: t._mode._input is not None and t._mode._input._size == 5)
    inp = t.openInputStream(0, 0, 0)
    assert inp.read(100) == b"early"
    out = t.openOutputStream(0, 0, 0)
    assert out.write(b"late") == 4
    t.close(results.NS_OK)
    assert await client.whenClosed() == b"late"


@pytest_twisted.ensureDeferred
async def test_usedInCallbackIsStreamMode(accept: Any) -> None:
    """
    A listener that uses the connection in C{onSocketAccepted} (here: writes
    to its output stream) builds it in stream mode at that moment; a later
    attachProtocol is refused as before.
    """

    def write(t: Any) -> None:
        assert t._twisted is None
        t.openOutputStream(0, 0, 0).write(b"hello")
        assert t._twisted is not None

    client, t, _ = await accept(write)
    assert await client.waitFor(5) == b"hello"
    with pytest.raises(NSError) as e:
        t.attachProtocol(Echo())
    assert e.value.result == results.NS_ERROR_IN_PROGRESS
    t.close(results.NS_OK)
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_listenerThatRaisesStillGetsTheConnection(accept: Any, logged: Any) -> None:
    """
    A listener that raises in C{onSocketAccepted}: the error is logged and
    the connection is still there, in stream mode.
    """

    def fail(t: Any) -> None:
        raise RuntimeError("boom")

    client, t, _ = await accept(fail)
    assert t._twisted is not None and t._twisted.protocol is t._mode
    assert any("onSocketAccepted" in str(e.get("log_format", "")) for e in logged)
    out = t.openOutputStream(0, 0, 0)
    out.write(b"still here")
    t.close(results.NS_OK)
    assert await client.whenClosed() == b"still here"


@pytest_twisted.ensureDeferred
async def test_reprBeforeBuild(accept: Any) -> None:
    reprs: list[str] = []

    def look(t: Any) -> None:
        reprs.append(repr(t))
        attachEcho(t)

    client, _, _ = await accept(look)
    assert reprs[0].startswith("<SocketTransport accepted from ('127.0.0.1', ")
    await roundTrip(client)


class _Port:
    sessionno = 7


def test_acceptedSocketContract() -> None:
    """
    L{AcceptedSocket} (what the server socket hands a L{SocketTransport}):
    only a build takes a session number; a second build, or one after
    close(), is refused with NS_ERROR_FAILURE; a build that raises closes
    the socket; close() closes a pending socket only; the peer's address
    needs no build.  (A value object: real sockets, no reactor.)
    """
    built: list[tuple[Any, ...]] = []

    def build(*args: Any) -> str:
        built.append(args)
        return "transport"

    port = _Port()
    a, b = socket.socketpair()
    b.close()
    accepted = AcceptedSocket(build, a, ("::1", 80, 0, 0), port, "reactor")
    assert accepted.pending and accepted.socket is a and accepted.port is port
    assert accepted.peerAddress() == IPv6Address("TCP", "::1", 80, 0, 0)
    assert accepted.build("protocol") == "transport"
    assert built == [(a, "protocol", ("::1", 80, 0, 0), port, 7, "reactor")]
    assert port.sessionno == 8 and not accepted.pending
    with pytest.raises(NSError) as e:
        accepted.build("again")
    assert e.value.result == results.NS_ERROR_FAILURE
    accepted.close()  # built: the transport owns the socket now
    assert a.fileno() != -1
    a.close()

    c, d = socket.socketpair()
    d.close()

    def broken(*args: Any) -> Any:
        raise RuntimeError("no transport")

    failing = AcceptedSocket(broken, c, ("127.0.0.1", 1), port, None)
    assert failing.peerAddress() == IPv4Address("TCP", "127.0.0.1", 1)
    with pytest.raises(RuntimeError):
        failing.build("protocol")
    assert c.fileno() == -1 and port.sessionno == 9

    u, f = socket.socketpair(socket.AF_UNIX)
    f.close()
    refused = AcceptedSocket(broken, u, "", port, None)
    assert refused.peerAddress() == UNIXAddress(None)
    refused.close()
    assert u.fileno() == -1 and not refused.pending and port.sessionno == 9
    with pytest.raises(NSError):
        refused.build("protocol")
