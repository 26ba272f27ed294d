# -*- test-case-name: tests.test_lifecycle -*-
"""
The worker processes of a L{WorkerPool<twisted_serversock.ipc.pool.WorkerPool>}:
L{Slot} (a worker number across restarts and replacements), L{Worker} (one
process of a slot, from spawn to exit) and L{WorkerProcess} (its process
protocol: relays its stderr into the parent's log, reports its end).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .dispatch import Route
from .parent import WorkerLink

__all__ = ["Slot", "Worker", "WorkerProcess", "STARTING", "SERVING", "RETIRING", "ENDED"]

#: A worker's states (L{Worker.state}).  STARTING: spawned, not yet ready;
#: SERVING: ready, it gets connections; RETIRING: told to stop, it gets
#: none and drains; ENDED: its process has exited.
STARTING, SERVING, RETIRING, ENDED = "starting", "serving", "retiring", "ended"
#: The moves between them (see L{Worker.enter}).
_MOVES = {STARTING: (SERVING, RETIRING, ENDED), SERVING: (RETIRING, ENDED), RETIRING: (ENDED,), ENDED: ()}

_log = Logger()


class WorkerProcess(ProcessProtocol):
    """
    One worker process: relays its stderr into the parent's log and reports
    its end to the pool.
    """

    def __init__(self, pool: Any, worker: Worker) -> None:
        self._pool = pool
        self._worker = worker
        self._partial = b""

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
            _log.info("{line}", line=text, log_system=f"worker {self._worker.index} pid {self._worker.pid}")

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._relay(self._partial)
            self._partial = b""
        self._pool.workerEnded(self._worker, reason)


class Worker:
    """
    One worker process of a slot, from spawn to exit.

    @ivar state: one of L{STARTING}, L{SERVING}, L{RETIRING}, L{ENDED},
        changed only by L{enter}.
    @ivar routes: the routes this worker asked to serve (a cluster worker's
        listeners), beside the pool's own; it gets their connections once
        it is ready.
    """

    def __init__(self, slot: Slot, startedAt: float) -> None:
        """
        @param startedAt: when it was started (the reactor's C{seconds()}).
        """
        self.slot = slot
        self.index = slot.index
        self.pid = 0
        self.link: WorkerLink | None = None
        self.routes: list[Route] = []
        self.process: Any = None
        self.startedAt = startedAt
        self.killAt = 0.0
        self.killed = False
        self.state = STARTING
        self.counted = False

    def __repr__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def enter(self, state: str) -> str:
        """
        Move to C{state}, the one place a worker's state changes.

        @return: the state it leaves.
        @raise AssertionError: for a move the lifecycle does not have (a
            bug in the pool).
        """
        previous = self.state
        assert state in _MOVES[previous], f"{self!r}: {previous} -> {state}"
        self.state = state
        return previous


class Slot:
    """
    Worker number C{index} across its restarts and replacements.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.current: Worker | None = None
        self.successor: Worker | None = None
        self.failures = 0
        self.restarts = 0
        self.adopted = 0
        self.pending: Any = None
