"""
Memory per idle connection: 10,000 connections held open (the protocol does
nothing) on C{gecko:} against C{tcp:}.  The server's resident set is read
before the connections are made and once the server holds all of them
(counted by its open descriptors); the difference divided by the count is
the figure.  Kernel socket buffers are not in it (they are the same for
both).  Fresh servers each rep, interleaved.
"""

from __future__ import annotations

import subprocess
import time

from ._harness import BenchError, Context, Result, Target, openFDs, pairedRow, rotations, rssBytes

NAME = "memory"
TITLE = "Memory per idle connection"

CONNECTIONS = 10_000
TARGET = Target("<=", 1.2)
DESCRIPTIONS = {"A": "gecko:port=0:loopback=1", "B": "tcp:0:interface=127.0.0.1"}


def _perConnection(ctx: Context, key: str, n: int) -> float:
    with ctx.pyServer("idle", DESCRIPTIONS[key], f"memory-{key}") as server:
        time.sleep(0.2)
        fds, rss = openFDs(server.pid), rssBytes(server.pid)
        argv = ctx.pinned([str(ctx.cbench), "hold", server.address, str(n), "60"], 1)
        ctx.record(argv)
        holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None
            line = holder.stdout.readline()
            if f"held={n} " not in line:
                raise BenchError(f"could not open {n} connections: {line!r}")
            deadline = time.monotonic() + 30
            while openFDs(server.pid) < fds + n:
                if time.monotonic() > deadline:
                    raise BenchError(f"the server accepted only {openFDs(server.pid) - fds} of {n}")
                time.sleep(0.05)
            time.sleep(0.3)
            grown = rssBytes(server.pid) - rss
        finally:
            if holder.stdin is not None:
                holder.stdin.close()
            try:
                holder.wait(30)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
    return grown / n


def run(ctx: Context) -> Result:
    result = Result()
    n = 2000 if ctx.quick else CONNECTIONS
    reps = 1 if ctx.quick else 3
    per: dict[str, list[float]] = {"A": [], "B": []}
    for rep, order in rotations(["A", "B"], reps):
        for key in order:
            per[key].append(_perConnection(ctx, key, n))
        ctx.log(f"memory rep {rep + 1}: A {per['A'][-1]:,.0f} B/conn  B {per['B'][-1]:,.0f} B/conn")
    result.rows.append(
        pairedRow(f"memory per idle connection ({n:,} held)", "bytes", zip(per["A"], per["B"]), target=TARGET)
    )
    result.details = {"connections": n, "bytes_per_connection": per}
    result.commands = ctx.takeCommands()
    return result
