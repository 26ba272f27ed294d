"""
Accept rate (wall clock): connections per second through C{gecko:} /
C{geckounix:} against C{tcp:} / C{unix:}, with an A/A control row (a second,
identical reference server measured in the same interleaved reps) that shows
this machine's noise floor.

Servers on one CPU, the C client (32 connections in flight; the servers'
protocol closes at once, or answers one tiny HTTP request and closes) on
the other.  The three servers run side by side for the whole benchmark and
are loaded one at a time, A B B' in rotated order.  Server CPU per
connection (exact, from schedstat) goes in the note.
"""

from __future__ import annotations

from ._harness import Context, Result, Target, cpuNote, pairedRow, rotations

NAME = "accept"
TITLE = "Accept rate (wall clock)"

VARIANTS = {
    "TCP accept+close": ("close", "none", "gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"),
    "TCP HTTP-close": ("http", "http", "gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"),
    "UNIX accept+close": ("close", "none", "geckounix:path=$WORK/a.sock", "unix:$WORK/b.sock"),
    "UNIX HTTP-close": ("http", "http", "geckounix:path=$WORK/a.sock", "unix:$WORK/b.sock"),
}
QUICK_VARIANTS = ("TCP accept+close", "UNIX accept+close")
CONCURRENCY = 32
TARGET = Target(">=", 0.95)


def run(ctx: Context) -> Result:
    result = Result()
    seconds = 1 if ctx.quick else 2
    for variant in QUICK_VARIANTS if ctx.quick else VARIANTS:
        mode, kind, descA, descB = VARIANTS[variant]
        work = str(ctx.workdir)
        descs = {
            "A": descA.replace("$WORK", work),
            "B": descB.replace("$WORK", work),
            # The A/A control: a second reference server on its own address.
            "B'": descB.replace("$WORK", work).replace("b.sock", "c.sock"),
        }
        servers = {k: ctx.pyServer(mode, d, f"accept-{k}") for k, d in descs.items()}
        try:
            for s in servers.values():  # warm-up, not measured
                ctx.client(["conn", s.address, CONCURRENCY, 0.3, 1_000_000, kind], timeout=30)
            rate: dict[str, list[float]] = {k: [] for k in servers}
            cpu: dict[str, list[float]] = {k: [] for k in servers}
            for rep, order in rotations(list(servers), ctx.reps):
                for key in order:
                    s = servers[key]
                    before = s.cpuNs()
                    got = ctx.client(["conn", s.address, CONCURRENCY, seconds, 1_000_000, kind], timeout=seconds + 30)
                    used = s.cpuNs() - before
                    rate[key].append(got["rate"])
                    cpu[key].append(used / 1e3 / max(1.0, got["completed"]))
                ctx.log(
                    f"{variant} rep {rep + 1}: "
                    + "  ".join(f"{k} {rate[k][-1]:,.0f}/s {cpu[k][-1]:.1f}µs" for k in servers)
                )
        finally:
            for s in servers.values():
                s.stop()
        result.rows.append(
            pairedRow(
                f"accept rate {variant}",
                "conn/s",
                zip(rate["A"], rate["B"]),
                target=TARGET,
                note=cpuNote(cpu["A"], cpu["B"]),
            )
        )
        result.rows.append(
            pairedRow(
                f"A/A control: accept rate {variant}",
                "conn/s",
                zip(rate["B'"], rate["B"]),
                control=True,
                note=cpuNote(cpu["B'"], cpu["B"]),
            )
        )
        result.details[variant] = {"rate": rate, "cpu_us_per_conn": cpu}
    result.commands = ctx.takeCommands()
    return result
