"""
Stream echo throughput over one TCP connection: the Gecko API's streams
(a listener that opens the connection's input and output streams with the
default buffers and pumps one into the other with C{asyncWait}) against a
plain Twisted echo protocol on C{tcp:}, plus the A/A control.  The C client
writes 64 KiB chunks with at most 1 MiB in flight and counts what comes
back.
"""

from __future__ import annotations

from ._harness import Context, Result, Target, cpuNote, interleaved, pairedRow, perOp

NAME = "echo"
TITLE = "Stream echo throughput, one connection"

TARGET = Target(">=", 0.80)
MAX_BYTES = 4 << 30
WINDOW = 1 << 20


def run(ctx: Context) -> Result:
    result = Result()
    seconds = 1 if ctx.quick else 2
    servers = {
        "A": ctx.pyServer("streams-echo", "gecko:port=0:loopback=1", "echo-A"),
        "B": ctx.pyServer("echo", "tcp:0:interface=127.0.0.1", "echo-B"),
        "B'": ctx.pyServer("echo", "tcp:0:interface=127.0.0.1", "echo-B2"),
    }
    try:
        for s in servers.values():  # warm-up
            ctx.client(["echo", s.address, 0.3, MAX_BYTES, WINDOW], timeout=30)
        got = interleaved(
            ctx,
            servers,
            lambda s: ctx.client(["echo", s.address, seconds, MAX_BYTES, WINDOW], timeout=seconds + 30),
            "echo",
            lambda m: f"{m['mbps'][-1]:,.0f} MB/s",
        )
    finally:
        for s in servers.values():
            s.stop()
    mbps = {k: got[k]["mbps"] for k in servers}
    # Server CPU per MB moved (µs).
    cpu = {k: perOp(got[k]["cpu_ns"], got[k]["bytes"], scale=1e6) for k in servers}
    result.rows += [
        pairedRow("echo MB/s, streams vs protocol", "MB/s", zip(mbps["A"], mbps["B"]), target=TARGET, note=cpuNote(cpu["A"], cpu["B"]).replace("/op", "/MB")),
        pairedRow("A/A control: echo MB/s", "MB/s", zip(mbps["B'"], mbps["B"]), control=True),
    ]
    result.details = {"mbps": mbps, "cpu_us_per_mb": cpu}
    result.commands = ctx.takeCommands()
    return result
