# -*- test-case-name: tests.test_cluster -*-
"""
Cluster mode: C{workers=N} on a C{gecko:} or C{geckounix:} endpoint serves
the program from N worker processes, with no change to the program::

    twistd -n web --listen gecko:port=8080:workers=4 --path /srv/www

The first process to listen is the I{primary} (L{primary}): it binds, and
starts N workers that run its own command line again (L{boot}).  In a
worker (L{worker}) the same endpoint's C{listen()} attaches to the
primary's listener with the same description, and the primary hands it
the accepted connections.  C{docs/cluster.md} describes the process model.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable
from weakref import WeakKeyDictionary

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort

if TYPE_CHECKING:
    from .primary import ClusterPrimary
    from .worker import ClusterWorker

__all__ = ["isWorker", "workerIndex", "listen"]


class Registry:
    """
    Which end of a cluster each reactor's endpoints reach, made on first
    use: in a worker process (L{boot} says so before the program runs) a
    L{ClusterWorker<worker.ClusterWorker>}, else a
    L{ClusterPrimary<primary.ClusterPrimary>}.
    """

    def __init__(self, atExit: Callable[[Callable[[], None]], object] | None = None) -> None:
        """@param atExit: what the primaries register their exit status with."""
        self._atExit = atExit
        self._ends: WeakKeyDictionary[Any, ClusterPrimary | ClusterWorker] = WeakKeyDictionary()
        self._worker: tuple[socket.socket, dict[str, Any]] | None = None

    def becomeWorker(self, channel: socket.socket, startup: dict[str, Any]) -> None:
        """This process is a cluster worker: C{channel} to its primary, and its start-up message's C{startup} fields."""
        self._worker = (channel, startup)

    def workerIndex(self) -> int:
        """This process's worker number (1, 2, ...), or 0 outside a worker."""
        return self._worker[1]["index"] if self._worker is not None else 0

    def endFor(self, reactor: Any) -> ClusterPrimary | ClusterWorker:
        """The cluster end of C{reactor}'s endpoints (made on first use)."""
        if reactor not in self._ends:
            if self._worker is not None:
                from .worker import ClusterWorker

                self._ends[reactor] = ClusterWorker(reactor, *self._worker)
            else:
                from .primary import ClusterPrimary

                self._ends[reactor] = ClusterPrimary(reactor, self._atExit)
        return self._ends[reactor]


#: This process's registry (its start-up facts are the process's).
registry = Registry()


def isWorker() -> bool:
    """Whether this process is a cluster worker (Node's C{cluster.isWorker})."""
    return registry.workerIndex() != 0


def workerIndex() -> int:
    """This worker's number (1, 2, ...), or 0 outside a cluster worker."""
    return registry.workerIndex()


def listen(reactor: Any, endpoint: Any, factory: Any, workers: int, registry: Registry = registry) -> defer.Deferred[IListeningPort]:
    """
    C{endpoint.listen(factory)} in cluster mode (what a gecko endpoint with
    C{workers} calls): bind in the primary, attach in a worker.

    @param workers: how many worker processes the primary starts.
    """
    return registry.endFor(reactor).listen(endpoint, factory, workers)
