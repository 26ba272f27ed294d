# -*- test-case-name: tests.test_reaper -*-
"""
Reaping orphans when this process is PID 1 (a container without an init).

Every process whose parent exits is re-parented to PID 1, and stays a
zombie - a process table entry, a PID - until PID 1 waits for it.  Twisted
waits only for the processes it spawned itself, so a primary that is PID 1
would collect the zombies of whatever its workers' programs left behind (a
daemonised helper, a double-forked subprocess).  L{OrphanReaper} waits for
those, as tini or dumb-init would, and leaves alone the children someone
here waits for:

 - Twisted's own (L{twistedsChildren}): Twisted reaps them, with
   their exit status, for their C{processEnded};
 - a child another waiter may still want (C{subprocess.Popen.wait()}): a
   zombie is reaped only once it has been one for a whole period
   (L{PERIOD}), time enough for a waiter that is waiting to take it.
"""

from __future__ import annotations

import os
from typing import Callable, Collection

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ._twistedcompat import twistedsChildren

__all__ = ["OrphanReaper", "PERIOD"]

_log = Logger()

#: Seconds between looks for zombies.
PERIOD = 1.0


def _peek() -> int | None:
    """The PID of one zombie child, left a zombie; None if there is none."""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return None if info is None else info.si_pid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class OrphanReaper:
    """
    Reap, every L{PERIOD} seconds, the zombie children nobody here waits for.

    @ivar reaped: how many it reaped.
    """

    def __init__(
        self,
        clock: IReactorTime,
        peek: Callable[[], int | None] = _peek,
        reap: Callable[[int], None] = _reap,
        waitedFor: Callable[[], Collection[int]] = twistedsChildren,
    ) -> None:
        """
        @param peek: one zombie child's PID, without reaping it (tests give
            their own, as they give C{reap} and C{waitedFor}).
        @param waitedFor: the PIDs Twisted reaps itself.
        """
        self._peek, self._reap, self._waitedFor = peek, reap, waitedFor
        self._seen: set[int] = set()
        self.reaped = 0
        self._loop = LoopingCall(self._look)
        self._loop.clock = clock

    def start(self) -> None:
        """Look every L{PERIOD} seconds until L{stop}."""
        self._loop.start(PERIOD, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _look(self) -> None:
        # waitid(WNOWAIT) shows one zombie at a time, the same one until it
        # is reaped: one that is Twisted's, or not yet old enough, ends the
        # look (the others wait for the next one).
        seen, self._seen = self._seen, set()
        while True:
            pid = self._peek()
            if pid is None or pid in self._waitedFor():
                return
            if pid not in seen:
                self._seen.add(pid)
                return
            self._reap(pid)
            self.reaped += 1
            _log.debug("Reaped orphan process {pid}", pid=pid)
