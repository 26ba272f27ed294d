"""
User-space instructions per connection and per keep-alive request, counted
by cachegrind: the deciding figure for "no overhead", because instruction
counts repeat within 1 % where wall-clock rates on this machine drift by
tens of percent.

Each server runs under C{valgrind --tool=cachegrind --cache-sim=no}, pinned
to one CPU, while the C client (uninstrumented, on the other CPU) makes N
sequential connections (c=1), and then the server is stopped.  The figure
per connection is C{(Ir(N2) - Ir(N1)) / (N2 - N1)}: the subtraction removes
start-up and shut-down.  Rows:

  - accept+close and HTTP-close, TCP and UNIX: C{gecko:}/C{geckounix:}
    against C{tcp:}/C{unix:}, the same protocol behind both
    (L{bench._servers});
  - accept+close and HTTP-close over TCP from a peer that is not
    loopback: the client runs in a network namespace of its own
    (L{bench._netns}) and connects to our end of a veth pair, where
    C{gecko:port=0:interface=...} and C{tcp:0:interface=...} listen.  Such
    a connection takes the eager path of L{ServerSocket}: its Twisted
    transport is built at once, in stream mode, and registered with the I/O
    service (to be closed on going offline) before the listener sees it.
    Needs root and iproute2; without them these rows say "not measured";
  - keep-alive request: C{twistd web --listen gecko:...} against
    C{--listen tcp:...}, N sequential requests on one connection (the data
    path after C{attachProtocol}).

The short mode (C{--quick}, what CI runs) counts accept+close over TCP
(loopback and non-loopback peer) and UNIX with fewer connections;
C{--gate X} makes the run fail when any of these ratios exceeds X.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from typing import Sequence

from . import _netns
from ._harness import ACCEPT_VARIANTS, PYTHON, ROOT, BenchError, Context, Result, Row, Target, requireTool, twistdWebServer

NAME = "icount"
TITLE = "Instructions per connection (cachegrind)"

#: The accept path of a peer that is not loopback (the eager path): the
#: same servers and client as L{ACCEPT_VARIANTS}, listening on our end of
#: L{bench._netns}'s veth pair, the client inside the namespace.
FOREIGN_VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "accept+close TCP, non-loopback peer": (
        "close",
        "none",
        f"gecko:port=0:interface={_netns.SERVER_IP}",
        f"tcp:0:interface={_netns.SERVER_IP}",
    ),
    "HTTP-close TCP, non-loopback peer": (
        "http",
        "http",
        f"gecko:port=0:interface={_netns.SERVER_IP}",
        f"tcp:0:interface={_netns.SERVER_IP}",
    ),
}

QUICK_VARIANTS = ("accept+close TCP", "accept+close UNIX", "accept+close TCP, non-loopback peer")

ACCEPT_TARGET = Target("<=", 1.03)
#: The eager path (a peer that is not loopback) builds the Twisted transport
#: before the listener sees the connection, and the protocol is attached to
#: it afterwards: its bar is plain Twisted itself.
FOREIGN_TARGET = Target("<=", 1.00)
#: The C client's pause between connections (µs): long enough for the
#: server under valgrind to finish with one connection and block in
#: epoll_wait before the next arrives, so that no reactor iteration is
#: shared by two connections by chance: every connection runs the same path.
PAUSE_US = 2000
KEEPALIVE_TARGET = Target("<=", 1.01)
PLOT = "values"


def _valgrind(ctx: Context, tag: str) -> tuple[list[str], Path]:
    requireTool("valgrind", "valgrind")
    out = ctx.workdir / f"cachegrind-{tag}.out"
    return ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}"], out


def _freshCaches(ctx: Context) -> None:
    """
    Bring the bytecode caches of the project, its plugin dropins and the
    benchmark servers, and Twisted's plugin cache, up to date, so that the N1 and N2 runs of a
    pair start up identically: a stale cache is rebuilt by whichever run
    comes first, which counts against the difference (compiling one module
    is millions of instructions; other work in the same tree can touch
    sources between two runs).  With the caches fresh, a run repeats its
    count to within a few thousand instructions.
    """
    subprocess.run(
        [
            PYTHON,
            "-c",
            "import compileall, sys; [compileall.compile_dir(d, quiet=1) for d in sys.argv[1:]]; "
            "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))",
            str(ROOT / "twisted_serversock"),
            str(ROOT / "bench"),
            str(ROOT / "twisted" / "plugins"),
        ],
        cwd=ROOT,
        check=False,
        timeout=120,
        capture_output=True,
    )


def _instructions(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise BenchError(f"no summary line in {path}")


def _countAccepts(
    ctx: Context, tag: str, mode: str, kind: str, description: str, n: int, clientPrefix: Sequence[str] = ()
) -> tuple[int, int]:
    """
    Instructions of a whole server run that served C{n} sequential
    connections (made by the C client run under C{clientPrefix}); and how
    many completed.
    """
    prefix, out = _valgrind(ctx, tag)
    _freshCaches(ctx)
    for stale in ctx.workdir.glob("*.sock"):
        stale.unlink()
    description = description.replace("$WORK", str(ctx.workdir))
    server = ctx.pyServer(mode, description, f"icount-{tag}", prefix=prefix, timeout=180)
    try:
        got = ctx.client(["conn", server.address, 1, 600, n, kind, PAUSE_US], timeout=660, prefix=clientPrefix)
    finally:
        server.stop(timeout=120)
    if got.get("completed") != n or got.get("errors"):
        raise BenchError(f"{tag}: {got} (expected {n} completed connections)")
    return _instructions(out), n


def _countRequests(ctx: Context, tag: str, impl: str, n: int) -> int:
    prefix, out = _valgrind(ctx, tag)
    _freshCaches(ctx)
    server = twistdWebServer(ctx, impl, f"icount-{tag}", prefix=prefix, timeout=240)
    try:
        got = ctx.client(["reqs", server.address, n, "/b"], timeout=600)
    finally:
        server.stop(timeout=120)
    if got.get("completed") != n:
        raise BenchError(f"{tag}: {got} (expected {n} requests)")
    return _instructions(out)


def _warmUp(ctx: Context, descriptions: Sequence[str], clientPrefix: Sequence[str] = ()) -> None:
    """
    Serve a few connections through each kind of server once, outside
    valgrind: whatever a first run still leaves behind (caches outside the
    project) is then not counted against the first measured run.
    """
    for desc in descriptions:
        with ctx.pyServer("http", desc, "icount-warm-up") as server:
            ctx.client(["conn", server.address, 1, 10, 50, "http"], timeout=30, prefix=clientPrefix)


def _acceptRow(
    ctx: Context, variant: str, spec: tuple[str, str, str, str], n1: int, n2: int, clientPrefix: Sequence[str] = ()
) -> tuple[Row, dict[str, int]]:
    """
    One accept-path row: A and B at C{n1} and C{n2} connections,
    interleaved (A B at N1, then B A at N2); the row and the raw counts.
    """
    mode, kind, descA, descB = spec
    counts: dict[str, int] = {}
    for n, order in ((n1, ("A", "B")), (n2, ("B", "A"))):
        for impl in order:
            desc = descA if impl == "A" else descB
            tag = f"{variant.replace(' ', '_').replace('+', '').replace(',', '')}-{impl}-{n}"
            counts[f"{impl}{n}"], _ = _countAccepts(ctx, tag, mode, kind, desc, n, clientPrefix)
    a = (counts[f"A{n2}"] - counts[f"A{n1}"]) / (n2 - n1)
    b = (counts[f"B{n2}"] - counts[f"B{n1}"]) / (n2 - n1)
    ctx.log(f"{variant}: A {a:,.0f}  B {b:,.0f}  ratio {a / b:.3f}")
    return Row(f"instr/conn {variant}", "instr", a, b, a / b, [(a, b)], target=ACCEPT_TARGET), counts


def run(ctx: Context) -> Result:
    result = Result()
    _warmUp(ctx, ("gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"))
    n1, n2 = (300, 900) if ctx.quick else (1000, 3000)
    wanted = QUICK_VARIANTS if ctx.quick else (*ACCEPT_VARIANTS, *FOREIGN_VARIANTS)
    raw: dict[str, dict[str, int]] = {}
    for variant in wanted:
        if variant in ACCEPT_VARIANTS:
            row, raw[variant] = _acceptRow(ctx, variant, ACCEPT_VARIANTS[variant], n1, n2)
            result.rows.append(row)
    foreign = [v for v in wanted if v in FOREIGN_VARIANTS]
    if foreign and not _netns.available():
        ctx.log("non-loopback peer rows not measured: a network namespace needs root and iproute2 (ip)")
        for variant in foreign:
            result.rows.append(
                Row(f"instr/conn {variant}", "instr", None, None, None, target=FOREIGN_TARGET,
                    note="not measured: needs root and iproute2 (a network namespace)")
            )
    elif foreign:
        with _netns.peerNamespace(ctx) as peer:
            _warmUp(ctx, [peer.describe(d) for d in FOREIGN_VARIANTS[foreign[0]][2:]], peer.inside)
            for variant in foreign:
                mode, kind, descA, descB = FOREIGN_VARIANTS[variant]
                spec = (mode, kind, peer.describe(descA), peer.describe(descB))
                row, raw[variant] = _acceptRow(ctx, variant, spec, n1, n2, peer.inside)
                row.target = FOREIGN_TARGET
                row.note = f"peer {peer.peerIP} in a network namespace (eager path)"
                result.rows.append(row)
    if not ctx.quick:
        r1, r2 = 1000, 3000
        counts = {}
        for n, order in ((r1, ("A", "B")), (r2, ("B", "A"))):
            for impl in order:
                counts[f"{impl}{n}"] = _countRequests(ctx, f"keepalive-{impl}-{n}", impl, n)
        a = (counts[f"A{r2}"] - counts[f"A{r1}"]) / (r2 - r1)
        b = (counts[f"B{r2}"] - counts[f"B{r1}"]) / (r2 - r1)
        raw["keep-alive request (twistd web)"] = counts
        ctx.log(f"keep-alive request: A {a:,.0f}  B {b:,.0f}  ratio {a / b:.4f}")
        result.rows.append(
            Row(
                "instr/request keep-alive (twistd web)",
                "instr",
                a,
                b,
                a / b,
                [(a, b)],
                target=KEEPALIVE_TARGET,
            )
        )
    result.details = {"n": [n1, n2], "instructions": raw}
    result.commands = ctx.takeCommands()
    return result
