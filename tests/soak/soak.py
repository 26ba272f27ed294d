"""
The soak: many connect/echo/close and init/close cycles, checking that
descriptors and memory come back to their baseline:

    python -m tests.soak.soak [--long] [--cycles N] [--init-cycles N]
        [--concurrency C] [--reactor asyncio] [--only echo|init]

Two parts, each judged on the process that does the work:

  - B{echo}: C{--cycles} connect/echo/close cycles against an echo server
    process (L{tests.soak.echoserver}), once through a C{gecko:} endpoint
    and once through C{ServerSocket} with Gecko streams, with
    C{--concurrency} clients at a time (asyncio, in this process).  After a
    warm-up, the server's open descriptors must come back to exactly their
    baseline, and its resident set may grow by less than 5 MiB.
  - B{init}: C{--init-cycles} C{init*}/C{close} cycles of every initialiser
    (TCP, IPv6, dual stack, special, by address, UNIX file, UNIX file with
    C{reclaimStale}, abstract), half of them also C{asyncListen}ed, in a
    child process running a reactor: no descriptor, file or private
    directory may be left behind (the C{reclaimStale} lock file is left on
    purpose), and no server socket may stay registered.

Short mode (the default, what CI runs through C{tests/test_hardening_soak.py})
does 10,000 echo cycles and 10,000 init cycles each (a few seconds a
part); C{--long} (or C{SERVERSOCK_SOAK=long}) does 100,000 echo cycles.  It prints a
JSON report on the last line and exits non-zero if a limit was broken.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from ._proc import fdCount, rssKiB

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHORT = {"cycles": 10_000, "init_cycles": 10_000}
LONG = {"cycles": 100_000, "init_cycles": 10_000}
RSS_LIMIT_KIB = 5 * 1024


def _settle(pid: int, want: int, seconds: float = 10.0) -> int:
    """
    Wait until process C{pid} has C{want} descriptors open (connections
    closing), or C{seconds} passed; return the count.
    """
    deadline = time.monotonic() + seconds
    n = fdCount(pid)
    while n != want and time.monotonic() < deadline:
        time.sleep(0.05)
        n = fdCount(pid)
    return n


# ----------------------------------------------------------------------
# Echo cycles


async def _cycles(port: int, count: int, concurrency: int, start: int) -> int:
    """
    Run C{count} connect/echo/close cycles, C{concurrency} at a time.

    @return: how many failed.
    """
    next_ = iter(range(start, start + count))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for i in next_:
            payload = b"%08d-%s\n" % (i, b"x" * (i % 64))
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(payload)
                got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
                writer.close()
                await writer.wait_closed()
                if got != payload:
                    failed += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


def soakEcho(kind: str, cycles: int, concurrency: int, reactor: str) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.soak.echoserver", "--kind", kind, "--reactor", reactor],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert server.stdout is not None and server.stdin is not None
    try:
        while True:
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"the {kind} echo server exited")
            event = json.loads(line)
            if event["event"] == "listening":
                break
        pid, port = event["pid"], event["port"]
        idle = fdCount(pid)
        warmup = max(500, cycles // 50)
        failed = asyncio.run(_cycles(port, warmup, concurrency, 0))
        fdsBefore = _settle(pid, idle)
        rssBefore = rssKiB(pid)
        started = time.monotonic()
        failed += asyncio.run(_cycles(port, cycles, concurrency, warmup))
        seconds = time.monotonic() - started
        fdsAfter = _settle(pid, fdsBefore)
        time.sleep(0.2)
        rssAfter = rssKiB(pid)
    finally:
        server.stdin.close()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    ok = failed == 0 and fdsAfter == fdsBefore and rssAfter - rssBefore < RSS_LIMIT_KIB
    return {
        "part": f"echo/{kind}",
        "cycles": cycles,
        "concurrency": concurrency,
        "failed": failed,
        "seconds": round(seconds, 2),
        "per_second": round(cycles / seconds),
        "fds_before": fdsBefore,
        "fds_after": fdsAfter,
        "rss_before_kib": rssBefore,
        "rss_after_kib": rssAfter,
        "rss_growth_kib": rssAfter - rssBefore,
        "ok": ok,
    }


# ----------------------------------------------------------------------
# Init/close cycles (run in a child process: python -m tests.soak.soak --child-init N)


def initCyclesChild(n: int, reactorName: str) -> None:
    if reactorName == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    import shutil
    import tempfile
    import uuid

    from twisted.internet import defer, task

    from twisted_serversock import IOService, ServerSocket

    from ..conftest import hasIPv6Loopback

    io = IOService()
    directory = tempfile.mkdtemp(prefix="/tmp/tssoak")
    abstract = f"tss-soak-{uuid.uuid4().hex}"
    initialisers: dict[str, Any] = {
        "init": lambda s: s.init(-1, True, -1),
        "initSpecialConnection": lambda s: s.initSpecialConnection(-1, 3, -1),
        "initWithAddress": lambda s: s.initWithAddress(("127.0.0.1", 0), -1),
        "initWithFilename": lambda s: s.initWithFilename(os.path.join(directory, "a.sock"), 0o600, -1),
        "initWithFilename/reclaimStale": lambda s: s.initWithFilename(
            os.path.join(directory, "r.sock"), 0o660, -1, reclaimStale=True
        ),
        "initWithAbstractAddress": lambda s: s.initWithAbstractAddress(abstract, -1, allowedUids=[os.getuid()]),
    }
    if hasIPv6Loopback():
        initialisers["initIPv6"] = lambda s: s.initIPv6(-1, True, -1)
        initialisers["initDualStack"] = lambda s: s.initDualStack(-1, -1)

    class Listener:
        def __init__(self) -> None:
            self.stopped: defer.Deferred[int] = defer.Deferred()

        def onSocketAccepted(self, serv: Any, transport: Any) -> None:
            transport.close(0)

        def onStopListening(self, serv: Any, status: int) -> None:
            self.stopped.callback(status)

    async def cycle(init: Any, listen: bool) -> None:
        s = ServerSocket(ioService=io)
        init(s)
        if listen:
            listener = Listener()
            s.asyncListen(listener)
            s.close()
            await listener.stopped
        else:
            s.close()

    async def run(reactor: Any) -> None:
        report: list[dict[str, Any]] = []
        for name, init in initialisers.items():
            for i in range(10):  # warm-up: the reserve, caches, the reactor's pipes
                await cycle(init, bool(i % 2))
            fdsBefore, rssBefore = fdCount(), rssKiB()
            started = time.monotonic()
            for i in range(n):
                await cycle(init, bool(i % 2))
            seconds = time.monotonic() - started
            left = sorted(os.listdir(directory))
            expected = ["r.sock.lock"] if "reclaim" in name or "r.sock.lock" in left else []
            fdsAfter, rssAfter = fdCount(), rssKiB()
            report.append(
                {
                    "part": f"init/{name}",
                    "cycles": n,
                    "seconds": round(seconds, 2),
                    "per_second": round(n / seconds),
                    "fds_before": fdsBefore,
                    "fds_after": fdsAfter,
                    "rss_growth_kib": rssAfter - rssBefore,
                    "left_behind": [f for f in left if f not in expected],
                    "registered": len(io._serverSockets),
                    "ok": fdsAfter == fdsBefore
                    and left == expected
                    and not io._serverSockets
                    and rssAfter - rssBefore < RSS_LIMIT_KIB,
                }
            )
        shutil.rmtree(directory)
        print(json.dumps(report), flush=True)

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


def soakInit(cycles: int, reactor: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.soak.soak", "--child-init", str(cycles), "--reactor", reactor],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the init cycles failed:\n{out.stderr}")
    report: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


# ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", default=os.environ.get("SERVERSOCK_SOAK", "").lower() == "long")
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--init-cycles", type=int)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    parser.add_argument("--only", choices=["echo", "init"])
    parser.add_argument("--child-init", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_init is not None:
        initCyclesChild(args.child_init, args.reactor)
        return 0
    mode = LONG if args.long else SHORT
    cycles = args.cycles or mode["cycles"]
    initCycles = args.init_cycles or mode["init_cycles"]
    report: list[dict[str, Any]] = []
    if args.only in (None, "echo"):
        for kind in ("gecko", "streams"):
            report.append(soakEcho(kind, cycles, args.concurrency, args.reactor))
            print(json.dumps(report[-1]), file=sys.stderr, flush=True)
    if args.only in (None, "init"):
        for row in soakInit(initCycles, args.reactor):
            report.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report), flush=True)
    return 0 if all(r["ok"] for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
