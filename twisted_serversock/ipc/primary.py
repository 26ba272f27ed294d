# -*- test-case-name: tests.test_cluster_units -*-
"""
The parent of worker processes under both front doors, C{twistd serversock}
(L{twisted_serversock.tap}) and cluster mode (L{twisted_serversock.cluster}).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from .._reaper import OrphanReaper
from .._resources import raiseOpenFilesLimit
from .._tlsfiles import HandOver, checkFits, startupFiles
from .dispatch import Dispatcher, Route
from .parent import HandOffFactory
from .pool import WorkerPool
from .signals import ParentStop
from .spawn import FILES_ROOM, WorkerCommand

__all__ = ["Primary"]

_log = Logger()


class Primary:
    """
    Listeners whose connections go to worker processes, the TLS files those
    workers are handed, the pool and its signals, and one way to stop.

    @ivar dispatcher: holds accepted connections until a worker adopts them.
    @ivar pool: the workers, once made (L{makePool}).
    @ivar stopper: how this parent stops, whoever asks (L{ParentStop}).
    @ivar handOvers: TLS listeners' files read here for the workers (maybe
        not root), by the description they look them up by (L{twisted_serversock._tlsfiles}).
    """

    def __init__(self, reactor: Any, grace: float, ports: Callable[[], list[Any]], lameDuck: float = 0.0) -> None:
        """
        @param ports: returns the listening ports to stop (called once).
        @param lameDuck: seconds a SIGTERM's stop waits, still serving (L{ParentStop}).
        """
        self.reactor = reactor
        self.dispatcher = Dispatcher(clock=reactor.seconds)
        self.stopper = ParentStop(reactor, grace, ports, lameDuck)
        self.pool: WorkerPool | None = None
        self.handOvers: dict[str, HandOver] = {}
        self.reaper: OrphanReaper | None = None
        self._grace = grace
        self._filesRead = 0  # the reload the TLS files were read for
        self._given: dict[str, float] = {}  # the largest grace and lame duck listeners gave
        self.controlPath: str | None = None
        self.metricsAt: str | None = None
        self._target: Any = None

    def allow(self, grace: float | None, lameDuck: float | None) -> None:
        """
        A listener's grace period and lame-duck delay (C{None}: not given):
        each becomes the largest any listener gave.  The pool's grace for
        retiring workers is taken when it is made (L{makePool}); the stop's,
        when it begins.
        """
        for name, value in (("grace", grace), ("lameDuck", lameDuck)):
            if value is not None:
                self._given[name] = max(value, self._given.get(name, value))
        self._grace = self.stopper.grace = self._given.get("grace", self._grace)
        self.stopper.lameDuck = self._given.get("lameDuck", self.stopper.lameDuck)

    def openControl(self, path: str | None) -> None:
        """
        Listen on the control socket at C{path} (L{twisted_serversock.control}),
        once: another listener naming the same path shares it.

        @raise ValueError: for a second, different path, or a socket that
            cannot be had, naming it.
        """
        if path is None or path == self.controlPath:
            return
        if self.controlPath is not None:
            raise ValueError(f"control={path}: this cluster's control socket is already {self.controlPath}")
        from ..control import listenControl

        try:
            listenControl(self.reactor, path, self.target())
        except CannotListenError as e:
            raise ValueError(f"control={path}: {e.socketError}") from None
        self.controlPath = path

    def openMetrics(self, description: str | None) -> None:
        """
        Serve this primary's metrics for Prometheus on the endpoint
        C{description} (L{twisted_serversock.metrics}), once: another
        listener naming the same endpoint shares it.

        @raise ValueError: for a second, different endpoint, or one that
            cannot listen, naming it.
        """
        if description is None or description == self.metricsAt:
            return
        if self.metricsAt is not None:
            raise ValueError(f"metrics={description}: this cluster's metrics are already served on {self.metricsAt}")
        from ..metrics import listenMetrics

        listenMetrics(self.reactor, description, self.target())
        self.metricsAt = description

    def target(self) -> Any:
        """What the control socket and the metrics read (a L{ControlTarget<twisted_serversock.control.ControlTarget>}), made once."""
        if self._target is None:
            from ..control import ControlTarget

            self._target = ControlTarget(self, self.reactor)
        return self._target

    def handOff(self, name: str, factory: Any, listen: Callable[[HandOffFactory], Any]) -> tuple[Route, Any]:
        """
        A new route, and the port C{listen} binds (synchronously; if it
        raises, the route closes) with a factory that hands its connections
        to the route's workers, which serve them with C{factory}.
        """
        route = self.dispatcher.addRoute(name)
        try:
            port = listen(HandOffFactory(self.dispatcher, route, factory))
        except BaseException:
            self.dispatcher.closeRoute(route)
            raise
        # Back-pressure: while every worker is saturated the excess waits
        # in the kernel's backlog, not in this process.
        route.watchPort(port)
        return route, port

    def keepFiles(self, description: str, handOver: HandOver) -> None:
        """@raise ValueError: with these files, a worker's start-up message would be too large (they are not kept)."""
        handOvers = {**self.handOvers, description: handOver}
        checkFits(handOvers, FILES_ROOM)
        self.handOvers = handOvers

    def files(self) -> dict[str, dict[str, str]]:
        """A worker's start-up message's C{files}; after a reload (SIGHUP), read again first."""
        reloads = self.pool.reloads if self.pool is not None else 0
        refresh, self._filesRead = reloads != self._filesRead, reloads
        return startupFiles(self.handOvers, refresh, FILES_ROOM)

    def makePool(self, command: WorkerCommand, count: int, **options: Any) -> WorkerPool:
        """The workers (not started): a L{WorkerPool} with these C{options}, stopped with this parent's grace."""
        self.pool = self.stopper.pool = WorkerPool(self.reactor, self.dispatcher, command, count, grace=self._grace, **options)
        return self.pool

    def start(self) -> None:
        """
        Raise the descriptor limit (the workers inherit it); install the
        parent's signal handlers, then start the workers (if any); as PID 1
        (a container without an init), reap the orphans it inherits.
        """
        _openFiles(self.reactor)
        if os.getpid() == 1:
            self.reaper = OrphanReaper(self.reactor)
            self.reaper.start()
        # Before any worker starts, so that a signal during start-up is
        # acted on once the reactor runs (the reactor then installs these
        # SIGTERM/SIGINT handlers, not its own, which would make a graceful
        # stop end "killed by SIGTERM"); and again once it runs, for any
        # reactor that installs its own some other way.
        self.stopper.installSignals()
        self.reactor.callWhenRunning(self.stopper.installSignals)
        if self.pool is not None:
            self.pool.start()


def _openFiles(reactor: Any) -> None:
    """Raise the soft descriptor limit towards the hard one, and say what it is (a C{select()} reactor stops at 1024)."""
    from twisted.internet.selectreactor import SelectReactor

    was, now = raiseOpenFilesLimit(1024 if isinstance(reactor, SelectReactor) else 1 << 20)
    raised = f", raised from {was}" if now != was else ""
    _log.info("Open files: soft limit {limit}{raised}; the workers inherit it", limit=now, raised=raised)
