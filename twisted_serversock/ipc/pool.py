# -*- test-case-name: tests.test_lifecycle -*-
"""
L{WorkerPool}: the worker processes of C{twistd serversock} (and of cluster
mode), each with a channel to the parent: restarted with backoff when they
die, killed and replaced when silent for C{timeout} seconds, replaced
gracefully on L{reload<WorkerPool.reload>} or after C{maxRequests}
connections, grown and shrunk one at a time.

A worker number (a I{slot}) has one current worker and, while it is being
replaced, a successor: the successor gets connections once it says it is
ready, and only then is the current one I{retired} - it gets no new
connections, finishes its open ones within the grace period and exits.  So
a reload refuses and drops nothing, and a broken new version (a successor
that dies before it is ready) leaves the old worker serving.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from .defaults import GRACE, TIMEOUT, heartbeatFor
from .dispatch import Dispatcher, Route
from .parent import WorkerLink
from .slots import ENDED, RETIRING, SERVING, STARTING, Slot, Worker, WorkerProcess
from .spawn import CHANNEL_FD, WorkerCommand, spawnWorkerProcess
from .sdnotify import SystemdNotifier
from .channel import channelPair
from .wire import Control

__all__ = ["WorkerPool", "CHANNEL_FD"]

_log = Logger()

#: A worker that lived at least this long before dying is restarted after
#: the shortest delay.
_STABLE_SECONDS = 5.0
_FIRST_DELAY = 0.1
_MAX_DELAY = 10.0
#: A retired worker still there this long after its grace period is killed.
_KILL_MARGIN = 2.0


class WorkerPool:
    """
    C{count} worker processes, each started with C{command} (the same
    spawn for C{twistd serversock} and cluster mode: only the command
    differs), serving the pool's routes.

    @ivar dispatcher: where accepted connections go.
    @ivar killedForTimeout: workers killed for being silent C{timeout} s.
    @ivar recycled: workers replaced after C{maxRequests} connections.
    @ivar reloads: reloads begun.
    @ivar everReady: whether some worker has said it is ready.
    @param onControl: called with C{(link, message)} for each control
        message of a worker that the link does not handle itself (cluster
        mode's messages).
    """

    def __init__(
        self,
        reactor: Any,
        dispatcher: Dispatcher,
        command: WorkerCommand,
        count: int,
        timeout: float = TIMEOUT,
        grace: float = GRACE,
        maxRequests: int = 0,
        maxRequestsJitter: int = 0,
        notifier: SystemdNotifier | None = None,
        onControl: Callable[[WorkerLink, Control], None] | None = None,
        startsBeforeGivingUp: int = 0,
        onGiveUp: Callable[[int, int], None] | None = None,
    ) -> None:
        """
        @param timeout: seconds of silence (no heartbeat, no ack) after
            which a worker is killed and replaced.
        @param grace: seconds a retired worker gets to finish its
            connections.
        @param maxRequests: replace a worker after it was given this many
            connections (plus a random 0..C{maxRequestsJitter}); 0: never.
        @param notifier: systemd notification (default: from the
            environment's C{NOTIFY_SOCKET}).
        @param startsBeforeGivingUp: until some worker is ready, a slot
            started this many times is a program that cannot run as a
            worker: C{onGiveUp(index, exits)} is called (0: never).
        """
        self._reactor = reactor
        self.dispatcher = dispatcher
        self._command = command
        self._onControl = onControl
        self._maxStarts, self._onGiveUp = startsBeforeGivingUp, onGiveUp
        self._slots = [Slot(i + 1) for i in range(count)]
        self._routes: list[Route] = []
        self._timeout = timeout
        self._grace = grace
        self._maxRequests = maxRequests
        self._jitter = maxRequestsJitter
        self.notifier = notifier if notifier is not None else SystemdNotifier(reactor)
        self._retiring: set[Worker] = set()
        self._reloading: set[Worker] = set()
        self._reloadPending = False
        self._started = False
        self._announced = False
        self._stopping = False
        self._ended_d: defer.Deferred[None] | None = None
        self._deadline = 0.0
        self._killer: Any = None
        self._tick: Any = None
        self.killedForTimeout = 0
        self.recycled = 0
        self.reloads = 0
        self.everReady = False

    @property
    def heartbeat(self) -> float:
        """How often an idle worker says it is alive."""
        return heartbeatFor(self._timeout)

    def addRoute(self, route: Route) -> None:
        """Let every worker (now and after restarts) serve C{route}."""
        self._routes.append(route)
        for worker in self._workers():
            if worker.link is not None and worker.state is SERVING:
                self.dispatcher.join(route, worker.link)

    def serveWhenReady(self, link: WorkerLink, route: Route) -> None:
        """
        Let the worker of C{link} serve C{route} (one it asked for: a
        cluster worker's listener) from when it is ready: at once if it is,
        never if it is retiring.
        """
        worker = self._workerOf(link)
        if worker is None or worker.state is RETIRING:
            return
        if route not in worker.routes:
            worker.routes.append(route)
        if worker.state is SERVING and not link.lost:
            self.dispatcher.join(route, link)

    def stopServing(self, link: WorkerLink, route: Route) -> None:
        """
        The worker of C{link} serves C{route} no more (its program stopped
        listening on it); connections already sent to it stay its own.
        """
        worker = self._workerOf(link)
        if worker is not None and route in worker.routes:
            worker.routes.remove(route)
        self.dispatcher.leaveRoute(route, link)

    def slot(self, index: int) -> Slot:
        """Worker number C{index}'s slot (its counts); C{KeyError} if none."""
        for slot in self._slots:
            if slot.index == index:
                return slot
        raise KeyError(index)

    def _workerOf(self, link: WorkerLink) -> Worker | None:
        for worker in self._workers():
            if worker.link is link:
                return worker
        return None

    def _workers(self) -> list[Worker]:
        # Every worker process there is (current, starting and retiring).
        found = [w for slot in self._slots for w in (slot.current, slot.successor) if w is not None]
        return found + list(self._retiring)

    def start(self) -> None:
        """Start every worker, the timeout checks and the systemd watchdog."""
        self._started = True
        for slot in self._slots:
            self._spawn(slot)
        self._tick = self._reactor.callLater(self._tickInterval(), self._check)
        self.notifier.startWatchdog()

    # ------------------------------------------------------------------
    # Starting a worker.

    def _spawn(self, slot: Slot, successor: bool = False) -> Worker | None:
        slot.pending = None
        if self._stopping or slot not in self._slots:
            return None
        if self._onGiveUp and not successor and not self.everReady and 0 < self._maxStarts <= slot.restarts + 1:
            self._reactor.callLater(0, self._onGiveUp, slot.index, slot.restarts)
        parentEnd, childEnd = channelPair()
        if childEnd.fileno() == CHANNEL_FD:
            # dup2 onto itself would keep close-on-exec set.
            moved = childEnd.dup()
            childEnd.close()
            childEnd = moved
        worker = Worker(slot, self._reactor.seconds())
        link = WorkerLink(self.dispatcher, parentEnd, self._reactor, f"worker {slot.index}")
        link.onReady = lambda link: self._ready(worker)
        link.onLimit = lambda link: self._recycle(worker)
        link.onControl = self._onControl
        if self._maxRequests:
            link.limit = self._maxRequests + random.randint(0, self._jitter)
        worker.link = link
        if successor:
            slot.successor = worker
        else:
            slot.current = worker
        try:
            command = self._command(slot.index, self.heartbeat)
            worker.process = spawnWorkerProcess(self._reactor, WorkerProcess(self, worker), childEnd, command, link.sendControl)
        except Exception:
            _log.failure("Could not start worker {index}", index=slot.index)
            link.close()
            if successor:
                slot.successor = None
            else:
                slot.current = None
                self._scheduleRestart(slot)
            return None
        finally:
            childEnd.close()
        worker.pid = worker.process.pid
        link.name = f"worker {slot.index} (pid {worker.pid})"
        _log.info("Started worker {index} (pid {pid})", index=slot.index, pid=worker.pid)
        return worker

    def _ready(self, worker: Worker) -> None:
        slot, link = worker.slot, worker.link
        if self._stopping or worker.state is not STARTING or link is None:
            return
        if worker is slot.successor:
            old, slot.current, slot.successor = slot.current, worker, None
            if old is not None:
                self._retire(old, f"worker {slot.index} (pid {worker.pid}) replaces it")
        elif worker is not slot.current:
            return
        self._enter(worker, SERVING)
        _log.info("Worker {index} (pid {pid}) is ready", index=slot.index, pid=worker.pid)
        self.everReady = True
        for route in self._routes + worker.routes:
            self.dispatcher.join(route, link)
        self._announce()

    def _enter(self, worker: Worker, state: str) -> str:
        # The one place a worker's state changes, with the sets that follow
        # it: a retiring worker is off its slot but the pool's until it
        # ends; a reload's worker counts until it serves, retires or ends.
        previous = worker.enter(state)
        self._reloading.discard(worker)
        if state is RETIRING:
            self._retiring.add(worker)
        elif state is ENDED:
            self._retiring.discard(worker)
        return previous

    def _announce(self) -> None:
        # systemd: ready after start-up (first worker ready) and after a
        # reload (every new worker ready or gone); else the new status.
        if self._reloadPending and not self._reloading:
            self._reloadPending = False
            _log.info("Reload done: {status}", status=self.status())
            self._announced = True
            self.notifier.ready(self.status())
        elif not self._announced:
            self._announced = True
            self.notifier.ready(self.status())
        else:
            self.notifier.status(self.status())

    def status(self) -> str:
        """One line: how many workers serve, start and retire."""
        serving = sum(1 for s in self._slots if s.current is not None and s.current.state is SERVING)
        starting = sum(1 for w in self._workers() if w.state is STARTING)
        return (
            f"{serving} of {len(self._slots)} worker(s) serving, {starting} starting, "
            f"{len(self._retiring)} retiring; {self.dispatcher.accepted} connection(s) accepted"
        )

    # ------------------------------------------------------------------
    # Replacing workers.

    def _retire(self, worker: Worker, why: str) -> None:
        # No new connections for it; it drains within the grace period and
        # exits (or is killed shortly after).
        if worker.state in (RETIRING, ENDED):
            return
        self._enter(worker, RETIRING)
        slot = worker.slot
        if slot.current is worker:
            slot.current = None
        if slot.successor is worker:
            slot.successor = None
        worker.killAt = self._reactor.seconds() + self._grace + _KILL_MARGIN
        _log.info("Retiring {worker}: {why}", worker=worker, why=why)
        link = worker.link
        if link is not None and not link.lost:
            self.dispatcher.leave(link)
            link.sendControl("stop", grace=self._grace)

    def _recycle(self, worker: Worker) -> None:
        """
        C{worker} was given its C{maxRequests}: start its successor and send
        it nothing more (unless it is the only one able to serve until the
        successor is ready - then the dispatcher pauses accepting).
        """
        slot = worker.slot
        if self._stopping or worker is not slot.current or slot.successor is not None:
            return
        assert worker.link is not None
        worker.link.stopAccepting()
        self.recycled += 1
        _log.info(
            "{worker} was given {n} connection(s) (--max-requests): replacing it",
            worker=worker,
            n=worker.link.sent,
        )
        if self._spawn(slot, successor=True) is None:
            worker.link.resumeAccepting()

    def reload(self) -> None:
        """
        Start a fresh worker for every slot (importing the factory anew);
        each old worker retires once its successor is ready.
        """
        if self._stopping or not self._started:
            return
        self.reloads += 1
        self._reloadPending = True
        _log.info("Reloading: starting {n} fresh worker(s)", n=len(self._slots))
        self.notifier.reloading(self.status())
        self._reloading.clear()
        for slot in self._slots:
            if slot.successor is not None:
                # Started before this reload, maybe with the old code.
                self._retire(slot.successor, "a reload supersedes it")
            if slot.current is None:
                self._cancelRestart(slot)
                worker = self._spawn(slot)
            else:
                worker = self._spawn(slot, successor=True)
            if worker is not None:
                self._reloading.add(worker)
        if not self._reloading:
            self._announce()

    def addWorker(self) -> None:
        """One worker more (SIGTTIN)."""
        if self._stopping:
            return
        slot = Slot(max((s.index for s in self._slots), default=0) + 1)
        self._slots.append(slot)
        _log.info("Adding worker {index}: {n} worker(s) now", index=slot.index, n=len(self._slots))
        self._spawn(slot)

    def removeWorker(self) -> None:
        """One worker fewer (SIGTTOU), never below one: the highest-numbered retires."""
        if self._stopping:
            return
        if len(self._slots) <= 1:
            _log.warn("Not removing the last worker (SIGTTOU with one worker left)")
            return
        slot = self._slots.pop()
        self._cancelRestart(slot)
        _log.info("Removing worker {index}: {n} worker(s) now", index=slot.index, n=len(self._slots))
        for worker in (slot.successor, slot.current):
            if worker is not None:
                self._retire(worker, "one worker fewer")
        self.notifier.status(self.status())

    # ------------------------------------------------------------------
    # Hung workers.

    def _tickInterval(self) -> float:  # a tenth of the timeout, within 50 ms..1 s
        return min(max(self._timeout / 10, 0.05), 1.0)

    def _check(self) -> None:
        """
        Kill workers silent for C{timeout} seconds (heartbeats keep idle
        ones alive), and retired ones past their grace period.  Their
        unacknowledged connections go to other workers once they are gone.
        """
        self._tick = None
        now = self._reactor.seconds()
        for worker in self._workers():
            link = worker.link
            if worker.process is None or worker.killed or link is None:
                continue
            if now - link.lastHeard > self._timeout:
                self.killedForTimeout += 1
                _log.error(
                    "{worker} was silent for {silent:.1f} s (--timeout {timeout} s) holding {n} "
                    "unacknowledged connection(s); killing it",
                    worker=worker,
                    silent=now - link.lastHeard,
                    timeout=self._timeout,
                    n=len(link.inflight),
                )
                self._kill(worker)
            elif worker.state is RETIRING and now >= worker.killAt:
                _log.warn("{worker} did not finish within its grace period; killing it", worker=worker)
                self._kill(worker)
        if not self._stopping or self._ended_d is not None:
            self._tick = self._reactor.callLater(self._tickInterval(), self._check)

    def _kill(self, worker: Worker) -> None:
        # SIGKILL: even a stopped worker dies at once; its unacknowledged
        # connections are re-sent once its channel ends (after its last ack).
        worker.killed = True
        if worker.link is not None:
            self.dispatcher.leave(worker.link)
        try:
            worker.process.signalProcess("KILL")
        except Exception:
            pass

    # ------------------------------------------------------------------
    # Ends.

    def workerEnded(self, worker: Worker, reason: Failure) -> None:
        """
        C{worker}'s process ended (its L{WorkerProcess} says so): count,
        log, and restart or not, by the worker's state then (retiring,
        stopping, a successor, the current worker).
        """
        link, worker.process = worker.link, None
        adopted = 0
        if link is not None:
            if not link.lost:
                link.close()  # reads its last acks first; re-sends the rest
            if not worker.counted:
                worker.counted = True
                worker.slot.adopted += link.adopted
            adopted = link.adopted
        value = reason.value
        signal = getattr(value, "signal", None)
        how = f"signal {signal}" if signal else f"status {getattr(value, 'exitCode', getattr(value, 'status', None))}"
        if self._enter(worker, ENDED) is RETIRING:
            _log.info("{worker} exited ({how}) after adopting {n} connection(s)", worker=worker, how=how, n=adopted)
        elif self._stopping:
            _log.info("Worker {index} (pid {pid}) exited ({how})", index=worker.index, pid=worker.pid, how=how)
        elif worker is worker.slot.successor:
            self._successorEnded(worker, how)
        elif worker is worker.slot.current:
            self._currentEnded(worker, how, adopted)
        if not self._stopping:
            self.notifier.status(self.status())
        self._checkEnded()

    def _successorEnded(self, worker: Worker, how: str) -> None:
        """
        A successor died before it was ready: the current worker (if any)
        serves on; an empty slot is restarted.
        """
        slot = worker.slot
        slot.successor = None
        current = slot.current
        if current is None and slot in self._slots:
            # The current worker died counting on this successor: the slot
            # would stay empty for good without a restart.
            slot.failures += 1
            serving = f"nobody; restarting it in {self._scheduleRestart(slot):.2f} s"
        else:
            serving = f"{current} keeps serving" if current is not None else "nobody keeps serving"
        _log.error("New {worker} exited ({how}) before it was ready; {serving}", worker=worker, how=how, serving=serving)
        if current is not None and current.link is not None and current.state is not RETIRING:
            current.link.resumeAccepting()
        self.dispatcher.wake()
        if self._reloadPending and not self._reloading:
            self._announce()

    def _currentEnded(self, worker: Worker, how: str, adopted: int) -> None:
        """
        The serving worker died: restart it with backoff, unless its
        successor is already starting.
        """
        slot = worker.slot
        slot.current = None
        lived = self._reactor.seconds() - worker.startedAt
        slot.failures = 1 if lived >= _STABLE_SECONDS else slot.failures + 1
        restart = "its successor is starting" if slot.successor else f"restarting it in {self._scheduleRestart(slot):.2f} s"
        _log.warn(
            "Worker {index} (pid {pid}) died ({how}) after {lived:.1f} s, having adopted {adopted} connection(s); {restart}",
            index=worker.index,
            pid=worker.pid,
            how=how,
            lived=lived,
            adopted=adopted,
            restart=restart,
        )

    def _scheduleRestart(self, slot: Slot) -> float:
        delay: float = min(_FIRST_DELAY * 2.0 ** max(slot.failures - 1, 0), _MAX_DELAY)
        slot.restarts += 1
        slot.pending = self._reactor.callLater(delay, self._spawn, slot)
        return delay

    def _cancelRestart(self, slot: Slot) -> None:
        if slot.pending is not None and slot.pending.active():
            slot.pending.cancel()
        slot.pending = None

    # ------------------------------------------------------------------
    # Stopping.

    def stop(self, grace: float) -> defer.Deferred[None]:
        """
        Stop: tell every worker to finish its connections within C{grace}
        seconds and exit; kill those that do not.  Connections the parent
        still holds go to the workers first.

        @return: a Deferred that fires when every worker has exited.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._ended_d = d
        self._deadline = self._reactor.seconds() + grace
        self.notifier.stopping(self.status())
        if not self.dispatcher.held:
            self._tellWorkers()
            return d
        _log.info("Handing {n} held connection(s) to workers before stopping", n=len(self.dispatcher.held))
        giveUp = self._reactor.callLater(grace, self._giveUp)

        def idle() -> None:
            if giveUp.active():
                giveUp.cancel()
                self._tellWorkers()

        self.dispatcher.whenIdle(idle)
        return d

    def _remaining(self) -> float:
        return max(self._deadline - float(self._reactor.seconds()), 0.0)

    def _tellWorkers(self) -> None:
        """
        Cancel pending restarts, send every worker C{stop} with what is left
        of the grace period, and arrange to kill those still there after it.
        """
        self._stopping = True
        for slot in self._slots:
            self._cancelRestart(slot)
        told = 0
        for worker in self._workers():
            if worker.link is not None and not worker.link.lost:
                worker.link.sendControl("stop", grace=self._remaining())
                told += 1
        _log.info("Told {n} worker(s) to finish their connections within {grace:.1f} s", n=told, grace=self._remaining())
        self._killer = self._reactor.callLater(self._remaining() + _KILL_MARGIN, self._killAll)
        self._checkEnded()

    def _giveUp(self) -> None:  # the grace period ended with connections held
        lost = self.dispatcher.dropAll("the grace period ended before a worker adopted it")
        _log.error("{n} held connection(s) closed unserved at the end of the grace period", n=lost)
        self._tellWorkers()

    def _killAll(self) -> None:
        for worker in self._workers():
            if worker.process is not None:
                _log.warn("{worker} did not exit in time; killing it", worker=worker)
                try:
                    worker.process.signalProcess("KILL")
                except Exception:
                    pass

    def _checkEnded(self) -> None:
        if self._ended_d is None or not self._stopping:
            return
        if any(worker.process is not None for worker in self._workers()):
            return
        for call in (self._killer, self._tick):
            if call is not None and call.active():
                call.cancel()
        self._tick = None
        for slot in self._slots:
            _log.info(
                "Worker {index}: {n} connection(s) adopted, {r} restart(s)",
                index=slot.index,
                n=slot.adopted,
                r=slot.restarts,
            )
        dispatcher = self.dispatcher
        _log.info(
            "Connections: {accepted} accepted, {adopted} adopted by workers, {redispatched} re-sent "
            "after a worker died, {dropped} closed unserved; workers: {killed} killed for timeout, "
            "{recycled} recycled (--max-requests), {reloads} reload(s); accepting paused {pauses} time(s)",
            accepted=dispatcher.accepted,
            adopted=dispatcher.adopted,
            redispatched=dispatcher.redispatched,
            dropped=dispatcher.dropped,
            killed=self.killedForTimeout,
            recycled=self.recycled,
            reloads=self.reloads,
            pauses=dispatcher.pauses,
        )
        d, self._ended_d = self._ended_d, None
        d.callback(None)
