# -*- test-case-name: tests.test_tap -*-
"""
C{twistd serversock}: run a protocol factory behind one or more listening
sockets (any endpoint string), in worker processes that get each accepted
connection as a file descriptor (or in this process with C{--workers 0})::

    twistd -n serversock --listen gecko:8080 --factory myapp.factory --workers 2

Its signals are L{twisted_serversock.ipc.signals}'.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from ._startup import cannotListenReason, failStartup
from ._labels import describeAddress
from ._tlsfiles import checkFits, startupFiles
from .endpoints import workerCount
from .ipc.defaults import GRACE, TIMEOUT
from .ipc.parent import Dispatcher, HandOffFactory
from .ipc.pool import WorkerPool
from .ipc.sdnotify import SystemdNotifier
from .ipc.spawn import FILES_ROOM, serversockCommand
from .ipc.signals import ParentStop
from .ipc.worker import resolveFactory

__all__ = ["Options", "makeService", "ServerSockService"]

_log = Logger()

DEFAULT_FACTORY = "twisted_serversock.examples.echo"
DEFAULT_LISTEN = "gecko:8080"


class _NoReactor:
    """Stands in for the reactor while endpoint strings are only checked."""


class Options(usage.Options):
    """The options of C{twistd serversock}."""

    synopsis = (
        "[--listen DESC ...] [--factory MODULE.NAME] [--workers N] [--grace SECONDS] [--timeout SECONDS] "
        "[--max-requests N [--max-requests-jitter J]]"
    )
    longdesc = (
        "Serve a Twisted protocol factory on every --listen endpoint, in N worker processes "
        "that receive each accepted connection as a file descriptor (0 = in this process)."
    )
    optParameters = [
        ["factory", "f", DEFAULT_FACTORY, "MODULE.NAME of an IProtocolFactory, or of a callable returning one."],
        ["workers", "w", None, "Worker processes (default: the number of CPUs; 0 = serve in this process)."],
        ["grace", "g", f"{GRACE:g}", "Seconds open connections get to finish after SIGTERM, SIGHUP or a recycle."],
        ["timeout", "t", f"{TIMEOUT:g}", "Kill and replace a worker silent for this many seconds (heartbeats keep idle ones alive)."],
        ["max-requests", None, "0", "Replace a worker gracefully after it was given this many connections (0 = never)."],
        ["max-requests-jitter", None, "0", "Add a random 0..J to --max-requests per worker, so that they are not all replaced at once."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """An endpoint to listen on (repeatable; default gecko:8080)."""
        self["listen"].append(description)

    opt_l = opt_listen

    def parseOptions(self, options: Any = None) -> None:
        """
        Parse; a bad option is one line and exit status 1 (C{twistd} before
        Twisted 26.10 prints the whole help and exits 0 after a C{UsageError}).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "twistd"
            raise SystemExit(f"{program} serversock: {e}") from None

    def _number(self, name: str, kind: type, fits: Any, within: str) -> None:
        # --name as kind (or a one-line UsageError), for which fits() holds.
        try:
            self[name] = kind(self[name])
        except ValueError:
            what = "a whole number" if kind is int else "a number of seconds"
            raise usage.UsageError(f"--{name} must be {what}, not {self[name]!r}") from None
        if not fits(self[name]):
            raise usage.UsageError(f"--{name} must be {within}, not {self[name]}")

    def postOptions(self) -> None:
        if self["workers"] is None:
            self["workers"] = workerCount("auto")  # one per CPU, counted as workers=auto counts
        for name in ("workers", "max-requests", "max-requests-jitter"):
            self._number(name, int, lambda n: n >= 0, "0 or more")
        self._number("grace", float, lambda n: n >= 0, "0 or more seconds")
        self._number("timeout", float, lambda n: 0 < n < float("inf"), "a finite number of seconds above 0")
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            try:
                serverFromString(_NoReactor(), description)
            except Exception as e:
                raise usage.UsageError(f"--listen {description!r}: {e}") from None
        try:
            self["protocolFactory"] = resolveFactory(self["factory"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class ServerSockService(service.Service):
    """
    Listens on every endpoint and serves the factory (in worker processes
    unless C{workers} is 0).

    @ivar ports: the listening ports, once listening.
    @ivar pool: the L{WorkerPool}, if there are workers.
    """

    def __init__(
        self, descriptions: list[str], factory: Any, factoryName: str, workers: int, grace: float,
        reactor: Any = None, timeout: float = TIMEOUT, maxRequests: int = 0, maxRequestsJitter: int = 0,
    ) -> None:  # fmt: skip
        self._descriptions, self._factory, self._factoryName = descriptions, factory, factoryName
        self._workers, self._grace, self._timeout, self._reactor = workers, grace, timeout, reactor
        self._maxRequests = (maxRequests, maxRequestsJitter)
        self.ports: list[Any] = []
        self.pool: WorkerPool | None = None
        self._stopper: ParentStop | None = None
        self._listened = False
        # geckotls: listeners whose TLS the workers run: route id ->
        # description, and what this process read of their files.
        self._tls: dict[str, str] = {}
        self._handOvers: dict[str, Any] = {}
        self._filesRead = 0

    def _getReactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, and synchronously: a port
        # that cannot be had must stop twistd now, not be logged later.
        self._listenAll()
        service.Service.privilegedStartService(self)

    def _listenAll(self) -> None:
        """
        Listen on every endpoint, once (C{twistd} calls
        L{privilegedStartService} first; C{twist} only L{startService}), or
        raise C{StartupError}: one line naming the endpoint that failed.
        """
        if self._listened:
            return
        self._listened = True
        reactor = self._getReactor()
        self._stopper = ParentStop(reactor, self._grace, self._takePorts)
        self._dispatcher = Dispatcher(clock=reactor.seconds)
        if self._workers:
            command = partial(serversockCommand, self._factoryName, tls=self._tlsFields)
            maxRequests, jitter = self._maxRequests
            self.pool = WorkerPool(
                reactor, self._dispatcher, command, self._workers, timeout=self._timeout, grace=self._grace, maxRequests=maxRequests, maxRequestsJitter=jitter
            )
            self._stopper.pool = self.pool
        try:
            for description in self._descriptions:
                endpoint = serverFromString(reactor, description)
                if self.pool is not None:
                    route = self._dispatcher.addRoute(description)
                    endpoint = self._tlsInWorkers(endpoint, route.id, description)
                    self.pool.addRoute(route)
                    factory: Any = HandOffFactory(self._dispatcher, route, self._factory)
                else:
                    factory = self._factory
                self.ports.append(_listenNow(endpoint, factory, description))
                if self.pool is not None:
                    route.watchPort(self.ports[-1])
        except BaseException as e:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            if isinstance(e, Exception):
                failStartup(f"serversock: cannot listen on --listen {description}: {cannotListenReason(e)}")
            raise

    def _tlsInWorkers(self, endpoint: Any, route: int, description: str) -> Any:
        """
        A C{geckotls:} endpoint's address endpoint: the parent hands its
        connections over raw and the workers run TLS (with the files this
        process read, handed over in their start-up message); any other
        endpoint itself.
        """
        address: Any = getattr(endpoint, "addressEndpoint", None)
        if getattr(address, "handOver", None) is None:
            return endpoint
        self._tls[str(route)] = description
        self._handOvers[address.clusterDescription()] = address.handOver
        checkFits(self._handOvers, FILES_ROOM)
        return address

    def _tlsFields(self) -> dict[str, Any]:
        reloads = self.pool.reloads if self.pool is not None else 0
        refresh, self._filesRead = reloads != self._filesRead, reloads
        return {"tls": dict(self._tls), "files": startupFiles(self._handOvers, refresh, FILES_ROOM)}

    def startService(self) -> None:
        self._listenAll()
        service.Service.startService(self)
        stopper = self._stopper
        assert stopper is not None
        # Before any worker starts, so that a signal during start-up is
        # acted on once the reactor runs (the reactor then installs our
        # SIGTERM/SIGINT handlers, not its own, which would make a graceful
        # stop end "killed by SIGTERM"); and again once it runs, for any
        # reactor that installs its own some other way.
        stopper.installSignals()
        self._getReactor().callWhenRunning(stopper.installSignals)
        if self.pool is not None:
            self.pool.start()
        else:
            stopper.notifier = notifier = SystemdNotifier(self._getReactor())
            notifier.ready("serving in this process")
            notifier.startWatchdog()

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.succeed(None) if self._stopper is None else self._stopper.stop()

    def _takePorts(self) -> list[Any]:
        ports, self.ports = self.ports, []
        return ports


def _listenNow(endpoint: Any, factory: Any, description: str) -> Any:
    d = endpoint.listen(factory)
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError(f"--listen {description}: the endpoint did not bind synchronously")
    outcome = results[0]
    if hasattr(outcome, "raiseException"):
        outcome.raiseException()
    _log.info("serversock listening on {description} ({address})", description=description, address=describeAddress(outcome.getHost()))
    return outcome


def makeService(options: Options) -> ServerSockService:
    """The C{twistd serversock} service for parsed C{options}."""
    return ServerSockService(
        list(options["listen"]), options["protocolFactory"], options["factory"], int(options["workers"]), float(options["grace"]),
        timeout=float(options["timeout"]), maxRequests=int(options["max-requests"]), maxRequestsJitter=int(options["max-requests-jitter"]),
    )  # fmt: skip
