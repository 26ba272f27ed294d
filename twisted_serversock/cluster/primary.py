# -*- test-case-name: tests.test_cluster -*-
"""
The primary of a cluster: the first process whose C{workers=N} endpoint
listens.  It binds inside C{listen()}, and once its reactor runs starts N
workers that run its own command line again; it accepts and hands each
connection to a worker that attached to that listener.  It serves nothing
itself, and is the same parent as C{twistd serversock}'s (L{Primary}).

A worker whose program listens on a description the primary does not have,
or workers that never start, is a program error: the primary logs it,
stops, and the process exits with status 1 (L{ClusterPrimary.exitStatus}).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import sys
from typing import Any, Callable, NamedTuple

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from zope.interface import implementer

from .._labels import describeAddress
from .._listeningport import GeckoListeningPort
from ..ipc.control import INTEGER, STRING, ControlTable
from ..ipc.dispatch import Route
from ..ipc.parent import WorkerLink
from ..ipc.primary import Primary
from ..ipc.spawn import GRACE, WORKER_MODULE, Command
from ..ipc.wire import Control
from .worker import encodeAddress

__all__ = ["ClusterPrimary", "PrimaryPort", "Program", "splitCommandLine"]

_log = Logger()

#: Until some worker's program has started (its reactor runs), a worker
#: started this many times (so dead this many times less one, before it
#: started) is a program that cannot run as a worker: the cluster stops
#: instead of restarting it forever while clients wait.
STARTS_BEFORE_GIVING_UP = 4


#: A token of CPython's own options: letters that take no value, then maybe
#: one that takes one (-c and -m end the options) and its value, if joined.
_OPTIONS = re.compile(r"-([^cmWX]*)([cmWX]?)(.*)", re.DOTALL)


class Program(NamedTuple):
    """
    A Python command line taken apart: the interpreter's C{flags} (C{-u},
    C{-X dev}, ...: the worker's interpreter gets them), its C{kind} of
    program (C{"script"}, C{"module"} or C{"command"}), the C{target} (the
    script's path, the module's name or the command) and its C{args}.
    """

    flags: list[str]
    kind: str
    target: str
    args: list[str]


def splitCommandLine(argv: list[str]) -> Program:
    """
    Take apart C{argv} as CPython reads its own command line.

    @raise ValueError: for a program that cannot be run again (read from
        standard input, or no program at all).
    """
    flags: list[str] = []
    rest = argv[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-":
        token = rest.pop(0)
        if token == "--":
            break
        if token.startswith("--"):
            flags.append(token)
            if token == "--check-hash-based-pycs" and rest:  # the one long option with a value
                flags.append(rest.pop(0))
            continue
        match = _OPTIONS.fullmatch(token)
        assert match is not None
        letters, option, value = match.groups()
        if letters:
            flags.append("-" + letters)
        if not option:
            continue
        if not value:
            if not rest:
                raise ValueError(f"the command line {argv!r} ends after -{option}")
            value = rest.pop(0)
        if option in "cm":
            return Program(flags, "module" if option == "m" else "command", value, rest)
        flags += ["-" + option, value]
    if not rest or rest[0] == "-":
        raise ValueError(f"cluster workers run the program again, but {argv!r} reads it from standard input; run a script file, -m module or -c command")
    return Program(flags, "script", rest[0], rest[1:])


@implementer(IListeningPort)
class PrimaryPort:
    """
    A cluster listener in the primary: a gecko listening port whose
    accepted sockets go, raw, to the dispatcher.

    @ivar factory: the application's protocol factory (used by the
        workers; never started here).
    @ivar description: the endpoint's description, which workers match.
    @cvar handsOver: C{True}: this process serves none of the listener's
        connections (a TLS endpoint's C{reloadCertificates} says so).
    """

    handsOver = True

    def __init__(self, onStop: Callable[[PrimaryPort], None], description: str, route: Route, port: GeckoListeningPort, factory: Any) -> None:
        self._onStop = onStop
        self.description = description
        self.route = route
        self._port = port
        self.factory = factory
        self._stopped: defer.Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<PrimaryPort {self.description} on {describeAddress(self.getHost())}>"

    @property
    def serverSocket(self) -> Any:
        """The L{ServerSocket<twisted_serversock.serversocket.ServerSocket>} that accepts for the workers."""
        return self._port.serverSocket

    def getHost(self) -> Any:
        return self._port.getHost()

    def startListening(self) -> None:
        """Nothing to do; after L{stopListening}, C{CannotListenError} (its workers detached)."""
        if self._stopped is not None:
            raise CannotListenError(None, self.description, ValueError("a stopped cluster listener cannot listen again; listen on the endpoint anew"))

    def stopListening(self) -> defer.Deferred[None]:
        """Stop accepting; connections already accepted, and those the kernel had queued, still go to workers."""
        if self._stopped is None:
            self._stopped = self._port.stopListening()
            self._onStop(self)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopped.addBoth(lambda result: d.callback(None))
        return d

    loseConnection = stopListening


class ClusterPrimary(Primary):
    """
    The cluster primary of a reactor (see
    L{Registry<twisted_serversock.cluster.Registry>}).

    @ivar failed: whether a program error stopped the cluster.
    """

    def __init__(self, reactor: Any, atExit: Callable[[Callable[[], None]], object] | None = None) -> None:
        """@param atExit: registers L{exitStatus}'s enforcement (C{atexit.register})."""
        super().__init__(reactor, GRACE, lambda: list(self._ports.values()))
        self.failed = False
        self._ports: dict[str, PrimaryPort] = {}
        # Descriptions listened on and closed since: a worker that asks for
        # one (it started after the close, or asked late) gets a closed port.
        self._closedDescriptions: set[str] = set()
        self._count = 0
        self._why: str | None = None
        self._cwd = os.getcwd()
        self._argv = list(getattr(sys, "orig_argv", sys.argv))
        self._program: Program | None = None
        reactor.callWhenRunning(lambda: reactor.callLater(0, self._start))
        reactor.addSystemEventTrigger("before", "shutdown", self.stopper.stop)
        # Registered now, so that it runs after the program's own exit
        # handlers (registered later).
        (atExit or atexit.register)(self._exit)

    def listen(self, endpoint: Any, factory: Any, workers: int) -> defer.Deferred[IListeningPort]:
        """
        Bind C{endpoint} now; its connections go to the workers.

        @return: an already fired Deferred: the L{PrimaryPort}, or
            C{CannotListenError} (a bind error, a description listened on
            twice, or a program the workers cannot run again).
        """
        description = endpoint.clusterDescription()
        handOver = getattr(endpoint, "handOver", None)
        try:
            if description in self._ports:
                raise ValueError(
                    "this description is already listening in cluster mode; workers find their listener by its description, so each must be different"
                )
            self._program = self._program or splitCommandLine(self._argv)
            if handOver is not None:
                self.keepFiles(description, handOver)
            self.openControl(getattr(endpoint, "control", None))
            self.openMetrics(getattr(endpoint, "metrics", None))
        except ValueError as e:
            return defer.fail(CannotListenError(None, description, e))
        try:
            route, inner = self.handOff(description, factory, endpoint.listenHere)
        except Exception:  # CannotListenError, or whatever else binding raised
            self.handOvers.pop(description, None)
            return defer.fail()
        port = self._ports[description] = PrimaryPort(self._closed, description, route, inner, factory)
        self.allow(getattr(endpoint, "grace", None), getattr(endpoint, "lameDuck", None))
        self._closedDescriptions.discard(description)
        if self.pool is None:
            self._count = max(self._count, workers)
            self._why = getattr(endpoint, "workersWhy", None) or self._why
        elif workers != self._count:
            _log.warn("{description} asks for {n} workers, but the cluster already runs {count}; they serve it", description=description, n=workers, count=self._count)
        _log.info(
            "Cluster primary (pid {pid}): {description} on {address} is served by {n} worker process(es)",
            pid=os.getpid(), description=endpoint.description, address=describeAddress(port.getHost()), n=self._count,
        )  # fmt: skip
        return defer.succeed(port)

    def _closed(self, port: PrimaryPort) -> None:
        if self._ports.get(port.description) is port:
            del self._ports[port.description]
            self.handOvers.pop(port.description, None)
            self._closedDescriptions.add(port.description)
        self.dispatcher.closeRoute(port.route)

    def _start(self) -> None:
        if self.pool is not None or self.stopper.stopping or not self._ports:
            return
        self.makePool(self.workerCommand, self._count, onControl=self._control, startsBeforeGivingUp=STARTS_BEFORE_GIVING_UP, onGiveUp=self._gaveUp)
        why = f" (workers=auto: {self._why})" if self._why else ""
        _log.info("Cluster primary (pid {pid}) starting {n} worker(s){why}: {argv}", pid=os.getpid(), n=self._count, why=why, argv=" ".join(self._argv))
        self.start()

    def workerCommand(self, index: int, heartbeat: float) -> Command:
        """Worker C{index}'s command: the program's interpreter options; the program and our listeners."""
        assert self._program is not None
        listeners = {d: [p.route.id, encodeAddress(p.getHost())] for d, p in self._ports.items()}
        startup = {"worker": "cluster", "index": index, "heartbeat": heartbeat, "grace": self._grace, "argv": self._argv, "listeners": listeners}
        startup["files"] = self.files()
        argv = [sys.executable, *self._program.flags, "-m", WORKER_MODULE]
        return Command(argv, dict(os.environ), self._cwd if os.path.isdir(self._cwd) else None, startup)

    def _gaveUp(self, index: int, exits: int) -> None:
        self.fail(
            f"worker {index} exited {exits} times before its program started (its log lines above say "
            "why; a program that also listens on an endpoint without workers= has every worker try to "
            "bind it too)"
        )

    #: The control messages of the workers' programs, and their fields.
    controls = ControlTable()

    def _control(self, link: WorkerLink, message: Control) -> bool:
        return self.controls.dispatch(message, repr(link), link.channel, self, link)

    @controls.handler("cluster-attach", id=INTEGER, description=STRING)
    def _onAttach(self, link: WorkerLink, id: int, description: str) -> None:
        port = self._ports.get(description)
        if port is None and description in self._closedDescriptions:
            link.sendControl("cluster-closed", id=id)
            return
        if port is None:
            reason = (
                f"{link!r}'s program listens on {description}, on which the primary (pid "
                f"{os.getpid()}) does not listen; every process of a cluster program must listen "
                "on the same descriptions (primary: " + (", ".join(self._ports) or "none") + ")"
            )
            link.sendControl("cluster-refused", id=id, reason=reason)
            self.fail(reason)
            return
        # Connections come once the worker is ready (a reload's successor
        # attaches while its predecessor still serves).
        assert self.pool is not None
        self.pool.serveWhenReady(link, port.route)
        link.sendControl("cluster-attached", id=id, route=port.route.id, address=encodeAddress(port.getHost()))

    @controls.handler("cluster-detach", route=INTEGER)
    def _onDetach(self, link: WorkerLink, route: int) -> None:
        found = self.dispatcher.routes.get(route)
        if found is not None and self.pool is not None:
            self.pool.stopServing(link, found)

    def fail(self, reason: str) -> None:
        """A program error: log it, stop everything, and exit with status 1."""
        if not self.failed:
            _log.critical("Cluster mode cannot go on: {reason}", reason=reason)
            self.failed = True
            if self.reactor.running:
                self.reactor.stop()

    def exitStatus(self) -> int | None:
        """
        The process's exit status the cluster asks for: 1 once a program
        error stopped it, else C{None} (the program's own).  No runner has a
        way to set an exit status once its reactor stopped (C{twistd} and
        C{twist} only re-raise a signal, and a plain program's C{main}
        returns normally), so it is enforced when the process exits.
        """
        return 1 if self.failed else None

    def _exit(self) -> None:
        status = self.exitStatus()
        if status is not None:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)
