"""
twisted-serversock's benchmarks: the project (A) and a plain-Twisted
reference (B) run side by side in one run, and the table of ratios.

Run everything with C{python -m bench} (or C{bench/run}); one benchmark
with C{python -m bench NAME}; C{python -m bench --list} names them.  See
C{bench/README.md} for the options and C{docs/benchmarks.md} for the latest
figures.

Adding a benchmark
==================

A benchmark is one module of this package, registered by adding its name
to L{bench.registry.BENCHMARKS}.  The module defines:

  - C{NAME} and C{TITLE} (C{TITLE} heads its section and plot in the docs);
  - C{run(ctx: Context) -> Result}: measure, and return the table's
    L{Row}s, the commands it ran (C{ctx.takeCommands()}) and any raw
    details worth keeping (JSON-serialisable);
  - optionally C{PLOT = "values"} (and C{PLOT_LOG = True}) to plot A and B
    side by side instead of per-pair ratios.

L{Context<bench._harness.Context>} gives it everything shared:
C{ctx.pyServer(mode, description, name)} starts a L{bench._servers}
server pinned to the server CPU and waits for its address;
C{ctx.server(argv, name, readyLine=False)} starts any other server (wait
with C{server.waitConnectable}); C{ctx.client([...])} runs the C load
generator pinned to the client CPU; C{ctx.run([...])} runs another load tool
(C{wrk}); C{server.cpuNs()} reads a server's exact CPU time;
C{interleaved(ctx, servers, measure, label, show)} loads the servers one
at a time in rotated order C{ctx.reps} times and collects each load's
figures with the server's CPU time (C{rotations(keys, ctx.reps)} gives
just the orders), and
C{pairedRow(name, unit, zip(a, b), target=Target(">=", 0.95))} turns
per-pair samples into a row (medians and the median of pairwise ratios).
C{ctx.quick} asks for a short run.  Every server the context started is
stopped and the scratch directory C{ctx.workdir} removed when the suite
ends, whether or not the benchmark failed; raise L{BenchError} for a
benchmark that cannot run.

A worker-process benchmark, for instance, starts C{twistd -n serversock
--workers 2 ...} and the reference servers with C{ctx.server}, loads them
in rotated order with C{wrk}, and returns rows such as
C{pairedRow("CPU-bound handler, close: workers vs one process", "req/s",
zip(workers, single), target=Target(">=", 1.4))}.
"""

from ._harness import BenchError, Context, Result, Row, Target, pairedRow, rotations

__all__ = ["BenchError", "Context", "Result", "Row", "Target", "pairedRow", "rotations"]
