# -*- test-case-name: tests.test_pool_units -*-
"""
The worker processes of a L{WorkerPool<twisted_serversock.ipc.pool.WorkerPool>}
(L{Slot}, L{Worker}, L{Workers}), and what the pool does with them on the
reactor's clock (L{Restarts}, L{killHung}, L{Shutdown}).
"""

from __future__ import annotations

import fcntl
from contextlib import suppress
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .dispatch import Dispatcher, Route
from .logs import LogRelay
from .parent import WorkerLink

__all__ = ["Slot", "Worker", "Workers", "STARTING", "SERVING", "RETIRING", "ENDED",
           "Restarts", "Shutdown", "KILL_MARGIN", "LOG_BATCH", "LOG_PIPE", "kill", "killHung"]

#: A worker's states (L{Worker.state}).  STARTING: spawned, not yet ready;
#: SERVING: ready, it gets connections; RETIRING: told to stop, it gets
#: none and drains; ENDED: its process has exited.
STARTING, SERVING, RETIRING, ENDED = "starting", "serving", "retiring", "ended"
#: Why a worker ended: it died unasked ("crash"), was killed for silence
#: ("timeout"), or was asked to leave by a reload, its C{--max-requests},
#: one worker fewer ("scale") or the stop.
EXIT_REASONS = ("crash", "timeout", "reload", "max-requests", "scale", "stop")
#: The moves between them (see L{Worker.enter}).
_MOVES = {STARTING: (SERVING, RETIRING, ENDED), SERVING: (RETIRING, ENDED), RETIRING: (ENDED,), ENDED: ()}
#: A retired worker still there this long after its grace period is killed.
KILL_MARGIN = 2.0
#: After a read of a worker's output the parent reads it again this much
#: later: what the worker logs meanwhile waits in the pipe, in order, and
#: comes in one read rather than one each (a busy worker's log costs the
#: parent a fraction of the CPU: each wake-up costs more than a line).
LOG_BATCH = 0.05
#: The size asked for the pipe of a worker's standard error (Linux), so
#: that a worker logging thousands of events a second does not wait for
#: the parent's next read: about 1,000 usual events.
LOG_PIPE = 256 * 1024

_log = Logger()


class Worker(ProcessProtocol):
    """
    One worker process of a slot, from spawn to exit, and its process
    protocol: its log events and output go to the parent's log observers
    (L{LogRelay}), and its end to C{ended}.

    @ivar state: one of L{STARTING}, L{SERVING}, L{RETIRING}, L{ENDED},
        changed only by L{enter}.
    @ivar generation: the pool's reload count when it was started: the
        workers of the latest reload are the ones a reload waits for.
    @ivar routes: the routes it asked to serve (a cluster worker's listeners)
        beside the pool's own, whose connections it gets once it is ready.
    """

    def __init__(
        self, slot: Slot, link: WorkerLink, startedAt: float, generation: int, ended: Callable[[Worker, Failure], None], reactor: Any = None,
    ) -> None:  # fmt: skip
        """@param reactor: reads the worker's output in batches (L{LOG_BATCH}); without one, as it comes."""
        self.slot, self.index, self.link, self._ended = slot, slot.index, link, ended
        self._reactor, self._resting = reactor, False
        self.generation, self.startedAt = generation, startedAt
        self._logs = LogRelay(f"worker {self.index} pid 0")
        self._pid = 0
        self.routes: list[Route] = []
        self.process: Any = None
        self.killAt = 0.0
        self.killed = False
        #: Why it is leaving, once it is retired or killed (L{EXIT_REASONS});
        #: a worker that ends with none set crashed (or was stopped).
        self.exitReason: str | None = None
        #: Why it was started: C{"start"}, or the reason the worker it
        #: replaces retires (C{"reload"}, C{"max-requests"}).
        self.cause = "start"
        self.state = STARTING

    @property
    def pid(self) -> int:
        """Its process id (0 until it is spawned); its log events' system says it."""
        return self._pid

    @pid.setter
    def pid(self, pid: int) -> None:
        self._pid = pid
        self._logs.system = f"worker {self.index} pid {pid}"

    def __repr__(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def enter(self, state: str) -> str:
        """Move to C{state}; return the state it leaves.  A move the lifecycle does not have is a bug: an AssertionError."""
        previous = self.state
        assert state in _MOVES[previous], f"{self!r}: {previous} -> {state}"
        self.state = state
        return previous

    def connectionMade(self) -> None:
        pipe = getattr(self.transport, "pipes", {}).get(2)
        if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            with suppress(OSError):  # over the system's limits: the default
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, LOG_PIPE)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._logs.dataReceived(childFD, data)
        transport: Any = self.transport
        if self._reactor is not None and not self._resting and transport is not None:
            self._resting = True
            transport.pauseProducing()
            self._reactor.callLater(LOG_BATCH, self._readAgain)

    def _readAgain(self) -> None:
        self._resting = False
        transport: Any = self.transport
        if self.state is not ENDED and transport is not None:
            transport.resumeProducing()

    def processEnded(self, reason: Failure) -> None:
        self._logs.flush()
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
        return next((worker for worker in self.live if worker.link is link), None)

    def starting(self, generation: int) -> bool:
        """Whether a worker of C{generation} is starting, or a slot waits for a restart (which will be one)."""
        restarting = any(slot.pending is not None for slot in self.slots)
        return restarting or any(w.state is STARTING and w.generation == generation for w in self.live)


def kill(worker: Worker, dispatcher: Dispatcher) -> None:
    """
    SIGKILL C{worker}: even a stopped (SIGSTOP) process dies at once.  It
    gets no new connections; those it had not acknowledged are re-sent
    once its channel ends (after its last ack).
    """
    worker.killed = True
    dispatcher.leave(worker.link)
    with suppress(Exception):  # it has just exited: its end is on its way
        worker.process.signalProcess("KILL")


def killHung(now: float, timeout: float, workers: list[Worker], dispatcher: Dispatcher) -> int:
    """
    Kill the workers silent for C{timeout} seconds - heartbeats keep idle
    ones alive - and the retiring ones past their C{killAt}.  Their
    unacknowledged connections go to other workers once they are gone.

    @return: how many were killed for being silent.
    """
    killed = 0
    for worker in list(workers):
        silent = now - worker.link.lastHeard
        if worker.process is None or worker.killed:
            continue
        if silent > timeout:
            killed += 1
            worker.exitReason = "timeout"
            why = "{worker} was silent for {silent:.1f} s (--timeout {timeout} s) holding {n} unacknowledged connection(s)"
            _log.error(why + "; killing it", worker=worker, silent=silent, timeout=timeout, n=len(worker.link.inflight))
            kill(worker, dispatcher)
        elif worker.state is RETIRING and now >= worker.killAt:
            _log.warn("{worker} did not finish within its grace period; killing it", worker=worker)
            kill(worker, dispatcher)
    return killed


class Restarts:
    """
    Restarts with exponential backoff: a slot whose workers keep dying
    waits longer each time (from L{FIRST_DELAY}, doubling, at most
    L{MAX_DELAY}), so that a broken program does not spin; a worker that
    ran L{STABLE_SECONDS} starts the count again.
    """

    STABLE_SECONDS = 5.0
    FIRST_DELAY = 0.1
    MAX_DELAY = 10.0

    def __init__(
        self, reactor: Any, slots: list[Slot], start: Callable[[Slot], object], maxStarts: int = 0,
        onGiveUp: Callable[[int, int], None] | None = None,
    ) -> None:  # fmt: skip
        """
        @param slots: the pool's slots (see L{cancelAll}).
        @param start: starts a worker in a slot, when its delay is over.
        @param maxStarts: see L{untried}.
        """
        self._reactor, self._slots, self._start = reactor, slots, start
        self._maxStarts, self._onGiveUp = maxStarts, onGiveUp

    def untried(self, slot: Slot) -> None:
        """
        C{slot} starts a worker while none was ever ready: the C{maxStarts}th
        time, the program cannot run as a worker: C{onGiveUp(index, exits)}
        is called (later: not in the middle of a start).
        """
        if self._onGiveUp is not None and 0 < self._maxStarts <= slot.restarts + 1:
            self._reactor.callLater(0, self._onGiveUp, slot.index, slot.restarts)

    def died(self, slot: Slot, lived: float) -> None:
        slot.failures = 1 if lived >= self.STABLE_SECONDS else slot.failures + 1

    def schedule(self, slot: Slot) -> float:
        """Start C{slot} again after its backoff delay; return the delay."""
        delay = min(self.FIRST_DELAY * 2.0 ** max(slot.failures - 1, 0), self.MAX_DELAY)
        slot.restarts += 1
        slot.pending = self._reactor.callLater(delay, self._fire, slot)
        return delay

    def _fire(self, slot: Slot) -> None:
        slot.pending = None
        self._start(slot)

    def cancel(self, slot: Slot) -> None:
        """C{slot} starts no more on its own (removed, or started now)."""
        if slot.pending is not None and slot.pending.active():
            slot.pending.cancel()
        slot.pending = None

    def cancelAll(self) -> None:
        """No slot starts again on its own (the pool is stopping)."""
        for slot in self._slots:
            self.cancel(slot)


class Shutdown:
    """
    A pool's stop: the connections the parent still holds go to workers
    first (those none has adopted when the grace period ends are closed);
    then every worker of C{workers} (the pool's live ones, a list it keeps
    up to date) is told to finish within what is left of the grace period,
    and killed L{KILL_MARGIN} after it.

    @ivar stopping: whether the workers were told to stop (from then on
        nothing restarts).
    """

    def __init__(self, reactor: Any, dispatcher: Dispatcher, workers: list[Worker], onStopping: Callable[[], None]) -> None:
        """@param onStopping: called once the workers are told to stop (the pending restarts are cancelled then)."""
        self._reactor, self._dispatcher, self._workers, self._onStopping = reactor, dispatcher, workers, onStopping
        self._ended: defer.Deferred[None] | None = None
        self._deadline = 0.0
        self._killer: Any = None
        self.stopping = False

    def begin(self, grace: float) -> defer.Deferred[None]:
        """Stop within C{grace} seconds; the Deferred fires once no worker is left."""
        d = self._ended = defer.Deferred()
        self._deadline = self._reactor.seconds() + grace
        if self._dispatcher.held:
            _log.info("Handing {n} held connection(s) to workers before stopping", n=len(self._dispatcher.held))
        giveUp = self._reactor.callLater(grace, self._giveUp)

        def idle() -> None:
            if giveUp.active():
                giveUp.cancel()
                self._tellWorkers()

        self._dispatcher.whenIdle(idle)  # at once if it holds none
        return d

    def _tellWorkers(self) -> None:
        self.stopping = True
        self._onStopping()
        grace = max(self._deadline - float(self._reactor.seconds()), 0.0)
        told = [w for w in self._workers if not w.link.lost]
        for worker in told:
            worker.link.sendControl("stop", grace=grace)
        _log.info("Told {n} worker(s) to finish their connections within {grace:.1f} s", n=len(told), grace=grace)
        self._killer = self._reactor.callLater(grace + KILL_MARGIN, self._killAll)
        self.check()

    def _giveUp(self) -> None:
        lost = self._dispatcher.dropAll("the grace period ended before a worker adopted it")
        _log.error("{n} held connection(s) closed unserved at the end of the grace period", n=lost)
        self._tellWorkers()

    def _killAll(self) -> None:
        for worker in list(self._workers):
            _log.warn("{worker} did not exit in time; killing it", worker=worker)
            kill(worker, self._dispatcher)

    def check(self) -> None:
        """A worker ended: fire L{begin}'s Deferred if it was the last."""
        if self._ended is None or not self.stopping or self._workers:
            return
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
        d, self._ended = self._ended, None
        d.callback(None)
