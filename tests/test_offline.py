"""
The offline switch of the I/O service.  Which listeners and connections survive going
offline is exactly Gecko's rule: local (loopback-bound or UNIX) or
KeepWhenOffline listeners, and connections from local peers.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.error import ConnectError

import twisted_serversock
from twisted_serversock import IOService, NSError, ServerSocket, results

from .conftest import Recorder, connect, eventually, needsIPv6


def listening(servers: Any, init: Any) -> tuple[ServerSocket, Recorder]:
    srv = servers()
    init(srv)
    rec = Recorder()
    srv.asyncListen(rec)
    return srv, rec


async def assertStillListening(srv: ServerSocket, rec: Recorder) -> None:
    """
    Going offline left C{srv} listening: a new client is accepted, and no
    onStopListening came first (one queued on going offline would have been
    delivered before the connection's: both go through the reactor, the
    stop first).
    """
    client = await connect(srv.port)
    await rec.nextAccepted()
    assert rec.statuses == []
    client.transport.loseConnection()


def test_defaultService() -> None:
    assert isinstance(twisted_serversock.ioService, IOService)
    assert ServerSocket()._ioService is twisted_serversock.ioService
    assert twisted_serversock.ioService.offline is False


def test_registry() -> None:
    """
    The service is a registry: a registered callback runs on going offline
    until its handle unregisters it (any number of times); a watched object
    is held weakly and gets its callback while it lives.
    """
    io = IOService()
    calls: list[Any] = []
    unregister = io.register(lambda: calls.append("gone"))
    io.register(lambda: calls.append("registered"))
    unregister()
    unregister()

    class Connection:
        pass

    kept, dropped = Connection(), Connection()
    io.watch(kept, calls.append)
    io.watch(dropped, calls.append)
    del dropped
    gc.collect()
    io.offline = True
    assert calls == ["registered", kept]
    io.offline = False
    io.offline = True  # still registered: called again on the next switch
    assert calls == ["registered", kept, "registered", kept]


@pytest_twisted.ensureDeferred
async def test_wildcardListenerClosed(servers: Any, io: IOService) -> None:
    srv, rec = listening(servers, lambda s: s.init(-1, False, -1))
    port = srv.port
    io.offline = True
    assert rec.statuses == []  # delivered by the reactor, not inside the setter
    assert await rec.whenStopped() == results.NS_ERROR_ABORT
    with pytest.raises(ConnectError):
        await connect(port)
    # Going back online reopens nothing (the connect takes reactor turns:
    # anything going online scheduled has run by its end).
    io.offline = False
    with pytest.raises(ConnectError):
        await connect(port)
    assert rec.statuses == [results.NS_ERROR_ABORT]


@pytest.mark.parametrize(
    "init",
    [
        pytest.param(lambda s: s.init(-1, True, -1), id="loopback"),
        pytest.param(lambda s: s.initSpecialConnection(-1, ServerSocket.LoopbackOnly, -1), id="LoopbackOnly"),
        pytest.param(lambda s: s.initSpecialConnection(-1, ServerSocket.KeepWhenOffline, -1), id="KeepWhenOffline"),
        pytest.param(lambda s: s.initWithAddress(("127.0.0.1", 0), -1), id="address-127.0.0.1"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_survivors(servers: Any, io: IOService, init: Any) -> None:
    srv, rec = listening(servers, init)
    io.offline = True
    await assertStillListening(srv, rec)


@needsIPv6
@pytest_twisted.ensureDeferred
async def test_ipv6LoopbackSurvives(servers: Any, io: IOService) -> None:
    srv, rec = listening(servers, lambda s: s.initIPv6(-1, True, -1))
    io.offline = True
    client = await connect(srv.port, "::1")
    await rec.nextAccepted()
    assert rec.statuses == []
    client.transport.loseConnection()


@pytest.mark.parametrize(
    "init",
    [
        pytest.param(lambda s: s.initWithAddress(("127.0.0.2", 0), -1), id="127.0.0.2-is-not-exactly-loopback"),
        pytest.param(lambda s: s.initIPv6(-1, False, -1), id="ipv6-any", marks=needsIPv6),
        pytest.param(lambda s: s.initDualStack(-1, -1), id="dualstack", marks=needsIPv6),
    ],
)
@pytest_twisted.ensureDeferred
async def test_nonLocalListenersClosed(servers: Any, io: IOService, init: Any) -> None:
    srv, rec = listening(servers, init)
    io.offline = True
    assert await rec.whenStopped() == results.NS_ERROR_ABORT


@pytest_twisted.ensureDeferred
async def test_boundNotListeningClosedSilently(servers: Any, io: IOService) -> None:
    srv = servers()
    srv.init(-1, False, -1)
    io.offline = True
    with pytest.raises(NSError) as e:
        srv.asyncListen(Recorder())
    assert e.value.result == results.NS_ERROR_NOT_INITIALIZED


@pytest.mark.parametrize(
    "init,allowed",
    [
        (lambda s: s.init(-1, False, -1), False),
        (lambda s: s.init(-1, True, -1), True),
        (lambda s: s.initSpecialConnection(-1, ServerSocket.KeepWhenOffline, -1), True),
        (lambda s: s.initSpecialConnection(-1, 0, -1), False),
        (lambda s: s.initWithAddress(("127.0.0.1", 0), -1), True),
        (lambda s: s.initWithAddress(("127.0.0.2", 0), -1), False),
    ],
)
def test_initWhileOffline(servers: Any, io: IOService, init: Any, allowed: bool) -> None:
    io.offline = True
    srv = servers()
    if allowed:
        init(srv)
        assert srv.port > 0
    else:
        with pytest.raises(NSError) as e:
            init(srv)
        assert e.value.result == results.NS_ERROR_OFFLINE
        assert "offline" in str(e.value)


@needsIPv6
@pytest.mark.parametrize(
    "init,allowed",
    [
        (lambda s: s.initIPv6(-1, True, -1), True),
        (lambda s: s.initIPv6(-1, False, -1), False),
        (lambda s: s.initDualStack(-1, -1), False),
    ],
)
def test_initIPv6WhileOffline(servers: Any, io: IOService, init: Any, allowed: bool) -> None:
    io.offline = True
    srv = servers()
    if allowed:
        init(srv)
    else:
        with pytest.raises(NSError) as e:
            init(srv)
        assert e.value.result == results.NS_ERROR_OFFLINE


@pytest_twisted.ensureDeferred
async def test_otherServiceUntouched(servers: Any, io: IOService) -> None:
    other = IOService()
    srv = servers(ioService=other)
    srv.init(-1, False, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    io.offline = True
    await assertStillListening(srv, rec)


@pytest_twisted.ensureDeferred
async def test_loopbackConnectionContinues(servers: Any, io: IOService) -> None:
    """
    A wildcard listener is closed, but its connection from a loopback peer
    is local and carries on in both directions.
    """
    srv, rec = listening(servers, lambda s: s.init(-1, False, -1))
    client = await connect(srv.port)
    transport = await rec.nextAccepted()
    inp = transport.openInputStream(0, 0, 0)
    out = transport.openOutputStream(0, 0, 0)
    io.offline = True
    assert await rec.whenStopped() == results.NS_ERROR_ABORT
    out.write(b"still here")
    assert await client.waitFor(10) == b"still here"
    client.transport.write(b"me too")
    await eventually(lambda: inp.available() == 6)
    assert inp.read(6) == b"me too"
    assert transport.isAlive()
    transport.close(0)
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_foreignConnectionClosed(servers: Any, io: IOService, foreignHost: Any) -> None:
    """
    A connection from a peer that is not local is closed when going
    offline; its streams report NS_ERROR_OFFLINE.
    """
    srv, rec = listening(servers, lambda s: s.init(-1, False, -1))
    foreign = await foreignHost.connect(srv.port)
    transport = await rec.nextAccepted()
    assert transport.host == foreignHost.clientIP
    local = await connect(srv.port)
    localTransport = await rec.nextAccepted()
    inp = transport.openInputStream(0, 0, 0)
    out = transport.openOutputStream(0, 0, 0)
    woken: list[Any] = []
    inp.asyncWait(woken.append)

    io.offline = True
    await eventually(lambda: woken == [inp])
    for call in (inp.available, lambda: inp.read(10), lambda: out.write(b"x")):
        with pytest.raises(NSError) as e:
            call()
        assert e.value.result == results.NS_ERROR_OFFLINE
    assert not transport.isAlive()
    foreign.send("hello")
    assert (await foreign.nextLine()).split()[0] in ("eof", "error")
    # The loopback connection of the same listener is untouched.
    assert localTransport.isAlive()
    foreign.send("close")
    local.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_foreignFlushingConnectionAborted(servers: Any, io: IOService, foreignHost: Any) -> None:
    """
    A connection to a non-local peer that is still flushing after close()
    (the peer does not read) is aborted when going offline.
    """
    srv, rec = listening(servers, lambda s: s.initSpecialConnection(-1, ServerSocket.KeepWhenOffline, -1))
    foreign = await foreignHost.connect(srv.port)
    transport = await rec.nextAccepted()
    out = transport.openOutputStream(0, 1024 * 1024, 64)
    written = 0
    while written < 16 * 1024 * 1024:
        try:
            written += out.write(b"x" * 65536)
        except NSError:
            break
    tcp = transport._tcp
    transport.close(0)
    assert tcp.connected and tcp.disconnecting  # flushing to a peer that does not read
    io.offline = True
    await eventually(lambda: not tcp.connected)
    foreign.send("close")


@pytest_twisted.ensureDeferred
async def test_foreignAttachedConnectionClosed(servers: Any, io: IOService, foreignHost: Any) -> None:
    """
    The rule holds for a connection handed to a Twisted protocol too.
    """
    srv, rec = listening(servers, lambda s: s.initSpecialConnection(-1, ServerSocket.KeepWhenOffline, -1))
    foreign = await foreignHost.connect(srv.port)
    transport = await rec.nextAccepted()
    lost: list[Any] = []

    class P(protocol.Protocol):
        def connectionLost(self, reason: Any) -> None:
            lost.append(reason)

    transport.attachProtocol(P())
    io.offline = True
    await eventually(lambda: len(lost) == 1)
    # The KeepWhenOffline listener itself stays.
    assert rec.statuses == []
    foreign.send("close")


class _AttachingListener:
    """
    Attaches a protocol from C{onSocketAccepted}, as the gecko endpoints
    do; optionally takes the I/O service offline right after.
    """

    def __init__(self, io: IOService, goOffline: str) -> None:
        self.io = io
        self.goOffline = goOffline
        self.lost: list[Any] = []
        self.made: list[Any] = []
        self.refused: list[Any] = []

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        listener = self
        if self.goOffline == "beforeAttach":
            self.io.offline = True
            self.refused.append(transport.isAlive())
            try:
                transport.attachProtocol(protocol.Protocol())
            except NSError as e:
                self.refused.append(e.result)
            return

        class P(protocol.Protocol):
            def connectionMade(self) -> None:
                # Whether the transport was built for this protocol itself,
                # as Twisted's own port builds it (read now: a transport
                # forgets its protocol once the connection is lost).
                listener.made.append(self.transport.protocol is self)

            def connectionLost(self, reason: Any) -> None:
                listener.lost.append(reason)

        transport.attachProtocol(P())
        if self.goOffline == "afterAttach":
            self.io.offline = True

    def onStopListening(self, serv: Any, status: int) -> None:
        pass


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("when", ["later", "afterAttach"])
async def test_foreignConnectionAttachedInCallbackClosed(
    servers: Any, io: IOService, foreignHost: Any, when: str
) -> None:
    """
    A connection from a peer that is not local, handed to a protocol inside
    C{onSocketAccepted} (the endpoints' way: its transport is built once,
    for that protocol), is closed on going offline - also when the listener
    itself takes the service offline from that very callback.
    """
    srv = servers()
    srv.initSpecialConnection(-1, ServerSocket.KeepWhenOffline, -1)
    listener = _AttachingListener(io, goOffline=when)
    srv.asyncListen(listener)
    foreign = await foreignHost.connect(srv.port)
    await eventually(lambda: len(listener.made) == 1)
    assert listener.made == [True]
    if when == "later":
        assert listener.lost == []
        io.offline = True
    await eventually(lambda: len(listener.lost) == 1)
    foreign.send("close")


@pytest_twisted.ensureDeferred
async def test_foreignConnectionOfflineWhileListenerDecides(servers: Any, io: IOService, foreignHost: Any) -> None:
    """
    Going offline inside C{onSocketAccepted}, before the listener did
    anything with a connection from a peer that is not local, closes that
    connection at once: it is no longer alive, and attaching a protocol
    fails with C{NS_ERROR_OFFLINE} (as the streams report it).
    """
    srv = servers()
    srv.initSpecialConnection(-1, ServerSocket.KeepWhenOffline, -1)
    listener = _AttachingListener(io, goOffline="beforeAttach")
    srv.asyncListen(listener)
    foreign = await foreignHost.connect(srv.port)
    await eventually(lambda: len(listener.refused) == 2)
    assert listener.refused == [False, results.NS_ERROR_OFFLINE]
    foreign.send("hello")
    assert (await foreign.nextLine()).split()[0] in ("eof", "error")
    foreign.send("close")
