# -*- test-case-name: tests.test_cluster -*-
"""
Cluster mode: C{workers=N} on a C{gecko:} or C{geckounix:} endpoint serves
the program from N worker processes, with no change to the program::

    twistd -n web --listen gecko:port=8080:workers=4 --path /srv/www

The first process to listen is the I{primary} (L{primary}): it binds, and
once its reactor runs it starts N workers that run its own command line
again (C{sys.orig_argv}, through L{boot}), each with a channel to the
primary on an inherited descriptor and a marker in its environment.  In a
worker (L{worker}) the same endpoint's C{listen()} does not bind: it
attaches to the primary's listener with the same description, and the
primary hands it accepted connections as file descriptors, holding each one
until the worker acknowledges it (L{twisted_serversock.ipc}).  The primary
serves nothing itself.  C{docs/cluster.md} describes the process model.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort

__all__ = ["isWorker", "workerIndex", "listen"]


def isWorker() -> bool:
    """
    Whether this process is a cluster worker (Node's C{cluster.isWorker}).
    """
    from .worker import environment

    return environment() is not None


def workerIndex() -> int:
    """
    This worker's number (1, 2, ...), or 0 outside a cluster worker.
    """
    from .worker import environment

    env = environment()
    return env.index if env is not None else 0


def listen(reactor: Any, endpoint: Any, factory: Any, workers: int) -> defer.Deferred[IListeningPort]:
    """
    C{endpoint.listen(factory)} in cluster mode: bind in the primary, attach
    in a worker.  (What the gecko endpoints call when C{workers} is not 0.)

    @param endpoint: a gecko endpoint (it has C{clusterDescription()} and
        binds through L{twisted_serversock.endpoints.GeckoListeningPort}).
    @param workers: how many worker processes the primary starts.
    """
    from .worker import environment, workerFor

    if environment() is not None:
        return workerFor(reactor).listen(endpoint, factory)
    from .primary import primaryFor

    return primaryFor(reactor).listen(endpoint, factory, workers)
