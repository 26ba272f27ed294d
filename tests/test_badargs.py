"""
Bad arguments given from Python: every public entry point
refuses a value of the wrong kind with an error that names the argument -
C{TypeError}/C{ValueError} from the endpoint constructors,
C{NSError(NS_ERROR_INVALID_ARG)} from the Gecko API - instead of failing
later with an unrelated message or, worse, quietly doing something else
(C{reclaimStale="no"} used to reclaim, C{loopback="no"} to listen on
loopback only).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import protocol

from twisted_serversock import NSError
from twisted_serversock.endpoints import GeckoServerEndpoint, GeckoUNIXServerEndpoint
from twisted_serversock.ipc.child import TCPServerSocketChild
from twisted_serversock.tcpsocket import TCPSocket

from .conftest import Recorder, code, connect, theReactor

linuxOnly = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux UNIX-domain semantics")


@pytest.fixture
def d() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="/tmp/tssa")
    try:
        yield path
    finally:
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


@pytest.mark.parametrize(
    "kwargs, exception, named",
    [
        ({"port": "80", "interface": "127.0.0.1"}, TypeError, "port"),
        ({"port": "80"}, TypeError, "port"),
        ({"port": 1.5}, TypeError, "port"),
        ({"port": 70000}, ValueError, "port"),
        ({"port": True}, TypeError, "port"),
        ({"port": 0, "backlog": "5"}, TypeError, "backlog"),
        ({"port": 0, "backlog": 2**40}, ValueError, "backlog"),
        ({"port": 0, "loopback": "no"}, TypeError, "loopback"),
        ({"port": 0, "loopback": 2}, TypeError, "loopback"),
        ({"port": 0, "keepWhenOffline": "yes"}, TypeError, "keepWhenOffline"),
        ({"port": 0, "ipv6": "false"}, TypeError, "ipv6"),
        ({"port": 0, "dualStack": "0"}, TypeError, "dualStack"),
        ({"port": 0, "interface": 127}, TypeError, "interface"),
        ({"port": 0, "interface": b"127.0.0.1"}, TypeError, "interface"),
    ],
)
def test_geckoEndpointArguments(kwargs: dict[str, Any], exception: type, named: str) -> None:
    with pytest.raises(exception) as e:
        GeckoServerEndpoint(theReactor(), **kwargs)
    assert named in str(e.value)


@linuxOnly
@pytest.mark.parametrize(
    "kwargs, exception, named",
    [
        ({"path": 123}, TypeError, "path"),
        ({"path": ""}, ValueError, "path"),
        ({"path": "a\0b"}, ValueError, "path"),
        ({"abstract": 5}, TypeError, "abstract"),
        ({"abstract": "x", "allowedUids": 5}, TypeError, "allowedUids"),
        ({"abstract": "x", "allowedUids": "1000"}, TypeError, "allowedUids"),
        ({"abstract": "x", "allowedUids": [-1]}, ValueError, "allowedUids"),
        ({"abstract": "x", "allowedUids": ["0"]}, TypeError, "allowedUids"),
        ({"path": "/tmp/x", "mode": "0600"}, TypeError, "mode"),
        ({"path": "/tmp/x", "mode": 0o1000}, ValueError, "mode"),
        ({"path": "/tmp/x", "backlog": "5"}, TypeError, "backlog"),
        ({"path": "/tmp/x", "reclaimStale": "no"}, TypeError, "reclaimStale"),
        ({"path": "/tmp/x", "group": 1.5}, TypeError, "group"),
        ({"path": "/tmp/x", "group": "no-such-group-tss"}, ValueError, "no-such-group-tss"),
        ({"abstract": "x", "group": 0}, ValueError, "group"),
    ],
)
def test_geckoUNIXEndpointArguments(kwargs: dict[str, Any], exception: type, named: str) -> None:
    with pytest.raises(exception) as e:
        GeckoUNIXServerEndpoint(theReactor(), **kwargs)
    assert named in str(e.value)


@linuxOnly
def test_reclaimStaleString(servers: Any, d: str) -> None:
    """
    C{reclaimStale="no"} is refused, and the stale socket file it would
    have removed (a non-empty string is true) is left alone.
    """
    path = os.path.join(d, "s")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # nobody listens: stale
    before = os.lstat(path)
    with pytest.raises(NSError) as e:
        servers().initWithFilename(path, 0o600, -1, reclaimStale="no")
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert "reclaimStale" in str(e.value)
    after = os.lstat(path)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


@pytest.mark.parametrize("method", ["init", "initIPv6"])
def test_loopbackOnlyString(servers: Any, method: str) -> None:
    """
    C{loopbackOnly="no"} is refused, not taken as true; 0/1 and bools work.
    """
    with pytest.raises(NSError) as e:
        getattr(servers(), method)(0, "no", -1)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert "loopbackOnly" in str(e.value)
    srv = servers()
    srv.init(0, 1, -1)
    assert srv.getAddress().host == "127.0.0.1"


def test_initWithAddressNamesHost(servers: Any) -> None:
    with pytest.raises(NSError) as e:
        servers().initWithAddress((1, 2), -1)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert "host" in str(e.value)


@pytest.mark.parametrize(
    "host, port, named",
    [("127.0.0.1", "80", "port"), ("127.0.0.1", 0, "port"), ("127.0.0.1", 70000, "port"), (None, 80, "host"), ("", 80, "host"), (b"127.0.0.1", 80, "host")],
)
def test_tcpSocketOpenArguments(host: Any, port: Any, named: str) -> None:
    with pytest.raises(NSError) as e:
        TCPSocket.open(host, port, reactor=theReactor())
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert named in str(e.value)


class _Parent:
    connected = True


@pytest.mark.parametrize(
    "args, named",
    [
        ((None, "f.py", 1, 0), "message"),
        (("boom", None, 1, 0), "filename"),
        (("boom", "f.py", "1", 0), "lineNumber"),
        (("boom", "f.py", 1, None), "columnNumber"),
    ],
)
def test_callListenerErrorArguments(args: tuple[Any, ...], named: str) -> None:
    child = TCPServerSocketChild(_Parent(), theReactor())  # type: ignore[arg-type]
    reported: list[Any] = []
    child.onerror = reported.append
    with pytest.raises(NSError) as e:
        child.callListenerError(*args)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert named in str(e.value)
    assert reported == []
    child.callListenerError("NS_ERROR_FAILURE: boom", "f.py", 1, 0)
    assert [(r.name, r.message) for r in reported] == [("NS_ERROR_FAILURE", "NS_ERROR_FAILURE: boom")]


@pytest_twisted.ensureDeferred
async def test_keepaliveEnabledString(servers: Any) -> None:
    """
    On a real connection, C{keepaliveEnabled = "false"} is refused instead
    of turning keepalive on.
    """
    srv = servers()
    srv.init(0, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    client = await connect(srv.port)
    t = await rec.nextAccepted()
    with pytest.raises(NSError) as e:
        t.keepaliveEnabled = "false"
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert "keepaliveEnabled" in str(e.value)
    assert t.keepaliveEnabled is False
    t.keepaliveEnabled = True
    assert t.keepaliveEnabled is True
    t.close(0)
    await client.whenClosed()


def test_endpointsStillWork(d: str) -> None:
    """
    Integers for booleans and bytes paths remain accepted.
    """
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    ports = []
    for endpoint in (
        GeckoServerEndpoint(theReactor(), port=0, loopback=1),
        GeckoUNIXServerEndpoint(theReactor(), path=os.fsencode(os.path.join(d, "s")), mode=0o600, reclaimStale=0),
    ):
        result: list[Any] = []
        endpoint.listen(factory).addBoth(result.append)
        ports.append(result[0])
    assert ports[0].getHost().host == "127.0.0.1"
    for port in ports:
        port.stopListening()


def test_offlineString(servers: Any, io: Any) -> None:
    """
    C{offline = "false"} is refused; it used to take the service offline
    and close every listener that does not survive that.
    """
    srv = servers(io)
    srv.init(0, False, -1)
    with pytest.raises(NSError) as e:
        io.offline = "false"
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert "offline" in str(e.value)
    assert io.offline is False
    socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()  # still listening
    io.offline = 0
    assert io.offline is False
