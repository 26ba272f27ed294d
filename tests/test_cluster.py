"""
Cluster mode (C{workers=N} on C{gecko:}/C{geckounix:}) in real processes,
started the way users start them - the venv's installed C{twistd}, C{twist}
and C{daphne} scripts, a C{.tac} file, a plain script file - and driven by
curl: requests are answered by the workers (never the primary), SIGTERM
stops every process with exit status 0, a SIGKILLed worker loses nothing
and comes back, and bad input is a clear error and a non-zero exit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.utils import getProcessOutputAndValue

from twisted_serversock.cluster.primary import splitCommandLine
from twisted_serversock.endpoints import GeckoServerEndpoint, GeckoUNIXServerEndpoint, workerCount
from twisted_serversock.ipc.dispatch import INITIAL_WINDOW, MAX_WAITING

from ._procs import BIN, PRIMARY_LISTENING, READY, SERVES, TWIST, TWISTD, Proc, alive, ask, childrenOf, listenQueue, spawn, twistdAsNobody, untilHolding
from .conftest import connect, eventually, theReactor, timeout

DAPHNE = os.path.join(BIN, "daphne")
CURL = shutil.which("curl") or "/usr/bin/curl"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"

PID_RPY = """\
import os
from twisted.web.resource import Resource


class Pid(Resource):
    isLeaf = True

    def render_GET(self, request):
        host = getattr(request.getClientAddress(), "host", "unix")
        return b"%d %s" % (os.getpid(), host.encode())


resource = Pid()
"""


class _NoReactor:
    """
    Stands in for the reactor where an endpoint is only parsed.
    """


# ----------------------------------------------------------------------
# Parsing (no process).


@pytest.mark.parametrize(
    "description",
    ["gecko:port=0:workers=2", "gecko:0:WORKERS=auto", "geckounix:/tmp/x.sock:workers=4", "gecko:port=0:workers=0"],
)
def test_workersParses(description: str) -> None:
    endpoint = serverFromString(_NoReactor(), description)
    assert "workers" not in endpoint.clusterDescription()


@pytest.mark.parametrize(
    "description, message",
    [
        ("gecko:port=0:workers=-1", "workers must be from 0 to 1024 or 'auto', not -1"),
        ("gecko:port=0:workers=lots", "workers must be a whole number or 'auto', not 'lots'"),
        ("gecko:port=0:workers=", "workers must be a whole number or 'auto', not ''"),
        ("geckounix:/tmp/x.sock:workers=5000", "workers must be from 0 to 1024 or 'auto', not 5000"),
        ("gecko:port=0:workers=1.5", "workers must be a whole number or 'auto', not '1.5'"),
    ],
)
def test_badWorkersIsAValueErrorNamingIt(description: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        serverFromString(_NoReactor(), description)
    assert str(e.value) == message


def test_workersKeyword() -> None:
    assert workerCount("auto") == len(os.sched_getaffinity(0))
    assert workerCount(3) == 3
    for bad in (True, -2, 2.0, None):
        with pytest.raises(ValueError, match="workers"):
            GeckoServerEndpoint(_NoReactor(), 0, workers=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        GeckoUNIXServerEndpoint(_NoReactor(), "/tmp/x.sock", workers="many")


def test_uidsSelfStaysAToken() -> None:
    """
    C{uids=self} is not resolved when parsed (a C{twistd --uid} primary
    parses as root, its workers as the user): the description says
    C{self}.
    """
    assert serverFromString(_NoReactor(), "geckounix:@app:uids=self,0:workers=2").clusterDescription() == "geckounix:@app:uids=self,0"


def test_descriptionIsWhatTheUserWrote() -> None:
    """
    An endpoint's description is the string the user wrote (logs name the
    listener by it); its cluster description, by which workers find the
    primary's listener, is that string without C{workers=} - whatever the
    endpoint keeps inside.  An endpoint made in Python has the string of
    its arguments.
    """
    endpoint = serverFromString(_NoReactor(), "gecko:8081:loopback=1:workers=2")
    assert endpoint.description == "gecko:8081:loopback=1:workers=2"
    assert endpoint.clusterDescription() == "gecko:8081:loopback=1"
    endpoint.somethingNew = 1  # a new attribute does not change the key
    assert endpoint.clusterDescription() == "gecko:8081:loopback=1"
    unix = serverFromString(_NoReactor(), "geckounix:/run/a\\:b.sock:Workers=4:mode=660")
    assert unix.clusterDescription() == "geckounix:/run/a\\:b.sock:mode=660"
    assert GeckoServerEndpoint(_NoReactor(), 8080, loopback=True, workers=2).description == "gecko:port=8080:loopback=1:workers=2"
    assert GeckoUNIXServerEndpoint(_NoReactor(), "/run/x.sock", mode=0o660).description == "geckounix:path=/run/x.sock:mode=660"


def test_descriptionsDifferByEveryParameterButWorkers() -> None:
    one = serverFromString(_NoReactor(), "gecko:port=0:loopback=1:workers=2").clusterDescription()
    assert one == serverFromString(_NoReactor(), "gecko:port=0:loopback=1:workers=3").clusterDescription()
    assert one != serverFromString(_NoReactor(), "gecko:port=0:loopback=1:backlog=5:workers=2").clusterDescription()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["py", "serve.py", "a"], ([], "script", "serve.py", ["a"])),
        (["py", "-u", "-X", "dev", "-Wignore", "s.py", "-n"], (["-u", "-X", "dev", "-W", "ignore"], "script", "s.py", ["-n"])),
        (["py", "-um", "twisted", "web"], (["-u"], "module", "twisted", ["web"])),
        (["py", "-c", "pass", "x"], ([], "command", "pass", ["x"])),
    ],
)
def test_commandLineSplit(argv: list[str], expected: tuple[Any, ...]) -> None:
    assert tuple(splitCommandLine(argv)) == expected


def test_programFromStandardInputCannotBeRunAgain() -> None:
    with pytest.raises(ValueError, match="standard input"):
        splitCommandLine(["py", "-"])


# ----------------------------------------------------------------------
# Helpers for the real processes.


@pytest.fixture
def site() -> Iterator[str]:
    """
    A short world-readable directory with C{pid.rpy}, answering its
    process id and the client's address.
    """
    d = tempfile.mkdtemp(prefix="/tmp/clu")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "pid.rpy"), "w") as f:
        f.write(PID_RPY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def curl(*args: str) -> tuple[bytes, int]:
    out, err, code = await timeout(
        getProcessOutputAndValue(CURL, ["-sS", "--max-time", "30", *args], env=dict(os.environ)), 40
    )
    return out + err, code


async def pidsAnswering(url: str, *extra: str, wanted: int = 2, seconds: float = 30) -> set[int]:
    """
    GET C{url} until C{wanted} different pids answered (or C{seconds}
    passed: a worker may still be starting); the pids.
    """
    pids: set[int] = set()
    deadline = theReactor().seconds() + seconds
    while theReactor().seconds() < deadline:
        out, code = await curl(*extra, url)
        assert code == 0, out
        pids.add(int(out.split()[0]))
        if len(pids) >= wanted:
            break
    return pids




async def stoppedCleanly(proc: Proc, pids: set[int]) -> None:
    """
    SIGTERM the primary: it exits 0 and none of C{pids} outlives it.
    """
    proc.transport.signalProcess(signal.SIGTERM)
    code = await timeout(proc.ended, 40)
    assert code == 0 and proc.signal is None, proc.output
    await eventually(lambda: not any(alive(p) for p in pids), 10)


async def servedByWorkers(proc: Proc, url: str, *extra: str) -> set[int]:
    """
    Both workers answer C{url}; neither is the primary, both are its
    children.  The worker pids.
    """
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    pids = await pidsAnswering(url, *extra)
    primary = proc.transport.pid
    assert len(pids) == 2 and primary not in pids, (pids, primary, proc.output)
    assert pids == childrenOf(primary), proc.output
    return pids


# ----------------------------------------------------------------------
# Each way users start a server.


@pytest.mark.parametrize("reactor", ["default", "asyncio"])
@pytest_twisted.ensureDeferred
async def test_twistdWeb(site: str, reactor: str) -> None:
    """
    C{twistd -n web --listen gecko:...:workers=2}: two workers answer, with
    no pidfile of their own (the primary's, in the working directory, stays
    its own), on the primary's reactor, and their log lines reach the
    primary's log with their pids.
    """
    options = ["--reactor=asyncio"] if reactor == "asyncio" else []
    proc = spawn([*TWISTD, "-n", *options, "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    pids = await servedByWorkers(proc, f"http://127.0.0.1:{port}/pid.rpy")
    with open(os.path.join(site, "twistd.pid")) as f:
        assert int(f.read()) == proc.transport.pid
    for pid in pids:
        # The access-log line is relayed after the response is sent: wait for it.
        await proc.waitFor(rf"\[worker \d pid {pid}\] .*\"GET /pid\.rpy HTTP/1\.1\" 200")
    if reactor == "asyncio":
        for pid in pids:
            assert re.search(rf"\[worker \d pid {pid}\] .*reactor class: twisted\.internet\.asyncioreactor", proc.output)
    # One prefix a relayed line - the worker's number and pid - and no
    # logger namespace (the primary's or the worker's) beside it.
    workerLines = re.findall(r"^.*\[worker \d pid \d+\].*$", proc.output, re.M)
    assert workerLines and not [line for line in workerLines if re.search(r"#(debug|info|warn|error|critical)\]", line)], workerLines
    # The primary names its listener as the user wrote it.
    assert re.search(r"Cluster primary \(pid \d+\): gecko:port=0:loopback=1:workers=2 on 127\.0\.0\.1:\d+ ", proc.output), proc.output
    await stoppedCleanly(proc, pids)
    assert not os.path.exists(os.path.join(site, "twistd.pid"))
    assert "Traceback" not in proc.output


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest_twisted.ensureDeferred
async def test_workersRunAsThePrimarysUserAndGroup(site: str) -> None:
    """
    C{twistd -u/-g}: the primary binds as root, drops its privileges, and
    only then starts the workers, which run as that user and group.
    """
    proc = twistdAsNobody(site, ["web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site])
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    pids = await servedByWorkers(proc, f"http://127.0.0.1:{port}/pid.rpy")
    for pid in pids | {proc.transport.pid}:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        assert re.search(r"^Uid:\s+65534\s+65534\s+65534", status, re.M), status
        assert re.search(r"^Gid:\s+65534\s+65534\s+65534", status, re.M), status
    await stoppedCleanly(proc, pids)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest_twisted.ensureDeferred
async def test_uidsSelfIsTheUserThatServes(site: str) -> None:
    """
    C{twistd -u 65534 ... geckounix:@name:uids=self:workers=2}: the primary
    parses the endpoint as root and the workers as nobody, yet they agree
    on it (C{self} stays a token); the cluster serves nobody, the user it
    runs as, and refuses root, the user that bound the socket.
    """
    name = f"tss-self-{os.getpid()}"
    proc = twistdAsNobody(site, ["web", "--listen", f"geckounix:@{name}:uids=self:workers=2", "--path", site])
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    url = ["--abstract-unix-socket", name, "http://localhost/pid.rpy"]
    asNobody = ["--reuid=65534", "--regid=65534", "--clear-groups", CURL, "-sS", "--max-time", "30", *url]
    workers = childrenOf(proc.transport.pid)
    for _ in range(4):
        out, err, code = await timeout(getProcessOutputAndValue(SETPRIV, asNobody, env=dict(os.environ)), 40)
        assert code == 0 and int(out.split()[0]) in workers, (out, err, proc.output)
    out, code = await curl(*url)  # as root
    assert code != 0 and b"unix" not in out, (out, proc.output)
    await proc.waitFor(r"Refused a connection to .* uid 0: uid not allowed")
    assert not proc.ended.called and childrenOf(proc.transport.pid) == workers, proc.output
    await stoppedCleanly(proc, workers)


@pytest_twisted.ensureDeferred
async def test_twistWeb(site: str) -> None:
    proc = spawn([*TWIST, "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    pids = await servedByWorkers(proc, f"http://127.0.0.1:{port}/pid.rpy")
    await stoppedCleanly(proc, pids)


@pytest_twisted.ensureDeferred
async def test_tacFile(site: str) -> None:
    with open(os.path.join(site, "app.tac"), "w") as f:
        f.write(
            textwrap.dedent(
                """\
                from twisted.application import service, strports
                from twisted.web import server, static

                application = service.Application("cluster")
                root = static.File(".")
                root.processors = {".rpy": __import__("twisted.web.script", fromlist=["x"]).ResourceScript}
                strports.service("gecko:port=0:loopback=1:workers=2", server.Site(root)).setServiceParent(application)
                """
            )
        )
    proc = spawn([*TWISTD, "-n", "--pidfile=", "-y", "app.tac"], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    pids = await servedByWorkers(proc, f"http://127.0.0.1:{port}/pid.rpy")
    await stoppedCleanly(proc, pids)


@pytest_twisted.ensureDeferred
async def test_geckounix(site: str) -> None:
    path = os.path.join(site, "web.sock")
    proc = spawn([*TWISTD, "-n", "--pidfile=", "web", "--listen", f"geckounix:path={path}:workers=2", "--path", site], site)
    # The primary names the listener as the user wrote it.
    await proc.waitFor(rf"Cluster primary \(pid \d+\): geckounix:path={re.escape(path)}:workers=2 on {re.escape(path)} is served by")
    pids = await servedByWorkers(proc, "http://localhost/pid.rpy", "--unix-socket", path)
    await stoppedCleanly(proc, pids)
    assert not os.path.exists(path)


SCRIPT = """\
import os
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log

from twisted_serversock import cluster


class Pid(Protocol):
    def dataReceived(self, data):
        self.transport.write(b"HTTP/1.0 200 OK\\r\\n\\r\\n%d" % os.getpid())
        self.transport.loseConnection()


def failed(failure):
    log.msg("LISTEN FAILED: " + failure.getErrorMessage())
    reactor.stop()


log.startLogging(sys.stdout)
log.msg("role: " + ("worker %d" % cluster.workerIndex() if cluster.isWorker() else "primary"))
description = sys.argv[1]
if len(sys.argv) > 2:
    # The mismatch case: the first process to run leaves a mark, so the
    # workers (which run later) listen on something else.
    mark = sys.argv[2]
    if os.path.exists(mark):
        description = description.replace("loopback=1", "loopback=1:backlog=7")
    else:
        open(mark, "w").close()
serverFromString(reactor, description).listen(Factory.forProtocol(Pid)).addErrback(failed)
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_plainScript(site: str) -> None:
    with open(os.path.join(site, "serve.py"), "w") as f:
        f.write(SCRIPT)
    proc = spawn([sys.executable, "serve.py", "gecko:port=0:loopback=1:workers=2"], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    pids = await servedByWorkers(proc, f"http://127.0.0.1:{port}/")
    # twisted_serversock.cluster says which role the program runs in.
    assert re.search(r"^\S+ \S+ \[-\] role: primary$", proc.output, re.M), proc.output
    for index in (1, 2):
        assert re.search(rf"\[worker {index} pid \d+\] .*role: worker {index}$", proc.output, re.M), proc.output
    await stoppedCleanly(proc, pids)


LEAK_SCRIPT = """\
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log


class Sockets(Protocol):
    def connectionMade(self):
        # What os.system and os.popen do: the child inherits every
        # inheritable descriptor.
        listing = subprocess.run(
            ["/bin/sh", "-c", "for f in /proc/$$/fd/*; do readlink $f; done"],
            close_fds=False,
            capture_output=True,
        ).stdout.decode()
        sockets = [line for line in listing.split() if line.startswith("socket:")]
        self.transport.write(b"HTTP/1.0 200 OK\\r\\n\\r\\nsockets: %d" % len(sockets))
        self.transport.loseConnection()


log.startLogging(sys.stdout)
serverFromString(reactor, sys.argv[1]).listen(Factory.forProtocol(Sockets))
reactor.run()
"""


@pytest_twisted.ensureDeferred
async def test_connectionsDoNotLeakIntoTheWorkersChildProcesses(site: str) -> None:
    """
    A process a cluster worker's protocol starts with C{close_fds=False}
    (as C{os.system} and C{os.popen} do) inherits no socket: a handed-over
    connection is close-on-exec in the worker, as it is in a plain
    Twisted server.
    """
    with open(os.path.join(site, "leak.py"), "w") as f:
        f.write(LEAK_SCRIPT)
    proc = spawn([sys.executable, "leak.py", "gecko:port=0:loopback=1:workers=1"], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    worker = int((await proc.waitFor(SERVES)).group(2))
    out, code = await curl(f"http://127.0.0.1:{port}/")
    assert code == 0 and out == b"sockets: 0", (out, proc.output)
    await stoppedCleanly(proc, {worker})


@pytest_twisted.ensureDeferred
async def test_daphne(site: str) -> None:
    with open(os.path.join(site, "app.py"), "w") as f:
        f.write(
            textwrap.dedent(
                """\
                import os


                async def application(scope, receive, send):
                    assert scope["type"] == "http"
                    await send({"type": "http.response.start", "status": 200, "headers": []})
                    await send({"type": "http.response.body", "body": b"%d" % os.getpid()})
                """
            )
        )
    proc = spawn([DAPHNE, "-e", "gecko:port=0:loopback=1:workers=2", "app:application"], site)
    port = int((await proc.waitFor(r"Listening on TCP address 127\.0\.0\.1:(\d+)")).group(1))
    primary = proc.transport.pid
    await eventually(lambda: len(childrenOf(primary)) == 2, 30, 0.1)
    pids = await pidsAnswering(f"http://127.0.0.1:{port}/")
    assert pids == childrenOf(primary) and primary not in pids, proc.output
    await stoppedCleanly(proc, pids)


@pytest_twisted.ensureDeferred
async def test_daemonizedPrimary(site: str) -> None:
    """
    C{twistd} without C{-n}: the primary daemonizes (before it binds), its
    workers run in the foreground under it, and SIGTERM stops them all.
    """
    pidfile = os.path.join(site, "p.pid")
    logfile = os.path.join(site, "p.log")
    launcher = spawn(
        [*TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site],
        site,
    )
    assert await timeout(launcher.ended, 30) == 0, launcher.output
    with open(pidfile) as f:
        daemon = int(f.read())

    def logged(pattern: str) -> re.Match[str] | None:
        with open(logfile) as f:
            return re.search(pattern, f.read())

    try:
        await eventually(lambda: logged(READY + r"[\s\S]*" + READY) is not None, 30, 0.1)
        match = logged(PRIMARY_LISTENING)
        assert match is not None
        pids = await pidsAnswering(f"http://127.0.0.1:{match.group('port')}/pid.rpy")
        assert len(pids) == 2 and daemon not in pids and pids == childrenOf(daemon)
    finally:
        os.kill(daemon, signal.SIGTERM)
    await eventually(lambda: not alive(daemon) and not any(alive(p) for p in pids), 30, 0.1)
    assert logged(r"Server Shut Down") is not None
    assert not os.path.exists(pidfile)


@pytest_twisted.ensureDeferred
async def test_sigkilledWorkerLosesNothingAndComesBack(site: str) -> None:
    """
    A worker that stops answering (SIGSTOP) is handed connections it never
    acknowledges; SIGKILL it, and those go to the other worker - every
    request is answered - and a new worker takes its place.
    """
    proc = spawn([*TWISTD, "-n", "--pidfile=", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    url = f"http://127.0.0.1:{port}/pid.rpy"
    pids = await servedByWorkers(proc, url)
    victim, survivor = sorted(pids)
    os.kill(victim, signal.SIGSTOP)
    served = '"GET /pid.rpy HTTP/1.1" 200'
    before = proc.output.count(served)
    requests = [defer.ensureDeferred(curl(url)) for _ in range(6)]
    # Until the requests reach the primary: the survivor answers its share,
    # the victim holds the rest unacknowledged.
    await eventually(lambda: proc.output.count(served) >= before + 3, 30, 0.05)
    await untilHolding(victim)
    os.kill(victim, signal.SIGKILL)
    answers = await timeout(defer.gatherResults(requests), 40)
    assert all(code == 0 for _out, code in answers), answers
    assert {int(out.split()[0]) for out, _code in answers} == {survivor}
    assert re.search(r"went away holding \d+ unacknowledged connection", proc.output), proc.output
    started = r"Started worker \d \(pid (\d+)\)"
    newPid = int((await proc.waitFor(started + r"[\s\S]*" + started + r"[\s\S]*" + started)).group(3))
    assert newPid not in pids
    await proc.waitFor(rf"\[worker \d pid {newPid}\] .*Cluster worker \d \(pid {newPid}\) serves")
    assert await pidsAnswering(url) == {survivor, newPid}
    await stoppedCleanly(proc, {survivor, newPid})


@pytest_twisted.ensureDeferred
async def test_haproxyWrapping(site: str) -> None:
    """
    C{haproxy:gecko:...:workers=2}: the PROXY-protocol wrapper is part of
    the factory, so it runs in the workers, which see the proxied address.
    """
    proc = spawn(
        [*TWISTD, "-n", "--pidfile=", "web", "--listen", "haproxy:gecko:port=0:loopback=1:workers=2", "--path", site], site
    )
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    client = await connect(port)
    client.transport.write(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET /pid.rpy HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = await client.whenClosed()
    assert reply.startswith(b"HTTP/1.0 200"), reply
    pid, host = reply.split(b"\r\n\r\n", 1)[1].split()
    assert host == b"192.0.2.7" and int(pid) in childrenOf(proc.transport.pid)
    await stoppedCleanly(proc, childrenOf(proc.transport.pid))


# ----------------------------------------------------------------------
# Bad input: a clear error and a non-zero exit, never a hang.


@pytest.mark.parametrize(
    "listen, message",
    [
        (["gecko:port=0:loopback=1:workers=-1"], "workers must be from 0 to 1024 or 'auto', not -1"),
        (["gecko:port=0:loopback=1:workers=lots"], "workers must be a whole number or 'auto', not 'lots'"),
        (
            ["gecko:port=0:loopback=1:workers=2", "gecko:port=0:loopback=1:workers=2"],
            "this description is already listening in cluster mode",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_badInputFailsAtOnce(site: str, listen: list[str], message: str) -> None:
    argv = [*TWISTD, "-n", "--pidfile=", "web", "--path", site]
    for description in listen:
        argv += ["--listen", description]
    proc = spawn(argv, site)
    code = await timeout(proc.ended, 40)
    assert code != 0 and message in proc.output, proc.output
    assert "Started worker" not in proc.output


@pytest_twisted.ensureDeferred
async def test_workersThatCannotStartStopTheCluster(site: str) -> None:
    """
    A program whose workers die before they attach - here it also listens
    on a plain C{tcp:} port, which only the primary can bind - is not
    restarted forever: the primary says why and exits 1.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        busy = s.getsockname()[1]
    argv = [*TWISTD, "-n", "--pidfile=", "web", "--path", site, "--listen", "gecko:port=0:loopback=1:workers=2"]
    proc = spawn(argv + ["--listen", f"tcp:{busy}:interface=127.0.0.1"], site)
    code = await timeout(proc.ended, 60)
    assert code == 1, proc.output
    assert re.search(r"Cluster mode cannot go on: worker \d exited 3 times before its program started", proc.output), proc.output
    assert "Address already in use" in proc.output
    pids = {int(p) for p in re.findall(r"Started worker \d \(pid (\d+)\)", proc.output)}
    await eventually(lambda: not any(alive(p) for p in pids), 10)


@pytest_twisted.ensureDeferred
async def test_workerListeningElsewhereStopsTheCluster(site: str) -> None:
    """
    A program whose workers listen on a description the primary does not
    have: the primary says so, stops its workers and exits 1.
    """
    with open(os.path.join(site, "serve.py"), "w") as f:
        f.write(SCRIPT)
    proc = spawn([sys.executable, "serve.py", "gecko:port=0:loopback=1:workers=2", "mark"], site)
    code = await timeout(proc.ended, 60)
    assert code == 1, proc.output
    assert "Cluster mode cannot go on" in proc.output and "backlog=7" in proc.output, proc.output
    pids = {int(p) for p in re.findall(r"Started worker \d \(pid (\d+)\)", proc.output)}
    assert pids
    await eventually(lambda: not any(alive(p) for p in pids), 10)


@pytest_twisted.ensureDeferred
async def test_saturatedWorkerLeavesTheExcessInTheKernelBacklog(site: str) -> None:
    """
    With its only worker stopped (SIGSTOP), the primary holds a bounded
    number of connections and pauses accepting: the rest wait in the
    kernel's backlog, not in the primary.  Woken, the worker serves all.
    """
    with open(os.path.join(site, "serve.py"), "w") as f:
        f.write(SCRIPT)
    proc = spawn([sys.executable, "serve.py", "gecko:port=0:loopback=1:workers=1"], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    worker = int((await proc.waitFor(SERVES)).group(2))
    os.kill(worker, signal.SIGSTOP)
    try:
        pending = [defer.ensureDeferred(ask(port, 90)) for _ in range(200)]
        await proc.waitFor(r"pausing accepts; new connections wait in the kernel's backlog")
        # The primary holds at most MAX_WAITING plus the stopped worker's
        # window plus what one accept run had taken; the rest, most of
        # them, is the kernel's.
        await eventually(lambda: listenQueue(port) >= 200 - 2 * (MAX_WAITING + INITIAL_WINDOW), 20)
        os.kill(worker, signal.SIGCONT)
        replies = await timeout(defer.gatherResults(pending, consumeErrors=True), 90)
        assert len(replies) == 200 and all(reply.endswith(b"\r\n\r\n%d" % worker) for reply in replies), replies
        assert listenQueue(port) == 0
    finally:
        os.kill(worker, signal.SIGCONT)
    await stoppedCleanly(proc, {worker})


@pytest_twisted.ensureDeferred
async def test_sighupToTheWholeProcessGroup(site: str) -> None:
    """
    SIGHUP sent to the cluster's whole process group (a terminal hangup,
    C{kill -HUP -PGID}) is the primary's graceful reload: the workers ignore
    it, retire once their successors are ready and exit 0, and requests made
    meanwhile are all answered.
    """
    setsid = shutil.which("setsid") or "/usr/bin/setsid"
    proc = spawn([setsid, *TWISTD, "-n", "--pidfile=", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    url = f"http://127.0.0.1:{port}/pid.rpy"
    primary = proc.transport.pid
    assert os.getpgid(primary) == primary  # its own group: only the cluster gets the signal
    old = await servedByWorkers(proc, url)
    answers: list[tuple[bytes, int]] = []
    running = [True]

    async def stream() -> None:
        while running[0]:
            answers.append(await curl(url))

    streams = [defer.ensureDeferred(stream()) for _ in range(2)]
    try:
        await eventually(lambda: len(answers) >= 4, 30, 0.05)
        os.killpg(primary, signal.SIGHUP)
        await proc.waitFor(r"Reload done")
        for pid in old:
            await proc.waitFor(rf"worker \d \(pid {pid}\) exited \(status 0\)")
        count = len(answers)
        await eventually(lambda: len(answers) >= count + 4, 30, 0.05)
    finally:
        running[0] = False
        await timeout(defer.gatherResults(streams, consumeErrors=True), 60)
    assert all(code == 0 for _out, code in answers), answers
    assert not re.search(r"died \(signal", proc.output), proc.output
    new = await pidsAnswering(url)
    assert len(new) == 2 and not new & old, (new, old)
    await stoppedCleanly(proc, new)
