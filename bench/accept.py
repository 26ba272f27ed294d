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

from ._harness import ACCEPT_VARIANTS, Context, Result, Target, cpuNote, interleaved, pairedRow, perOp

NAME = "accept"
TITLE = "Accept rate (wall clock)"

QUICK_VARIANTS = ("accept+close TCP", "accept+close UNIX")
CONCURRENCY = 32
TARGET = Target(">=", 0.95)


def run(ctx: Context) -> Result:
    result = Result()
    seconds = 1 if ctx.quick else 2
    for variant in QUICK_VARIANTS if ctx.quick else ACCEPT_VARIANTS:
        mode, kind, descA, descB = ACCEPT_VARIANTS[variant]
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
            got = interleaved(
                ctx,
                servers,
                lambda s: ctx.client(["conn", s.address, CONCURRENCY, seconds, 1_000_000, kind], timeout=seconds + 30),
                variant,
                lambda m: f"{m['rate'][-1]:,.0f}/s {perOp(m['cpu_ns'], m['completed'])[-1]:.1f}µs",
            )
        finally:
            for s in servers.values():
                s.stop()
        rate = {k: got[k]["rate"] for k in servers}
        cpu = {k: perOp(got[k]["cpu_ns"], got[k]["completed"]) for k in servers}
        for key, name, extra in (
            ("A", f"accept rate {variant}", {"target": TARGET}),
            ("B'", f"A/A control: accept rate {variant}", {"control": True}),
        ):
            result.rows.append(
                pairedRow(name, "conn/s", zip(rate[key], rate["B"]), note=cpuNote(cpu[key], cpu["B"]), **extra)
            )
        result.details[variant] = {"rate": rate, "cpu_us_per_conn": cpu}
    result.commands = ctx.takeCommands()
    return result
