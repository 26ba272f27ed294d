"""
A cluster's metrics for Prometheus (C{metrics=ENDPOINT}), scraped with
curl from the installed C{twistd web} with C{workers=2} and parsed with
C{prometheus_client}'s own parser, across real connections, a reload
and a killed worker.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

import prometheus_client.parser as prometheus
import pytest
import pytest_twisted
from twisted.internet import defer, utils
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from ._procs import PRIMARY_LISTENING, SERVERSOCK, TWISTD, Proc, spawn, stopCleanly
from .conftest import connect, eventually, timeout


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and TCP_INFO")

METRICS_AT = r"Metrics for Prometheus at /metrics on 127\.0\.0\.1:(\d+)"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The metrics page, fetched with curl, as {(sample name, labels): value}."""
    out, err, code = await timeout(utils.getProcessOutputAndValue("curl", ["-sf", f"http://127.0.0.1:{port}/metrics"], env=dict(os.environ)), 30)
    assert code == 0, err
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus.text_string_to_metric_families(out.decode())
        for sample in family.samples
    }


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


async def served(port: int, n: int, concurrency: int = 25) -> None:
    """C{n} connections, C{concurrency} at a time, each a request answered in full."""

    async def one() -> None:
        client = await connect(port)
        client.transport.write(REQUEST)
        await timeout(client.whenClosed())
        assert client.received.endswith(b"hello"), client.received

    for start in range(0, n, concurrency):
        await defer.gatherResults([defer.ensureDeferred(one()) for _ in range(min(concurrency, n - start))])


READY = r"Worker \d \(pid (\d+)\) is ready"


async def readyWorkers(proc: Proc, count: int) -> list[int]:
    """Wait for C{count} "is ready" lines in all; the pids of the last two."""
    await eventually(lambda: len(re.findall(READY, proc.output)) >= count)
    return [int(p) for p in re.findall(READY, proc.output)[-2:]]


#: Connections per round (three rounds).
ROUND = 3334

COUNTERS = (
    "serversock_connections_accepted_total",
    "serversock_connections_handed_off_total",
    "serversock_connections_resent_total",
    "serversock_connections_closed_unserved_total",
    "serversock_worker_starts_total",
    "serversock_reloads_total",
)


@pytest_twisted.ensureDeferred
async def test_countersBalanceAcrossAReloadAndAKilledWorker(workdir: str) -> None:
    """
    Over 10,000 connections in three rounds, with a SIGHUP reload after the
    first and a SIGKILLed worker after the second: after each round the
    scraped counters balance (accepted = handed off + closed unserved + in
    flight + waiting), accepted is the number of connections opened, no
    counter went down, and the exits are counted by why; then a worker
    more, one fewer and one more again: that number's count goes on.
    """
    with open(os.path.join(workdir, "index.html"), "w") as f:
        f.write("hello")
    listen = r"gecko:port=0:loopback=1:workers=2:metrics=tcp\:0\:interface\=127.0.0.1"
    proc = spawn([*TWISTD, "-n", "--pidfile=", "web", "--listen", listen, "--path", workdir], workdir)
    try:
        port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
        metricsPort = int((await proc.waitFor(METRICS_AT)).group(1))
        pids = await readyWorkers(proc, 2)
        before = await scrape(metricsPort)
        opened = 0
        for round in range(3):
            await served(port, ROUND)
            opened += ROUND
            now = await scrape(metricsPort)
            accepted = value(now, "serversock_connections_accepted_total")
            assert accepted == opened
            inFlight, waiting = value(now, "serversock_connections_in_flight"), value(now, "serversock_connections_waiting")
            handed, unserved = value(now, "serversock_connections_handed_off_total"), value(now, "serversock_connections_closed_unserved_total")
            assert accepted == handed + unserved + inFlight + waiting, now
            assert unserved == 0
            for name in COUNTERS:
                assert value(now, name) >= value(before, name), name
            served_ = {labels: v for (name, labels), v in now.items() if name == "serversock_worker_connections_total"}
            assert sum(served_.values()) == handed
            for labels, v in served_.items():
                assert v >= before.get(("serversock_worker_connections_total", labels), 0)
            before = now
            if round == 0:
                proc.transport.signalProcess(signal.SIGHUP)
                await proc.waitFor(r"Reload done")
                pids = await readyWorkers(proc, 4)
            elif round == 1:
                os.kill(pids[0], signal.SIGKILL)
                await proc.waitFor(rf"Worker \d \(pid {pids[0]}\) died")
                await readyWorkers(proc, 5)
        assert value(before, "serversock_worker_exits_total", reason="reload") == 2
        assert value(before, "serversock_worker_exits_total", reason="crash") == 1
        assert value(before, "serversock_worker_starts_total") == 5
        assert value(before, "serversock_reloads_total") == 1
        assert value(before, "serversock_workers", state="serving") == 2
        assert value(before, "serversock_listener_backlog", listener="gecko:port=0:loopback=1") > 0
        assert all(v > 0 for (name, _), v in before.items() if name == "serversock_worker_resident_memory_bytes")
        # One worker more (SIGTTIN), serving; one fewer (SIGTTOU); one more
        # again, under the same number: its count goes on, never back.
        proc.transport.signalProcess(signal.SIGTTIN)
        await readyWorkers(proc, 6)
        await served(port, 300)
        third = value(await scrape(metricsPort), "serversock_worker_connections_total", worker="3")
        assert third > 0
        proc.transport.signalProcess(signal.SIGTTOU)
        await proc.waitFor(r"worker 3 \(pid \d+\) exited")
        proc.transport.signalProcess(signal.SIGTTIN)
        await readyWorkers(proc, 7)
        now = await scrape(metricsPort)
        assert value(now, "serversock_worker_connections_total", worker="3") == third
        served_ = sum(v for (name, _), v in now.items() if name == "serversock_worker_connections_total")
        assert served_ == value(now, "serversock_connections_handed_off_total") == opened + 300
        assert value(now, "serversock_worker_exits_total", reason="scale") == 1
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_serversockMetrics(workdir: str) -> None:
    """C{twistd serversock --metrics}: the same page for its workers."""
    proc = spawn([*SERVERSOCK, "--listen", "gecko:port=0:loopback=1", "--workers", "1", "--metrics", "tcp:0:interface=127.0.0.1"], workdir)
    try:
        metricsPort = int((await proc.waitFor(METRICS_AT)).group(1))
        await proc.waitFor(r"Worker 1 \(pid \d+\) is ready")
        metrics = await scrape(metricsPort)
        assert value(metrics, "serversock_workers_target") == 1
        assert value(metrics, "serversock_workers", state="serving") == 1
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest.mark.parametrize(
    "description, message",
    [
        (r"gecko:port=0:metrics=tcp\:9100", "metrics is a cluster primary's option: it needs workers=N"),
        (r"gecko:port=0:workers=2:metrics=nosuch\:9100", "metrics='nosuch:9100': "),
    ],
)
def test_badMetricsOption(description: str, message: str) -> None:
    """A bad C{metrics=}: a C{ValueError} naming it."""
    with pytest.raises(ValueError, match=re.escape(message)):
        serverFromString(MemoryReactor(), description)
