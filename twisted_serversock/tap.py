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
from twisted.python.failure import Failure

from ._labels import describeAddress
from ._startup import cannotListenReason, failStartup
from ._clusteroptions import autoWorkersWhy, controlPath, metricsEndpoint, workerCount
from .ipc.pool import WorkerPool
from .ipc.primary import Primary
from .ipc.sdnotify import SystemdNotifier
from .ipc.spawn import GRACE, TIMEOUT, serversockCommand
from .ipc.worker import resolveFactory

__all__ = ["Options", "makeService", "ServerSockService"]

_log = Logger()


class Options(usage.Options):
    """The options of C{twistd serversock}."""

    synopsis = (
        "[--listen DESC ...] [--factory MODULE.NAME] [--workers N] [--grace SECONDS] [--lame-duck SECONDS] "
        "[--timeout SECONDS] [--control PATH] [--metrics ENDPOINT] "
        "[--max-requests N [--max-requests-jitter J]]"
    )
    longdesc = (
        "Serve a Twisted protocol factory on every --listen endpoint, in N worker processes "
        "that receive each accepted connection as a file descriptor (0 = in this process)."
    )
    optParameters = [
        ["factory", "f", "twisted_serversock.examples.echo", "MODULE.NAME of an IProtocolFactory, or of a callable returning one."],
        ["workers", "w", None, "Worker processes (default: the number of CPUs; 0 = serve in this process)."],
        ["grace", "g", f"{GRACE:g}", "Seconds open connections get to finish after SIGTERM, SIGHUP or a recycle."],
        ["lame-duck", None, "0", "Seconds to go on accepting and serving after SIGTERM/SIGINT before stopping (a second signal: at once)."],
        ["timeout", "t", f"{TIMEOUT:g}", "Kill and replace a worker silent for this many seconds (heartbeats keep idle ones alive)."],
        ["max-requests", None, "0", "Replace a worker gracefully after it was given this many connections (0 = never)."],
        ["max-requests-jitter", None, "0", "Add a random 0..J to --max-requests per worker, so that they are not all replaced at once."],
        ["control", None, None, "A UNIX socket path for serversockctl (status, top, reload, scale); none by default."],
        ["metrics", None, None, "An endpoint to serve Prometheus metrics at /metrics on (needs prometheus_client); none by default."],
    ]

    def opt_listen(self, description: str) -> None:
        """An endpoint to listen on (repeatable; default gecko:8080)."""
        self.setdefault("listen", []).append(description)

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
            self["workersWhy"] = autoWorkersWhy("auto")
        for name in ("workers", "max-requests", "max-requests-jitter"):
            self._number(name, int, lambda n: n >= 0, "0 or more")
        for name in ("grace", "lame-duck"):
            self._number(name, float, lambda n: 0 <= n < float("inf"), "0 or more seconds (a finite number)")
        self._number("timeout", float, lambda n: 0 < n < float("inf"), "a finite number of seconds above 0")
        try:
            controlPath(self["control"])
            metricsEndpoint(self["metrics"])
        except ValueError as e:
            raise usage.UsageError(f"--{e}") from None
        self.setdefault("listen", ["gecko:8080"])
        for description in self["listen"]:
            try:
                serverFromString(object(), description)  # only checked: no reactor is needed (or chosen) yet
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
        reactor: Any = None, timeout: float = TIMEOUT, maxRequests: int = 0, maxRequestsJitter: int = 0, lameDuck: float = 0.0,
        control: str | None = None, metrics: str | None = None,
    ) -> None:  # fmt: skip
        self._descriptions, self._factory, self._factoryName = descriptions, factory, factoryName
        self._workers, self._grace, self._reactor, self._lameDuck = workers, grace, reactor, lameDuck
        self._control, self._metrics = control, metrics
        self._poolOptions = {"timeout": timeout, "maxRequests": maxRequests, "maxRequestsJitter": maxRequestsJitter}
        self.ports: list[Any] = []
        self.pool: WorkerPool | None = None
        self._primary: Primary | None = None
        # geckotls: listeners whose TLS the workers run: route id -> description.
        self._tls: dict[str, str] = {}

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
        if self._primary is not None:
            return
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        self._primary = Primary(self._reactor, self._grace, self._takePorts, self._lameDuck)
        if self._workers:
            command = partial(serversockCommand, self._factoryName, tls=self._tlsFields, grace=self._grace)
            self.pool = self._primary.makePool(command, self._workers, **self._poolOptions)
        try:
            self._primary.openControl(self._control)
            self._primary.openMetrics(self._metrics)
            for description in self._descriptions:
                self.ports.append(self._listen(description, serverFromString(self._reactor, description)))
        except BaseException as e:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            if isinstance(e, ValueError) and str(e).startswith(("control=", "metrics=")):
                failStartup(f"serversock: cannot listen on --{e}")
            if isinstance(e, Exception):
                failStartup(f"serversock: cannot listen on --listen {description}: {cannotListenReason(e)}")
            raise

    def _listen(self, description: str, endpoint: Any) -> Any:
        if self.pool is None:
            return _listenNow(description, endpoint, self._factory)
        assert self._primary is not None
        # A geckotls: endpoint's connections are handed over raw, from its
        # address endpoint: the workers run TLS, with the files this
        # process read (handed over in their start-up message).
        address: Any = getattr(endpoint, "addressEndpoint", None)
        tls = getattr(address, "handOver", None) is not None
        if tls:
            self._primary.keepFiles(address.clusterDescription(), address.handOver)
        route, port = self._primary.handOff(description, self._factory, partial(_listenNow, description, address if tls else endpoint))
        if tls:
            self._tls[str(route.id)] = description
        self.pool.addRoute(route)
        return port

    def _tlsFields(self) -> dict[str, Any]:
        assert self._primary is not None
        return {"tls": dict(self._tls), "files": self._primary.files()}

    def startService(self) -> None:
        self._listenAll()
        service.Service.startService(self)
        assert self._primary is not None
        self._primary.start()
        if self.pool is None:
            self._primary.stopper.notifier = notifier = SystemdNotifier(self._reactor)
            notifier.ready("serving in this process")
            notifier.startWatchdog()

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.succeed(None) if self._primary is None else self._primary.stopper.stop()

    def _takePorts(self) -> list[Any]:
        ports, self.ports = self.ports, []
        return ports


def _listenNow(description: str, endpoint: Any, factory: Any) -> Any:
    results: list[Any] = []
    endpoint.listen(factory).addBoth(results.append)
    if not results:
        raise RuntimeError(f"--listen {description}: the endpoint did not bind synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    _log.info("serversock listening on {description} ({address})", description=description, address=describeAddress(results[0].getHost()))
    return results[0]


def makeService(options: Options) -> ServerSockService:
    """The C{twistd serversock} service for parsed C{options}."""
    if options.get("workersWhy"):
        _log.info("{n} worker(s): --workers was not given, so one per CPU: {why}", n=options["workers"], why=options["workersWhy"])
    return ServerSockService(
        list(options["listen"]), options["protocolFactory"], options["factory"], int(options["workers"]), float(options["grace"]),
        timeout=float(options["timeout"]), maxRequests=int(options["max-requests"]), maxRequestsJitter=int(options["max-requests-jitter"]),
        lameDuck=float(options["lame-duck"]), control=options["control"], metrics=options["metrics"],
    )  # fmt: skip
