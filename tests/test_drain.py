"""
How a cluster drains when it stops, with the installed C{twistd}: the
grace period an endpoint gives (C{grace=}) lets a slow request finish or
cuts it; a lame-duck delay (C{lameduck=}, C{--lame-duck}) goes on serving
after SIGTERM, and a second SIGTERM ends it; an idle HTTP/1.1 keep-alive
connection is closed at once.  The options' parsing too.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet.endpoints import serverFromString

from twisted_serversock.endpoints import GeckoServerEndpoint, GeckoUNIXServerEndpoint

from ._procs import LISTENING, PRIMARY_LISTENING, READY, SERVERSOCK, TWISTD, Proc, echo, spawn
from ._tlshelp import Certs, certs  # noqa: F401 (certs: a fixture)
from .conftest import Client, connect, eventually, timeout

SLOW_RPY = """\
import os

from twisted.internet import reactor
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

log = Logger()


class Slow(Resource):
    isLeaf = True

    def render_GET(self, request):
        seconds = float(request.args.get(b"s", [b"0"])[0])
        log.info("slow request started ({s} s)", s=seconds)

        def done():
            request.write(b"done by %d" % os.getpid())
            request.finish()

        call = reactor.callLater(seconds, done)
        request.notifyFinish().addErrback(lambda _: call.cancel())
        return NOT_DONE_YET


resource = Slow()
"""


class _NoReactor:
    """Stands in for the reactor where an endpoint is only parsed."""


# ----------------------------------------------------------------------
# Parsing.


def test_graceAndLameDuckParse() -> None:
    """
    C{grace=} and C{lameduck=} are kept on the endpoint (on the address
    endpoint under C{geckotls:}), as seconds; a worker's listener need not
    match them.
    """
    endpoint = serverFromString(_NoReactor(), "gecko:port=0:workers=2:grace=2.5:LameDuck=1")
    assert (endpoint.grace, endpoint.lameDuck) == (2.5, 1.0)
    assert endpoint.clusterDescription() == "gecko:port=0"
    unix = serverFromString(_NoReactor(), "geckounix:/tmp/x.sock:workers=auto:grace=0")
    assert (unix.grace, unix.lameDuck) == (0.0, None)
    assert serverFromString(_NoReactor(), "gecko:port=0:workers=2").grace is None
    assert GeckoServerEndpoint(_NoReactor(), 0, workers=2, grace=3, lameDuck=0.5).lameDuck == 0.5  # type: ignore[arg-type]
    assert GeckoUNIXServerEndpoint(_NoReactor(), "/tmp/x.sock", workers=1, grace=7).grace == 7.0  # type: ignore[arg-type]


def test_graceUnderTLS(certs: Certs) -> None:
    description = f"geckotls:port=0:workers=2:grace=4:lameduck=2:privateKey={certs['key.pem']}:certKey={certs['cert.pem']}"
    endpoint = serverFromString(_NoReactor(), description)
    assert (endpoint.addressEndpoint.grace, endpoint.addressEndpoint.lameDuck) == (4.0, 2.0)


@pytest.mark.parametrize(
    "description, message",
    [
        ("gecko:port=0:workers=2:grace=-1", "grace must be a finite number of seconds, 0 or more, not '-1'"),
        ("gecko:port=0:workers=2:grace=soon", "grace must be a finite number of seconds, 0 or more, not 'soon'"),
        ("gecko:port=0:workers=2:grace=inf", "grace must be a finite number of seconds, 0 or more, not 'inf'"),
        ("gecko:port=0:workers=2:lameduck=nan", "lameduck must be a finite number of seconds, 0 or more, not 'nan'"),
        ("gecko:port=0:grace=5", "grace is a cluster primary's option: it needs workers=N (N above 0 or auto)"),
        ("geckounix:/tmp/x.sock:workers=0:lameduck=5", "lameduck is a cluster primary's option: it needs workers=N (N above 0 or auto)"),
    ],
)
def test_badGraceOrLameDuckIsAValueErrorNamingIt(description: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        serverFromString(_NoReactor(), description)
    assert str(e.value) == message


def test_badGraceKeyword() -> None:
    for bad in (True, -0.5, float("inf"), "x"):
        with pytest.raises(ValueError, match="^grace must be"):
            GeckoServerEndpoint(_NoReactor(), 0, workers=2, grace=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^lameduck is a cluster primary's option"):
        GeckoServerEndpoint(_NoReactor(), 0, lameDuck=1)


# ----------------------------------------------------------------------
# Real processes.


@pytest.fixture
def site() -> Iterator[str]:
    """A short world-readable directory with C{slow.rpy} (C{?s=SECONDS}, then "done by PID")."""
    d = tempfile.mkdtemp(prefix="/tmp/drn")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "slow.rpy"), "w") as f:
        f.write(SLOW_RPY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _web(site: str, options: str) -> tuple[Proc, int]:
    """C{twistd web} on C{gecko:...:workers=2:OPTIONS}, once both workers serve; it and its port."""
    proc = spawn([*TWISTD, "-n", "--pidfile=", "web", "--listen", f"gecko:port=0:loopback=1:workers=2:{options}", "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    return proc, port


async def _get(port: int, seconds: float = 0) -> Client:
    """A keep-alive connection on which C{GET /slow.rpy?s=SECONDS} was sent."""
    client = await connect(port)
    client.transport.write(b"GET /slow.rpy?s=%g HTTP/1.1\r\nHost: x\r\n\r\n" % seconds)
    return client


async def _ended(proc: Proc, seconds: float = 30) -> None:
    code = await timeout(proc.ended, seconds)
    assert code == 0 and proc.signal is None, proc.output
    assert "Traceback" not in proc.output, proc.output


@pytest_twisted.ensureDeferred
async def test_graceLetsASlowRequestFinish(site: str) -> None:
    """
    A request in flight at SIGTERM finishes within the endpoint's grace
    period, its response saying C{Connection: close}; the cluster logs the
    grace it was given, and exits 0.
    """
    proc, port = await _web(site, "grace=20")
    client = await _get(port, 2)
    await proc.waitFor(r"slow request started \(2\.0 s\)")
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"SIGTERM: stopping gracefully \(grace 20\.0 s\)")
    received = await timeout(client.closed, 20)
    assert received.startswith(b"HTTP/1.1 200 ") and b"done by " in received, received
    assert b"\r\nconnection: close\r\n" in received.lower(), received
    await _ended(proc)
    assert "aborting" not in proc.output, proc.output


@pytest_twisted.ensureDeferred
async def test_graceOverCutsASlowRequest(site: str) -> None:
    """
    A request that needs longer than the grace period is cut when it ends
    (long before the request would have finished), and the cluster exits 0.
    """
    proc, port = await _web(site, "grace=0.5")
    client = await _get(port, 60)
    await proc.waitFor(r"slow request started \(60\.0 s\)")
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"Told 2 worker\(s\) to finish their connections within 0\.5 s")
    received = await timeout(client.closed, 8)  # the default grace would be 10 s
    assert b"done by" not in received, received
    await proc.waitFor(r"Grace period over; aborting 1 open connection\(s\)")
    await _ended(proc)


@pytest_twisted.ensureDeferred
async def test_aWorkerSentSIGTERMItselfTakesTheClustersGrace(site: str) -> None:
    """
    SIGTERM sent to a worker itself (systemd's default C{KillMode} sends it
    to every process of the service) gives that worker the cluster's
    C{grace=}, not the default 10 s: it says so, and a request longer than
    that is cut when it ends.
    """
    proc, port = await _web(site, "grace=0.5")
    client = await _get(port, 60)
    started = await proc.waitFor(r"\[worker \d+ pid (\d+)[^\]]*\] slow request started \(60\.0 s\)")
    os.kill(int(started.group(1)), signal.SIGTERM)
    await proc.waitFor(rf"\[worker \d+ pid {started.group(1)}[^\]]*\] SIGTERM: finishing open connections within 0\.5 s")
    received = await timeout(client.closed, 30)
    assert b"done by" not in received, received
    await proc.waitFor(r"Grace period over; aborting 1 open connection\(s\)")
    proc.transport.signalProcess(signal.SIGTERM)
    await _ended(proc)


@pytest_twisted.ensureDeferred
async def test_lameDuckServesAfterSIGTERM(site: str) -> None:
    """
    With C{lameduck=}, the cluster says so at SIGTERM and goes on
    accepting and serving: a connection made during the delay is answered
    by a worker; then it stops as usual.
    """
    proc, port = await _web(site, "lameduck=3:grace=5")
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"SIGTERM: lame duck: still accepting and serving for 3\.0 s, then stopping gracefully \(grace 5\.0 s\)")
    client = await _get(port)
    await eventually(lambda: b"done by" in client.received, 10)
    assert client.received.startswith(b"HTTP/1.1 200 "), client.received
    assert not proc.ended.called
    await proc.waitFor(r"Lame-duck delay over: closing the listeners")
    await timeout(client.closed, 10)  # idle keep-alive: closed at once
    await _ended(proc)


@pytest_twisted.ensureDeferred
async def test_secondSignalEndsTheLameDuck(site: str) -> None:
    """
    A second SIGTERM (or SIGINT) during a long lame-duck delay stops the
    cluster now: it exits long before the delay would end.
    """
    proc, _port = await _web(site, "lameduck=120")
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"SIGTERM: lame duck: still accepting and serving for 120\.0 s")
    proc.transport.signalProcess(signal.SIGINT)
    await proc.waitFor(r"SIGINT during the lame-duck delay: stopping gracefully now \(grace 10\.0 s\)")
    await _ended(proc, 30)


@pytest_twisted.ensureDeferred
async def test_serversockLameDuck(site: str) -> None:
    """C{twistd serversock --lame-duck}: still serving after SIGTERM, until a second SIGTERM."""
    proc = spawn([*SERVERSOCK, "--lame-duck", "120", "--workers", "1", "--listen", "gecko:port=0:loopback=1"], site)
    port = int((await proc.waitFor(LISTENING)).group(1))
    await proc.waitFor(r"Worker 1 \(pid \d+\) is ready")
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"SIGTERM: lame duck: still accepting and serving for 120\.0 s")
    assert await echo(port, b"still here") == b"still here"
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"SIGTERM during the lame-duck delay: stopping gracefully now")
    code = await timeout(proc.ended, 30)
    assert code == 0 or proc.signal == signal.SIGTERM, proc.output


@pytest_twisted.ensureDeferred
async def test_idleKeepAliveClosesAtOnce(site: str) -> None:
    """
    Keep-alive connections idle between requests close once they stayed
    idle for half a second after the workers were told to stop, long
    before a 60 s grace period; none is aborted, and the cluster exits 0.
    """
    proc, port = await _web(site, "grace=60")
    clients = [await _get(port) for _ in range(4)]
    for client in clients:
        await eventually(lambda: b"done by" in client.received, 10)
    assert len({bytes(c.received).rsplit(b" ", 1)[-1] for c in clients}) == 2  # both workers hold some
    proc.transport.signalProcess(signal.SIGTERM)
    for client in clients:
        await timeout(client.closed, 20)
    await _ended(proc, 20)
    assert "aborting" not in proc.output, proc.output
