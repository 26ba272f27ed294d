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
  - keep-alive request: C{twistd web --listen gecko:...} against
    C{--listen tcp:...}, N sequential requests on one connection (the data
    path after C{attachProtocol}).

The short mode (C{--quick}, what CI runs) counts accept+close over TCP and
UNIX with fewer connections; C{--gate X} makes the run fail when either
ratio exceeds X.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ._harness import ACCEPT_VARIANTS, PYTHON, ROOT, BenchError, Context, Result, Row, Target, requireTool, twistdWebServer

NAME = "icount"
TITLE = "Instructions per connection (cachegrind)"

QUICK_VARIANTS = ("accept+close TCP", "accept+close UNIX")

ACCEPT_TARGET = Target("<=", 1.03)
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


def _countAccepts(ctx: Context, tag: str, mode: str, kind: str, description: str, n: int) -> tuple[int, int]:
    """
    Instructions of a whole server run that served C{n} sequential
    connections; and how many completed.
    """
    prefix, out = _valgrind(ctx, tag)
    _freshCaches(ctx)
    for stale in ctx.workdir.glob("*.sock"):
        stale.unlink()
    description = description.replace("$WORK", str(ctx.workdir))
    server = ctx.pyServer(mode, description, f"icount-{tag}", prefix=prefix, timeout=180)
    try:
        got = ctx.client(["conn", server.address, 1, 600, n, kind, PAUSE_US], timeout=660)
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


def _warmUp(ctx: Context) -> None:
    """
    Serve a few connections through each kind of server once, outside
    valgrind: whatever a first run still leaves behind (caches outside the
    project) is then not counted against the first measured run.
    """
    for desc in ("gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"):
        with ctx.pyServer("http", desc, "icount-warm-up") as server:
            ctx.client(["conn", server.address, 1, 10, 50, "http"], timeout=30)


def run(ctx: Context) -> Result:
    result = Result()
    _warmUp(ctx)
    n1, n2 = (300, 900) if ctx.quick else (1000, 3000)
    variants = QUICK_VARIANTS if ctx.quick else tuple(ACCEPT_VARIANTS)
    raw: dict[str, dict[str, int]] = {}
    for variant in variants:
        mode, kind, descA, descB = ACCEPT_VARIANTS[variant]
        counts: dict[str, int] = {}
        # Interleaved: A B at N1, then B A at N2.
        for n, order in ((n1, ("A", "B")), (n2, ("B", "A"))):
            for impl in order:
                desc = descA if impl == "A" else descB
                tag = f"{variant.replace(' ', '_').replace('+', '')}-{impl}-{n}"
                counts[f"{impl}{n}"], _ = _countAccepts(ctx, tag, mode, kind, desc, n)
        a = (counts[f"A{n2}"] - counts[f"A{n1}"]) / (n2 - n1)
        b = (counts[f"B{n2}"] - counts[f"B{n1}"]) / (n2 - n1)
        raw[variant] = counts
        ctx.log(f"{variant}: A {a:,.0f}  B {b:,.0f}  ratio {a / b:.3f}")
        result.rows.append(
            Row(f"instr/conn {variant}", "instr", a, b, a / b, [(a, b)], target=ACCEPT_TARGET)
        )
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
