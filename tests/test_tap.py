"""
C{twistd serversock} in real processes: echo served from two worker
processes, a killed worker restarted with nothing lost that the parent had
not handed over, SIGTERM's graceful stop with exit status 0, any endpoint
string, and bad input refused before any worker starts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import textwrap

import pytest
import pytest_twisted
from twisted.internet import defer

from ._procs import SERVERSOCK, STARTING, Proc, echo, serving, spawn, stopCleanly, untilHolding, untilRead, workerPids
from .conftest import connect, connectUNIX, eventually, timeout


async def started(argv: list[str], cwd: str, workers: int) -> tuple[Proc, int]:
    """
    Start C{twistd serversock ARGV} in C{cwd}; once it listens and its
    C{workers} workers are ready, the process and its port.
    """
    proc = spawn(SERVERSOCK + argv, cwd)
    return proc, await serving(proc, workers)


@pytest_twisted.ensureDeferred
async def test_twoWorkersServeEchoAndStopCleanly(workdir: str) -> None:
    """
    Two worker processes share the connections; SIGTERM closes the port,
    logs each worker's connection count and exits 0.
    """
    proc, port = await started(["--listen", "gecko:port=0:loopback=1", "--workers", "2"], workdir, 2)
    try:
        replies = await defer.gatherResults([defer.ensureDeferred(echo(port, b"hello %d" % i)) for i in range(20)])
        assert replies == [b"hello %d" % i for i in range(20)]
        pids = workerPids(proc)
        assert len(pids) == 2 and os.getpid() not in pids.values()
    finally:
        status = await stopCleanly(proc)
    assert status == 0, proc.output
    counts = {int(i): int(n) for i, n in re.findall(r"Worker (\d+): (\d+) connection\(s\) adopted", proc.output)}
    assert set(counts) == {1, 2} and sum(counts.values()) == 20 and min(counts.values()) > 0, proc.output
    assert "Traceback" not in proc.output
    # Each worker's last line, relayed with one prefix: its number and pid.
    for index, pid in pids.items():
        assert re.search(rf"^\S+ \[worker {index} pid {pid}\] Worker {index} adopted \d+ connection\(s\); exiting$", proc.output, re.M), proc.output
    with pytest.raises(Exception):
        await connect(port)


@pytest_twisted.ensureDeferred
async def test_killedWorkerIsRestartedAndLosesNothingHeld(workdir: str) -> None:
    """
    A worker is stopped (SIGSTOP) so that connections handed to it stay
    unacknowledged, then SIGKILLed while a stream of new connections
    arrives: every connection is served - the parent re-sends what the dead
    worker never adopted - and the worker is restarted.
    """
    proc, port = await started(["--listen", "gecko:port=0:loopback=1", "--workers", "2"], workdir, 2)
    try:
        victim = workerPids(proc)[1]
        os.kill(victim, signal.SIGSTOP)
        first = [defer.ensureDeferred(echo(port, b"held %d" % i)) for i in range(10)]
        await untilHolding(victim)
        os.kill(victim, signal.SIGKILL)
        # A stream of new connections, each opened once the one before is
        # served, while the parent learns of the death and re-sends.
        stream = [await timeout(defer.ensureDeferred(echo(port, b"stream %d" % i)), 30) for i in range(20)]
        replies = await timeout(defer.gatherResults(first), 30)
        assert replies == [b"held %d" % i for i in range(10)]
        assert stream == [b"stream %d" % i for i in range(20)]
        await proc.waitFor(r"Worker 1 \(pid %d\) died \(signal 9\)" % victim)
        assert "handing them to another child" in proc.output, proc.output
        await eventually(lambda: workerPids(proc)[1] != victim, seconds=20)
        await proc.waitFor(r"Worker 1 \(pid %d\) is ready" % workerPids(proc)[1])
        assert await echo(port, b"after restart") == b"after restart"
    finally:
        status = await stopCleanly(proc)
    assert status == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_sigtermLetsOpenConnectionsFinish(workdir: str) -> None:
    """
    After SIGTERM the port is closed at once, but an open connection keeps
    being served until its client closes it; then the process exits 0.
    """
    proc, port = await started(["--listen", "gecko:port=0:loopback=1", "--workers", "1", "--grace", "20"], workdir, 1)
    client = await connect(port)
    client.transport.write(b"before")
    await client.waitFor(6)
    proc.transport.signalProcess(signal.SIGTERM)
    await proc.waitFor(r"\(TCP Port \d+ Closed\)")  # Twisted's own line
    with pytest.raises(Exception):
        await connect(port)
    # The worker has its stop message: it is draining.
    await proc.waitFor(r"Told 1 worker\(s\) to finish their connections")
    await untilRead(workerPids(proc)[1])
    client.transport.write(b" after")
    assert await client.waitFor(12) == b"before after"
    assert not proc.ended.called
    client.transport.loseConnection()
    assert int(await timeout(proc.ended, 20)) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_graceEndsIdleConnections(workdir: str) -> None:
    """
    A connection still open when the grace period ends is closed, and the
    process still exits 0.
    """
    proc, port = await started(["--listen", "gecko:port=0:loopback=1", "--workers", "1", "--grace", "0.5"], workdir, 1)
    client = await connect(port)
    client.transport.write(b"x")
    await client.waitFor(1)
    assert await stopCleanly(proc) == 0, proc.output
    await client.whenClosed()
    assert "aborting 1 open connection" in proc.output


@pytest.mark.parametrize("kind", ["tcp", "unix", "geckounix"])
@pytest_twisted.ensureDeferred
async def test_anyEndpointString(workdir: str, kind: str) -> None:
    """
    Plain Twisted endpoints hand their connections over too (the parent's
    Twisted transport goes without shutting the worker's copy down).
    """
    path = os.path.join(workdir, "s.sock")
    listen = {"tcp": "tcp:0:interface=127.0.0.1", "unix": f"unix:{path}", "geckounix": f"geckounix:{path}"}[kind]
    proc = spawn(SERVERSOCK + ["--listen", listen, "--workers", "1"], workdir)
    try:
        match = await proc.waitFor(r"serversock listening on \S+ \((.*)\)")
        await proc.waitFor(r"Worker 1 \(pid \d+\) is ready")
        for i in range(5):
            if kind == "tcp":
                client = await connect(int(match.group(1).rsplit(":", 1)[1]))
            else:
                client = await connectUNIX(path)
            client.transport.write(b"over %s %d" % (kind.encode(), i))
            expected = b"over %s %d" % (kind.encode(), i)
            assert await client.waitFor(len(expected)) == expected
            client.transport.loseConnection()
            await client.whenClosed()
        assert "serving them in the parent" not in proc.output
    finally:
        assert await stopCleanly(proc) == 0, proc.output


PEER_FACTORY = """
import os
from twisted.internet.protocol import Factory, Protocol

class Peer(Protocol):
    # After the first bytes: behind haproxy: the PROXY header comes first
    # (Twisted's wrapper connects the protocol before it has read it).
    def dataReceived(self, data):
        peer = self.transport.getPeer()
        self.transport.write(b"%s %d\\n" % (getattr(peer, "host", "unix").encode(), os.getpid()))
        self.transport.loseConnection()

factory = Factory.forProtocol(Peer)
"""


@pytest_twisted.ensureDeferred
async def test_proxyProtocolIsParsedInTheWorker(workdir: str) -> None:
    """
    Behind C{haproxy:}, the parent hands the connection over before reading
    its PROXY header; the worker parses it, so the worker's protocol sees
    the client's address (and the parent serves nothing itself).
    """
    with open(os.path.join(workdir, "peer.py"), "w") as f:
        f.write(PEER_FACTORY)
    proc = spawn(
        SERVERSOCK + ["--listen", "haproxy:gecko:port=0:loopback=1", "--workers", "1", "--factory", "peer.factory"], workdir
    )
    try:
        port = int((await proc.waitFor(STARTING)).group(1))  # Twisted's own line
        await proc.waitFor(r"Worker 1 \(pid \d+\) is ready")
        pid = workerPids(proc)[1]
        for i in range(3):
            client = await connect(port)
            client.transport.write(b"PROXY TCP4 10.1.2.%d 10.0.0.1 5555 80\r\nhello" % i)
            assert (await timeout(client.whenClosed(), 30)) == b"10.1.2.%d %d\n" % (i, pid)
        assert "serving them in the parent process" not in proc.output
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_inProcessWithZeroWorkersAndAFactoryFromTheWorkingDirectory(workdir: str) -> None:
    """
    --workers 0 serves in the parent; --factory names a zero-argument
    callable in a module of the working directory (workers import it too).
    """
    with open(os.path.join(workdir, "shout.py"), "w") as f:
        f.write(
            textwrap.dedent(
                """
                from twisted.internet.protocol import Factory, Protocol

                class Shout(Protocol):
                    def dataReceived(self, data):
                        self.transport.write(data.upper())

                def make():
                    return Factory.forProtocol(Shout)
                """
            )
        )
    for workers in ("0", "1"):
        proc, port = await started(
            ["--listen", "gecko:port=0:loopback=1", "--workers", workers, "--factory", "shout.make"], workdir, int(workers)
        )
        try:
            assert await echo(port, b"quiet") == b"QUIET"
            assert ("Started worker" in proc.output) == (workers == "1")
        finally:
            assert await stopCleanly(proc) == 0, proc.output


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--factory", "no_such_module.factory"], r"--factory no_such_module.factory cannot be imported: no module or package named .no_such_module. in the working directory"),
        (["--factory", "os.sep"], r"--factory os.sep is '/', which is neither an IProtocolFactory"),
        (["--factory", "os.getpid"], r"--factory os.getpid\(\) returned \d+, which is not an IProtocolFactory"),
        (["--factory", "not a name"], r"--factory must be a dotted name"),
        (["--listen", "gecko:port=99999"], r"--listen 'gecko:port=99999': port must be from -1 to 65535, not 99999"),
        (["--listen", "nosuchendpoint:1"], r"--listen 'nosuchendpoint:1': .*nosuchendpoint"),
        (["--workers", "-1"], r"--workers must be 0 or more, not -1"),
        (["--workers", "two"], r"--workers must be a whole number, not 'two'"),
        (["--grace", "-3"], r"--grace must be 0 or more seconds"),
        (["--timeout", "0"], r"--timeout must be a finite number of seconds above 0, not 0.0"),
        (["--timeout", "-5"], r"--timeout must be a finite number of seconds above 0, not -5.0"),
        (["--timeout", "soon"], r"--timeout must be a number of seconds, not 'soon'"),
        (["--timeout", "inf"], r"--timeout must be a finite number of seconds above 0, not inf"),
        (["--max-requests", "-1"], r"--max-requests must be 0 or more, not -1"),
        (["--max-requests-jitter", "x"], r"--max-requests-jitter must be a whole number, not 'x'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_badInputFailsBeforeAnyWorker(workdir: str, argv: list[str], message: str) -> None:
    """
    Each bad option is one clear line and a non-zero exit; no worker is
    started and nothing listens.
    """
    proc = spawn(SERVERSOCK + argv, workdir)
    status = await timeout(proc.ended, 30)
    assert status != 0
    lines = [line for line in proc.output.splitlines() if re.search(message, line)]
    assert len(lines) == 1, proc.output
    assert "Started worker" not in proc.output and "Traceback" not in proc.output


@pytest_twisted.ensureDeferred
async def test_busyPortFailsFast(workdir: str) -> None:
    """
    A port that cannot be had stops twistd at once, with the NSError, and
    starts no worker.
    """
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        proc = spawn(SERVERSOCK + ["--listen", f"gecko:port={busy.getsockname()[1]}:loopback=1", "--workers", "2"], workdir)
        status = await timeout(proc.ended, 30)
    finally:
        busy.close()
    assert status != 0
    assert "NS_ERROR_SOCKET_ADDRESS_IN_USE" in proc.output
    assert "Started worker" not in proc.output
