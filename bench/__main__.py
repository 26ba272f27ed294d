"""
C{python -m bench [NAME ...] [options]}: run the benchmark suite (or the
named benchmarks) and print the ratio table.  See C{bench/README.md}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import signal
import sys
import time
import traceback
from types import FrameType

from ._harness import BenchError, Context, Result, Row, calibrate
from .registry import BENCHMARKS, load
from .report import machine, table, writeDocs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="twisted-serversock benchmarks: the project (A) against plain Twisted (B), side by side.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true", help="short mode: fewer, shorter repetitions (what CI runs)")
    p.add_argument("--reps", type=int, default=None, help="A/B pairs for wall-clock benchmarks (default 9; 3 with --quick)")
    p.add_argument(
        "--gate",
        type=float,
        default=None,
        metavar="X",
        help="exit 1 if instructions per accepted connection exceed X times plain Twisted",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if any row misses its target")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="write docs/benchmarks.md and its plots (default for a full run)")
    docs.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--conditions", default="", help="a sentence for the docs on the conditions of this run")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return p


def _shownArguments(argv: list[str]) -> list[str]:
    """
    The arguments as the docs show the command: without C{--conditions}
    (its text is shown on its own).
    """
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--conditions":
            skip = True
        elif not arg.startswith("--conditions="):
            shown.append(arg)
    return shown


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into an exception so that every server is stopped
    # and the scratch directory removed on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            module = load(name)
            print(f"{name:10} {getattr(module, 'TITLE', '')}")
        return 0
    names = args.names or list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
    writeTheDocs = args.docs or (not args.names and not args.quick and not args.no_docs)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    calibration = [calibrate()]
    load1 = os.getloadavg()
    print(f"bench: {', '.join(names)}{' (quick)' if args.quick else ''}; calibration {calibration[0]:.2f} ms; load {load1[0]:.2f}", flush=True)
    results: dict[str, Result] = {}
    errors: list[str] = []
    with Context(quick=args.quick, reps=args.reps) as ctx:
        for name in names:
            module = load(name)
            print(f"== {name}: {getattr(module, 'TITLE', '')}", flush=True)
            t = time.monotonic()
            try:
                results[name] = module.run(ctx)
            except (BenchError, OSError) as e:
                errors.append(f"{name}: {e}")
                print(f"  ERROR: {e}", flush=True)
                ctx.takeCommands()
                continue
            except Exception:
                errors.append(f"{name}: {traceback.format_exc()}")
                traceback.print_exc()
                ctx.takeCommands()
                continue
            print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
    calibration.append(calibrate())
    elapsed = time.monotonic() - t0
    rows: list[Row] = [r for res in results.values() for r in res.rows]
    print()
    print(table(rows))
    print()
    print(f"total {elapsed:.0f} s; calibration {calibration[0]:.2f} -> {calibration[1]:.2f} ms")
    status = 0
    if errors:
        print("errors:\n  " + "\n  ".join(errors), file=sys.stderr)
        status = 1
    if args.gate is not None:
        gated = [r for r in rows if r.name.startswith("instr/conn") and r.ratio is not None]
        over = [r for r in gated if r.ratio is not None and r.ratio > args.gate]
        if not gated:
            print("GATE: no instruction-count rows were measured", file=sys.stderr)
            status = 1
        for r in over:
            print(f"GATE FAILED: {r.name}: {r.ratio:.3f}× plain Twisted > {args.gate}×", file=sys.stderr)
            status = 1
        if gated and not over:
            print(f"gate passed: instructions per accepted connection ≤ {args.gate}× plain Twisted "
                  f"(worst {max(r.ratio or 0 for r in gated):.3f}×)")
    if args.strict and any(r.ok is False for r in rows):
        status = 1
    if writeTheDocs and results:
        finished = datetime.datetime.now(datetime.timezone.utc)
        run = {
            "started": started.strftime("%Y-%m-%d %H:%M"),
            "finished": finished.strftime("%Y-%m-%d %H:%M"),
            "elapsed": elapsed,
            "command": shlex.join(["python", "-m", "bench", *_shownArguments(argv if argv is not None else sys.argv[1:])]),
            "calibration": calibration,
            "load": " ".join(f"{x:.2f}" for x in load1),
            "conditions": args.conditions,
            "machine": machine(),
        }
        path = writeDocs(run, results)
        print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
