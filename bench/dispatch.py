"""
The parent's cost of handing one connection to a worker: C{twistd
serversock --workers 2} serving a zero-work handler
(L{bench.handlers.closeAtOnce}) while the C client makes N connections (32
in flight; the handler closes each at once).  The parent's CPU time
(schedstat, exact) is read before and after, less what it uses idle over
the same time, and divided by the completed connections.

B is the raw C{socket.send_fds} parent that C{shared/research/perf.md}
measured at 25 µs per connection (L{bench._refservers} C{fdpass}), run in
the same rotation: it accepts, sends and closes at once.  The project's
parent also holds each connection until its worker acknowledges it (so that
a worker dying with connections in flight loses none), which costs a
message back and a later C{close()}; the target is on A alone (≤ 25 µs).

A zero-work handler is the worst case for the parent: the worker has
usually closed its copy before the parent closes its own, so the parent's
C{close()} is the one that tears the TCP connection down.
"""

from __future__ import annotations

import time

from ._harness import Context, Result, Server, Target, cpuNanoseconds, pairedRow, rotations
from ._workers import reference, serversock, treeCpuNs

NAME = "dispatch"
TITLE = "Parent dispatch cost per handed-over connection (zero-work handler)"
PLOT = "values"

FACTORY = "bench.handlers.closeAtOnce"
CONCURRENCY = 32
TARGET = Target("<=", 25.0, on="a")
IDLE_SECONDS = 0.3


def _measure(ctx: Context, server: Server, count: int) -> tuple[float, float, float]:
    """
    Parent CPU µs per connection (idle use subtracted), the workers' CPU
    µs per connection, and the connection rate.
    """
    t0 = time.monotonic()
    idle0 = cpuNanoseconds(server.pid)
    time.sleep(IDLE_SECONDS)
    idleRate = (cpuNanoseconds(server.pid) - idle0) / (time.monotonic() - t0)
    tree0 = treeCpuNs(server.pid)
    parent0 = cpuNanoseconds(server.pid)
    t0 = time.monotonic()
    got = ctx.client(["conn", server.address, str(CONCURRENCY), "20", str(count), "none"], timeout=60, cpu=None)
    elapsed = time.monotonic() - t0
    parent = cpuNanoseconds(server.pid) - parent0 - idleRate * elapsed
    workers = treeCpuNs(server.pid) - tree0 - (cpuNanoseconds(server.pid) - parent0)
    completed = max(1.0, got["completed"])
    return parent / 1e3 / completed, workers / 1e3 / completed, got["rate"]


def run(ctx: Context) -> Result:
    result = Result()
    count = 5_000 if ctx.quick else 20_000
    env: dict[str, str] = {}
    servers = {
        "A": serversock(ctx, FACTORY, 2, "dispatch-A", env),
        "B": reference(ctx, "fdpass", FACTORY, 2, "dispatch-B", env),
    }
    parent: dict[str, list[float]] = {k: [] for k in servers}
    workers: dict[str, list[float]] = {k: [] for k in servers}
    rate: dict[str, list[float]] = {k: [] for k in servers}
    try:
        for s in servers.values():  # warm-up, not measured
            ctx.client(["conn", s.address, str(CONCURRENCY), "10", "2000", "none"], timeout=60, cpu=None)
        for rep, order in rotations(list(servers), ctx.reps):
            for key in order:
                p, w, r = _measure(ctx, servers[key], count)
                parent[key].append(p)
                workers[key].append(w)
                rate[key].append(r)
            ctx.log(
                f"dispatch rep {rep + 1}: "
                + "  ".join(f"{k} parent {parent[k][-1]:.1f}µs/conn ({rate[k][-1]:,.0f} conn/s)" for k in servers)
            )
    finally:
        for s in servers.values():
            s.stop()
    workersRow = pairedRow("", "", list(zip(workers["A"], workers["B"])))
    rateRow = pairedRow("", "", list(zip(rate["A"], rate["B"])))
    result.rows.append(
        pairedRow(
            "parent CPU per handed-over connection (B: raw send_fds parent)",
            "µs",
            list(zip(parent["A"], parent["B"])),
            target=TARGET,
            note=f"{count:,} conns/rep; workers {workersRow.a:.1f} vs {workersRow.b:.1f} µs/conn; {rateRow.a:,.0f} vs {rateRow.b:,.0f} conn/s",
        )
    )
    result.details = {"parent_us_per_conn": parent, "workers_us_per_conn": workers, "rate": rate, "connections": count}
    result.commands = ctx.takeCommands()
    return result
