"""
A CPU-bound handler in worker processes: C{twistd serversock --workers 2}
(A) against one process (the same command with C{--workers 0}, listening
on plain Twisted's C{tcp:} endpoint: a worker adopts each connection as a
plain Twisted transport, so the process model is the only difference) and
against two plain-Twisted C{SO_REUSEPORT} workers (L{bench._refservers}),
all serving L{bench.handlers.cpu} - about 1 ms of pure Python per request.

Load: C{wrk -t1 -c32 --latency}, with C{Connection: close} (a new
connection per request) and with keep-alive.  The three servers run side by
side and are loaded one at a time, A B B' in rotated order.  Nothing is
pinned: the two workers need both CPUs, and wrk shares them.

Two workers cannot reach 2× one process here: wrk, the kernel's TCP work
and (for A) the parent share the same two CPUs.  C{shared/research/perf.md}
(e) measured 1.44-1.48× (close) and 1.91-1.96× (keep-alive) for fd passing.
"""

from __future__ import annotations

import time

from ._harness import Context, Result, Target, cpuNanoseconds, median, pairedRow, requireTool, rotations
from ._workers import childrenCpuNs, handlerEnv, reference, serversock, systemBusyNs, treeCpuNs
from .keepalive import parseWrk

NAME = "workers"
TITLE = "CPU-bound handler in worker processes (wrk -c32)"

CONNECTIONS = 32
FACTORY = "bench.handlers.cpu"
#: mode: (wrk's extra arguments, target vs one process)
MODES = {
    "close": (["-H", "Connection: close"], 1.4),
    "keep-alive": ([], 1.8),
}
REUSEPORT_TARGET = Target(">=", 0.95)
#: A run during which other processes used less than this share of one CPU
#: counts as quiet (the note gives the ratio over quiet pairs too).
QUIET = 0.15


def run(ctx: Context) -> Result:
    wrk = requireTool("wrk", "wrk")
    result = Result()
    seconds = 1 if ctx.quick else 2
    env, iterations, handlerMs = handlerEnv(ctx, "request")
    servers = {
        "A": serversock(ctx, FACTORY, 2, "workers-A", env),
        # Plain Twisted's tcp: endpoint: a worker's connections are plain
        # Twisted transports too, so the process model is the only difference.
        "single": serversock(ctx, FACTORY, 0, "workers-single", env, tcp=True),
        "reuseport": reference(ctx, "reuseport", FACTORY, 2, "workers-reuseport", env),
    }
    details: dict[str, object] = {"work_iterations": iterations, "handler_ms": handlerMs}
    try:
        for mode, (extra, singleTarget) in MODES.items():
            rate: dict[str, list[float]] = {k: [] for k in servers}
            p99: dict[str, list[float]] = {k: [] for k in servers}
            cpu: dict[str, list[float]] = {k: [] for k in servers}
            errors = {k: 0 for k in servers}
            parentUs: list[float] = []  # A's parent: CPU µs per request
            # CPU used by anything else on the machine during each run, as a
            # fraction of one CPU: two workers lose the most when another
            # process takes a CPU, so this tells noise from cost.
            others: dict[str, list[float]] = {k: [] for k in servers}
            for s in servers.values():  # warm-up, not measured
                ctx.run([wrk, "-t1", f"-c{CONNECTIONS}", "-d1s", *extra, f"http://{s.address[4:]}/"], timeout=30, cpu=None)
            for rep, order in rotations(list(servers), ctx.reps):
                for key in order:
                    s = servers[key]
                    before = treeCpuNs(s.pid)
                    parentBefore = cpuNanoseconds(s.pid)
                    busy0, load0, t0 = systemBusyNs(), childrenCpuNs(), time.monotonic()
                    out = ctx.run(
                        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", *extra, f"http://{s.address[4:]}/"],
                        timeout=seconds + 30,
                        cpu=None,
                    )
                    used = treeCpuNs(s.pid) - before
                    parentUsed = cpuNanoseconds(s.pid) - parentBefore
                    elsewhere = systemBusyNs() - busy0 - used - (childrenCpuNs() - load0)
                    others[key].append(max(0.0, elsewhere / 1e9 / (time.monotonic() - t0)))
                    r, p, e = parseWrk(out)
                    if key == "A":
                        parentUs.append(parentUsed / 1e3 / max(1.0, r * seconds))
                    rate[key].append(r)
                    p99[key].append(p)
                    errors[key] += e
                    cpu[key].append(used / 1e6 / max(1.0, r * seconds))
                ctx.log(
                    f"{mode} rep {rep + 1}: "
                    + "  ".join(
                        f"{k} {rate[k][-1]:,.0f}/s p99 {p99[k][-1]:.1f}ms others {others[k][-1]:.0%}" for k in servers
                    )
                )

            def broken(b: str) -> bool:
                # A server that answered nothing in some rep: the row is a
                # failure whatever its ratio says.
                return min(rate["A"]) <= 0 or min(rate[b]) <= 0

            def note(b: str) -> str:
                a99 = pairedRow("", "", list(zip(p99["A"], p99[b])))
                acpu = pairedRow("", "", list(zip(cpu["A"], cpu[b])))
                text = (
                    f"p99 {a99.a:.1f} vs {a99.b:.1f} ms; "
                    f"CPU/request (all processes) {acpu.a:.2f} vs {acpu.b:.2f} ms"
                )
                if b == "single":
                    text += f"; A's parent {median(parentUs):.1f} µs/request"
                text += f"; others' CPU {median(others['A']):.0%} vs {median(others[b]):.0%} of a CPU"
                quiet = [(x, y) for x, y, ox, oy in zip(rate["A"], rate[b], others["A"], others[b]) if max(ox, oy) < QUIET]
                if quiet and len(quiet) < len(rate["A"]):
                    q = pairedRow("", "", quiet)
                    text += f"; {len(quiet)} pairs with others < {QUIET:.0%}: ratio {q.ratio:.3f}"
                if errors["A"] or errors[b]:
                    text += f"; wrk socket errors {errors['A']} vs {errors[b]}"
                return text

            result.rows += [
                pairedRow(
                    f"1 ms handler, {mode}: serversock ×2 / one process",
                    "req/s",
                    list(zip(rate["A"], rate["single"])),
                    target=Target(">=", singleTarget),
                    note=note("single"),
                    failed=broken("single"),
                ),
                pairedRow(
                    f"1 ms handler, {mode}: serversock ×2 / SO_REUSEPORT ×2",
                    "req/s",
                    list(zip(rate["A"], rate["reuseport"])),
                    target=REUSEPORT_TARGET,
                    note=note("reuseport"),
                    failed=broken("reuseport"),
                ),
            ]
            details[mode] = {
                "rate": rate,
                "p99_ms": p99,
                "cpu_ms_per_request": cpu,
                "parent_us_per_request": parentUs,
                "others_cpu_share": others,
                "wrk_errors": errors,
            }
    finally:
        for s in servers.values():
            s.stop()
    result.details = details
    result.commands = ctx.takeCommands()
    return result
