"""
What the worker benchmarks (L{bench.workers}, L{bench.dispatch}) share:
starting C{twistd serversock} and the plain-Twisted multi-process
references, the CPU time of a process tree, and the size of the handler's
work.

None of these servers is pinned to a CPU: two workers need both of this
machine's two CPUs, and the load generator shares them (as in
C{shared/research/perf.md} (e)).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from ._harness import PYTHON, BenchError, Context, Server, cpuNanoseconds, freePort

#: What C{perf.md} used for "about 1 ms of Python": 25,000 iterations of
#: L{bench.handlers.work}.
BASE_ITERS = 25_000
HANDLER_MS = 1.0


def workIterations() -> tuple[int, float]:
    """
    The iterations of L{bench.handlers.work} that take about
    L{HANDLER_MS} on this machine now, and what one call then takes (ms).
    Measured once per run and given to every server of the run, so A and B
    do exactly the same work.
    """
    from .handlers import work

    def perCall(iterations: int) -> float:
        times = []
        for _ in range(15):
            t = time.perf_counter()
            work(iterations)
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    iterations = BASE_ITERS
    measured = perCall(iterations)
    iterations = max(5_000, min(200_000, round(iterations * HANDLER_MS / measured)))
    return iterations, perCall(iterations)


def handlerEnv(ctx: Context, what: str) -> tuple[dict[str, str], int, float]:
    """
    Calibrate L{workIterations}, log it, and return the servers'
    environment (C{BENCH_WORK_ITERS}), the iterations and the handler's ms.

    @param what: how the log line names one request's work.
    """
    iterations, handlerMs = workIterations()
    ctx.log(f"handler: {iterations} iterations = {handlerMs:.2f} ms of Python per {what}")
    return {"BENCH_WORK_ITERS": str(iterations)}, iterations, handlerMs


def treeCpuNs(pid: int) -> int:
    """
    On-CPU time of process C{pid} and all its descendants (ns).
    """
    total = cpuNanoseconds(pid)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            total += treeCpuNs(child)
    return total


def systemBusyNs() -> int:
    """
    CPU time the whole machine spent busy (all CPUs; C{/proc/stat}: user,
    nice, system, irq, softirq and steal), in ns at the kernel's tick
    resolution.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def childrenCpuNs() -> int:
    """
    CPU time of this process's waited-for children (the load generators).
    """
    t = os.times()
    return int((t.children_user + t.children_system) * 1e9)


def _twistd() -> list[str]:
    script = Path(PYTHON).parent / "twistd"
    if not script.exists():
        raise BenchError(f"twistd not found next to {PYTHON}")
    return [PYTHON, str(script)]


def serversock(
    ctx: Context, factory: str, workers: int, name: str, env: dict[str, str], tcp: bool = False, timeout: float = 60
) -> Server:
    """
    Start C{twistd -n serversock --listen gecko:port=PORT:loopback=1
    --factory FACTORY --workers N} and wait until it listens and every
    worker said it is ready (read from its log file).

    @param tcp: listen on Twisted's own C{tcp:PORT:interface=127.0.0.1}
        instead.
    """
    port = freePort()
    listen = f"tcp:{port}:interface=127.0.0.1" if tcp else f"gecko:port={port}:loopback=1"
    log = ctx.workdir / f"{name}.log"
    argv = [
        *_twistd(),
        "-n",
        "--pidfile=",
        f"--logfile={log}",
        "serversock",
        "--listen",
        listen,
        "--factory",
        factory,
        "--workers",
        str(workers),
    ]
    server = ctx.server(argv, name, cpu=None, env=env, readyLine=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            text = ""
        if "serversock listening on" in text and text.count(" is ready") >= workers:
            server.address = f"tcp:127.0.0.1:{port}"
            return server
        if server.proc.poll() is not None:
            break
        time.sleep(0.1)
    server.stop()
    raise BenchError(f"{name} did not start serving on port {port}:\n" + "\n".join(text.splitlines()[-15:]))


def reference(ctx: Context, kind: str, factory: str, workers: int, name: str, env: dict[str, str], timeout: float = 60) -> Server:
    """
    Start a L{bench._refservers} server (C{reuseport} or C{fdpass}) and
    wait for its READY line.
    """
    port = freePort()
    address = f"tcp:127.0.0.1:{port}"
    server = ctx.server([PYTHON, "-m", "bench._refservers", kind, address, factory, str(workers)], name, cpu=None, env=env)
    server.waitReadyLine(timeout)
    return server

