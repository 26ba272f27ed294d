"""
Shared test helpers.

pytest-twisted runs one reactor for the whole session and has no timeouts:
a Deferred that never fires would hang the run, and a test killed from
outside takes the reactor down for every later test.  So every Deferred a
test waits on goes through L{timeout}.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from twisted_serversock import IOService

def theReactor() -> Any:
    """
    The reactor pytest-twisted installed.  (Importing it at this module's
    import time would install the default reactor before pytest-twisted can
    install the one asked for with C{--reactor}.)
    """
    from twisted.internet import reactor

    return reactor


#: Seconds any single wait in a test may take before it fails.
WAIT = 10.0


def timeout(d: defer.Deferred[Any], seconds: float = WAIT) -> defer.Deferred[Any]:
    """
    Give C{d} a timeout, so a test that waits on it fails instead of hanging.
    """
    return d.addTimeout(seconds, theReactor())


def sleep(seconds: float) -> defer.Deferred[None]:
    """
    A Deferred that fires after C{seconds} of reactor time.
    """
    return deferLater(theReactor(), seconds, lambda: None)


async def eventually(predicate: Any, seconds: float = WAIT, step: float | None = None) -> None:
    """
    Wait (without blocking the reactor) until C{predicate()} is true.

    The predicate is synchronous, or asynchronous (it returns an awaitable,
    for a condition that takes a child process to find out, such as
    C{_procs.socketStats}).  It is asked again every C{step} seconds: by
    default 0.01, or 0.02 for an asynchronous one.  The wait fails once
    the pauses between tries add up to C{seconds} (so never before
    C{seconds} have passed).
    """
    waited = 0.0
    while True:
        result = predicate()
        asynchronous = inspect.isawaitable(result)
        if asynchronous:
            result = await result
        if result:
            return
        if waited >= seconds:
            raise AssertionError(f"condition not met within {seconds}s: {predicate}")
        pause = step if step is not None else (0.02 if asynchronous else 0.01)
        await sleep(pause)
        waited += pause


class Recorder:
    """
    An C{nsIServerSocketListener} that records every event in order.

    @ivar events: C{("accepted", transport)} and C{("stopped", status)}
        tuples, in the order they were delivered.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.servers: list[Any] = []
        self._accepted: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.stopped: defer.Deferred[int] = defer.Deferred()

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        self.events.append(("accepted", transport))
        self.servers.append(serv)
        self._accepted.put(transport)

    def onStopListening(self, serv: Any, status: int) -> None:
        self.events.append(("stopped", status))
        self.servers.append(serv)
        self.stopped.callback(status)

    def nextAccepted(self) -> defer.Deferred[Any]:
        return timeout(self._accepted.get())

    def whenStopped(self) -> defer.Deferred[int]:
        return timeout(self.stopped)

    @property
    def statuses(self) -> list[int]:
        return [s for kind, s in self.events if kind == "stopped"]


@implementer(IHalfCloseableProtocol)
class Client(protocol.Protocol):
    """
    A test client: collects what it receives and says when it is closed.
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: defer.Deferred[Any] = defer.Deferred()
        self.eof = False
        self.reason: Any = None
        self._waiters: list[tuple[int, defer.Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for n, d in list(self._waiters):
            if len(self.received) >= n:
                self._waiters.remove((n, d))
                d.callback(bytes(self.received))

    def readConnectionLost(self) -> None:
        self.eof = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = ConnectionDone) -> None:
        self.reason = reason
        for n, d in self._waiters:
            d.errback(AssertionError(f"closed with {len(self.received)} of {n} bytes"))
        self._waiters = []
        self.closed.callback(bytes(self.received))

    def waitFor(self, n: int) -> defer.Deferred[bytes]:
        """
        Fire with everything received once at least C{n} bytes have arrived.
        """
        if len(self.received) >= n:
            return defer.succeed(bytes(self.received))
        d: defer.Deferred[bytes] = defer.Deferred()
        self._waiters.append((n, d))
        return timeout(d)

    def whenClosed(self) -> defer.Deferred[bytes]:
        return timeout(self.closed)


async def connect(port: int, host: str = "127.0.0.1") -> Client:
    """
    Connect a L{Client} over TCP.
    """
    factory = protocol.Factory.forProtocol(Client)
    if ":" in host:
        endpoint: Any = TCP6ClientEndpoint(theReactor(), host, port, timeout=WAIT)
    else:
        endpoint = TCP4ClientEndpoint(theReactor(), host, port, timeout=WAIT)
    return await timeout(endpoint.connect(factory))  # type: ignore[no-any-return]


async def connectUNIX(path: str) -> Client:
    """
    Connect a L{Client} over a UNIX-domain socket.
    """
    factory = protocol.Factory.forProtocol(Client)
    return await timeout(UNIXClientEndpoint(theReactor(), path, timeout=WAIT).connect(factory))  # type: ignore[no-any-return]


def hasIPv6Loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needsIPv6 = pytest.mark.skipif(not hasIPv6Loopback(), reason="this host has no IPv6 loopback")


@pytest.fixture
def io() -> IOService:
    """
    A private I/O service, so offline tests never touch the default one.
    """
    return IOService()


@pytest.fixture
def logged() -> Any:
    """
    Collect the log events emitted during the test.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def noUnhandledErrors(logged: list[dict[str, Any]]) -> Any:
    """
    Fail the test if an unhandled error was logged during it (checked after
    its connections were torn down).  Modules use it with
    C{pytestmark = pytest.mark.usefixtures("noUnhandledErrors")}.
    """
    yield
    assert failures(logged) == []


@pytest.fixture
def servers(io: IOService) -> Any:
    """
    Make server sockets (on the test's private I/O service unless another
    is given) and close them all after the test.
    """
    from twisted_serversock import ServerSocket

    made: list[Any] = []

    def make(ioService: Any = None) -> Any:
        s = ServerSocket(ioService=ioService if ioService is not None else io)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def code(excinfo: Any) -> str:
    """
    The result-code name of the NSError in a C{pytest.raises} context.
    """
    from twisted_serversock import results

    return results.nameOf(excinfo.value.result)


def failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    The logged events that carry a failure (unhandled errors).
    """
    return [e for e in events if e.get("log_failure") is not None or e.get("isError")]


class Served:
    """
    A loopback L{ServerSocket} listening with a L{Recorder}, which makes
    client/server connection pairs and tears everything down afterwards
    (see the L{served} fixture).

    @ivar srv: the server socket.
    @ivar rec: its listener.
    """

    def __init__(self, ipv6: bool = False) -> None:
        from twisted_serversock import ServerSocket

        self.srv = ServerSocket()
        if ipv6:
            self.srv.initIPv6(-1, True, -1)
        else:
            self.srv.init(-1, True, -1)
        self.rec = Recorder()
        self.srv.asyncListen(self.rec)
        self.clients: list[Client] = []
        self.transports: list[Any] = []

    async def pair(self, host: str | None = None) -> tuple[Client, Any]:
        """
        Connect a L{Client} and return it with the server's accepted transport.
        """
        if host is None:
            host = self.srv.getAddress().host
        client = await connect(self.srv.port, host)
        self.clients.append(client)
        t = await self.rec.nextAccepted()
        self.transports.append(t)
        return client, t

    async def cleanup(self) -> None:
        """
        Abort every connection on both sides, wait until all are gone, and
        stop the server.
        """
        for t in self.transports:
            tcp = t._tcp
            if tcp is not None and tcp.connected:
                tcp.abortConnection()
        for c in self.clients:
            if c.transport.connected:
                c.transport.abortConnection()
        for c in self.clients:
            await c.whenClosed()
        await eventually(lambda: not any(t._tcp.connected for t in self.transports))
        self.srv.close()
        await self.rec.whenStopped()


@pytest_twisted.async_yield_fixture
async def served() -> Any:
    """
    A L{Served} loopback IPv4 server, torn down (every connection aborted on
    both sides, the server stopped) after the test.
    """
    s = Served()
    try:
        yield s
    finally:
        await s.cleanup()


# ----------------------------------------------------------------------
# A peer that is not local: a client in a network namespace of our own.

#: Where the foreign host's /30 comes from: RFC 2544's benchmarking range
#: (the benchmarks take theirs from 198.19.0.0/16).
_NS_RANGE = "198.18.0.0/16"

_NS_CLIENT = r"""
import errno, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
except ConnectionResetError:
    # The handshake completed (only an accepted connection is reset), but
    # the server closed the connection before this process got back from
    # connect(): under load, a server that closes at once wins that race.
    # Report the connection, then the reset to the next line sent, as a
    # client whose connect() returned first would see it.
    print("connected reset", flush=True)
    line = sys.stdin.readline().strip()
    if line and line != "close":
        print("error", errno.ECONNRESET, flush=True)
    sys.exit(0)
print("connected", s.getsockname()[1], flush=True)
while True:
    line = sys.stdin.readline().strip()
    if not line or line == "close":
        break
    try:
        s.sendall(line.encode() + b"\n")
        data = s.recv(65536)
    except OSError as e:
        print("error", e.errno, flush=True)
        break
    print("got" if data else "eof", data.decode().strip(), flush=True)
    if not data:
        break
s.close()
"""


class ForeignClient(protocol.ProcessProtocol):
    """
    A TCP client running in another network namespace, driven line by line:
    each line written to it is sent, and the reply (or C{eof}/C{error})
    comes back as a line.
    """

    def __init__(self) -> None:
        self.lines: defer.DeferredQueue[str] = defer.DeferredQueue()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.lines.put(line.decode())

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def nextLine(self) -> defer.Deferred[str]:
        return timeout(self.lines.get())

    def send(self, line: str) -> None:
        self.transport.write(line.encode() + b"\n")


class ForeignHost:
    """
    A network namespace joined to this one by a veth pair: C{serverIP} is
    our side's address, and L{connect} runs a client from the other side,
    whose address (C{clientIP}) is not a loopback address.
    """

    def __init__(self, name: str, serverIP: str, clientIP: str) -> None:
        self.name = name
        self.serverIP = serverIP
        self.clientIP = clientIP
        self.clients: list[ForeignClient] = []

    async def endClients(self) -> None:
        """
        End the clients L{connect} started (their input closed, each ends
        its connection and exits), and wait until they have.
        """
        clients, self.clients = self.clients, []
        for client in clients:
            if not client.ended.called:
                client.transport.closeStdin()
        await timeout(defer.DeferredList([client.ended for client in clients]))

    async def connect(self, port: int) -> ForeignClient:
        import sys

        client = ForeignClient()
        self.clients.append(client)
        theReactor().spawnProcess(
            client,
            "ip",
            ["ip", "netns", "exec", self.name, sys.executable, "-c", _NS_CLIENT, self.serverIP, str(port)],
            env=None,
        )
        line = await client.nextLine()
        assert line.startswith("connected"), line
        return client


def _freeSubnet(pid: int) -> list[str]:
    """
    The two host addresses of a /30 of L{_NS_RANGE} that no address of
    this host is in, starting from one picked by C{pid}: two test runs at
    once (or a leftover of a killed one) never share an address, which
    would send one run's replies down the other's veth.
    """
    import ipaddress

    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], check=True, capture_output=True, text=True, timeout=30)
    inUse = [ipaddress.IPv4Interface(w).ip for w in shown.stdout.split() if "/" in w and w[0].isdigit()]
    subnets = list(ipaddress.IPv4Network(_NS_RANGE).subnets(new_prefix=30))
    for i in range(len(subnets)):
        subnet = subnets[(pid + i) % len(subnets)]
        if not any(address in subnet for address in inUse):
            return [str(a) for a in list(subnet.hosts())[:2]]
    raise RuntimeError(f"no free /30 in {_NS_RANGE}")


@pytest.fixture(scope="session")
def foreignNamespace() -> Any:
    """
    Create (and after the test run remove) a network namespace joined to
    this one by a veth pair, once per run: the modules that use it share
    it, so none depends on another having removed its own first.  Needs
    root and iproute2, which CI has.  Tests use it as L{foreignHost}.
    """
    if os.getuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs root and iproute2")
    pid = os.getpid()
    name = f"tss{pid}"
    # Interface names: at most 15 characters.
    here, there = f"tsa{pid}"[:15], f"tsb{pid}"[:15]
    serverIP, clientIP = _freeSubnet(pid)
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", name],
        ["ip", "addr", "add", f"{serverIP}/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{clientIP}/30", "dev", there],
        ["ip", "netns", "exec", name, "ip", "link", "set", there, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=30)
        yield ForeignHost(name, serverIP, clientIP)
    finally:
        # Deleting our end removes the pair; deleting the namespace, what is left.
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


# ----------------------------------------------------------------------
# Running Python as an unprivileged user (CI runs as root, so permission
# errors only happen for another uid).

NOBODY = 65534

_NEEDED = (
    "import json, sys, sysconfig\n"
    "import twisted_serversock, twisted_serversock.endpoints, twisted.internet.reactor\n"
    "import twisted.scripts.twistd, twisted.web.tap, twisted_serversock.tap  # what twistd as nobody needs\n"
    "import importlib, pkgutil, twisted.plugins\n"
    "# Our dropins live beside the package (in the checkout, for an editable\n"
    "# install), not in Twisted's own twisted/plugins: import them so that\n"
    "# the directory they come from is found (and copied) too.\n"
    "for m in pkgutil.iter_modules(twisted.plugins.__path__):\n"
    "    if m.name.startswith('twisted_serversock'):\n"
    "        importlib.import_module('twisted.plugins.' + m.name)\n"
    "std = {sysconfig.get_paths()[k] for k in ('stdlib', 'platstdlib')}\n"
    "roots = sorted((p for p in sys.path if p and p not in std), key=len, reverse=True)\n"
    "found = set()\n"
    "for m in list(sys.modules.values()):\n"
    "    f = getattr(m, '__file__', None)\n"
    "    for r in roots:\n"
    "        if f and f.startswith(r + '/'):\n"
    "            found.add((r, f[len(r) + 1:].split('/')[0]))\n"
    "            break\n"
    "print(json.dumps(sorted(found)))\n"
)


@pytest_twisted.async_yield_fixture
async def foreignHost(foreignNamespace: ForeignHost) -> Any:
    """
    The L{ForeignHost} of the run (L{foreignNamespace}); the clients a test
    started from it are ended when the test ends.
    """
    try:
        yield foreignNamespace
    finally:
        await foreignNamespace.endClients()


def _othersCanRead(path: str) -> bool:
    """
    Whether a user who is neither owner nor in the group can read C{path}:
    every ancestor searchable by others, C{path} itself readable (and, for a
    directory, searchable).
    """
    path = os.path.realpath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    need = 0o005 if stat.S_ISDIR(mode) else 0o004
    if mode & need != need:
        return False
    parent = os.path.dirname(path)
    while parent != path:
        path, parent = parent, os.path.dirname(parent)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


@functools.lru_cache(maxsize=None)
def unprivilegedPythonPath() -> str:
    """
    A C{PYTHONPATH} under which an unprivileged user can import
    C{twisted_serversock} and everything it needs.

    Where the virtual environment or the checkout is not readable by others
    (CI builds its venv in a 0700 C{mktemp -d} directory), the packages
    needed are copied into a world-readable temporary directory, removed
    when the test run ends.  That includes this project's plugin dropins:
    an editable install keeps them in the checkout's C{twisted/plugins},
    which nothing imports until Twisted looks for plugins, so they are
    imported on purpose to be found (without them, C{twistd} run as the
    unprivileged user knows no C{gecko:} endpoint).
    """
    out = subprocess.run([sys.executable, "-c", _NEEDED], capture_output=True, text=True, check=True, cwd="/")
    entries: list[str] = []
    copies: str | None = None
    for root, name in json.loads(out.stdout):
        source = os.path.join(root, name)
        if _othersCanRead(source):
            if root not in entries:
                entries.append(root)
            continue
        if copies is None:
            copies = tempfile.mkdtemp(prefix="/tmp/tsspy")
            os.chmod(copies, 0o755)
            atexit.register(shutil.rmtree, copies, True)
            entries.insert(0, copies)
        target = os.path.join(copies, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    if copies is not None:
        # Other distributions' dropins (autobahn's, daphne's) came along with
        # twisted/plugins, but not the packages they import: Twisted would
        # log their import errors in every unprivileged twistd run.  Keep
        # Twisted's own and ours, and no stale cache.
        plugins = os.path.join(copies, "twisted", "plugins")
        if os.path.isdir(plugins):
            for entry in os.listdir(plugins):
                if entry == "dropin.cache" or (
                    entry.endswith(".py") and not entry.startswith(("twisted_", "cred_", "__init__"))
                ):
                    os.remove(os.path.join(plugins, entry))
        for dirpath, dirnames, filenames in os.walk(copies):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
    return os.pathsep.join(entries)


def _hiddenAncestor(path: str) -> str | None:
    """
    The highest directory above C{path} that others may not search (so the
    unprivileged user cannot reach C{path}), if any.
    """
    parts = os.path.realpath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        ancestor = os.sep + os.path.join(*parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def revealInterpreterLines(visible: tuple[str, ...] = ()) -> list[str]:
    """
    Shell lines that, run as root inside a private mount namespace, make
    this interpreter's installation (and the virtualenv) readable by the
    unprivileged user; C{[]} if it already is.  Installations under one of
    the C{visible} prefixes are left alone (the caller reveals those).

    pyenv installs Pythons under C{/root} (mode 0700): the unprivileged
    user cannot load C{libpython3.X.so} nor the standard library from there.
    Inside the namespace only, the hiding directory is covered by an empty
    0755 tmpfs into which the installation is bind-mounted back; nothing
    changes for any other process.
    """
    reveal = []
    for path in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}:
        hider = _hiddenAncestor(path)
        if hider is not None and not path.startswith(visible):
            reveal.append((path, hider))
    if not reveal:
        return []
    q = shlex.quote
    lines = []
    for i, (path, _) in enumerate(reveal):
        lines += [f"k{i}=$(mktemp -d /tmp/tssmnt.XXXXXX)", f'mount --bind {q(path)} "$k{i}"']
    for hider in sorted({hider for _, hider in reveal}):
        lines.append(f"mount -t tmpfs -o mode=0755,size=64k tmpfs {q(hider)}")
    for i, (path, _) in enumerate(reveal):
        lines += [f"mkdir -p {q(path)}", f'mount --bind "$k{i}" {q(path)}', f'umount "$k{i}"', f'rmdir "$k{i}"']
    return lines


@functools.lru_cache(maxsize=None)
def _revealInterpreter() -> list[str]:
    """
    A prefix that runs a command in a private mount namespace where the
    interpreter's installation can be read by the unprivileged user (see
    L{revealInterpreterLines}), or C{[]} if it already can.
    """
    lines = revealInterpreterLines()
    if not lines or shutil.which("unshare") is None:
        return []
    script = "\n".join(["set -e", "umask 022", *lines, 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]


def asNobody(argv: list[str]) -> list[str]:
    """
    The command that runs C{argv} as uid/gid 65534 when we are root (as
    ourselves otherwise: permission checks already apply then), able to
    run this interpreter wherever it is installed (see
    L{_revealInterpreter}).
    """
    if os.getuid() == 0:
        setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return _revealInterpreter() + setpriv + argv
    return argv


def nobodyEnv() -> dict[str, str]:
    """
    The environment for a Python child run with L{asNobody}.
    """
    return dict(os.environ, PYTHONPATH=unprivilegedPythonPath())


def statesSeenWhileBinding(path: str, bind: Any, key: Any, rounds: int = 200) -> set[Any]:
    """
    Call C{bind()} C{rounds} times while a thread C{lstat}s C{path} as fast
    as it can, and return C{key(stat)} of every state it saw.  (It can miss
    a window, but not invent one.)
    """
    import threading

    seen: set[Any] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            seen.add(key(st))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(rounds):
            bind()
    finally:
        stop.set()
        watcher.join()
    return seen


@pytest.fixture
def workdir() -> Any:
    """
    A fresh directory with a short path (UNIX socket paths are limited to
    108 bytes), removed after the test: the working directory of the
    processes a test starts.
    """
    d = tempfile.mkdtemp(prefix="/tmp/ssk")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _descendants(pid: int) -> set[int]:
    """
    Every living process below C{pid} (children, their children, ...), as
    the kernel lists them in C{/proc/PID/task/TID/children}.
    """
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = {int(p) for p in f.read().split()}
            except (OSError, ValueError):
                continue
            todo.extend(children - found)
            found |= children
    return found


class LeftRunning(UserWarning):
    """A test left processes running (they were killed when it ended)."""


@pytest.fixture(autouse=True)
def noProcessOutlivesItsTest(request: Any) -> Any:
    """
    Kill the processes a test started and left running (a failed test's
    C{twistd}, and its workers), so that one failure cannot hold ports,
    CPU or files for the tests after it and turn into several.  Processes
    started by broader fixtures before the test began are left alone.
    """
    before = _descendants(os.getpid())
    yield
    left = _descendants(os.getpid()) - before
    for pid in sorted(left):
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    if left:
        # A warning, so that the run's summary lists every test that does it.
        warnings.warn(f"killed {len(left)} process(es) the test left running: {sorted(left)}", LeftRunning, stacklevel=1)
