# -*- test-case-name: tests.test_pool_units -*-
"""
L{WorkerPool}: the worker processes of C{twistd serversock} (and of cluster
mode), each with a channel to the parent: restarted with backoff when they
die, killed and replaced when silent for C{timeout} seconds, replaced
gracefully on L{reload<WorkerPool.reload>} or after C{maxRequests}
connections, grown and shrunk one at a time.

A worker number (a I{slot}) has one worker and, while it is being replaced,
a successor: the successor gets connections once it says it is ready, and
only then is the older one I{retired} - it gets no new connections,
finishes its open ones within the grace period and exits.  So a reload
refuses and drops nothing, and a broken new version (a successor that dies
before it is ready) leaves the old worker serving.  Which worker is which
is read off their states (see L{Workers}).
"""

from __future__ import annotations

import random
import socket
from collections import Counter
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .channel import channelPair
from .dispatch import Dispatcher, Route
from .parent import WorkerLink
from .sdnotify import SystemdNotifier
from .slots import ENDED, KILL_MARGIN, RETIRING, SERVING, STARTING, Restarts, Shutdown, Slot, Worker, Workers, killHung
from .spawn import CHANNEL_FD, GRACE, TIMEOUT, WorkerCommand, heartbeatFor, spawnWorkerProcess
from .wire import Control

__all__ = ["WorkerPool", "CHANNEL_FD"]

_log = Logger()


def _channel() -> tuple[socket.socket, socket.socket]:
    parentEnd, childEnd = channelPair()
    if childEnd.fileno() == CHANNEL_FD:
        # dup2 onto itself would keep close-on-exec set.
        moved = childEnd.dup()
        childEnd.close()
        childEnd = moved
    return parentEnd, childEnd


class WorkerPool:
    """
    C{count} worker processes, each started with C{command} (the same
    spawn for C{twistd serversock} and cluster mode: only the command
    differs), serving the pool's routes.

    @ivar dispatcher: where accepted connections go.
    @ivar heartbeat: how often an idle worker says it is alive.
    @ivar killedForTimeout: workers killed for being silent C{timeout} seconds.
    @ivar recycled: workers replaced after C{maxRequests} connections.
    @ivar reloads: reloads begun: the generation of the workers started
        since the latest.
    @ivar everReady: whether some worker has said it is ready.
    """

    def __init__(
        self, reactor: Any, dispatcher: Dispatcher, command: WorkerCommand, count: int, timeout: float = TIMEOUT, grace: float = GRACE,
        maxRequests: int = 0, maxRequestsJitter: int = 0, notifier: SystemdNotifier | None = None,
        onControl: Callable[[WorkerLink, Control], bool] | None = None, startsBeforeGivingUp: int = 0,
        onGiveUp: Callable[[int, int], None] | None = None,
    ) -> None:  # fmt: skip
        """
        @param timeout: seconds of silence (no heartbeat, no ack) after
            which a worker is killed and replaced.
        @param grace: seconds a retired worker gets to finish its connections.
        @param maxRequests: replace a worker after it was given this many
            connections (plus a random 0..C{maxRequestsJitter}); 0: never.
        @param notifier: systemd's (default: from C{NOTIFY_SOCKET}).
        @param onControl: called with C{(link, message)} for each control
            message its link does not handle itself (cluster mode's);
            returns whether it handled it.
        @param startsBeforeGivingUp: until some worker is ready, a slot
            started this many times is a program that cannot run as a
            worker: C{onGiveUp(index, exits)} is called (0: never).
        """
        self._reactor, self.dispatcher, self._command, self._onControl = reactor, dispatcher, command, onControl
        self._workers = Workers(count)
        self._routes: list[Route] = []
        self._timeout, self._grace, self.heartbeat = timeout, grace, heartbeatFor(timeout)
        self._maxRequests, self._jitter = maxRequests, maxRequestsJitter
        self._notifier = notifier if notifier is not None else SystemdNotifier(reactor)
        self._restarts = Restarts(reactor, self._workers.slots, self._spawn, startsBeforeGivingUp, onGiveUp)
        self._shutdown = Shutdown(reactor, dispatcher, self._workers.live, self._restarts.cancelAll)
        self._hung = LoopingCall(self._killHung)
        self._hung.clock = reactor
        self._toldReady = -1  # the generation systemd was last told READY for
        self.killedForTimeout = self.recycled = self.reloads = self.starts = 0
        #: Workers that ended, by why (L{EXIT_REASONS<twisted_serversock.ipc.slots.EXIT_REASONS>}).
        self.exits: Counter[str] = Counter()
        #: Connections adopted by each worker number's ended workers (kept after L{removeWorker}).
        self.adoptedBy: Counter[int] = Counter()
        self.everReady = self._started = False

    def addRoute(self, route: Route) -> None:
        """Let every worker (now and after restarts) serve C{route}."""
        self._routes.append(route)
        for worker in self._workers.live:
            if worker.state is SERVING:
                self.dispatcher.join(route, worker.link)

    def serveWhenReady(self, link: WorkerLink, route: Route) -> None:
        """
        Let the worker of C{link} serve C{route} (a cluster worker's listener)
        from when it is ready: at once if it is, never if it is retiring.
        """
        worker = self._workers.of(link)
        if worker is None or worker.state is RETIRING:
            return
        if route not in worker.routes:
            worker.routes.append(route)
        if worker.state is SERVING and not link.lost:
            self.dispatcher.join(route, link)

    def stopServing(self, link: WorkerLink, route: Route) -> None:
        """The worker of C{link} serves C{route} no more; connections already sent to it stay its own."""
        worker = self._workers.of(link)
        if worker is not None and route in worker.routes:
            worker.routes.remove(route)
        self.dispatcher.leaveRoute(route, link)

    def start(self) -> None:
        """Start every worker, the timeout checks and the systemd watchdog."""
        self._started = True
        for slot in self._workers.slots:
            self._spawn(slot)
        # A tick: a tenth of the timeout, within 50 ms..1 s.
        self._hung.start(min(max(self._timeout / 10, 0.05), 1.0), now=False)
        self._notifier.startWatchdog()

    def _spawn(self, slot: Slot, cause: str = "start") -> Worker | None:
        if self._shutdown.stopping or slot not in self._workers.slots:
            return None
        alone = not self._workers.inSlot(slot)
        if alone and not self.everReady:
            self._restarts.untried(slot)
        parentEnd, childEnd = _channel()
        link = WorkerLink(self.dispatcher, parentEnd, self._reactor, f"worker {slot.index}")
        worker = Worker(slot, link, self._reactor.seconds(), self.reloads, self.workerEnded, self._reactor)
        worker.cause = cause
        link.onReady = lambda link: self._ready(worker)
        link.onLimit = lambda link: self._recycle(worker)
        link.onControl = self._onControl
        if self._maxRequests:
            link.limit = self._maxRequests + random.randint(0, self._jitter)
        try:
            command = self._command(slot.index, self.heartbeat)
            worker.process = spawnWorkerProcess(self._reactor, worker, childEnd, command, link.channel.send)
        except Exception:
            _log.failure("Could not start worker {index}", index=slot.index)
            link.close()
            if alone:
                self._restarts.schedule(slot)
            return None
        finally:
            childEnd.close()
        self._workers.live.append(worker)
        self.starts += 1
        worker.pid = worker.process.pid
        link.name = f"worker {slot.index} (pid {worker.pid})"
        _log.info("Started worker {index} (pid {pid})", index=slot.index, pid=worker.pid)
        return worker

    def _ready(self, worker: Worker) -> None:
        # A worker of the slot that is ready replaces every older one.
        if self._shutdown.stopping or worker.state is not STARTING:
            return
        for older in self._workers.inSlot(worker.slot):
            if older is worker:
                break
            self._retire(older, f"{worker} replaces it", worker.cause)
        self._workers.enter(worker, SERVING)
        _log.info("Worker {index} (pid {pid}) is ready", index=worker.index, pid=worker.pid)
        self.everReady = True
        for route in self._routes + worker.routes:
            self.dispatcher.join(route, worker.link)
        self._announce()

    def _announce(self) -> None:
        # systemd hears READY once the first worker is ready and, after a
        # reload, again once the reload is done (none of its workers still
        # starting, no slot waiting for a restart); else the status line.
        if self._shutdown.stopping:
            return
        status = self.status()
        if self._toldReady < 0 and self.everReady:
            self._toldReady = 0
            self._notifier.ready(status)
        elif 0 <= self._toldReady < self.reloads and not self._workers.starting(self.reloads):
            self._toldReady = self.reloads
            _log.info("Reload done: {status}", status=status)
            self._notifier.ready(status)
        else:
            self._notifier.status(status)

    def _killHung(self) -> None:
        # An error must not end the checks (a LoopingCall stops for good).
        try:
            self.killedForTimeout += killHung(self._reactor.seconds(), self._timeout, self._workers.live, self.dispatcher)
        except Exception:
            _log.failure("Could not check for hung workers")

    def slot(self, index: int) -> Slot:
        """Worker number C{index}'s slot (its counts); C{KeyError} if none."""
        return {slot.index: slot for slot in self._workers.slots}[index]

    @property
    def workers(self) -> Workers:
        """Its slots and live worker processes, to read (L{twisted_serversock.control})."""
        return self._workers

    def status(self) -> str:
        """One line: how many workers serve, start and retire."""
        count = Counter(worker.state for worker in self._workers.live)
        workers = f"{count[SERVING]} of {len(self._workers.slots)} worker(s) serving, {count[STARTING]} starting, {count[RETIRING]} retiring"
        return f"{workers}; {self.dispatcher.accepted} connection(s) accepted"

    def _retire(self, worker: Worker, why: str, reason: str) -> None:
        # No new connections for it; it drains within the grace period and
        # exits (or is killed shortly after).
        if worker.state in (RETIRING, ENDED):
            return
        self._workers.enter(worker, RETIRING)
        worker.exitReason = worker.exitReason or reason
        worker.killAt = self._reactor.seconds() + self._grace + KILL_MARGIN
        _log.info("Retiring {worker}: {why}", worker=worker, why=why)
        if not worker.link.lost:
            self.dispatcher.leave(worker.link)
            worker.link.sendControl("stop", grace=self._grace)

    def _recycle(self, worker: Worker) -> None:
        # It was given its maxRequests: it gets nothing more while its
        # successor starts (the dispatcher pauses accepting if it was the
        # only one able to serve).
        if self._shutdown.stopping or self._workers.inSlot(worker.slot) != [worker]:
            return
        worker.link.stopAccepting()
        self.recycled += 1
        _log.info("{worker} was given {n} connection(s) (--max-requests): replacing it", worker=worker, n=worker.link.sent)
        if self._spawn(worker.slot, "max-requests") is None:
            worker.link.resumeAccepting()

    def reload(self) -> None:
        """A fresh worker for every slot (importing the factory anew); each old one retires once its successor is ready."""
        if self._shutdown.stopping or not self._started:
            return
        self.reloads += 1
        _log.info("Reloading: starting {n} fresh worker(s)", n=len(self._workers.slots))
        self._notifier.reloading(self.status())
        for slot in self._workers.slots:
            for successor in self._workers.inSlot(slot)[1:]:
                # Started before this reload, maybe with the old code.
                self._retire(successor, "a reload supersedes it", "reload")
            self._restarts.cancel(slot)
            self._spawn(slot, "reload")
        self._announce()

    def addWorker(self) -> None:
        """One worker more (SIGTTIN)."""
        if self._shutdown.stopping:
            return
        slot = Slot(max((s.index for s in self._workers.slots), default=0) + 1)
        self._workers.slots.append(slot)
        _log.info("Adding worker {index}: {n} worker(s) now", index=slot.index, n=len(self._workers.slots))
        self._spawn(slot)

    def removeWorker(self) -> None:
        """One worker fewer (SIGTTOU), never below one: the highest-numbered retires."""
        if self._shutdown.stopping:
            return
        if len(self._workers.slots) <= 1:
            _log.warn("Not removing the last worker (SIGTTOU with one worker left)")
            return
        slot = self._workers.slots.pop()
        self._restarts.cancel(slot)
        _log.info("Removing worker {index}: {n} worker(s) now", index=slot.index, n=len(self._workers.slots))
        for worker in reversed(self._workers.inSlot(slot)):
            self._retire(worker, "one worker fewer", "scale")
        self._notifier.status(self.status())

    def workerEnded(self, worker: Worker, reason: Failure) -> None:
        """C{worker}'s process ended: log it by the state it left; a slot it leaves empty starts again."""
        link, worker.process = worker.link, None
        if not link.lost:
            link.close()  # reads its last acks first; re-sends the rest
        worker.slot.adopted += link.adopted
        self.adoptedBy[worker.index] += link.adopted
        ended: Any = reason.value  # ProcessDone or ProcessTerminated
        how = f"signal {ended.signal}" if ended.signal else f"status {ended.exitCode}"
        previous = self._workers.enter(worker, ENDED)
        self.exits[worker.exitReason or ("stop" if self._shutdown.stopping else "crash")] += 1
        if previous is RETIRING or self._shutdown.stopping:
            _log.info("{worker} exited ({how}) after adopting {n} connection(s)", worker=worker, how=how, n=link.adopted)
        else:
            self._lost(worker, previous, how, link.adopted)
        self._announce()
        self._shutdown.check()

    def _lost(self, worker: Worker, previous: str, how: str, adopted: int) -> None:
        # A starting or serving worker died: whoever is left in its slot
        # serves on; an empty slot starts again with backoff.
        slot = worker.slot
        left = self._workers.inSlot(slot)
        lived = self._reactor.seconds() - worker.startedAt
        if left and left[0].state is SERVING:
            then = f"{left[0]} keeps serving"
            left[0].link.resumeAccepting()  # it may have been recycled
        elif left:
            then = "its successor is starting" if left[0].startedAt >= worker.startedAt else f"{left[0]} is starting"
        else:  # (a removed slot's workers were retiring)
            self._restarts.died(slot, lived)
            then = f"nobody serves it; restarting it in {self._restarts.schedule(slot):.2f} s"
        if previous is STARTING:
            _log.error("New {worker} exited ({how}) before it was ready; {then}", worker=worker, how=how, then=then)
        else:
            died = "Worker {i} (pid {pid}) died ({how}) after {lived:.1f} s, having adopted {n} connection(s); {then}"
            _log.warn(died, i=worker.index, pid=worker.pid, how=how, lived=lived, n=adopted, then=then)
        self.dispatcher.wake()

    def stop(self, grace: float) -> defer.Deferred[None]:
        """
        Tell every worker, once the connections the parent holds went to
        workers, to finish within C{grace} seconds; kill those that do not.

        @return: a Deferred that fires when every worker has exited.
        """
        self._notifier.stopping(self.status())
        return self._shutdown.begin(grace).addCallback(self._ended)

    def _ended(self, _: None) -> None:
        if self._hung.running:
            self._hung.stop()
        for slot in self._workers.slots:
            _log.info("Worker {index}: {n} connection(s) adopted, {r} restart(s)", index=slot.index, n=slot.adopted, r=slot.restarts)
        counts = {name: getattr(self.dispatcher, name) for name in ("accepted", "adopted", "redispatched", "dropped", "pauses")}
        _log.info(
            "Connections: {accepted} accepted, {adopted} adopted by workers, {redispatched} re-sent "
            "after a worker died, {dropped} closed unserved; workers: {killed} killed for timeout, "
            "{recycled} recycled (--max-requests), {reloads} reload(s); accepting paused {pauses} time(s)",
            killed=self.killedForTimeout, recycled=self.recycled, reloads=self.reloads, **counts,
        )
