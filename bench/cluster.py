"""
Cluster mode: C{twistd web --listen gecko:...:workers=2} (A) against the
same C{twistd web} on plain Twisted's C{tcp:} in one process (B), both
serving C{cpu.rpy} - a resource that burns about 1 ms of pure Python per
request (L{bench.handlers.work}) - with the usual C{twistd} log (the
workers' access-log lines travel to the primary's log file, as they do for
users).

C{A-direct} is A logging to its standard output (a file here) instead of
C{--logfile} (a rotating log file, which the workers' lines reach through
the primary): there the workers write their lines themselves.  A second
pair, C{A-quiet} and C{B-quiet}, runs the same with C{twistd
web --logfile /dev/null} (no access log): what the process model costs
without the log lines' trip from the workers to the primary.  The
difference of the primaries' CPU per request, A against A-quiet, is the
primary's cost of one relayed log line (decoding it, and its own observer
writing it to the log file).

Load: C{wrk -t1 -c32 --latency}, keep-alive and C{Connection: close}, the
four servers side by side, loaded one at a time in rotated order.  Nothing
is pinned: two workers need both CPUs, and wrk shares them.  Also: the
resident memory of each worker and of the primary after the load, against
the one-process server's.

The targets are the issue's: >= 1.8x keep-alive, >= 1.4x close
(C{shared/research/perf.md} (e) measured 1.91-1.96x and 1.44-1.48x for fd
passing with a bare handler).
"""

from __future__ import annotations

import os
import time

from ._harness import BenchError, Context, Result, Server, Target, cpuNanoseconds, freePort, median, pairedRow, requireTool, rotations, rssBytes
from ._workers import _twistd, childrenCpuNs, systemBusyNs, treeCpuNs, workIterations
from .keepalive import parseWrk

NAME = "cluster"
TITLE = "Cluster mode: twistd web workers=2 vs one process (wrk -c32, 1 ms handler)"

CONNECTIONS = 32
WORKERS = 2
#: mode: (wrk's extra arguments, target vs one process)
MODES = {
    "keep-alive": ([], 1.8),
    "close": (["-H", "Connection: close"], 1.4),
}

CPU_RPY = """\
from twisted.web.resource import Resource

from bench.handlers import work


class CPU(Resource):
    isLeaf = True

    def render_GET(self, request):
        work()
        return b"ok"


resource = CPU()
"""


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return found


#: A load during which other processes used less than this share of one
#: CPU counts as quiet (the note gives the ratio over quiet pairs too).
QUIET = 0.15
#: The pairs: (A, B, row name).
PAIRS = [
    ("A", "B", "twistd web workers=2 / one process"),
    ("A-direct", "B", "same, the log to standard output (written by the workers)"),
    ("A-quiet", "B-quiet", "same, no access log"),
]


def _start(ctx: Context, key: str, env: dict[str, str], timeout: float = 60) -> Server:
    """
    C{twistd -n web} serving C{cpu.rpy}: through C{gecko:...:workers=2}
    (A, ready once both workers are) or C{tcp:} (B); C{-quiet} keys turn
    the access log off, C{-direct} logs to standard output (a file).
    """
    root = ctx.workdir / "cluster-www"
    root.mkdir(exist_ok=True)
    (root / "cpu.rpy").write_text(CPU_RPY)
    port = freePort()
    cluster = key.startswith("A")
    listen = f"gecko:port={port}:loopback=1:workers={WORKERS}" if cluster else f"tcp:{port}:interface=127.0.0.1"
    log = ctx.workdir / f"cluster-{key}.log"
    quiet = ["--logfile", "/dev/null"] if key.endswith("-quiet") else []
    direct = key.endswith("-direct")
    argv = [*_twistd(), "-n", "--pidfile=", *([] if direct else [f"--logfile={log}"]), "web", *quiet, "--listen", listen, "--path", str(root)]
    if direct:  # the same process (exec), its standard output the log
        argv = ["/bin/sh", "-c", 'exec "$@" >"$0"', str(log), *argv]
    server = ctx.server(argv, f"cluster-{key}", cpu=None, env=env, readyLine=False)
    server.waitConnectable("127.0.0.1", port, timeout)
    if cluster:
        deadline = time.monotonic() + timeout
        while log.read_text(errors="replace").count(" is ready") < WORKERS:
            if time.monotonic() > deadline or server.proc.poll() is not None:
                server.stop()
                raise BenchError(f"the cluster did not start its workers:\n{server.stderrTail()}")
            time.sleep(0.1)
    server.address = f"http://127.0.0.1:{port}/cpu.rpy"
    return server


def run(ctx: Context) -> Result:
    wrk = requireTool("wrk", "wrk")
    result = Result()
    seconds = 1 if ctx.quick else 2
    iterations, handlerMs = workIterations()
    env = {"BENCH_WORK_ITERS": str(iterations)}
    ctx.log(f"handler: {iterations} iterations = {handlerMs:.2f} ms of Python per request")
    servers = {key: _start(ctx, key, env) for key in dict.fromkeys(k for pair in PAIRS for k in pair[:2])}
    details: dict[str, object] = {"work_iterations": iterations, "handler_ms": handlerMs}
    try:
        for s in servers.values():  # warm-up, not measured
            ctx.run([wrk, "-t1", f"-c{CONNECTIONS}", "-d1s", s.address], timeout=30, cpu=None)
        for mode, (extra, target) in MODES.items():
            rate: dict[str, list[float]] = {k: [] for k in servers}
            p99: dict[str, list[float]] = {k: [] for k in servers}
            others: dict[str, list[float]] = {k: [] for k in servers}
            primaryUs: dict[str, list[float]] = {a: [] for a, _b, _name in PAIRS}
            errors = {k: 0 for k in servers}
            for rep, order in rotations(list(servers), ctx.reps):
                for key in order:
                    s = servers[key]
                    before, primaryBefore = treeCpuNs(s.pid), cpuNanoseconds(s.pid)
                    busy0, load0, t0 = systemBusyNs(), childrenCpuNs(), time.monotonic()
                    out = ctx.run(
                        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", *extra, s.address],
                        timeout=seconds + 30,
                        cpu=None,
                    )
                    used = treeCpuNs(s.pid) - before
                    elsewhere = systemBusyNs() - busy0 - used - (childrenCpuNs() - load0)
                    others[key].append(max(0.0, elsewhere / 1e9 / (time.monotonic() - t0)))
                    r, p, e = parseWrk(out)
                    rate[key].append(r)
                    p99[key].append(p)
                    errors[key] += e
                    if key in primaryUs:
                        primaryUs[key].append((cpuNanoseconds(s.pid) - primaryBefore) / 1e3 / max(1.0, r * seconds))
                ctx.log(
                    f"{mode} rep {rep + 1}: "
                    + "  ".join(f"{k} {rate[k][-1]:,.0f}/s p99 {p99[k][-1]:.1f}ms others {others[k][-1]:.0%}" for k in servers)
                )
            for a, b, name in PAIRS:
                lat = pairedRow("", "", list(zip(p99[a], p99[b])))
                note = (
                    f"p99 {lat.a:.1f} vs {lat.b:.1f} ms; the primary's CPU {median(primaryUs[a]):.1f} µs/request; "
                    f"others' CPU {median(others[a]):.0%} vs {median(others[b]):.0%} of a CPU"
                )
                if a in ("A", "A-direct"):  # one access-log line a request: what it costs the primary
                    note += f"; the primary's CPU per log line {median(primaryUs[a]) - median(primaryUs['A-quiet']):.1f} µs (against no access log)"
                quiet = [(x, y) for x, y, ox, oy in zip(rate[a], rate[b], others[a], others[b]) if max(ox, oy) < QUIET]
                if quiet and len(quiet) < len(rate[a]):
                    q = pairedRow("", "", quiet)
                    note += f"; {len(quiet)} pairs with others < {QUIET:.0%}: ratio {q.ratio:.3f}"
                if errors[a] or errors[b]:
                    note += f"; wrk socket errors {errors[a]} vs {errors[b]}"
                result.rows.append(
                    pairedRow(
                        f"1 ms handler, {mode}: {name}",
                        "req/s",
                        list(zip(rate[a], rate[b])),
                        target=Target(">=", target),
                        note=note,
                        failed=min(rate[a]) <= 0 or min(rate[b]) <= 0,
                    )
                )
            details[mode] = {"rate": rate, "p99_ms": p99, "primary_us_per_request": primaryUs, "others_cpu_share": others, "wrk_errors": errors}
        workers = _children(servers["A"].pid)
        if len(workers) != WORKERS:
            raise BenchError(f"the cluster has {len(workers)} workers, not {WORKERS}")
        mib = 1024 * 1024
        workerRss = [rssBytes(p) / mib for p in workers]
        primaryRss = rssBytes(servers["A"].pid) / mib
        singleRss = rssBytes(servers["B"].pid) / mib
        result.rows.append(
            pairedRow(
                "memory per worker (RSS after the load) / one process",
                "MiB",
                [(w, singleRss) for w in workerRss],
                note=f"the primary {primaryRss:.1f} MiB; the whole cluster {primaryRss + sum(workerRss):.1f} MiB",
            )
        )
        details["rss_mib"] = {"workers": workerRss, "primary": primaryRss, "single": singleRss}
    finally:
        for s in servers.values():
            s.stop()
    result.details = details
    result.commands = ctx.takeCommands()
    return result
