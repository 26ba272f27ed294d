"""
The primary's CPU per worker log line: C{twistd -n web --listen
gecko:...:workers=2} serving a 2-byte file (L{docroot}) with its access log
on (one line a request), three ways side by side:

  - C{stdout}: C{twistd -n} logging to its standard output (a file here),
    where the workers write their own lines;
  - C{relay}: C{twistd -n --logfile=FILE} (a rotating log file), where each
    line travels to the primary as JSON and its observer writes it;
  - C{no log}: C{twistd web --logfile /dev/null}, no access log.

Load: C{wrk -t1 -c32} keep-alive, the three loaded one at a time in
rotated order.  The primary's on-CPU time (C{/proc/PID/task/*/schedstat})
divided by the requests: with keep-alive the primary does nothing else per
request, so this is what a line costs it.  The access lines in each log
are counted against the requests wrk made (none lost).  Target: <= 5 us a
request with the log to standard output.
"""

from __future__ import annotations

import glob
import re
import time

from ._harness import BenchError, Context, Result, Server, Target, cpuNanoseconds, docroot, freePort, median, pairedRow, requireTool, rotations
from ._workers import _twistd

NAME = "logs"
TITLE = "Worker log lines: the primary's CPU per access-log line, workers=2, keep-alive (wrk -c32)"

CONNECTIONS = 32
#: key: (twistd's options before "web", the web plugin's, whether stdout is the log)
SERVERS = {
    "stdout": ([], [], True),
    "relay": (["--logfile={log}"], [], False),
    "no log": (["--logfile={log}"], ["--logfile", "/dev/null"], False),
}


def _start(ctx: Context, key: str, timeout: float = 60) -> tuple[Server, str]:
    """One C{twistd -n web} of L{SERVERS}, ready once both workers are; and its log's path."""
    before, web, toStdout = SERVERS[key]
    port, log = freePort(), str(ctx.workdir / f"logs-{key.replace(' ', '-')}.log")
    argv = [*_twistd(), "-n", "--pidfile=", *(o.format(log=log) for o in before), "web", *web]
    argv += ["--listen", f"gecko:port={port}:loopback=1:workers=2", "--path", str(docroot(ctx))]
    if toStdout:  # the same process (exec), its standard output the log
        argv = ["/bin/sh", "-c", 'exec "$@" >"$0"', log, *argv]
    server = ctx.server(argv, f"logs-{key}", cpu=None, readyLine=False)
    server.waitConnectable("127.0.0.1", port, timeout)
    deadline = time.monotonic() + timeout
    while _read(log).count(" is ready") < 2:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            server.stop()
            raise BenchError(f"twistd did not start its workers:\n{server.stderrTail()}")
        time.sleep(0.1)
    server.address = f"http://127.0.0.1:{port}/b"
    return server, log


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def run(ctx: Context) -> Result:
    wrk = requireTool("wrk", "wrk")
    result = Result()
    seconds = 2 if ctx.quick else 3
    servers = {key: _start(ctx, key) for key in SERVERS}
    perRequest: dict[str, list[float]] = {k: [] for k in servers}
    requests = {k: 0 for k in servers}
    try:
        for s, _log in servers.values():  # warm-up, counted in the lines
            ctx.run([wrk, "-t1", f"-c{CONNECTIONS}", "-d1s", s.address], timeout=30, cpu=None)
        requests = {k: _requests(log) for k, (_s, log) in servers.items()}
        for rep, order in rotations(list(servers), ctx.reps):
            for key in order:
                s, _log = servers[key]
                before = cpuNanoseconds(s.pid)
                out = ctx.run([wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", s.address], timeout=seconds + 30, cpu=None)
                done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                perRequest[key].append((cpuNanoseconds(s.pid) - before) / 1e3 / max(1, done))
                requests[key] += done
            ctx.log(f"rep {rep + 1}: " + "  ".join(f"{k} {perRequest[k][-1]:.2f} µs/request" for k in servers))
        time.sleep(1)  # the relay's last reads
    finally:
        for s, _log in servers.values():
            s.stop()
    quiet = perRequest["no log"]
    for key, name in (("stdout", "log to standard output (the workers write it)"), ("relay", "log to a --logfile (relayed by the primary)")):
        lines = _requests(servers[key][1])
        note = f"no access log: {median(quiet):.2f} µs; {lines:,} access lines for at least {requests[key]:,} requests"
        target = Target("<=", 5.0, on="a") if key == "stdout" else None
        row = pairedRow(f"primary's CPU per request, {name}", "µs", list(zip(perRequest[key], quiet)), target=target, note=note)
        row.failed = lines < requests[key]
        result.rows.append(row)
    result.details = {"us_per_request": perRequest, "requests": requests}
    result.commands = ctx.takeCommands()
    return result


def _requests(log: str) -> int:
    """The access-log lines of the log at C{log}, with the files it rotated into (C{.1}, C{.2}, ...)."""
    return sum(_read(path).count('"GET /b HTTP/1.1"') for path in [log, *glob.glob(glob.escape(log) + ".*")])
