"""
HTTP keep-alive throughput and tail latency: C{twistd web --listen gecko:}
against C{--listen tcp:}, both serving the same 2-byte file, loaded by
C{wrk -t1 -c64 --latency} on the other CPU; plus the A/A control (a second
C{tcp:} twistd).  After the accept, a gecko endpoint's connection is the
plain Twisted transport with the application's protocol attached, so any
difference here would be per-request work on the C{attachProtocol} path.
"""

from __future__ import annotations

import re

from ._harness import (
    BenchError,
    Context,
    Result,
    Server,
    Target,
    cpuNote,
    interleaved,
    pairedRow,
    perOp,
    requireTool,
    twistdWebServer,
)

NAME = "keepalive"
TITLE = "HTTP keep-alive (twistd web, wrk -c64)"

CONNECTIONS = 64
RATE_TARGET = Target(">=", 0.97)
P99_TARGET = Target("<=", 1.05)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parseWrk(text: str) -> tuple[float, float, int]:
    """
    Requests per second, p99 latency (ms) and the count of socket errors
    from C{wrk --latency} output.
    """
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    p99 = re.search(r"^\s*99%\s+([0-9.]+)(us|ms|s|m)\s*$", text, re.M)
    if rate is None or p99 is None:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    return float(rate.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)], errors


def run(ctx: Context) -> Result:
    wrk = requireTool("wrk", "wrk")
    result = Result()
    seconds = 2 if ctx.quick else 3
    servers = {
        "A": twistdWebServer(ctx, "A", "keepalive-A"),
        "B": twistdWebServer(ctx, "B", "keepalive-B"),
        "B'": twistdWebServer(ctx, "B", "keepalive-B2"),
    }

    def load(s: Server) -> dict[str, float]:
        out = ctx.run(
            [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", f"http://{s.address[4:]}/b"],
            timeout=seconds + 30,
        )
        r, p, e = parseWrk(out)
        return {"rate": r, "p99": p, "errors": e, "requests": r * seconds}

    try:
        for s in servers.values():  # warm-up
            ctx.run([wrk, "-t1", f"-c{CONNECTIONS}", "-d1s", f"http://{s.address[4:]}/b"], timeout=30)
        got = interleaved(ctx, servers, load, "keep-alive", lambda m: f"{m['rate'][-1]:,.0f}/s p99 {m['p99'][-1]:.2f}ms")
    finally:
        for s in servers.values():
            s.stop()
    rate = {k: got[k]["rate"] for k in servers}
    p99 = {k: got[k]["p99"] for k in servers}
    cpu = {k: perOp(got[k]["cpu_ns"], got[k]["requests"]) for k in servers}
    errors = sum(sum(got[k]["errors"]) for k in servers)
    note = cpuNote(cpu["A"], cpu["B"]) + (f"; wrk socket errors {errors:.0f}" if errors else "")
    result.rows += [
        pairedRow("keep-alive req/s (twistd web)", "req/s", zip(rate["A"], rate["B"]), target=RATE_TARGET, note=note),
        pairedRow("keep-alive p99 (twistd web)", "ms", zip(p99["A"], p99["B"]), target=P99_TARGET),
        pairedRow(
            "A/A control: keep-alive req/s",
            "req/s",
            zip(rate["B'"], rate["B"]),
            control=True,
            note=cpuNote(cpu["B'"], cpu["B"]),
        ),
        pairedRow("A/A control: keep-alive p99", "ms", zip(p99["B'"], p99["B"]), control=True),
    ]
    result.details = {"rate": rate, "p99_ms": p99, "cpu_us_per_request": cpu}
    result.commands = ctx.takeCommands()
    return result
