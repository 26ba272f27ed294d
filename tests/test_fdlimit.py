"""
A worker at its descriptor limit refuses the connections it cannot take,
and the primary gives them to another worker.

The child's side on a memory reactor, in this process with its own limit
lowered; then the installed C{twistd web} with
C{workers=N}: one worker's soft C{RLIMIT_NOFILE} is lowered (C{prlimit
--pid}) to a few descriptors above what it has open, then 40 HTTP
keep-alive connections are opened and held.  With two workers every one is
answered (the full worker serves what it can, the other the rest); with
one, those it cannot take are closed, and the primary says why.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import struct
import sys
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import channelPair
from twisted_serversock.ipc.child import ParentLink

from ._procs import PRIMARY_LISTENING, TWISTD, Proc, spawn, stopCleanly
from ._memoryworkers import pump, receive
from .conftest import Client, connect, eventually, timeout

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and Linux's MSG_CTRUNC")
needsPrlimit = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")

CONNECTIONS = 40
#: Descriptors the lowered worker may open beyond those it has.
HEADROOM = 4
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
#: The page served, and at least as long as the response is.
RESPONSE = b"hello"
#: The page, rendered from memory: a static file would need a descriptor
#: per request, and a worker held at its limit answers requests that
#: overlap with a 500 (EMFILE opening the file), which is not what these
#: tests are about.
PAGE = f"""
from twisted.web.resource import Resource

class Page(Resource):
    isLeaf = True

    def render_GET(self, request):
        return {RESPONSE!r}
"""


async def start(tmp_path: Path, workers: int) -> tuple[Proc, int, list[int]]:
    """The installed twistd web with C{workers}; its port and its workers' pids once all are ready."""
    (tmp_path / "fixedpage.py").write_text(PAGE)
    argv = [*TWISTD, "-n", "--pidfile=", "web", "--listen", f"gecko:port=0:loopback=1:workers={workers}", "--class", "fixedpage.Page"]
    pythonPath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    proc = spawn(argv, str(tmp_path), dict(os.environ, PYTHONPATH=pythonPath))
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    pids = [int((await proc.waitFor(rf"Worker {i} \(pid (\d+)\) is ready")).group(1)) for i in range(1, workers + 1)]
    return proc, port, pids


def fdCount(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lowerLimit(pid: int) -> int:
    """
    Lower C{pid}'s soft descriptor limit to L{HEADROOM} numbers above the
    highest descriptor it has open (the limit bounds numbers, not a count);
    the new limit.
    """
    limit = max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) + 1 + HEADROOM
    hard = Path(f"/proc/{pid}/limits").read_text().split("Max open files")[1].split()[1]
    assert os.spawnlp(os.P_WAIT, "prlimit", "prlimit", f"--pid={pid}", f"--nofile={limit}:{hard}") == 0
    return limit


async def answered(client: Client) -> bool:
    """True once C{client} has an HTTP response; False if it was closed without one, or has none in time."""
    done = defer.Deferred()
    client.closed.addBoth(lambda _: None if done.called else done.callback(False))

    def check(_: object) -> None:
        if not done.called:
            done.callback(True)

    client.waitFor(len(RESPONSE)).addCallbacks(check, lambda _: None)
    try:
        return bool(await timeout(done))
    except defer.TimeoutError:
        return False


async def holdOpen(port: int) -> tuple[list[Client], list[bool]]:
    """Open L{CONNECTIONS} keep-alive connections, one request each; which were answered."""
    clients = []
    for _ in range(CONNECTIONS):
        client = await connect(port)
        client.transport.write(REQUEST)
        clients.append(client)
    results = list(await defer.gatherResults([defer.ensureDeferred(answered(c)) for c in clients]))
    return clients, results


async def closeAll(clients: list[Client]) -> None:
    for client in clients:
        client.transport.loseConnection()
    await defer.gatherResults([client.whenClosed() for client in clients])


@needsPrlimit
@pytest_twisted.ensureDeferred
async def test_aFullWorkersConnectionsGoToTheOther(tmp_path: Path) -> None:
    """
    Two workers, the first held to four descriptors more than it has: all
    40 held connections are answered, by both workers; the primary logs that
    the first refused connections, and none was closed unserved.
    """
    proc, port, pids = await start(tmp_path, 2)
    try:
        before = [fdCount(pid) for pid in pids]
        limit = lowerLimit(pids[0])
        clients, results = await holdOpen(port)
        assert results.count(True) == CONNECTIONS, (results, proc.output)
        # A whole response each, its body too.
        with contextlib.suppress(AssertionError):
            await eventually(lambda: all(c.received.endswith(RESPONSE) for c in clients))
        assert [bytes(c.received) for c in clients if not c.received.endswith(RESPONSE)] == [], proc.output
        # The full worker served what it could, the other the rest.
        after = [fdCount(pid) for pid in pids]
        assert before[0] < after[0] <= limit, (before, after, limit)
        assert after[1] - before[1] >= CONNECTIONS - HEADROOM, (before, after)
        await proc.waitFor(r"<worker 1 \(pid \d+\)> is at its descriptor limit: it refused")
        assert "Closing connection" not in proc.output, proc.output
        await closeAll(clients)
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@needsPrlimit
@pytest_twisted.ensureDeferred
async def test_theOnlyWorkerFullClosesTheExcess(tmp_path: Path) -> None:
    """
    One worker, held to four descriptors more than it has: it serves what
    it can; the rest are closed unanswered, and the primary logs why.
    """
    proc, port, pids = await start(tmp_path, 1)
    try:
        lowerLimit(pids[0])
        clients, results = await holdOpen(port)
        served = results.count(True)
        assert 0 < served < CONNECTIONS, (results, proc.output)
        # The rest were closed, not left waiting.
        assert all(c.reason is not None and not c.received for c, ok in zip(clients, results) if not ok)
        assert re.search(r"Closing connection \d+ of .*: every worker of it is at its descriptor limit", proc.output), proc.output
        await closeAll(clients)
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@contextlib.contextmanager
def descriptorsFree(n: int) -> Iterator[None]:
    """
    This process with exactly C{n} descriptor numbers free: its soft limit
    lowered, every number below it taken but C{n}; restored after.
    """
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.dup(0)
    os.close(lowest)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest + n + 16, before[1]))
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.dup(0))
        for _ in range(n):
            os.close(fillers.pop())
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


class Child:
    """A L{ParentLink} on a memory reactor, and the parent's end of its channel."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.parentEnd, childEnd = channelPair()
        self.link = ParentLink(childEnd, self.reactor)
        self.adopted: list[socket.socket] = []
        self.link.onConnection = lambda route, skt: self.adopted.append(skt)
        self.clients: list[socket.socket] = []

    def hand(self, *connIds: int) -> None:
        """The parent hands connections C{connIds}, in one readable event."""
        for connId in connIds:
            client, accepted = socket.socketpair()
            self.clients.append(client)
            self.parentEnd.sendmsg([wire.encodeConn(connId, 1)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", accepted.fileno()))])
            accepted.close()

    def close(self) -> None:
        self.link.channel.loseConnection()
        for skt in [self.parentEnd, *self.adopted, *self.clients]:
            skt.close()


@pytest.fixture
def child() -> Iterator[Child]:
    made = Child()
    yield made
    made.close()


def test_aChildWithNoRoomForTheDescriptorRefusesIt(child: Child) -> None:
    """
    A connection whose descriptor the kernel could not give the child (no
    number free: C{MSG_CTRUNC}) is refused by id, never acknowledged.
    """
    child.hand(7)
    with descriptorsFree(0):
        pump(child.reactor)
    assert [(m.type, m.fields) for m in receive(child.parentEnd)] == [("refused", {"ids": [7]})]
    assert child.adopted == [] and child.link.channel.rejected == 0


def test_aChildRefusesWhatItCannotAdoptAndTakesTheRest(child: Child) -> None:
    """
    With room for two connections' descriptors but not for adopting both
    (the reactor's duplicate of each), the child takes the first and
    refuses the second: the ack first, then the refusal; the first is
    adopted.
    """
    child.hand(1, 2)
    with descriptorsFree(3):
        pump(child.reactor)
        messages = receive(child.parentEnd)
        assert messages == [wire.Ack((1,)), wire.Control("refused", {"ids": [2]})]
        assert len(child.adopted) == 1
    child.adopted[0].sendall(b"x")
    assert child.clients[0].recv(1) == b"x"
    assert child.clients[1].recv(1) == b""  # closed by the child


def test_aChildWithRoomAcknowledgesEverything(child: Child) -> None:
    """With room to spare, a batch is acknowledged whole and nothing refused."""
    child.hand(1, 2, 3)
    pump(child.reactor)
    assert receive(child.parentEnd) == [wire.Ack((1, 2, 3))]
    assert len(child.adopted) == 3


def test_aBatchLargerThanTheRoomIsTakenInOrderAsFarAsItFits(child: Child) -> None:
    """
    Four connections in one readable event, room for their four
    descriptors but nothing more: refusing the last ones frees numbers for
    the first ones, which are taken; the others are refused, in order.
    """
    child.hand(1, 2, 3, 4)
    with descriptorsFree(4):
        pump(child.reactor)
        assert receive(child.parentEnd) == [wire.Ack((1, 2)), wire.Control("refused", {"ids": [3, 4]})]
    assert len(child.adopted) == 2
