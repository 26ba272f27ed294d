# -*- test-case-name: tests.test_tap -*-
"""
L{WorkerPool}: the worker processes of C{twistd serversock}, each with a
channel to the parent, restarted with backoff when they die.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .parent import Dispatcher, Route, WorkerLink
from .wire import Control, channelPair

__all__ = ["WorkerPool", "CHANNEL_FD"]

_log = Logger()

#: A worker that lived at least this long before dying is restarted after
#: the shortest delay.
_STABLE_SECONDS = 5.0
_FIRST_DELAY = 0.1
_MAX_DELAY = 10.0
_CHANNEL_FD = 3
#: The descriptor a worker's channel has in the worker.
CHANNEL_FD = _CHANNEL_FD


class _WorkerProcess(ProcessProtocol):
    """
    One worker process: relays its stderr into the parent's log and reports
    its end to the pool.
    """

    def __init__(self, pool: WorkerPool, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        text = line.decode("utf-8", "backslashreplace").rstrip()
        if text:
            _log.info("[worker {index} pid {pid}] {line}", index=self._slot.index, pid=self._slot.pid, line=text)

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._relay(self._partial)
            self._partial = b""
        self._pool._ended(self._slot, reason)


class _Slot:
    """
    The state of worker number C{index} across its restarts.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.link: WorkerLink | None = None
        self.process: Any = None
        self.startedAt = 0.0
        self.failures = 0
        self.restarts = 0
        self.adopted = 0
        self.pending: Any = None


class WorkerPool:
    """
    C{count} worker processes running the protocol factory C{factoryName},
    serving the pool's routes.

    @ivar dispatcher: where accepted connections go.

    @param onControl: called with C{(link, message)} for each control
        message of a worker that the link does not handle itself (cluster
        mode's messages).
    """

    def __init__(
        self,
        reactor: Any,
        dispatcher: Dispatcher,
        factoryName: str,
        count: int,
        onControl: Callable[[WorkerLink, Control], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self.dispatcher = dispatcher
        self._factoryName = factoryName
        self._onControl = onControl
        self._slots = [_Slot(i + 1) for i in range(count)]
        self._routes: list[Route] = []
        self._stopping = False
        self._ended_d: defer.Deferred[None] | None = None
        self._deadline = 0.0
        self._killer: Any = None

    def addRoute(self, route: Route) -> None:
        """
        Let every worker (now and after restarts) serve C{route}.
        """
        self._routes.append(route)
        for slot in self._slots:
            if slot.link is not None and slot.link.ready:
                self.dispatcher.join(route, slot.link)

    def start(self) -> None:
        """
        Start every worker.
        """
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.pending = None
        if self._stopping:
            return
        parentEnd, childEnd = channelPair()
        if childEnd.fileno() == _CHANNEL_FD:
            # dup2 onto itself would keep close-on-exec set.
            moved = childEnd.dup()
            childEnd.close()
            childEnd = moved
        link = WorkerLink(self.dispatcher, parentEnd, self._reactor, f"worker {slot.index}")
        link.onReady = lambda link: self._ready(slot, link)
        link.onControl = self._onControl
        slot.link = link
        slot.startedAt = time.monotonic()
        try:
            slot.process = self.spawnWorker(_WorkerProcess(self, slot), childEnd, slot.index)
        except Exception:
            _log.failure("Could not start worker {index}", index=slot.index)
            link.close()
            slot.link = None
            self._scheduleRestart(slot)
            return
        finally:
            childEnd.close()
        slot.pid = slot.process.pid
        link.name = f"worker {slot.index} (pid {slot.pid})"
        _log.info("Started worker {index} (pid {pid})", index=slot.index, pid=slot.pid)

    def spawnWorker(self, processProtocol: ProcessProtocol, channel: socket.socket, index: int) -> Any:
        """
        Start one worker process with its end of the channel, C{channel},
        as descriptor 3 (the caller closes C{channel} afterwards).  Override
        this to start workers another way (cluster mode runs the program
        itself again).

        @return: the C{IProcessTransport}.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
        argv = [
            sys.executable,
            "-m",
            "twisted_serversock.ipc.worker",
            "--channel-fd",
            str(_CHANNEL_FD),
            "--factory",
            self._factoryName,
            "--index",
            str(index),
        ]
        return self._reactor.spawnProcess(
            processProtocol,
            sys.executable,
            argv,
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", _CHANNEL_FD: channel.fileno()},
        )

    def _ready(self, slot: _Slot, link: WorkerLink) -> None:
        if slot.link is not link or self._stopping:
            return
        _log.info("Worker {index} (pid {pid}) is ready", index=slot.index, pid=slot.pid)
        for route in self._routes:
            self.dispatcher.join(route, link)

    def _ended(self, slot: _Slot, reason: Failure) -> None:
        link, slot.link, slot.process = slot.link, None, None
        if link is not None:
            slot.adopted += link.adopted
            if not link.lost:
                link.close()
        status = getattr(reason.value, "status", None)
        signal = getattr(reason.value, "signal", None)
        how = f"signal {signal}" if signal else f"status {getattr(reason.value, 'exitCode', status)}"
        if self._stopping:
            _log.info("Worker {index} (pid {pid}) exited ({how})", index=slot.index, pid=slot.pid, how=how)
            self._checkEnded()
            return
        lived = time.monotonic() - slot.startedAt
        slot.failures = 1 if lived >= _STABLE_SECONDS else slot.failures + 1
        delay = self._scheduleRestart(slot)
        _log.warn(
            "Worker {index} (pid {pid}) died ({how}) after {lived:.1f} s, having adopted {adopted} "
            "connection(s); restarting it in {delay:.2f} s",
            index=slot.index,
            pid=slot.pid,
            how=how,
            lived=lived,
            adopted=link.adopted if link is not None else 0,
            delay=delay,
        )

    def _scheduleRestart(self, slot: _Slot) -> float:
        delay = min(_FIRST_DELAY * 2 ** max(slot.failures - 1, 0), _MAX_DELAY)
        slot.restarts += 1
        slot.pending = self._reactor.callLater(delay, self._spawn, slot)
        return delay

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
        self._deadline = time.monotonic() + grace
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
        return max(self._deadline - time.monotonic(), 0.0)

    def _tellWorkers(self) -> None:
        """
        Cancel pending restarts, send every worker C{stop} with what is left
        of the grace period, and arrange to kill those still there after it.
        """
        self._stopping = True
        for slot in self._slots:
            if slot.pending is not None and slot.pending.active():
                slot.pending.cancel()
            slot.pending = None
            if slot.link is not None and not slot.link.lost:
                slot.link.sendControl("stop", grace=self._remaining())
        self._killer = self._reactor.callLater(self._remaining() + 2.0, self._kill)
        self._checkEnded()

    def _giveUp(self) -> None:
        lost = self.dispatcher.dropAll("the grace period ended before a worker adopted it")
        _log.error("{n} held connection(s) closed unserved at the end of the grace period", n=lost)
        self._tellWorkers()

    def _kill(self) -> None:
        for slot in self._slots:
            if slot.process is not None:
                _log.warn("Worker {index} (pid {pid}) did not exit in time; killing it", index=slot.index, pid=slot.pid)
                try:
                    slot.process.signalProcess("KILL")
                except Exception:
                    pass

    def _checkEnded(self) -> None:
        if self._ended_d is None or not self._stopping:
            return
        if any(slot.process is not None for slot in self._slots):
            return
        if self._killer is not None and self._killer.active():
            self._killer.cancel()
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
            "after a worker died, {dropped} closed unserved",
            accepted=dispatcher.accepted,
            adopted=dispatcher.adopted,
            redispatched=dispatcher.redispatched,
            dropped=dispatcher.dropped,
        )
        d, self._ended_d = self._ended_d, None
        d.callback(None)

    def adoptedCounts(self) -> dict[int, int]:
        """
        Connections adopted so far, by worker number.
        """
        return {
            slot.index: slot.adopted + (slot.link.adopted if slot.link is not None else 0)
            for slot in self._slots
        }
