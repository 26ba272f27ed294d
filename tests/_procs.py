"""
Helpers for tests that run the package in real C{twistd}/C{twist}
processes: the installed scripts, a child process whose output a test can
wait on, and the common checks of a running C{twistd serversock}.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import defer, protocol, utils

from twisted_serversock.ipc.spawn import CHANNEL_FD

from .conftest import _othersCanRead, _revealInterpreter, asNobody, connect, eventually, nobodyEnv, theReactor, timeout

#: The installed scripts, as users start them: not C{python -c} or
#: C{python -m twisted}, which put the working directory on C{sys.path} and
#: so hide whether a module there is found.
BIN = os.path.dirname(sys.executable)
TWISTD = [os.path.join(BIN, "twistd")]
TWIST = [os.path.join(BIN, "twist"), "--log-format=text"]

#: C{twistd serversock} in the foreground, logging to stdout.
SERVERSOCK = TWISTD + ["-n", "--pidfile=", "--logfile=-", "serversock"]

#: The line C{twistd serversock} logs once it listens; group 1 is the port.
LISTENING = r"serversock listening on \S+ \((?:[\d.]+):(\d+)\)"

#: A cluster primary's log line once it listens: the listener as the user
#: wrote it (group C{description}) and the port it bound (group C{port}).
PRIMARY_LISTENING = r"Cluster primary \(pid \d+\): (?P<description>.*) on 127\.0\.0\.1:(?P<port>\d+) is served by"

#: A cluster worker's relayed log line once it serves a listener: its
#: number (group 1) and pid (group 2).
SERVES = r"\[worker (\d+) pid (\d+)\] .*Cluster worker \d+ \(pid \d+\) serves"

#: The primary's log line once a worker is ready: connections go to it from
#: then on (its number, group 1; its pid, group 2).  Wait for this, not for
#: L{SERVES}, before counting on a worker getting connections: a worker
#: writes its own lines (where the primary logs text to standard output),
#: so they may come out before the primary has acted on that worker.
READY = r"Worker (\d+) \(pid (\d+)\) is ready"

#: Twisted's own start line, as C{tcp.Port} logs it ("Site starting on
#: N"); group 1 is the port.
STARTING = r" starting on (\d+)"


class Proc(protocol.ProcessProtocol):
    """
    A child process whose combined output is searchable while it runs.
    """

    def __init__(self) -> None:
        self.output = ""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.signal: int | None = None
        self._waiting: list[tuple[re.Pattern[str], defer.Deferred[re.Match[str]]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for pattern, d in list(self._waiting):
            m = pattern.search(self.output)
            if m:
                self._waiting.remove((pattern, d))
                d.callback(m)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        for pattern, d in self._waiting:
            d.errback(AssertionError(f"process ended before {pattern.pattern!r}:\n{self.output}"))
        self._waiting = []
        self.signal = reason.value.signal
        self.ended.callback(reason.value.exitCode)

    def waitFor(self, regex: str) -> defer.Deferred[re.Match[str]]:
        """
        The first match of C{regex} in the output, now or once it appears
        (within 30 seconds; an error if the process ends first).
        """
        pattern = re.compile(regex)
        m = pattern.search(self.output)
        if m:
            return defer.succeed(m)
        d: defer.Deferred[re.Match[str]] = defer.Deferred()
        self._waiting.append((pattern, d))
        return timeout(d, 30)

    async def stop(self) -> bool:
        """
        SIGTERM the process; whether it shut down cleanly.  (twistd re-raises
        the terminating signal after an orderly shutdown, so that its exit
        status reports it: a clean stop is exit 0, or death by SIGTERM after
        the shutdown was logged.)
        """
        if not self.ended.called:
            self.transport.signalProcess(signal.SIGTERM)
        code = await timeout(self.ended, 30)
        if "Server Shut Down" not in self.output and "Main loop terminated" not in self.output:
            return False
        return code == 0 or (self.signal == signal.SIGTERM)


def spawn(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> Proc:
    """
    Start C{argv} in C{cwd} with the environment C{env} (by default, this
    process's).
    """
    proc = Proc()
    theReactor().spawnProcess(proc, argv[0], argv, env=env if env is not None else dict(os.environ), path=cwd)
    return proc


def twistdAsNobody(site: str, command: list[str], privileged: bool = True) -> Proc:
    """
    Start C{twistd -n -u 65534 -g 65534 COMMAND} in C{site} as root (the
    primary parses and binds as root, then every process runs as nobody),
    or, not C{privileged}, the whole C{twistd} as nobody from the start.

    Nobody must be able to run this interpreter (wherever tox or pyenv put
    it: see L{_revealInterpreter<tests.conftest._revealInterpreter>}, whose
    private mount namespace the workers inherit), import this project
    (L{nobodyEnv<tests.conftest.nobodyEnv>}), read the C{twistd} script and
    find the project's dropins: copies in C{site} where the originals are
    private (CI's virtualenv and checkout are).
    """
    import twisted.plugins.twisted_serversock_endpoints as dropin

    env = nobodyEnv()
    script = TWISTD[0]
    if not _othersCanRead(script):
        script = os.path.join(site, "twistd")
        shutil.copy(TWISTD[0], script)
        os.chmod(script, 0o644)
    if not _othersCanRead(dropin.__file__ or ""):
        # Twisted finds dropins in every twisted/plugins directory on the
        # path (without a twisted/__init__.py beside it).
        plugins = os.path.join(site, "dropins", "twisted", "plugins")
        os.makedirs(plugins)
        for d in (plugins, os.path.dirname(plugins), os.path.dirname(os.path.dirname(plugins))):
            os.chmod(d, 0o755)
        copy = os.path.join(plugins, os.path.basename(dropin.__file__ or ""))
        shutil.copy(dropin.__file__ or "", copy)
        os.chmod(copy, 0o644)
        env["PYTHONPATH"] = os.path.join(site, "dropins") + os.pathsep + env["PYTHONPATH"]
    user = ["-u", "65534", "-g", "65534"] if privileged else []
    argv = [sys.executable, script, "-n", "--pidfile=", "--logfile=-", *user, *command]
    return spawn(_revealInterpreter() + argv if privileged else asNobody(argv), site, env)


async def serving(proc: Proc, workers: int) -> int:
    """
    Wait until C{twistd serversock} (or C{twist serversock}) logs that it
    listens and its workers 1 to C{workers} are ready; the port it listens
    on.
    """
    port = int((await proc.waitFor(LISTENING)).group(1))
    for i in range(1, workers + 1):
        await proc.waitFor(rf"Worker {i} \(pid \d+\) is ready")
    return port


async def stopCleanly(proc: Proc) -> int:
    """
    SIGTERM; the exit status (which must come within the wait).
    """
    if not proc.ended.called:
        proc.transport.signalProcess(signal.SIGTERM)
    return int(await timeout(proc.ended, 30))


def workerPids(proc: Proc) -> dict[int, int]:
    """
    The pid of each worker number of a C{twistd serversock}, latest start
    last.
    """
    return {int(i): int(p) for i, p in re.findall(r"Started worker (\d+) \(pid (\d+)\)", proc.output)}


async def echo(port: int, data: bytes) -> bytes:
    """
    Send C{data} to the echo server on C{port}; what came back.
    """
    client = await connect(port)
    client.transport.write(data)
    got = await client.waitFor(len(data))
    client.transport.loseConnection()
    await client.whenClosed()
    return got


async def ask(port: int, seconds: float = 60) -> bytes:
    """
    One connection: send a byte, return everything until the server closes.
    """
    client = await connect(port)
    client.transport.write(b"?")
    return bytes(await timeout(client.closed, seconds))


def freePort() -> int:
    """
    A loopback TCP port nothing listens on now: for a program (HAProxy) that
    must be told its port rather than report one.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def socketStats(*args: str) -> list[str]:
    """
    The lines of C{ss -Hn ARGS} (iproute2): the kernel's view of sockets,
    which shows what a process holds without asking the process.
    """
    out = await utils.getProcessOutput(shutil.which("ss") or "ss", ["-Hn", *args], env=dict(os.environ))
    return out.decode().splitlines()


def listenQueue(port: int) -> int:
    """
    Connections waiting in the kernel's accept queue of 127.0.0.1:port.
    """
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())


async def channelBacklog(pid: int) -> int:
    """
    Bytes sent to worker C{pid} over its channel that it has not read: a
    stopped worker (SIGSTOP) holds the connections handed to it there.
    """
    owner = f"pid={pid},fd={CHANNEL_FD})"
    return sum(int(line.split()[2]) for line in await socketStats("-xp") if owner in line)


async def untilHolding(pid: int) -> None:
    """
    Wait until the stopped worker C{pid} has been handed a connection.
    """

    async def holding() -> bool:
        return await channelBacklog(pid) > 0

    await eventually(holding)


async def untilRead(pid: int) -> None:
    """
    Wait until worker C{pid} has read everything sent to it.
    """

    async def read() -> bool:
        return await channelBacklog(pid) == 0

    await eventually(read)


def childrenOf(pid: int, zombies: bool = False) -> set[int]:
    """
    The live processes whose parent is C{pid} (a C{twistd}'s workers); with
    C{zombies}, instead those that exited and wait to be reaped.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and (fields[0] == "Z") == zombies:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """
    Whether process C{pid} runs (a zombie does not).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def esc(path: str) -> str:
    """
    C{path} escaped for an endpoint description (C{:} is its separator).
    """
    return path.replace(":", "\\:")
