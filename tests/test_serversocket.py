"""
TCP server sockets, as Gecko's nsIServerSocket: the init family,
asyncListen, close, port and getAddress,
on real loopback sockets with the real reactor.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectError

from twisted_serversock import IOService, NetAddr, NSError, ServerSocket, results

from ._helpers import FlakyListeningSocket
from ._procs import listenQueue, socketStats
from .conftest import Recorder, asNobody, code, nobodyEnv, connect, eventually, failures, needsIPv6


async def turns(n: int = 3) -> None:
    """
    Let the reactor run C{n} times whatever is ready (accepts, queued
    callbacks): what was going to happen by then has happened.
    """
    for _ in range(n):
        await deferLater(reactor, 0, lambda: None)


def openFDs() -> int:
    return len(os.listdir("/proc/self/fd"))


def listenBacklog(port: int) -> int:
    """
    The backlog the kernel holds for the listening TCP socket on C{port}
    (C{ss} shows it as Send-Q of a listening socket).
    """
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


# ----------------------------------------------------------------------
# init family


@pytest.mark.parametrize("port", [-1, 0, -12345])
def test_ephemeralPort(servers: Any, port: int) -> None:
    srv = servers()
    srv.init(port, True, -1)
    assert 0 < srv.port <= 65535
    assert srv.port == srv._bound.socket.getsockname()[1]
    assert srv.getAddress() == IPv4Address("TCP", "127.0.0.1", srv.port)


def test_loopbackOnlyBindsLoopback(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    assert srv.getAddress().host == "127.0.0.1"
    # 127.0.0.2 is a loopback address, but not the one bound.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", srv.port), timeout=2)


def test_anyBindsAllInterfaces(servers: Any) -> None:
    srv = servers()
    srv.init(-1, False, -1)
    assert srv.getAddress() == IPv4Address("TCP", "0.0.0.0", srv.port)
    socket.create_connection(("127.0.0.2", srv.port), timeout=2).close()


def test_specificPort(servers: Any) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = servers()
    srv.init(port, True, -1)
    assert srv.port == port


@pytest.mark.parametrize("port", [65536, 100000, 2**40])
def test_portTooLarge(servers: Any, port: int) -> None:
    with pytest.raises(NSError) as e:
        servers().init(port, True, -1)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert str(port) in str(e.value)


@pytest.mark.parametrize("port", ["80", 1.5, None, True])
def test_portNotInteger(servers: Any, port: Any) -> None:
    with pytest.raises(NSError) as e:
        servers().init(port, True, -1)
    assert code(e) == "NS_ERROR_INVALID_ARG"


@pytest.mark.parametrize("backlog", ["5", 2.0, None, 2**40])
def test_backlogInvalid(servers: Any, backlog: Any) -> None:
    with pytest.raises(NSError) as e:
        servers().init(-1, True, backlog)
    assert code(e) == "NS_ERROR_INVALID_ARG"


@pytest.mark.parametrize(
    "backlog,expected", [(-1, socket.SOMAXCONN), (-50, socket.SOMAXCONN), (0, 0), (7, 7), (200, 200)]
)
def test_backlog(servers: Any, backlog: int, expected: int) -> None:
    """
    A negative backlog means C{socket.SOMAXCONN}; others reach C{listen()}
    unchanged (here the kernel's C{somaxconn} is larger than all of them).
    """
    srv = servers()
    srv.init(-1, True, backlog)
    assert listenBacklog(srv.port) == expected


def test_socketOptions(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    skt = srv._bound.socket
    assert skt.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert skt.gettimeout() == 0.0  # non-blocking
    assert not os.get_inheritable(skt.fileno())  # close-on-exec


def test_secondInit(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    for call in (
        lambda: srv.init(-1, True, -1),
        lambda: srv.initIPv6(-1, True, -1),
        lambda: srv.initDualStack(-1, -1),
        lambda: srv.initSpecialConnection(-1, 0, -1),
        lambda: srv.initWithAddress(("127.0.0.1", 0), -1),
    ):
        with pytest.raises(NSError) as e:
            call()
        assert code(e) == "NS_ERROR_ALREADY_INITIALIZED"


def test_addressInUse(servers: Any) -> None:
    first = servers()
    first.init(-1, True, -1)
    second = servers()
    before = openFDs()
    with pytest.raises(NSError) as e:
        second.init(first.port, True, -1)
    assert code(e) == "NS_ERROR_SOCKET_ADDRESS_IN_USE"
    assert str(first.port) in str(e.value)
    assert openFDs() == before, "a failed init left a descriptor open"
    # The object can be initialised again.
    second.init(-1, True, -1)
    assert second.port != first.port


def test_addressNotAvailable(servers: Any) -> None:
    """
    EADDRNOTAVAIL (an address this host does not have) maps to
    NS_ERROR_CONNECTION_REFUSED.  192.0.2.0/24 is TEST-NET-1; nothing is sent.
    """
    srv = servers()
    with pytest.raises(NSError) as e:
        srv.initWithAddress(("192.0.2.123", 0), -1)
    assert code(e) == "NS_ERROR_CONNECTION_REFUSED"


def test_permissionDenied(tmp_path: Any) -> None:
    """
    EACCES (a privileged port as an unprivileged user) maps to
    NS_ERROR_CONNECTION_REFUSED.  CI runs as root, so the bind runs in a
    subprocess as nobody.
    """
    script = (
        "from twisted_serversock import ServerSocket, NSError\n"
        "try:\n"
        "    ServerSocket().init(80, False, -1)\n"
        "except NSError as e:\n"
        "    print(e.name)\n"
    )
    out = subprocess.run(
        asNobody([sys.executable, "-c", script]), capture_output=True, text=True, env=nobodyEnv(), cwd="/", timeout=60
    )
    assert out.stdout.strip() == "NS_ERROR_CONNECTION_REFUSED", out.stderr


def test_specialConnectionFlags(servers: Any, io: IOService) -> None:
    srv = servers()
    srv.initSpecialConnection(-1, ServerSocket.LoopbackOnly, -1)
    assert srv.getAddress().host == "127.0.0.1"
    other = servers()
    # Unknown bits are ignored; KeepWhenOffline is remembered: the wildcard
    # listener survives going offline, where one without the flag does not.
    other.initSpecialConnection(-1, ServerSocket.KeepWhenOffline | 0xFF00, -1)
    assert other.getAddress().host == "0.0.0.0"
    plain = servers()
    plain.initSpecialConnection(-1, 0xFF00, -1)
    assert plain.getAddress().host == "0.0.0.0"
    io.offline = True
    assert repr(other).startswith("<ServerSocket bound")
    assert repr(srv).startswith("<ServerSocket bound")
    assert repr(plain).startswith("<ServerSocket closed")


@needsIPv6
def test_initIPv6IsV6Only(servers: Any) -> None:
    srv = servers()
    srv.initIPv6(-1, False, -1)
    assert srv._bound.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    address = srv.getAddress()
    assert isinstance(address, IPv6Address)
    assert address.host == "::"
    assert srv.port == address.port
    socket.create_connection(("::1", srv.port), timeout=2).close()
    # IPv6 only: the same port is free on IPv4.
    v4 = servers()
    v4.init(srv.port, True, -1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", srv.port), timeout=2)


@needsIPv6
def test_initIPv6Loopback(servers: Any) -> None:
    srv = servers()
    srv.initIPv6(-1, True, -1)
    assert srv.getAddress().host == "::1"
    assert srv._bound.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


@needsIPv6
@pytest_twisted.ensureDeferred
async def test_dualStackServesBoth(servers: Any) -> None:
    srv = servers()
    srv.initDualStack(-1, -1)
    assert srv._bound.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert srv.getAddress().host == "::"
    rec = Recorder()
    srv.asyncListen(rec)
    c4 = await connect(srv.port, "127.0.0.1")
    t4 = await rec.nextAccepted()
    c6 = await connect(srv.port, "::1")
    t6 = await rec.nextAccepted()
    assert t4.host == "::ffff:127.0.0.1"
    assert t6.host == "::1"
    for c in (c4, c6):
        c.transport.loseConnection()


def test_initWithAddressForms(servers: Any) -> None:
    a = servers()
    a.initWithAddress(IPv4Address("TCP", "127.0.0.1", 0), -1)
    assert a.getAddress().host == "127.0.0.1" and a.port > 0
    b = servers()
    b.initWithAddress(("127.0.0.1", 0), 3)
    assert listenBacklog(b.port) == 3
    c = servers()
    c.initWithAddress(NetAddr(NetAddr.FAMILY_INET, "127.0.0.1", 0), -1)
    assert c.getAddress().host == "127.0.0.1"


@needsIPv6
def test_initWithAddressIPv6(servers: Any) -> None:
    a = servers()
    a.initWithAddress(IPv6Address("TCP", "::1", 0), -1)
    assert a.getAddress().host == "::1"
    assert a._bound.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    b = servers()
    b.initWithAddress(("::1", 0), -1)
    assert isinstance(b.getAddress(), IPv6Address)


@pytest.mark.parametrize(
    "addr",
    [
        ("localhost", 0),
        ("example.invalid", 0),
        "127.0.0.1:0",
        ("127.0.0.1",),
        None,
        IPv4Address("UDP", "127.0.0.1", 0),
        ("127.0.0.1", 70000),
    ],
)
def test_initWithAddressRejects(servers: Any, addr: Any) -> None:
    with pytest.raises(NSError) as e:
        servers().initWithAddress(addr, -1)
    assert code(e) == "NS_ERROR_INVALID_ARG"


def test_uninitialised(servers: Any) -> None:
    srv = servers()
    with pytest.raises(NSError) as e:
        srv.port
    assert code(e) == "NS_ERROR_FAILURE"
    with pytest.raises(NSError) as e:
        srv.getAddress()
    assert code(e) == "NS_ERROR_NOT_INITIALIZED"
    srv.close()  # a no-op


# ----------------------------------------------------------------------
# asyncListen and the callbacks


def test_asyncListenBeforeInit(servers: Any) -> None:
    with pytest.raises(NSError) as e:
        servers().asyncListen(Recorder())
    assert code(e) == "NS_ERROR_NOT_INITIALIZED"


def test_asyncListenAfterFailedInit(servers: Any) -> None:
    srv = servers()
    with pytest.raises(NSError):
        srv.init(99999, True, -1)
    with pytest.raises(NSError) as e:
        srv.asyncListen(Recorder())
    assert code(e) == "NS_ERROR_NOT_INITIALIZED"


def test_asyncListenAfterCloseBeforeListen(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    srv.close()
    with pytest.raises(NSError) as e:
        srv.asyncListen(Recorder())
    assert code(e) == "NS_ERROR_NOT_INITIALIZED"


def test_asyncListenTwice(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    srv.asyncListen(Recorder())
    with pytest.raises(NSError) as e:
        srv.asyncListen(Recorder())
    assert code(e) == "NS_ERROR_IN_PROGRESS"


@pytest.mark.parametrize("listener", [None, object(), lambda s, t: None])
def test_asyncListenRejectsNonListener(servers: Any, listener: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    with pytest.raises(NSError) as e:
        srv.asyncListen(listener)
    assert code(e) == "NS_ERROR_INVALID_ARG"


@pytest_twisted.ensureDeferred
async def test_clientsWaitInBacklogBeforeAsyncListen(servers: Any) -> None:
    """
    init binds and listens: a client's connect completes before asyncListen,
    and the connection is reported once asyncListen is called - by the
    reactor, not from inside asyncListen.
    """
    srv = servers()
    srv.init(-1, True, -1)
    client = await connect(srv.port)
    await turns()  # nothing accepts before asyncListen
    assert listenQueue(srv.port) == 1  # the kernel holds it

    async def establishedToUs() -> bool:
        return len(await socketStats("-t", "state", "established", f"sport = :{srv.port}")) == 1

    await eventually(establishedToUs)
    rec = Recorder()
    srv.asyncListen(rec)
    assert rec.events == []
    transport = await rec.nextAccepted()
    assert rec.servers[0] is srv
    assert transport.port == client.transport.getHost().port
    assert listenQueue(srv.port) == 0
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_acceptedInOrderThenOneStop(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    clients = []
    for _ in range(5):
        clients.append(await connect(srv.port))
        await rec.nextAccepted()
    ports = [t.port for kind, t in rec.events]
    assert ports == [c.transport.getHost().port for c in clients]
    srv.close()
    assert rec.statuses == []  # not synchronously inside close()
    srv.close()  # idempotent
    status = await rec.whenStopped()
    assert status == results.NS_BINDING_ABORTED
    await turns()
    srv.close()
    assert [kind for kind, _ in rec.events] == ["accepted"] * 5 + ["stopped"]
    assert rec.servers == [srv] * 6
    for c in clients:
        c.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_closeBeforeListenNoCallback(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    port = srv.port
    srv.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    # Gecko keeps the address it had.
    assert srv.port == port
    # Re-initialisable, even on the same port at once.
    srv.init(port, True, -1)
    assert srv.port == port
    srv.close()


@pytest_twisted.ensureDeferred
async def test_closeFreesPortAtOnce(servers: Any) -> None:
    """
    After close() the port refuses connections and can be listened on again
    immediately (Gecko's test_tcpserversocket re-listens on the same port).
    """
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    client = await connect(srv.port)
    await rec.nextAccepted()
    port = srv.port
    srv.close()
    with pytest.raises(ConnectError):
        await connect(port)
    again = servers()
    again.init(port, True, -1)
    rec2 = Recorder()
    again.asyncListen(rec2)
    c2 = await connect(port)
    await rec2.nextAccepted()
    await rec.whenStopped()
    client.transport.loseConnection()
    c2.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_connectionsOutliveListener(servers: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    client = await connect(srv.port)
    transport = await rec.nextAccepted()
    inp = transport.openInputStream(0, 0, 0)
    out = transport.openOutputStream(0, 0, 0)
    srv.close()
    await rec.whenStopped()
    # Both directions still work.
    out.write(b"from server")
    assert await client.waitFor(11) == b"from server"
    client.transport.write(b"from client")
    await eventually(lambda: inp.available() == 11)
    assert inp.read(100) == b"from client"
    assert transport.isAlive()
    transport.close(0)
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_closeInsideOnSocketAccepted(servers: Any) -> None:
    """
    A listener that closes the server from onSocketAccepted stops it for
    good: the connections already queued in the kernel are not reset but
    delivered (each onSocketAccepted once), then exactly one
    onStopListening.
    """
    srv = servers()
    srv.init(-1, True, -1)
    # Queue several connections in the kernel before accepting any.
    raw = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]

    class Closer(Recorder):
        def onSocketAccepted(self, serv: Any, transport: Any) -> None:
            super().onSocketAccepted(serv, transport)
            serv.close()

    rec = Closer()
    srv.asyncListen(rec)
    assert await rec.whenStopped() == results.NS_BINDING_ABORTED
    await turns()
    assert [kind for kind, _ in rec.events] == ["accepted"] * 4 + ["stopped"]
    for s in raw:
        s.close()


@pytest_twisted.ensureDeferred
async def test_listenerExceptionsLogged(servers: Any, logged: Any) -> None:
    class Broken(Recorder):
        def onSocketAccepted(self, serv: Any, transport: Any) -> None:
            super().onSocketAccepted(serv, transport)
            raise RuntimeError("listener bug")

        def onStopListening(self, serv: Any, status: int) -> None:
            super().onStopListening(serv, status)
            raise RuntimeError("stop bug")

    srv = servers()
    srv.init(-1, True, -1)
    rec = Broken()
    srv.asyncListen(rec)
    c1 = await connect(srv.port)
    await rec.nextAccepted()
    # The server keeps accepting after a listener error.
    c2 = await connect(srv.port)
    await rec.nextAccepted()
    srv.close()
    await rec.whenStopped()

    def loggedErrors() -> list[str]:
        return [str(e["log_failure"].value) for e in failures(logged)]

    # whenStopped fires inside onStopListening, before it raises.
    await eventually(lambda: "stop bug" in loggedErrors())
    await turns()
    errors = loggedErrors()
    assert errors.count("listener bug") == 2
    assert errors.count("stop bug") == 1
    for c in (c1, c2):
        c.transport.loseConnection()


@pytest.mark.parametrize("err", [errno.ECONNABORTED, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPERM])
@pytest_twisted.ensureDeferred
async def test_transientAcceptErrorTolerated(servers: Any, logged: Any, err: int) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    port = srv._port
    port.socket = FlakyListeningSocket(port.socket, [err])
    client = await connect(srv.port)
    # Level-triggered: the pending connection is accepted on a later turn.
    transport = await rec.nextAccepted()
    assert transport.port == client.transport.getHost().port
    assert rec.statuses == []
    assert not failures(logged)
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_emfileRecovery(servers: Any, logged: Any) -> None:
    """
    EMFILE: Twisted's recovery (kept by our accept loop) frees its reserved
    descriptor, accepts the waiting clients and closes them - logged, so the
    client sees a close instead of hanging - and the listener keeps going.
    """
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    port = srv._port
    port.socket = FlakyListeningSocket(port.socket, [errno.EMFILE])
    first = await connect(srv.port)
    await first.whenClosed()
    assert rec.events == []
    assert any("EMFILE recovery" in (e.get("log_format") or "") for e in logged)
    second = await connect(srv.port)
    transport = await rec.nextAccepted()
    assert transport.port == second.transport.getHost().port
    assert rec.statuses == []
    second.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_fatalAcceptErrorStops(servers: Any, logged: Any) -> None:
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    port = srv._port
    port.socket = FlakyListeningSocket(port.socket, [errno.EINVAL])
    raw = socket.create_connection(("127.0.0.1", srv.port))
    assert await rec.whenStopped() == results.NS_ERROR_UNEXPECTED
    assert [kind for kind, _ in rec.events] == ["stopped"]
    assert any("Fatal error on the listening socket" in (e.get("log_format") or "") for e in logged)
    raw.close()
    # The listener is gone: the port refuses connections.
    with pytest.raises(ConnectError):
        await connect(srv.getAddress().port)


@pytest_twisted.ensureDeferred
async def test_burstBeyondTwistedBacklog(servers: Any) -> None:
    """
    With the default backlog (SOMAXCONN) a burst of 300 simultaneous
    connects, far more than Twisted's default of 50, is all accepted.
    """
    srv = servers()
    srv.init(-1, True, -1)
    raw = []
    for _ in range(300):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", srv.port))
        raw.append(s)
    rec = Recorder()
    srv.asyncListen(rec)
    for _ in range(300):
        await rec.nextAccepted()
    assert len(rec.events) == 300
    for s in raw:
        s.close()


def test_reactorImportedLazily() -> None:
    """
    ServerSocket() with no reactor does not import the global reactor until
    it needs it.
    """
    code_ = (
        "import sys\n"
        "from twisted_serversock import ServerSocket\n"
        "s = ServerSocket(); s.init(-1, True, -1)\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
        "s.close()\n"
    )
    assert subprocess.run([sys.executable, "-c", code_], timeout=60).returncode == 0


def test_defaultReactor() -> None:
    srv = ServerSocket(ioService=IOService())
    srv.init(-1, True, -1)
    try:
        srv.asyncListen(Recorder())
        assert srv._reactor is reactor
    finally:
        srv.close()


class RecordingIOService(IOService):
    """
    An I/O service that counts who is registered with it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.registered = 0

    def register(self, goOffline: Any) -> Any:
        self.registered += 1
        unregister = super().register(goOffline)
        live = [True]

        def counted() -> None:
            if live.pop() if live else False:
                self.registered -= 1
            unregister()

        return counted


@pytest.mark.parametrize(
    "init",
    [
        lambda s: s.init(0, True, -1),  # loopback: survives going offline
        lambda s: s.initSpecialConnection(0, ServerSocket.KeepWhenOffline, -1),  # survives
        lambda s: s.init(0, False, -1),  # closed by going offline
    ],
)
def test_everyBoundServerSocketRegistersUntilClose(servers: Any, init: Any) -> None:
    """
    Every bound server socket is registered with its I/O service, whether
    or not it survives going offline, from init until close (what the I/O
    service's docstrings say).
    """
    io = RecordingIOService()
    srv = servers(io)
    assert io.registered == 0
    init(srv)
    assert io.registered == 1
    srv.close()
    srv.close()
    assert io.registered == 0
