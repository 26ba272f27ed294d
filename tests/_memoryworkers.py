"""
The memory-reactor pieces of the tests that drive the worker pool, its
dispatcher and cluster mode without starting a process (C{test_pool_units},
C{test_cluster_units}, C{test_dispatch_units}, C{test_worker_model_units}):
a memory reactor whose "processes" are stand-ins whose channel ends the
test holds, reading and writing those channels, a started one-worker
L{Pool} and a started cluster L{primary}.
"""

from __future__ import annotations

import array
import atexit
import os
import signal
import socket
from typing import Any, Iterator

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_serversock.cluster.primary import ClusterPrimary, PrimaryPort
from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import Channel
from twisted_serversock.ipc.dispatch import Dispatcher, Route
from twisted_serversock.ipc.pool import WorkerPool
from twisted_serversock.ipc.spawn import Command


def pump(reactor: MemoryReactorClock) -> None:
    """
    Let every channel the memory reactor watches read what waits for it.
    """
    for reader in list(reactor.getReaders()):
        if isinstance(reader, Channel):
            reader.doRead()


def receive(skt: socket.socket) -> list[Any]:
    """
    Every message waiting on C{skt} (the other end of a channel).
    """
    skt.setblocking(False)
    messages = []
    while True:
        try:
            data, ancillary, _flags, _addr = skt.recvmsg(wire.MAX_MESSAGE + 1, socket.CMSG_SPACE(64))
        except BlockingIOError:
            return messages
        fds = array.array("i")
        for _level, _type, cdata in ancillary:
            fds.frombytes(cdata)
        messages.append(wire.decode(data, list(fds)))


def controls(skt: socket.socket, type: str) -> list[dict[str, Any]]:
    """
    The fields of each control message C{type} waiting on C{skt}.
    """
    return [m.fields for m in receive(skt) if isinstance(m, wire.Control) and m.type == type]


def send(skt: socket.socket, type: str, **fields: Any) -> None:
    """
    Send control message C{type} with C{fields} on C{skt}, as the other
    end of a channel would.
    """
    skt.sendmsg([wire.encodeControl(type, **fields)])


class StandInProcess:
    """
    Stands in for a worker process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)


class StandInReactor(MemoryReactorClock):
    """
    A memory reactor that starts stand-ins for worker processes: the test
    holds each one's end of its channel (in L{children}, in the order they
    were started) and its command line and environment (in L{commands}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.children: list[socket.socket] = []
        self.commands: list[tuple[list[str], dict[str, str]]] = []
        self.protocols: list[Any] = []
        self.processes: list[StandInProcess] = []

    def spawnProcess(self, processProtocol: Any, executable: Any, args: Any = (), env: Any = None, path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False, childFDs: Any = None) -> Any:
        self.children.append(socket.socket(fileno=os.dup(childFDs[3])))
        self.commands.append((list(args), dict(env or {})))
        self.protocols.append(processProtocol)
        self.processes.append(StandInProcess(1000 + len(self.children)))
        return self.processes[-1]


#: The pool's settings in L{Pool}: a worker silent 4 s is killed; retired
#: ones get 2 s (and are killed 2 s after that); each takes 2 connections.
TIMEOUT, GRACE, MAX_REQUESTS = 4.0, 2.0, 2


class RecordingNotifier:
    """
    Stands in for the pool's systemd notifier: records what it is told
    (C{"ready"}, C{"reloading"}, C{"stopping"}; status lines are not
    kept).
    """

    def __init__(self) -> None:
        self.said: list[str] = []

    def ready(self, status: str) -> None:
        self.said.append("ready")

    def reloading(self, status: str) -> None:
        self.said.append("reloading")

    def stopping(self, status: str) -> None:
        self.said.append("stopping")

    def status(self, status: str) -> None:
        pass

    def startWatchdog(self) -> None:
        pass


class Pool:
    """
    A started one-worker pool serving one route, and its stand-ins.
    """

    def __init__(self) -> None:
        self.reactor = StandInReactor()
        self.notifier = RecordingNotifier()
        self.dispatcher = Dispatcher(self.reactor.seconds)
        self.route: Route = self.dispatcher.addRoute("test")
        self.pool = WorkerPool(
            self.reactor,
            self.dispatcher,
            lambda index, heartbeat: Command(["worker", str(index)], {}),
            1,
            timeout=TIMEOUT,
            grace=GRACE,
            maxRequests=MAX_REQUESTS,
            notifier=self.notifier,  # type: ignore[arg-type]
        )
        self.pool.addRoute(self.route)
        self.pool.start()
        self.clients: list[socket.socket] = []

    def ready(self, n: int) -> None:
        """
        Worker process C{n} (in start order) says it is ready.
        """
        send(self.reactor.children[n], "ready", pid=1001 + n)
        pump(self.reactor)

    def end(self, n: int, signal: int | None = None) -> None:
        """
        Worker process C{n} exits (0, or killed by C{signal}).
        """
        reason = ProcessDone(0) if signal is None else ProcessTerminated(None, signal)
        self.reactor.protocols[n].processEnded(Failure(reason))

    def serving(self) -> list[int]:
        """
        Which worker processes (in start order) get the route's connections.
        """
        names = [repr(link) for link in self.route.links]
        return [n for n in range(len(self.reactor.children)) if f"<worker {self._index(n)} (pid {1001 + n})>" in names]

    def _index(self, n: int) -> str:
        return self.reactor.commands[n][0][1]

    def connect(self) -> None:
        """
        One accepted connection for the route.
        """
        client, accepted = socket.socketpair()
        self.clients.append(client)
        self.dispatcher.submit(self.route, accepted)

    def heartbeat(self, *ns: int) -> None:
        """
        Worker processes C{ns} say they are alive.
        """
        for n in ns:
            send(self.reactor.children[n], "heartbeat")
        pump(self.reactor)

    def stops(self, n: int) -> list[float]:
        """
        The grace periods of the C{stop} messages worker process C{n} got.
        """
        return [fields["grace"] for fields in controls(self.reactor.children[n], "stop")]

    def wait(self, seconds: float) -> None:
        """
        Let C{seconds} pass, in the pool's ticks.
        """
        for _ in range(int(seconds / 0.1)):
            self.reactor.advance(0.1)

    def close(self) -> None:
        for skt in self.reactor.children + self.clients:
            skt.close()


#: The signals the primary's pool handles (restored after each test).
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1)


@pytest.fixture
def primary(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ClusterPrimary, StandInReactor, PrimaryPort]]:
    """
    A started primary listening on C{"gecko:port=0:loopback=1:workers=1"},
    with one stand-in worker.
    """
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    # The primary's exit status is the process's: not this one's.
    monkeypatch.setattr(atexit, "register", lambda function: function)
    saved = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    reactor = StandInReactor()
    clusterPrimary = ClusterPrimary(reactor)
    endpoint = serverFromString(reactor, "gecko:port=0:loopback=1:workers=1")
    port = clusterPrimary.listen(endpoint, Factory.forProtocol(Protocol), 1).result
    reactor.run()
    reactor.advance(0)
    try:
        yield clusterPrimary, reactor, port
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        port.stopListening()
        for child in reactor.children:
            child.close()
        pump(reactor)
