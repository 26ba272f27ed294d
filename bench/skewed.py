"""
Tail latency with a skewed handler: C{twistd serversock --workers 2} (A)
against two plain-Twisted C{SO_REUSEPORT} processes (B,
L{bench._refservers} C{reuseport}), both serving L{bench.handlers.skewed}:
95 % of requests do about 1 ms of pure Python, 5 % about 50 ms.

Load: C{wrk -t1 -c32 --latency -H "Connection: close"} (a new connection
per request), A and B loaded one at a time in rotated order, nothing pinned
(as in L{bench.workers}).

Why the parent can win: the kernel's C{SO_REUSEPORT} hash sends half of the
new connections to a process that is busy with a 50 ms request, where they
wait behind it.  The parent sees which worker is busy - it has stopped
acknowledging and still holds connections - and sends new ones to the
other (L{twisted_serversock.ipc.dispatch}).  Targets: p99 ≤ 0.7× B's at
≥ 1.0× B's throughput.
"""

from __future__ import annotations

from ._harness import Context, Result, Target, pairedRow, requireTool, rotations
from ._workers import handlerEnv, reference, serversock
from .keepalive import parseWrk

NAME = "skewed"
TITLE = "Skewed handler (95 % ~1 ms, 5 % ~50 ms), Connection: close, 2 workers vs SO_REUSEPORT"

CONNECTIONS = 32
FACTORY = "bench.handlers.skewed"
P99_TARGET = Target("<=", 0.7)
RATE_TARGET = Target(">=", 1.0)


def run(ctx: Context) -> Result:
    wrk = requireTool("wrk", "wrk")
    result = Result()
    seconds = 3 if ctx.quick else 5
    env, iterations, handlerMs = handlerEnv(ctx, "fast request (50x for 5 %)")
    servers = {
        "A": serversock(ctx, FACTORY, 2, "skewed-A", env),
        "B": reference(ctx, "reuseport", FACTORY, 2, "skewed-B", env),
    }
    rate: dict[str, list[float]] = {k: [] for k in servers}
    p99: dict[str, list[float]] = {k: [] for k in servers}
    errors = {k: 0 for k in servers}
    close = ["-H", "Connection: close"]
    try:
        for s in servers.values():  # warm-up, not measured
            ctx.run([wrk, "-t1", f"-c{CONNECTIONS}", "-d1s", *close, f"http://{s.address[4:]}/"], timeout=30, cpu=None)
        for rep, order in rotations(list(servers), ctx.reps):
            for key in order:
                out = ctx.run(
                    [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", *close, f"http://{servers[key].address[4:]}/"],
                    timeout=seconds + 30,
                    cpu=None,
                )
                r, p, e = parseWrk(out)
                rate[key].append(r)
                p99[key].append(p)
                errors[key] += e
            ctx.log(f"skewed rep {rep + 1}: " + "  ".join(f"{k} {rate[k][-1]:,.0f}/s p99 {p99[k][-1]:.1f}ms" for k in servers))
    finally:
        for s in servers.values():
            s.stop()
    broken = min(rate["A"]) <= 0 or min(rate["B"]) <= 0
    note = f"wrk -c{CONNECTIONS}, {seconds} s a run; handler {handlerMs:.2f} ms (5 % ×50)"
    if errors["A"] or errors["B"]:
        note += f"; wrk socket errors {errors['A']} vs {errors['B']}"
    for what, unit, samples, target in (
        ("p99", "ms", p99, P99_TARGET),
        ("req/s", "req/s", rate, RATE_TARGET),
    ):
        result.rows.append(
            pairedRow(
                f"skewed handler, close: {what} serversock ×2 / SO_REUSEPORT ×2",
                unit,
                list(zip(samples["A"], samples["B"])),
                target=target,
                note=note,
                failed=broken,
            )
        )
    result.details = {"rate": rate, "p99_ms": p99, "wrk_errors": errors, "work_iterations": iterations, "handler_ms": handlerMs}
    result.commands = ctx.takeCommands()
    return result
