# -*- test-case-name: tests.test_metrics -*-
"""
A cluster's metrics in Prometheus' format, served by its primary.

C{metrics=ENDPOINT} on a C{workers=N} endpoint (C{twistd serversock
--metrics ENDPOINT}) makes the primary serve C{/metrics} on C{ENDPOINT}
(any Twisted server endpoint string, its colons escaped inside the
option: C{gecko:8080:workers=2:metrics=tcp\\:9100\\:interface\\=127.0.0.1}).
Needs C{prometheus_client} (C{pip install twisted-serversock[metrics]}).

The primary already counts what it does (L{Dispatcher
<twisted_serversock.ipc.dispatch.Dispatcher>}, L{WorkerPool
<twisted_serversock.ipc.pool.WorkerPool>}); a scrape reads those counters
(L{ControlTarget.status<twisted_serversock.control.ControlTarget.status>},
the control socket's status), so serving metrics costs nothing per
connection and there is no multiprocess directory to manage.  The
counters live in the primary, so none goes backwards when a worker
restarts or the workers are reloaded.
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ._labels import describeAddress

__all__ = ["ClusterCollector", "listenMetrics", "needPrometheus"]

_log = Logger()

PREFIX = "serversock_"

#: The connection counters of the status, and what each counts.
_CONNECTIONS = {
    "accepted": "Connections the primary accepted.",
    "handedOff": "Connections a worker adopted (acknowledged).",
    "resent": "Hand-overs sent again to another worker (a worker died holding them, or had no descriptor for them).",
    "refused": "Hand-overs a worker refused at its descriptor limit.",
    "closedUnserved": "Accepted connections closed because no worker could take them.",
}


def needPrometheus(option: str) -> None:
    """
    @raise ValueError: naming C{option}, if C{prometheus_client} cannot be imported.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ValueError(f"{option} needs prometheus_client: pip install 'twisted-serversock[metrics]'") from None


class ClusterCollector:
    """
    A C{prometheus_client} collector of a primary's figures, read when
    scraped from C{status} (a callable returning what the control socket's
    C{status} returns) and C{pool}.
    """

    def __init__(self, target: Any) -> None:
        """@param target: a L{ControlTarget<twisted_serversock.control.ControlTarget>}."""
        self._target = target

    def describe(self) -> list[Any]:
        """Nothing: the metrics are found by collecting (the registry does not call this then)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families, as they are now."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._target.status()
        pool = self._target.primary.pool
        c = status["connections"]
        for key, doc in _CONNECTIONS.items():
            name = "connections_" + "".join("_" + ch.lower() if ch.isupper() else ch for ch in key)
            yield CounterMetricFamily(PREFIX + name, doc, value=c[key])
        yield GaugeMetricFamily(PREFIX + "connections_in_flight", "Hand-overs sent to a worker, not yet acknowledged.", value=c["inFlight"])
        yield GaugeMetricFamily(PREFIX + "connections_waiting", "Accepted connections waiting in the primary for a worker with room.", value=c["waiting"])
        yield CounterMetricFamily(PREFIX + "accept_pauses", "Times the primary stopped accepting because every worker was saturated.", value=status["acceptPauses"])
        yield CounterMetricFamily(PREFIX + "reloads", "Reloads (SIGHUP or the control socket).", value=status["reloads"])
        yield GaugeMetricFamily(PREFIX + "workers_target", "Worker processes the primary keeps.", value=status["target"])
        states = GaugeMetricFamily(PREFIX + "workers", "Worker processes, by state.", labels=["state"])
        for state in ("starting", "serving", "retiring"):
            states.add_metric([state], sum(1 for w in status["workers"] if w["state"] == state))
        yield states
        open_ = GaugeMetricFamily(PREFIX + "worker_open_connections", "Connections each worker process holds.", labels=["worker", "pid"])
        rss = GaugeMetricFamily(PREFIX + "worker_resident_memory_bytes", "Each worker process's resident memory.", labels=["worker", "pid"])
        cpu = CounterMetricFamily(PREFIX + "worker_cpu_seconds", "CPU time each worker process used.", labels=["worker", "pid"])
        for w in status["workers"]:
            labels = [str(w["index"]), str(w["pid"])]
            open_.add_metric(labels, w["open"])
            if w["rss"] is not None:
                rss.add_metric(labels, w["rss"])
                cpu.add_metric(labels, w["cpu"])
        yield from (open_, rss, cpu)
        if pool is not None:
            served = CounterMetricFamily(PREFIX + "worker_connections", "Connections adopted by each worker number's processes, across restarts.", labels=["worker"])
            for index, n in sorted(servedBySlot(pool).items()):
                served.add_metric([str(index)], n)
            yield served
            yield CounterMetricFamily(PREFIX + "worker_starts", "Worker processes started.", value=pool.starts)
            exits = CounterMetricFamily(PREFIX + "worker_exits", "Worker processes that ended, by why.", labels=["reason"])
            from .ipc.slots import EXIT_REASONS

            for reason in EXIT_REASONS:
                exits.add_metric([reason], pool.exits[reason])
            yield exits
        queue = GaugeMetricFamily(PREFIX + "listener_queue", "Connections in a listener's kernel accept queue (TCP, Linux).", labels=["listener"])
        backlog = GaugeMetricFamily(PREFIX + "listener_backlog", "The limit of a listener's accept queue.", labels=["listener"])
        for listener in status["listeners"]:
            if listener["queue"] is not None:
                queue.add_metric([listener["name"]], listener["queue"])
                backlog.add_metric([listener["name"]], listener["backlog"])
        yield from (queue, backlog)


def servedBySlot(pool: Any) -> dict[int, int]:
    """
    Connections adopted by each worker number's processes since the start:
    those of its ended workers (L{WorkerPool.adoptedBy
    <twisted_serversock.ipc.pool.WorkerPool.adoptedBy>}, kept even for a
    number L{removeWorker<twisted_serversock.ipc.pool.WorkerPool.removeWorker>}
    gave up) and of its live ones, so never less than before, whatever
    restarted or was scaled.
    """
    served = dict(pool.adoptedBy)
    for worker in pool.workers.live:
        served[worker.index] = served.get(worker.index, 0) + worker.link.adopted
    return served


def _MetricsPage(registry: Any) -> Any:
    """
    The C{/metrics} resource: rendered in the reactor's thread, where the
    figures it reads change (C{prometheus_client.twisted.MetricsResource}
    renders in a thread pool, which would read them mid-change).
    """
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from twisted.web.resource import Resource

    class MetricsPage(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            return generate_latest(registry)

    return MetricsPage()


def listenMetrics(reactor: Any, description: str, target: Any) -> IListeningPort:
    """
    Serve C{target}'s metrics (a L{ControlTarget
    <twisted_serversock.control.ControlTarget>}) at C{/metrics} on the
    endpoint C{description}, now (an endpoint that does not bind at once
    is an error).

    @raise ValueError: naming the endpoint, if it cannot listen.
    """
    from prometheus_client import CollectorRegistry
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(target))
    root = Resource()
    root.putChild(b"metrics", _MetricsPage(registry))
    site = Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]  # scrapes are not access-logged
    results: list[Any] = []
    try:
        serverFromString(reactor, description).listen(site).addBoth(results.append)
    except Exception as e:
        raise ValueError(f"metrics={description}: {e}") from None
    if not results or not IListeningPort.providedBy(results[0]):
        reason = results[0].getErrorMessage() if results else "the endpoint did not listen at once"
        raise ValueError(f"metrics={description}: {reason}")
    _log.info("Metrics for Prometheus at /metrics on {address}", address=describeAddress(results[0].getHost()))
    return results[0]
