"""
Worker chaos: a stream of connections through C{twistd serversock
--workers 2} while workers are SIGKILLed at random.
Every connection the parent accepted is served, except those a killed
worker had already adopted; the parent loses none.

Short mode (CI): 8 seconds.  Long mode (C{SERVERSOCK_SOAK=long}): 30
seconds.  The figures are printed and recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from ._hardening import LONG, ROOT
from ._procs import SERVERSOCK, serving, spawn, stopCleanly, workerPids
from .conftest import theReactor, timeout

SECONDS = 30.0 if LONG else 8.0
CONCURRENCY = 8


class Tagged(protocol.Protocol):
    """
    Reads the serving worker's tag, sends a message twice with a pause, and
    expects both echoed.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.pid: int | None = None
        self.done: defer.Deferred[bool] = defer.Deferred()
        self.stage = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.pid is None and b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.pid = int(line.split()[1])
            self.transport.write(b"one.")
        if self.stage == 0 and self.buffer == b"one.":
            self.stage = 1
            self.buffer = b""
            theReactor().callLater(0.02, self.transport.write, b"two.")
        elif self.stage == 1 and self.buffer == b"two.":
            self.stage = 2
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.stage == 2)


async def oneConnection(port: int) -> tuple[bool, int | None]:
    client = Tagged()
    endpoint = TCP4ClientEndpoint(theReactor(), "127.0.0.1", port, timeout=10)
    await timeout(endpoint.connect(protocol.Factory.forProtocol(lambda: client)))
    ok = await timeout(client.done, 20)
    return ok, client.pid


@pytest_twisted.ensureDeferred
async def test_workerChaos() -> None:
    proc = spawn(SERVERSOCK + ["--listen", "gecko:port=0:loopback=1", "--workers", "2", "--factory", "tests.chaosfactory.factory"], ROOT)
    port = await serving(proc, 2)
    rng = random.Random(4242)
    killed: set[int] = set()
    results: list[tuple[bool, int | None]] = []
    running: set[defer.Deferred[Any]] = set()
    deadline = time.monotonic() + SECONDS
    nextKill = time.monotonic() + rng.uniform(0.3, 1.2)

    #: Whoever waits for the next connection to end (a free slot).
    waiting: list[defer.Deferred[None]] = []

    def wake() -> None:
        # Those waiting now only: a woken waiter may wait again at once.
        woken, waiting[:] = list(waiting), []
        for w in woken:
            if not w.called:
                w.callback(None)

    def record(outcome: Any, d: defer.Deferred[Any]) -> None:
        running.discard(d)
        results.append(outcome if isinstance(outcome, tuple) else (False, None))
        wake()

    try:
        while time.monotonic() < deadline:
            while len(running) < CONCURRENCY:
                d = defer.ensureDeferred(oneConnection(port))
                running.add(d)
                d.addBoth(record, d)
            if time.monotonic() >= nextKill:
                pids = workerPids(proc)
                victim = pids[rng.choice(sorted(pids))]
                if victim not in killed:
                    killed.add(victim)
                    os.kill(victim, signal.SIGKILL)
                nextKill = time.monotonic() + rng.uniform(0.3, 1.2)
            # Until a connection ends (its slot is refilled) or the next
            # kill is due, whichever comes first.
            woken: defer.Deferred[None] = defer.Deferred()
            waiting.append(woken)
            due = theReactor().callLater(max(0.0, min(nextKill, deadline) - time.monotonic()), wake)
            await timeout(woken, 30)
            if due.active():
                due.cancel()
        await timeout(defer.DeferredList(list(running)), 30)
    finally:
        status = await stopCleanly(proc)
    assert status == 0, proc.output[-3000:]

    served = sum(1 for ok, _ in results if ok)
    failed = [(ok, pid) for ok, pid in results if not ok]
    totals = re.search(
        r"Connections: (\d+) accepted, (\d+) adopted by workers, (\d+) re-sent after a worker died, (\d+) closed unserved",
        proc.output,
    )
    assert totals, proc.output[-3000:]
    accepted, adopted, resent, dropped = map(int, totals.groups())
    print(
        f"\nworker chaos, {SECONDS:.0f} s: {len(results)} connections, {served} served, {len(failed)} failed; "
        f"{len(killed)} workers killed; parent: {accepted} accepted, {adopted} adopted, {resent} re-sent, {dropped} dropped"
    )
    assert len(killed) >= 3
    # Nothing lost in the parent: every accepted connection was adopted.
    assert dropped == 0 and accepted == adopted == len(results)
    # A connection fails only if a killed worker had adopted it: no failure
    # carries the tag of a worker that was never killed.
    assert all(pid is None or pid in killed for _, pid in failed), (failed, killed)
    # And only the connections open in a worker at its death can fail.
    assert len(failed) <= CONCURRENCY * len(killed)
    assert served >= len(results) - CONCURRENCY * len(killed)
