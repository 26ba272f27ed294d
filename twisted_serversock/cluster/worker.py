# -*- test-case-name: tests.test_cluster_units -*-
"""
A cluster worker: the application's own program, run again by the primary
(L{twisted_serversock.cluster.boot}), whose C{workers=N} endpoints attach
to the primary's listener with the same description instead of binding.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from zope.interface import implementer

from .._labels import describeAddress
from ..ipc.control import ANY, INTEGER, STRING, ControlTable, optional
from ..ipc.spawn import GRACE
from ..ipc.worker import Worker

__all__ = ["ClusterWorker", "WorkerPort", "encodeAddress", "decodeAddress"]

_log = Logger()

#: Seconds a worker waits for the primary's answer about a listener new since the worker started.
ATTACH_TIMEOUT = 30.0


def encodeAddress(address: Any) -> list[Any]:
    """A listener's address as JSON-able data (for L{decodeAddress})."""
    if isinstance(address, IPv6Address):
        return ["TCP6", address.host, address.port, address.flowInfo, address.scopeID]
    if isinstance(address, IPv4Address):
        return ["TCP4", address.host, address.port]
    if isinstance(address, UNIXAddress):
        return ["UNIX", None if address.name is None else os.fsdecode(address.name)]
    return ["OTHER", repr(address)]


def decodeAddress(data: list[Any]) -> Any:
    """The address L{encodeAddress} encoded."""
    kind, *rest = data
    if kind in ("TCP4", "TCP6"):
        return (IPv4Address if kind == "TCP4" else IPv6Address)("TCP", *rest)
    if kind == "UNIX":
        return UNIXAddress(None if rest[0] is None else os.fsencode(rest[0]))
    return rest[0]


@implementer(IListeningPort)
class WorkerPort:
    """
    A cluster listener in a worker: the primary accepts, this process
    serves with C{factory}.  Its C{serverSocket} is C{None}: that is in the primary.

    @ivar route: the primary's route for the listener, once attached.
    """

    serverSocket = None

    def __init__(self, worker: ClusterWorker, description: str, factory: Any) -> None:
        self._worker = worker
        self.description = description
        self.factory = factory
        self.route: int | None = None
        self._address: Any = None
        self.listening = False

    def __repr__(self) -> str:
        return f"<WorkerPort {self.description} on {describeAddress(self._address)}>"

    def attached(self, route: int, address: Any) -> None:
        """The primary serves this listener's connections to this worker from now on."""
        self.route, self._address, self.listening = route, address, True
        self._worker.factories[route] = self.factory
        self.factory.doStart()
        text = "Cluster worker {index} (pid {pid}) serves {address} ({description})"
        _log.info(text, index=self._worker.index, pid=os.getpid(), address=describeAddress(address), description=self.description)

    def getHost(self) -> Any:
        return self._address

    def startListening(self) -> None:
        """Nothing to do: the port is attached from the start."""

    def stopListening(self) -> defer.Deferred[None]:
        """Take no new connections of this listener; those already handed over are still served."""
        if self.listening:
            self.listening = False
            self._worker.detach(self)
            self.factory.doStop()
        return defer.succeed(None)

    loseConnection = stopListening


class ClusterWorker(Worker):
    """
    This process's end of the cluster (see L{Registry<twisted_serversock.cluster.Registry>}):
    a L{Worker} whose routes are its ports', filled as they attach.
    """

    controls = ControlTable(base=Worker.controls)

    def __init__(self, reactor: Any, channel: socket.socket, startup: dict[str, Any]) -> None:
        """@param startup: the start-up message's fields (C{ipc.spawn.STARTUP_FIELDS["cluster"]})."""
        super().__init__(reactor, channel, startup["index"], startup["heartbeat"], grace=startup.get("grace", GRACE))
        # What the primary had when this worker started: description -> (route, address).
        self._known = {str(d): (int(route), decodeAddress(address)) for d, (route, address) in startup["listeners"].items()}
        self._descriptions: dict[str, WorkerPort] = {}
        # Requests to the primary by id: the program's Deferred, or None for
        # one answered from the start-up facts until the primary answers.
        self._asked: dict[int, tuple[defer.Deferred[IListeningPort] | None, WorkerPort]] = {}
        self._ids = itertools.count(1)

    def listen(self, endpoint: Any, factory: Any, workers: int = 0) -> defer.Deferred[IListeningPort]:
        """
        Attach to the primary's listener with C{endpoint}'s description.

        @return: a Deferred with the L{WorkerPort} (fired at once if the primary
            had the listener when this worker started), or C{CannotListenError}
            (the primary does not have it, or the channel to it is gone).
        """
        description = endpoint.clusterDescription()
        if description in self._descriptions and self._descriptions[description].listening:
            return defer.fail(CannotListenError(None, description, ValueError("this description is already listening in this worker")))
        if not self.link.connected:
            return defer.fail(CannotListenError(None, description, ValueError("the channel to the cluster primary is closed")))
        port = self._descriptions[description] = WorkerPort(self, description, factory)
        requestId = next(self._ids)
        self.link.sendControl("cluster-attach", id=requestId, description=description)
        # What the primary had at this worker's start holds for the first
        # listen on each description only: a listener the program stopped and
        # listens on again has a new route, so later listens wait for the answer.
        if (known := self._known.pop(description, None)) is not None:
            self._asked[requestId] = (None, port)
            port.attached(*known)
            return defer.succeed(port)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._asked[requestId] = (d, port)

        def timedOut(failure: Any) -> Any:
            self._asked.pop(requestId, None)
            failure.trap(defer.TimeoutError)
            raise CannotListenError(None, description, ValueError(f"the cluster primary did not answer in {ATTACH_TIMEOUT} s"))

        d.addTimeout(ATTACH_TIMEOUT, self._reactor)
        d.addErrback(timedOut)
        return d

    def _forget(self, port: WorkerPort) -> None:
        if port.route is not None and self.factories.get(port.route) is port.factory:
            del self.factories[port.route]

    def detach(self, port: WorkerPort) -> None:
        """Ask the primary to send no more connections of C{port}'s listener."""
        if port.route is not None and self.link.connected:
            self.link.sendControl("cluster-detach", route=port.route)

    def stop(self, grace: float) -> None:
        """Take no new connections, let open ones finish within C{grace} seconds, then stop the reactor (and so the program)."""
        for port in list(self._descriptions.values()):
            if port.listening:
                self.detach(port)
        super().stop(grace)

    @controls.handler("cluster-attached", id=INTEGER, route=INTEGER, address=ANY)
    def _onAttached(self, id: int, route: int, address: Any) -> None:
        d, port = self._asked.pop(id, (None, None))
        if d is not None and port is not None:
            port.attached(route, decodeAddress(address))
            d.callback(port)
        elif port is not None and port.listening and port.route != route:
            # The primary listened anew between this worker's start and
            # its request: its answer names the listener's route now.
            self._forget(port)
            self.factories[route] = port.factory
            port.route = route

    @controls.handler("cluster-closed", id=INTEGER)
    def _onClosed(self, id: int) -> None:
        # The primary has closed the listener since this worker started (or
        # asked): as in the primary, the program's listen() succeeds with a
        # closed port, and no connection comes.
        d, port = self._asked.pop(id, (None, None))
        if d is not None and port is not None:
            d.callback(port)
        elif port is not None and port.listening:
            self._forget(port)
            port.listening = False
            port.factory.doStop()

    @controls.handler("cluster-refused", id=optional(ANY, None), reason=optional(STRING, "refused"))
    def _onRefused(self, id: Any, reason: str) -> None:
        d, port = self._asked.pop(id, (None, None)) if isinstance(id, int) else (None, None)
        if d is not None and port is not None:
            d.errback(CannotListenError(None, port.description, ValueError(reason)))
        else:
            _log.error("The cluster primary refused a listener: {reason}", reason=reason)
