# -*- test-case-name: tests.test_pool_units -*-
"""
The worker processes of a L{WorkerPool<twisted_serversock.ipc.pool.WorkerPool>}:
their numbers (L{Slot}), each one's states (L{Worker}) and what those say (L{Workers}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .dispatch import Route
from .parent import WorkerLink

__all__ = ["Slot", "Worker", "Workers", "STARTING", "SERVING", "RETIRING", "ENDED"]

#: A worker's states (L{Worker.state}).  STARTING: spawned, not yet ready;
#: SERVING: ready, it gets connections; RETIRING: told to stop, it gets
#: none and drains; ENDED: its process has exited.
STARTING, SERVING, RETIRING, ENDED = "starting", "serving", "retiring", "ended"
#: The moves between them (see L{Worker.enter}).
_MOVES = {STARTING: (SERVING, RETIRING, ENDED), SERVING: (RETIRING, ENDED), RETIRING: (ENDED,), ENDED: ()}

_log = Logger()


class Worker(ProcessProtocol):
    """
    One worker process of a slot, from spawn to exit, and its process
    protocol: its stderr goes into the parent's log, one line an event, and
    its end to C{ended}.

    @ivar state: one of L{STARTING}, L{SERVING}, L{RETIRING}, L{ENDED},
        changed only by L{enter}.
    @ivar generation: the pool's reload count when it was started: the
        workers of the latest reload are the ones a reload waits for.
    @ivar routes: the routes this worker asked to serve (a cluster worker's
        listeners), beside the pool's own; it gets their connections once
        it is ready.
    """

    def __init__(self, slot: Slot, link: WorkerLink, startedAt: float, generation: int, ended: Callable[[Worker, Failure], None]) -> None:
        self.slot, self.index, self.link, self._ended = slot, slot.index, link, ended
        self.generation, self.startedAt = generation, startedAt
        self.pid = 0
        self.routes: list[Route] = []
        self.process: Any = None
        self.killAt = 0.0
        self.killed = False
        self.state = STARTING
        self._partial = b""

    def __repr__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def enter(self, state: str) -> str:
        """Move to C{state}; return the state it leaves.  A move the lifecycle does not have is a bug: an AssertionError."""
        previous = self.state
        assert state in _MOVES[previous], f"{self!r}: {previous} -> {state}"
        self.state = state
        return previous

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        text = line.decode("utf-8", "backslashreplace").rstrip()
        if text:
            # One prefix: the worker's number and pid as the event's system
            # (the line carries the worker's own system, if any).
            _log.info("{line}", line=text, log_system=f"worker {self.index} pid {self.pid}")

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._relay(self._partial)
            self._partial = b""
        self._ended(self, reason)


class Slot:
    """
    Worker number C{index} across its restarts and replacements.

    @ivar failures: deaths in a row without a stable run (the backoff's).
    @ivar restarts: restarts so far.
    @ivar adopted: connections its ended workers adopted.
    @ivar pending: its scheduled restart, if any.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.failures = self.restarts = self.adopted = 0
        self.pending: Any = None


class Workers:
    """
    A pool's slots and worker processes: the one place a worker's state
    changes, and where what the pool needs to know is read off those
    states (a slot's worker and successor are its STARTING and SERVING
    workers, oldest first; the retiring ones are those in RETIRING).

    @ivar slots: the pool's slots, by number.
    @ivar live: every worker whose process has not ended, oldest first.
    """

    def __init__(self, count: int) -> None:
        self.slots = [Slot(i + 1) for i in range(count)]
        self.live: list[Worker] = []

    def enter(self, worker: Worker, state: str) -> str:
        """Move C{worker} to C{state} (see L{Worker.enter}); an ended one is no longer L{live}."""
        previous = worker.enter(state)
        if state is ENDED:
            self.live.remove(worker)
        return previous

    def inSlot(self, slot: Slot) -> list[Worker]:
        """C{slot}'s worker and, while it is being replaced, its successor."""
        return [w for w in self.live if w.slot is slot and w.state in (STARTING, SERVING)]

    def of(self, link: WorkerLink) -> Worker | None:
        """The worker of C{link}, if it is live."""
        return next((worker for worker in self.live if worker.link is link), None)

    def starting(self, generation: int) -> bool:
        """Whether a worker of C{generation} is starting, or a slot waits for a restart (which will be one)."""
        restarting = any(slot.pending is not None for slot in self.slots)
        return restarting or any(w.state is STARTING and w.generation == generation for w in self.live)
