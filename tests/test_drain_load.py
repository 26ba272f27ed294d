"""
SIGTERM under real load loses nothing: the installed C{twistd web} and
C{daphne} with C{workers=2:grace=5}, stopped while C{wrk} drives them
(keep-alive connections, or a stream of C{Connection: close} ones), and
C{daphne} with WebSockets open.  Each time the primary exits 0 within the
grace period and a second of the SIGTERM (the documented contract, the
one wall-clock bound these tests assert: from the signal to the exit).

wrk's verdict.  A request the stop cut would be a read error (its
connection closed or reset before the response), a timeout or a non-2xx
response: none is allowed.  wrk's write and connect errors are counted
apart, not as failed requests: once the listeners close, every
connection wrk opens is refused (the server is gone, as after any stop),
and wrk, whose connect does not wait, learns it when it writes the
request: a write error (a connect error when the connect itself fails);
it tries again at once until it is interrupted.  wrk counts errors
without saying when, so a second wrk, on the same load, is interrupted
just before the SIGTERM: it must have no error of any kind.  (The
connections the kernel had queued on a listener when it closes are taken
and served too: reset, they would be read errors.)

A WebSocket open at the stop is sent a close frame, 1001 Going Away, and
once the client answers it the worker closes the connection; the ASGI
application sees its C{websocket.disconnect}.  So is one whose opening
handshake is under way at the stop, once the application accepts it, and
one whose upgrade request arrives on a connection made before the stop.
A protocol's own C{stopGracefully()} is called on each open connection.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import tempfile
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer

from ._procs import BIN, PRIMARY_LISTENING, SERVES, TWISTD, Proc, childrenOf, socketStats, spawn
from .conftest import Client, connect, eventually, sleep, theReactor, timeout

DAPHNE = os.path.join(BIN, "daphne")
WRK = shutil.which("wrk")
GRACE = 5.0
DAPHNE_KEYERROR = "in kill_all_applications\n"

#: twistd web's resource: answers after 5 ms, so that requests are in
#: progress whenever the stop comes.
PID_RPY = """\
import os

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class Pid(Resource):
    isLeaf = True

    def render_GET(self, request):
        def done():
            request.write(b"%d" % os.getpid())
            request.finish()

        call = reactor.callLater(0.005, done)
        request.notifyFinish().addErrback(lambda _: call.cancel())
        return NOT_DONE_YET


resource = Pid()
"""

#: daphne's ASGI application: HTTP answers with the worker's pid after
#: 5 ms; a WebSocket is accepted (after C{?accept=SECONDS}), says "open
#: PID", echoes, and writes C{disconnect CODE} to the file C{events} when
#: it hears the close.
ASGI_APP = """\
import asyncio
import os
from urllib.parse import parse_qs


async def application(scope, receive, send):
    if scope["type"] == "http":
        await asyncio.sleep(0.005)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"%d" % os.getpid()})
        return
    assert (await receive())["type"] == "websocket.connect"
    await asyncio.sleep(float(parse_qs(scope["query_string"].decode()).get("accept", ["0"])[0]))
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "open %d" % os.getpid()})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            with open("events", "a") as f:
                f.write("disconnect %s\\n" % event.get("code"))
            return
        await send({"type": "websocket.send", "text": event.get("text") or ""})
"""


@pytest.fixture
def site() -> Iterator[str]:
    """A short world-readable directory with C{pid.rpy} and C{app.py}."""
    d = tempfile.mkdtemp(prefix="/tmp/dld")
    os.chmod(d, 0o755)
    for name, text in (("pid.rpy", PID_RPY), ("app.py", ASGI_APP)):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _twistdWeb(site: str) -> tuple[Proc, int, str]:
    """C{twistd web}, C{workers=2}, access log to C{access.log}, once both workers serve; it, its port, its URL."""
    command = [*TWISTD, "-n", "--pidfile=", "web", "--logfile", "access.log", "--path", site]
    proc = spawn([*command, "--listen", f"gecko:port=0:loopback=1:workers=2:grace={GRACE:g}"], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(SERVES + r"[\s\S]*" + SERVES)
    return proc, port, f"http://127.0.0.1:{port}/pid.rpy"


async def _daphne(site: str, verbosity: int = 1) -> tuple[Proc, int, str]:
    """
    C{daphne}, C{workers=2}, access log to C{access.log}, once both workers
    serve; it, its port, its URL.  (Verbosity 2 shows the cluster's log,
    and every request's.)
    """
    description = f"gecko:port=0:loopback=1:workers=2:grace={GRACE:g}"
    proc = spawn([DAPHNE, "-v", str(verbosity), "--access-log", "access.log", "-e", description, "app:application"], site)
    port = int((await proc.waitFor(r"Listening on TCP address 127\.0\.0\.1:(\d+)")).group(1))
    if verbosity >= 2:
        await proc.waitFor(r"Worker \d \(pid \d+\) is ready[\s\S]*Worker \d \(pid \d+\) is ready")
        return proc, port, f"http://127.0.0.1:{port}/"
    pids: set[bytes] = set()
    deadline = theReactor().seconds() + 30
    while len(pids) < 2:  # a worker answers once it is ready
        assert theReactor().seconds() < deadline, (pids, proc.output)
        client = await connect(port)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        pids.add(bytes(await timeout(client.closed)).rsplit(b"\r\n", 1)[-1])
    return proc, port, f"http://127.0.0.1:{port}/"


SERVERS = {"twistd web": _twistdWeb, "daphne": _daphne}


async def _stopped(proc: Proc) -> float:
    """SIGTERM the primary; the seconds from the signal to its exit, which must be status 0."""
    exited: list[float] = []
    proc.ended.addCallback(lambda code: exited.append(theReactor().seconds()) or code)
    sent = theReactor().seconds()
    proc.transport.signalProcess(signal.SIGTERM)
    code = await timeout(proc.ended, GRACE + 10)
    assert code == 0 and proc.signal is None, proc.output
    assert "aborting" not in proc.output, proc.output
    # daphne's own: a stop within a second of a WebSocket upgrade (the
    # upgraded request's entry waits for daphne's next clean-up pass)
    # logs a KeyError from its shutdown trigger; nothing else may fail.
    tracebacks = proc.output.count("Traceback")
    assert tracebacks == proc.output.count(DAPHNE_KEYERROR) == proc.output.count("KeyError: 'application_instance'"), proc.output
    return exited[0] - sent


def wrkCounts(output: str) -> dict[str, int]:
    """wrk's requests, its socket errors by kind (connect, read, write, timeout) and its non-2xx/3xx responses."""
    counts = {"requests": int(re.search(r"(\d+) requests in", output).group(1))}  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    counts.update(zip(("connect", "read", "write", "timeout"), map(int, errors.groups() if errors else (0, 0, 0, 0))))
    counts["non2xx"] = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    return counts


#: wrk's kinds of failure.
ERRORS = ("connect", "read", "write", "timeout", "non2xx")


def accessLines(site: str) -> int:
    try:
        with open(os.path.join(site, "access.log"), "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _wrk(site: str, url: str, keepAlive: bool) -> Proc:
    """wrk on C{url}: two threads, four connections, until interrupted (SIGINT, when it prints its summary)."""
    close = [] if keepAlive else ["-H", "Connection: close"]
    return spawn([WRK or "wrk", "-t2", "-c4", "-d120s", "--timeout", "10s", *close, url], site)


async def _interrupted(wrk: Proc) -> dict[str, int]:
    if not wrk.ended.called:
        wrk.transport.signalProcess(signal.SIGINT)
    await timeout(wrk.ended, 10)
    return wrkCounts(wrk.output)


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk; .ci/run does)")
@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.parametrize("keepAlive", [True, False], ids=["keep-alive", "connection-close"])
@pytest_twisted.ensureDeferred
async def test_sigtermUnderWrk(site: str, server: str, keepAlive: bool) -> None:
    """
    SIGTERM while two wrk drive the cluster (four connections each,
    keep-alive or each request on a new one): the one interrupted just
    before the signal saw no error of any kind, the one running through
    the stop no failed request; the primary exits 0 within the grace
    period and a second.
    """
    proc, _port, url = await SERVERS[server](site)
    before, through = _wrk(site, url, keepAlive), _wrk(site, url, keepAlive)
    try:
        # The load is on once its requests are in the access log.
        await eventually(lambda: accessLines(site) >= 300, 30, 0.05)
        counts = await _interrupted(before)
        assert counts["requests"] >= 100 and counts == {**counts, **dict.fromkeys(ERRORS, 0)}, before.output
        took = await _stopped(proc)
    finally:
        for wrk in (before, through):
            counts = await _interrupted(wrk)
    # Its write and connect errors: connects refused once the listeners closed.
    assert counts["requests"] >= 100, through.output
    assert (counts["non2xx"], counts["read"], counts["timeout"]) == (0, 0, 0), through.output
    assert took <= GRACE + 1, (took, proc.output)


# ----------------------------------------------------------------------
# WebSockets under daphne.

UPGRADE = (
    b"GET /ws%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frames(received: bytes) -> list[tuple[int, bytes]]:
    """The server's frames (opcode, payload) after the opening handshake's response; short unmasked ones only."""
    data = received.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in received else b""
    found = []
    while len(data) >= 2 and len(data) >= 2 + data[1]:
        assert data[1] < 126, data  # neither masked nor long
        found.append((data[0] & 0x0F, data[2 : 2 + data[1]]))
        data = data[2 + data[1] :]
    return found


async def _websocket(port: int, query: bytes = b"", client: Client | None = None) -> Client:
    """A WebSocket client (or C{client}, connected earlier) once its upgrade request is sent."""
    client = client or await connect(port)
    client.transport.write(UPGRADE % query)
    return client


def _opened(client: Client) -> bool:
    return client.received.startswith(b"HTTP/1.1 101 ") and bool(frames(bytes(client.received)))


async def _goneAway(client: Client, pause: float = 0) -> None:
    """
    Wait for the server's close frame, which must say 1001 Going Away;
    answer it (C{pause} seconds later), and wait for the server to close
    the connection.
    """
    await eventually(lambda: any(opcode == 8 for opcode, _ in frames(bytes(client.received))), GRACE + 5)
    closing = [payload for opcode, payload in frames(bytes(client.received)) if opcode == 8]
    assert closing == [struct.pack("!H", 1001)], client.received
    await sleep(pause)
    assert not client.closed.called, "the server closed the connection before the client answered"
    mask = b"\x01\x02\x03\x04"
    client.transport.write(b"\x88\x82" + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(closing[0])))
    await timeout(client.closed, GRACE + 5)


def disconnects(site: str) -> list[str]:
    try:
        with open(os.path.join(site, "events")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@pytest_twisted.ensureDeferred
async def test_openWebSocketsGetACloseFrame(site: str) -> None:
    """
    Six WebSockets open on daphne's two workers at SIGTERM: each is sent a
    close frame, 1001 Going Away; each client answers (one 1.5 s later,
    past autobahn's default closing handshake timeout: the grace period
    bounds the wait instead) and the worker closes the connection; the
    application hears each close, with the code the client answered; the
    primary exits 0 within the grace period and a second.
    """
    proc, port, _url = await _daphne(site, verbosity=2)
    clients = [await _websocket(port) for _ in range(6)]
    for client in clients:
        await eventually(lambda client=client: _opened(client), 30)
    openedBy = {frames(bytes(c.received))[0][1].split()[1] for c in clients}
    assert len(openedBy) == 2, openedBy  # both workers hold some
    stopping = defer.ensureDeferred(_stopped(proc))
    for client in clients[:-1]:
        await _goneAway(client)
    await _goneAway(clients[-1], pause=1.5)
    took = await stopping
    assert took <= GRACE + 1, (took, proc.output)
    assert disconnects(site) == ["disconnect 1001"] * 6, proc.output


async def _heldByWorker(proc: Proc, client: Client) -> bool:
    """Whether the connection of C{client} is in one of the workers (handed over by the primary)."""
    local = client.transport.getHost().port
    workers = childrenOf(proc.transport.pid)
    lines = await socketStats("-tp", "state", "established", f"dport = :{local}")
    return any(f"pid={pid}," in line for line in lines for pid in workers)


@pytest_twisted.ensureDeferred
async def test_webSocketsOpeningDuringTheStop(site: str) -> None:
    """
    A WebSocket whose application has not accepted it yet at SIGTERM, and
    one whose upgrade request arrives after SIGTERM on a connection made
    before it: each opens, then is sent 1001 Going Away, and the
    application hears each close.
    """
    proc, port, _url = await _daphne(site, verbosity=2)
    late = await connect(port)  # its request comes after the stop
    accepting = await _websocket(port, b"?accept=1.5")
    for client in (late, accepting):
        await eventually(lambda client=client: _heldByWorker(proc, client), 30)
    stopping = defer.ensureDeferred(_stopped(proc))
    await proc.waitFor(r"Told 2 worker\(s\) to finish their connections")
    await _websocket(port, client=late)
    for client in (late, accepting):
        await _goneAway(client)
        assert _opened(client), client.received
    took = await stopping
    assert took <= GRACE + 1, (took, proc.output)
    assert disconnects(site) == ["disconnect 1001"] * 2, proc.output


# ----------------------------------------------------------------------
# A protocol's own hook.

SHOUT_TAC = """\
from twisted.application import service, strports
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class Shout(LineReceiver):
    def lineReceived(self, line):
        self.sendLine(line.upper())

    def stopGracefully(self):
        self.sendLine(b"bye: server going away, reconnect")
        self.transport.loseConnection()


application = service.Application("shout")
strports.service("gecko:port=0:loopback=1:workers=2:grace=%g", Factory.forProtocol(Shout)).setServiceParent(application)
"""


@pytest_twisted.ensureDeferred
async def test_stopGracefullyHook(site: str) -> None:
    """
    A protocol's own C{stopGracefully()} (docs/cluster.md's example, in a
    C{.tac} file) is called on each open connection at SIGTERM: each
    client reads its goodbye and the close, long before the grace period
    would end, and the primary exits 0 within it and a second.
    """
    with open(os.path.join(site, "shout.tac"), "w") as f:
        f.write(SHOUT_TAC % GRACE)
    proc = spawn([*TWISTD, "-n", "--pidfile=", "-y", "shout.tac"], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(SERVES + r"[\s\S]*" + SERVES)
    clients = [await connect(port) for _ in range(4)]
    for client in clients:
        client.transport.write(b"hi\r\n")
        await client.waitFor(4)
    took = await _stopped(proc)
    for client in clients:
        assert await timeout(client.closed) == b"HI\r\nbye: server going away, reconnect\r\n"
    assert took <= GRACE + 1, (took, proc.output)
