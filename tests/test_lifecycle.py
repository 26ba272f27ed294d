"""
The worker lifecycle of C{twistd serversock} (its workers started, stopped,
replaced, reloaded and recycled) in real processes with real clients: a stopped (SIGSTOP) worker costs at most a connection or
two and is killed and replaced at C{--timeout}; a woken one serves what it
adopted and nothing twice; accept back-pressure leaves the excess in the
kernel's backlog; SIGHUP reloads new code with nothing failed (also under
C{wrk} keep-alive load); C{--max-requests} recycles workers; SIGTTIN/SIGTTOU;
SIGUSR1; systemd notifications read from a real datagram socket; signals
during start-up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, utils

from twisted_serversock.ipc.child import REPORT_DELAY
from twisted_serversock.ipc.dispatch import INITIAL_WINDOW, MAX_WAITING

from ._procs import LISTENING, SERVERSOCK, Proc, ask, freePort, listenQueue, serving, socketStats, spawn, stopCleanly, untilHolding, workerPids
from .conftest import connect, eventually, sleep, theReactor, timeout

VERSIONED = """
import os
from twisted.internet.protocol import Factory, Protocol

VERSION = {version!r}

class Reply(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"%s %d\\n" % (VERSION, os.getpid()))
        self.transport.loseConnection()

factory = Factory.forProtocol(Reply)
"""

WEBAPP = """
import os
from twisted.web import resource, server

VERSION = {version!r}

class Page(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        peer = request.getClientAddress()
        return b"%s %d %s:%s\\n" % (VERSION, os.getpid(), str(getattr(peer, "host", "-")).encode(), str(getattr(peer, "port", "-")).encode())

def factory():
    return server.Site(Page())
"""


def writeModule(workdir: str, name: str, template: str, version: bytes) -> None:
    """
    (Re)write a factory module.  Each version has its own length, so a
    bytecode cache written in the same second is never mistaken for it.
    """
    path = os.path.join(workdir, name + ".py")
    with open(path + ".tmp", "w") as f:
        f.write(template.format(version=version))
    os.replace(path + ".tmp", path)


def spawnServer(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> Proc:
    """
    Start C{twistd serversock ARGV} in C{cwd}, with C{env} added to this
    process's environment.
    """
    return spawn(SERVERSOCK + argv, cwd, {**os.environ, **(env or {})})


async def startServer(argv: list[str], cwd: str, workers: int, env: dict[str, str] | None = None) -> tuple[Proc, int]:
    proc = spawnServer(["--listen", "gecko:port=0:loopback=1", "--workers", str(workers)] + argv, cwd, env)
    return proc, await serving(proc, workers)


def signalPid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def startWithAStoppedWorker(workdir: str, timeoutSeconds: int, workers: int) -> tuple[Proc, int, int]:
    """
    Serve the versioned factory with C{workers} workers and C{--timeout};
    stop (SIGSTOP) the last worker.  Returns the process, port and the
    stopped worker's pid.
    """
    writeModule(workdir, "ver", VERSIONED, b"v1")
    proc, port = await startServer(["--timeout", str(timeoutSeconds), "--factory", "ver.factory"], workdir, workers)
    stopped = workerPids(proc)[workers]
    os.kill(stopped, signal.SIGSTOP)
    return proc, port, stopped


@pytest_twisted.ensureDeferred
async def test_stoppedWorkerCostsAtMostTwoConnections(workdir: str) -> None:
    """
    One of two workers is stopped (SIGSTOP): of 30 connections opened one
    after another, at most 2 are handed to it (the dispatcher stops routing
    to a worker whose acks are overdue), every one is served exactly once,
    and the stopped worker is killed at --timeout and replaced, its
    unacknowledged connections re-sent.
    """
    proc, port, stopped = await startWithAStoppedWorker(workdir, 5, 2)
    try:
        pending = []
        for _ in range(30):
            pending.append(defer.ensureDeferred(ask(port, 90)))
            # The load's pace (20 connections a second), not a wait for
            # anything: the parent's ack deadline is a time, and a stopped
            # worker's acks are overdue from one connection to the next.
            await sleep(0.05)
        results = await timeout(defer.gatherResults(pending, consumeErrors=True), 120)
        assert len(results) == 30
        assert all(re.fullmatch(rb"v1 \d+\n", reply) for reply in results), results
        assert all(int(reply.split()[1]) != stopped for reply in results)
        await proc.waitFor(rf"worker 2 \(pid {stopped}\) was silent for [\d.]+ s \(--timeout 5.0 s\).*killing it")
        await proc.waitFor(r"Worker 2 \(pid \d+\) is ready")
    finally:
        signalPid(stopped, signal.SIGCONT)
        assert await stopCleanly(proc) == 0, proc.output
    summary = re.search(r"(\d+) accepted, (\d+) adopted by workers, (\d+) re-sent.*?(\d+) closed unserved; workers: (\d+) killed for timeout", proc.output)
    assert summary is not None, proc.output
    accepted, adopted, resent, dropped, killed = map(int, summary.groups())
    assert (accepted, adopted, dropped, killed) == (30, 30, 0, 1)
    assert 1 <= resent <= 2


@pytest_twisted.ensureDeferred
async def test_wokenWorkerServesWhatItHeldAndNothingTwice(workdir: str) -> None:
    """
    A worker stopped for less than --timeout and woken up (SIGCONT) serves
    what it had been handed; nothing is re-sent, so no connection is
    served by two processes, and each client gets exactly one reply.
    """
    proc, port, stopped = await startWithAStoppedWorker(workdir, 30, 2)
    try:
        pending = [defer.ensureDeferred(ask(port, 90)) for _ in range(10)]
        await untilHolding(stopped)
        os.kill(stopped, signal.SIGCONT)
        replies = await timeout(defer.gatherResults(pending, consumeErrors=True), 90)
        assert all(re.fullmatch(rb"v1 \d+\n", reply) for reply in replies), replies
    finally:
        signalPid(stopped, signal.SIGCONT)
        assert await stopCleanly(proc) == 0, proc.output
    assert re.search(r"10 accepted, 10 adopted by workers, 0 re-sent", proc.output), proc.output
    assert "killing it" not in proc.output


HOLDING = """
import os
from twisted.internet.protocol import Factory, Protocol

class Hold(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"%d\\n" % os.getpid())

factory = Factory.forProtocol(Hold)
"""


@pytest_twisted.ensureDeferred
async def test_leastLoadedDispatch(workdir: str) -> None:
    """
    Connections go to the worker with the fewest in hand, which the parent
    knows from the closes the workers report: after one worker's three
    connections close, the next three all go to it (round robin would
    alternate).
    """
    with open(os.path.join(workdir, "hold.py"), "w") as f:
        f.write(HOLDING)
    proc, port = await startServer(["--factory", "hold.factory"], workdir, 2)
    clients: dict[int, list[Any]] = {}
    try:

        async def hold() -> int:
            client = await connect(port)
            client.transport.write(b"?")
            pid = int(await pidLine(client))
            clients.setdefault(pid, []).append(client)
            return pid

        for _ in range(6):
            await hold()
        assert sorted(len(c) for c in clients.values()) == [3, 3], clients
        emptied = sorted(clients)[0]
        for client in clients.pop(emptied):
            client.transport.loseConnection()
            await client.whenClosed()
        # The worker has closed them (the kernel shows none of its
        # connections left) ...
        await eventually(lambda: heldBy(emptied, port, 0))
        # ... and reports the closes REPORT_DELAY later, over its channel:
        # the one wait on a time, with a wide margin.
        await sleep(REPORT_DELAY * 25)
        assert [await hold() for _ in range(3)] == [emptied] * 3
    finally:
        for held in clients.values():
            for client in held:
                client.transport.loseConnection()
        assert await stopCleanly(proc) == 0, proc.output



async def heldBy(pid: int, port: int, count: int) -> bool:
    """
    Whether process C{pid} holds exactly C{count} established connections
    to local C{port} (the kernel's view).
    """
    lines = await socketStats("-tp", "state", "established", f"sport = :{port}")
    return sum(1 for line in lines if f"pid={pid}," in line) == count


async def establishedAtLeast(port: int, count: int) -> bool:
    """
    Whether at least C{count} TCP connections to local C{port} are
    established.
    """
    return len(await socketStats("-t", "state", "established", f"sport = :{port}")) >= count


async def pidLine(client: Any) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        data = await client.waitFor(len(data) + 1)
    return data.strip()


def listening(port: int) -> bool:
    """
    Whether something listens on 127.0.0.1:port.
    """
    return bool(subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.strip())


@pytest_twisted.ensureDeferred
async def test_saturatedWorkersLeaveTheExcessInTheKernelBacklog(workdir: str) -> None:
    """
    With its only worker stopped, the parent hands over a bounded number of
    connections and then stops accepting: the rest wait in the kernel's
    backlog (not in the parent).  Woken, the worker serves all of them.
    """
    proc, port, stopped = await startWithAStoppedWorker(workdir, 60, 1)
    try:
        pending = [defer.ensureDeferred(ask(port, 90)) for _ in range(200)]
        await proc.waitFor(r"pausing accepts; new connections wait in the kernel's backlog")
        # The parent holds at most MAX_WAITING (64) plus the stopped
        # worker's window (4); the rest is the kernel's.
        await eventually(lambda: listenQueue(port) >= 200 - MAX_WAITING - INITIAL_WINDOW, 30)
        os.kill(stopped, signal.SIGCONT)
        replies = await timeout(defer.gatherResults(pending, consumeErrors=True), 90)
        assert len(replies) == 200 and all(reply.startswith(b"v1 ") for reply in replies)
        assert listenQueue(port) == 0
    finally:
        signalPid(stopped, signal.SIGCONT)
        assert await stopCleanly(proc) == 0, proc.output
    assert re.search(r"200 accepted, 200 adopted by workers, 0 re-sent", proc.output), proc.output


async def reloadFiveTimes(proc: Proc, workdir: str, module: str, template: str, check: Any) -> None:
    """
    Rewrite C{module} and SIGHUP, five times; after each reload is done,
    C{check(version)} must see the new version answer.
    """
    for n in range(2, 7):
        version = b"v" + str(n).encode() * n
        writeModule(workdir, module, template, version)
        proc.transport.signalProcess(signal.SIGHUP)
        await proc.waitFor(r"(?s)" + r"Reload done.*" * (n - 1))
        await check(version)


@pytest_twisted.ensureDeferred
async def test_sighupReloadsNewCodeWithNothingFailed(workdir: str) -> None:
    """
    Five SIGHUPs during a steady stream of connections: every connection is
    served, and after each reload the new code answers.
    """
    writeModule(workdir, "ver", VERSIONED, b"v1")
    proc, port = await startServer(["--factory", "ver.factory", "--grace", "5"], workdir, 2)
    failures: list[Any] = []
    served = [0]
    running = [True]

    async def stream() -> None:
        while running[0]:
            try:
                reply = await ask(port, 30)
                if not re.fullmatch(rb"v\d+ \d+\n", reply):
                    failures.append(reply)
                served[0] += 1
            except Exception as e:
                failures.append(e)

    streams = [defer.ensureDeferred(stream()) for _ in range(3)]

    async def check(version: bytes) -> None:
        reply = await ask(port, 30)
        assert reply.startswith(version + b" "), (version, reply)

    try:
        await reloadFiveTimes(proc, workdir, "ver", VERSIONED, check)
    finally:
        running[0] = False
        await timeout(defer.gatherResults(streams), 60)
        assert await stopCleanly(proc) == 0, proc.output
    assert failures == []
    assert served[0] >= 50
    assert proc.output.count("Reload done") == 5
    assert re.search(r"0 closed unserved", proc.output)


def wrkErrors(output: str) -> tuple[int, int]:
    """
    wrk's request count and its failures (socket errors plus non-2xx).
    """
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    socketErrors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socketErrors:
        errors += sum(map(int, socketErrors.groups()))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return requests, errors


def runWrk(url: str, seconds: int, connections: int = 8) -> defer.Deferred[tuple[bytes, bytes, int]]:
    return utils.getProcessOutputAndValue(
        shutil.which("wrk") or "wrk",
        ["-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url],
        env=dict(os.environ),
    )


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk; .ci/run does)")
@pytest_twisted.ensureDeferred
async def test_sighupUnderWrkKeepAliveLoad(workdir: str) -> None:
    """
    Five SIGHUPs while wrk holds keep-alive HTTP connections: no failed
    request (an old worker answers its keep-alive clients' next request
    with Connection: close, and they reconnect to the new workers); the new
    code answers after each reload.
    """
    writeModule(workdir, "webapp", WEBAPP, b"v1")
    proc, port = await startServer(["--factory", "webapp.factory", "--grace", "5"], workdir, 2)
    load = runWrk(f"http://127.0.0.1:{port}/", 20)

    async def check(version: bytes) -> None:
        client = await connect(port)
        client.transport.write(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        reply = bytes(await timeout(client.closed, 30))
        assert b"\r\n\r\n" + version + b" " in reply, reply

    try:
        # The load is on once wrk's connections are established.
        await eventually(lambda: establishedAtLeast(port, 8), 30)
        await reloadFiveTimes(proc, workdir, "webapp", WEBAPP, check)
        out, err, code = await timeout(load, 60)
    finally:
        if not load.called:
            await timeout(load, 60)
        assert await stopCleanly(proc) == 0, proc.output
    text = out.decode()
    assert code == 0, text + err.decode()
    requests, errors = wrkErrors(text)
    assert requests > 100 and errors == 0, text


SLOW_IMPORT = "import time\ntime.sleep(120)\n" + VERSIONED


@pytest_twisted.ensureDeferred
async def test_successorDyingAfterTheOldWorkerIsRestarted(workdir: str) -> None:
    """
    With one worker: SIGHUP starts a successor (slow to import), the old
    worker is killed, then the successor is killed before it is ready.  The
    slot must not stay empty: a new worker starts, and it serves the
    connection that waited for it.
    """
    writeModule(workdir, "ver", VERSIONED, b"v1")
    proc, port = await startServer(["--factory", "ver.factory"], workdir, 1)
    try:
        old = workerPids(proc)[1]
        writeModule(workdir, "ver", SLOW_IMPORT, b"v2")
        proc.transport.signalProcess(signal.SIGHUP)
        successor = int((await proc.waitFor(rf"Started worker 1 \(pid (?!{old}\))(\d+)\)")).group(1))
        os.kill(old, signal.SIGKILL)
        await proc.waitFor(rf"Worker 1 \(pid {old}\) died \(signal 9\).*its successor is starting")
        waiting = defer.ensureDeferred(ask(port, 60))
        writeModule(workdir, "ver", VERSIONED, b"v333")
        os.kill(successor, signal.SIGKILL)
        await proc.waitFor(rf"New worker 1 \(pid {successor}\) exited \(signal 9\) before it was ready; nobody")
        await proc.waitFor(rf"Worker 1 \(pid (?!{old}\)|{successor}\))\d+\) is ready")
        assert re.fullmatch(rb"v333 \d+\n", await timeout(waiting, 60))
        assert re.fullmatch(rb"v333 \d+\n", await ask(port, 30))
    finally:
        assert await stopCleanly(proc) == 0, proc.output
    assert re.search(r"0 closed unserved", proc.output), proc.output


@pytest_twisted.ensureDeferred
async def test_maxRequestsRecyclesWorkers(workdir: str) -> None:
    """
    --max-requests 10 over 60 connections: at least 4 distinct worker pids
    answered, none failed; the summary counts the recycled workers.
    """
    writeModule(workdir, "ver", VERSIONED, b"v1")
    proc, port = await startServer(
        ["--factory", "ver.factory", "--max-requests", "10", "--max-requests-jitter", "2"], workdir, 2
    )
    try:
        pids = set()
        for _ in range(60):
            reply = await ask(port, 60)
            assert re.fullmatch(rb"v1 \d+\n", reply), reply
            pids.add(int(reply.split()[1]))
        assert len(pids) >= 4, pids
    finally:
        assert await stopCleanly(proc) == 0, proc.output
    recycled = int(re.search(r"(\d+) recycled \(--max-requests\)", proc.output).group(1))  # type: ignore[union-attr]
    assert recycled >= 2
    assert re.search(r"60 accepted, 60 adopted by workers, 0 re-sent", proc.output), proc.output


@pytest_twisted.ensureDeferred
async def test_ttinAndTtouChangeTheWorkerCount(workdir: str) -> None:
    """
    SIGTTIN adds a worker, SIGTTOU retires the highest-numbered one, and
    never the last.
    """
    proc, port = await startServer([], workdir, 1)
    try:
        proc.transport.signalProcess(signal.SIGTTIN)
        await proc.waitFor(r"Worker 2 \(pid \d+\) is ready")
        proc.transport.signalProcess(signal.SIGTTOU)
        await proc.waitFor(r"Retiring worker 2 \(pid \d+\): one worker fewer")
        await proc.waitFor(r"worker 2 \(pid \d+\) exited \(status 0\)")
        proc.transport.signalProcess(signal.SIGTTOU)
        await proc.waitFor(r"Not removing the last worker")
        client = await connect(port)
        client.transport.write(b"still here")
        assert await client.waitFor(10) == b"still here"
        client.transport.loseConnection()
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_signalsDuringStartUp(workdir: str) -> None:
    """
    SIGHUP before the workers are ready is a reload once the reactor runs
    (not death by SIGHUP); SIGUSR1 without a log file is logged, not fatal;
    SIGTERM before the workers are ready is a graceful stop, exit 0.
    """
    proc = spawnServer(["--listen", "gecko:port=0:loopback=1", "--workers", "1"], workdir)
    await proc.waitFor(r"Started worker 1 \(pid \d+\)")
    proc.transport.signalProcess(signal.SIGHUP)
    proc.transport.signalProcess(signal.SIGUSR1)
    await proc.waitFor(r"Reloading: starting 1 fresh worker")
    await proc.waitFor(r"SIGUSR1: logging to a stream, not a file; nothing to reopen")
    await proc.waitFor(r"Reload done")
    port = int(re.search(LISTENING, proc.output).group(1))  # type: ignore[union-attr]
    client = await connect(port)
    client.transport.write(b"alive")
    assert await client.waitFor(5) == b"alive"
    client.transport.loseConnection()
    assert await stopCleanly(proc) == 0, proc.output

    proc = spawnServer(["--listen", "gecko:port=0:loopback=1", "--workers", "1"], workdir)
    await proc.waitFor(r"Started worker 1 \(pid \d+\)")
    proc.transport.signalProcess(signal.SIGTERM)
    assert int(await timeout(proc.ended, 30)) == 0, proc.output
    assert "SIGTERM: stopping gracefully" in proc.output


@pytest_twisted.ensureDeferred
async def test_sigusr1RotatesTheLogFile(workdir: str) -> None:
    """
    With --logfile, SIGUSR1 is twistd's log rotation (not replaced, not
    fatal): the old lines move to NAME.1 and new ones go to a new NAME.
    """
    log = os.path.join(workdir, "serversock.log")
    argv = [a for a in SERVERSOCK if not a.startswith("--logfile")]
    argv.insert(argv.index("serversock"), "--logfile=" + log)
    proc = Proc()
    theReactor().spawnProcess(
        proc, argv[0], argv + ["--listen", "gecko:port=0:loopback=1", "--workers", "1"], env=dict(os.environ), path=workdir
    )

    def logged(pattern: str, path: str = log) -> bool:
        try:
            with open(path) as f:
                return re.search(pattern, f.read()) is not None
        except FileNotFoundError:
            return False

    try:
        await eventually(lambda: logged(r"Worker 1 \(pid \d+\) is ready"), 30)
        proc.transport.signalProcess(signal.SIGUSR1)
        await eventually(lambda: logged(r"is ready", log + ".1"), 30)
        proc.transport.signalProcess(signal.SIGTTIN)
        await eventually(lambda: logged(r"Worker 2 \(pid \d+\) is ready"), 30)
        assert not logged(r"Worker 2", log + ".1")
    finally:
        proc.transport.signalProcess(signal.SIGTERM)
        assert int(await timeout(proc.ended, 30)) == 0


class NotifyReader:
    """
    A real C{AF_UNIX} datagram socket standing in for systemd, which reads
    its notify socket as datagrams arrive: so does this one, on the reactor
    (a datagram socket queues only C{net.unix.max_dgram_qlen}, 10 by
    default; read only when the test looks, the watchdog's C{WATCHDOG=1}
    every 200 ms would fill it during a slow start and the sender's next
    datagram, C{READY=1}, would be refused).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(path)
        self.socket.setblocking(False)
        self.messages: list[dict[str, str]] = []
        theReactor().addReader(self)

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self) -> None:
        self.read()

    def logPrefix(self) -> str:
        return "NotifyReader"

    def connectionLost(self, reason: object) -> None:
        pass

    def close(self) -> None:
        theReactor().removeReader(self)
        self.socket.close()

    def read(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line))

    def has(self, key: str, count: int = 1) -> bool:
        return sum(1 for m in self.read() if key in m) >= count

    def keys(self) -> list[str]:
        return [",".join(sorted(k for k in m if k in ("READY", "RELOADING", "STOPPING"))) for m in self.read()]


@pytest_twisted.ensureDeferred
async def test_systemdNotifications(workdir: str) -> None:
    """
    With NOTIFY_SOCKET set: READY=1 with a STATUS once a worker is ready,
    RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a reload,
    WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 on SIGTERM.
    """
    reader = NotifyReader(os.path.join(workdir, "notify"))
    env = {"NOTIFY_SOCKET": reader.path, "WATCHDOG_USEC": "400000"}
    try:
        proc, port = await startServer([], workdir, 2, env)
        await eventually(lambda: reader.has("READY"), 30)
        ready = next(m for m in reader.read() if "READY" in m)
        assert ready["READY"] == "1" and "worker(s) serving" in ready["STATUS"]
        assert int(ready["MAINPID"]) == proc.transport.pid
        await eventually(lambda: reader.has("WATCHDOG", 3), 30)
        proc.transport.signalProcess(signal.SIGHUP)
        await eventually(lambda: reader.has("READY", 2), 30)
        reloading = next(m for m in reader.read() if "RELOADING" in m)
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        order = [k for k in reader.keys() if k]
        assert order[:3] == ["READY", "RELOADING", "READY"], order
        assert await stopCleanly(proc) == 0, proc.output
        assert reader.has("STOPPING")
        assert [k for k in reader.keys() if k][-1] == "STOPPING"
    finally:
        reader.close()


HAPROXY_CONFIG = """
global
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    retry-on all-retryable-errors
    option http-server-close

frontend web
    bind 127.0.0.1:{port}
    default_backend app

backend app
    balance roundrobin
    server a unix@{a} send-proxy-v2
    server b unix@{b} send-proxy-v2
"""


class Daemon(Proc):
    """
    A helper process (HAProxy) whose output is kept.
    """


@pytest.mark.skipif(
    shutil.which("haproxy") is None or shutil.which("wrk") is None,
    reason="haproxy and wrk are not installed (apt-get install haproxy wrk; .ci/run does)",
)
@pytest_twisted.ensureDeferred
async def test_haproxyInFrontOfTwoInstancesRestartedInTurn(workdir: str) -> None:
    """
    HAProxy balances two twistd serversock instances on haproxy:geckounix:
    sockets with send-proxy-v2.  Each instance is stopped (SIGTERM) and
    started again in turn under wrk load: no request fails, and the
    workers see the client's address from the PROXY header.
    """
    writeModule(workdir, "webapp", WEBAPP, b"v1")
    sockets = {name: os.path.join(workdir, name + ".sock") for name in ("a", "b")}
    front = freePort()
    with open(os.path.join(workdir, "haproxy.cfg"), "w") as f:
        f.write(HAPROXY_CONFIG.format(port=front, a=sockets["a"], b=sockets["b"]))

    async def instance(name: str) -> Proc:
        proc = spawnServer(
            ["--listen", f"haproxy:geckounix:path={sockets[name]}:reclaim=1", "--workers", "2", "--factory", "webapp.factory", "--grace", "5"],
            workdir,
        )
        for i in (1, 2):
            await proc.waitFor(rf"Worker {i} \(pid \d+\) is ready")
        return proc

    instances = {name: await instance(name) for name in ("a", "b")}
    haproxy = Daemon()
    theReactor().spawnProcess(
        haproxy, shutil.which("haproxy") or "haproxy", ["haproxy", "-db", "-f", "haproxy.cfg"], env=dict(os.environ), path=workdir
    )
    load = None
    try:
        url = f"http://127.0.0.1:{front}/"

        async def viaHAProxy() -> tuple[bytes, int]:
            client = await connect(front)
            client.transport.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            port = client.transport.getHost().port
            return bytes(await timeout(client.closed, 30)), port

        async def answeredBy(pids: set[int]) -> bool:
            reply, _ = await viaHAProxy()
            body = reply.split(b"\r\n\r\n", 1)[-1].split()
            return len(body) > 1 and body[1].isdigit() and int(body[1]) in pids

        async def answers() -> bool:
            try:
                reply, _ = await viaHAProxy()
            except Exception:
                return False
            return b" 200 " in reply.split(b"\r\n", 1)[0]

        await eventually(answers, 10, 0.1)
        load = runWrk(url, 16)
        # The load is on once wrk's connections to HAProxy are established.
        await eventually(lambda: establishedAtLeast(front, 8), 30)
        for name in ("a", "b"):
            old = instances[name]
            old.transport.signalProcess(signal.SIGTERM)
            assert int(await timeout(old.ended, 30)) == 0, old.output
            assert re.search(r"0 closed unserved", old.output), old.output
            instances[name] = await instance(name)
            # HAProxy sends it requests again: one of its workers answers.
            await eventually(lambda: answeredBy(set(workerPids(instances[name]).values())), 30)
        out, err, code = await timeout(load, 60)
        text = out.decode()
        assert code == 0, text + err.decode()
        requests, errors = wrkErrors(text)
        assert requests > 100 and errors == 0, text
        # The PROXY header's source is the client's own address and port.
        reply, port = await viaHAProxy()
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert re.fullmatch(rb"v1 \d+ 127\.0\.0\.1:%d\n" % port, body), reply
    finally:
        if load is not None and not load.called:
            await timeout(load, 60)
        haproxy.transport.signalProcess(signal.SIGTERM)
        await timeout(haproxy.ended, 30)
        for proc in instances.values():
            assert await stopCleanly(proc) == 0, proc.output


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed")
@pytest_twisted.ensureDeferred
async def test_socketActivatedTypeNotify(workdir: str) -> None:
    """
    The docs' unit file, minus systemd: C{systemd-socket-activate} owns the
    listening socket (named C{web}) and starts twistd on the first
    connection, which waits in the backlog and is served; the service
    notifies READY=1 over NOTIFY_SOCKET.
    """
    reader = NotifyReader(os.path.join(workdir, "notify"))
    port = freePort()
    argv = [
        shutil.which("systemd-socket-activate") or "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{port}",
        "--fdname=web",
        f"--setenv=NOTIFY_SOCKET={reader.path}",
        *SERVERSOCK,
        "--listen",
        "systemd:domain=INET:name=web",
        "--workers",
        "1",
    ]
    proc = Proc()
    theReactor().spawnProcess(proc, argv[0], argv, env=dict(os.environ), path=workdir)
    try:
        await eventually(lambda: listening(port), 30)
        client = await connect(port)
        client.transport.write(b"activated")
        assert await client.waitFor(9) == b"activated"
        client.transport.loseConnection()
        await eventually(lambda: reader.has("READY"), 30)
        assert "serversock listening on systemd:domain=INET:name=web" in proc.output
    finally:
        proc.transport.signalProcess(signal.SIGTERM)
        assert int(await timeout(proc.ended, 30)) == 0, proc.output
        reader.close()
