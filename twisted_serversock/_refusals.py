# -*- test-case-name: tests.test_refusals -*-
"""
The log of connections refused by C{allowedUids}, with bounded memory and a
bounded rate.

A peer that is not allowed can connect as fast as it likes, each time from
a new process if it likes.  Remembering every C{(pid, uid)} to log each
once grew without bound and still logged one line per process.  Instead:
the first refusal after a quiet interval is logged at once (with its pid
and uid, which is what one needs to find the culprit); the ones that follow
within L{RefusalLog.interval} seconds are only counted, per uid for at
most L{RefusalLog.maxUids} uids, and summed up in one line at the end of
the interval (or when the server socket closes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from ._types import Address

__all__ = ["RefusalLog"]

_log = Logger()


class RefusalLog:
    """
    Rate-limited warnings about refused peers of one server socket.

    @cvar interval: seconds covered by one summary line.
    @cvar maxUids: how many distinct uids an interval counts one by one;
        the rest are counted together.
    @ivar _count: refusals counted (not yet logged) in this interval.
    @ivar _byUid: how many of them per uid (at most L{maxUids} keys).
    @ivar _otherUids: how many came from uids beyond L{maxUids}.
    @ivar _timer: the end of the current interval, or C{None} when quiet.
    """

    interval = 10.0
    maxUids = 16

    def __init__(self, reactor: IReactorTime, address: Address) -> None:
        self._reactor = reactor
        self._address = address
        self._count = 0
        self._byUid: dict[int, int] = {}
        self._otherUids = 0
        self._timer: IDelayedCall | None = None

    def refused(self, pid: int, uid: int) -> None:
        """
        A connection from C{pid}, C{uid} was refused.
        """
        if self._timer is None:
            _log.warn(
                "Refused a connection to {address} from pid {pid}, uid {uid}: uid not allowed"
                " (more within {interval:g} s are counted, and summed up in one line)",
                address=self._address,
                pid=pid,
                uid=uid,
                interval=self.interval,
            )
            self._timer = self._reactor.callLater(self.interval, self._intervalOver)
            return
        self._count += 1
        if uid in self._byUid or len(self._byUid) < self.maxUids:
            self._byUid[uid] = self._byUid.get(uid, 0) + 1
        else:
            self._otherUids += 1

    def _intervalOver(self) -> None:
        self._timer = None
        if self._count:
            self._summarise()
            # Keep counting: a steady stream gets one line per interval.
            self._timer = self._reactor.callLater(self.interval, self._intervalOver)

    def stop(self) -> None:
        """
        The server socket closed: log what was counted, leave no timer.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._count:
            self._summarise()

    def _summarise(self) -> None:
        parts = [f"uid {uid}: {n}" for uid, n in sorted(self._byUid.items())]
        if self._otherUids:
            parts.append(f"other uids: {self._otherUids}")
        _log.warn(
            "Refused {count} more connection(s) to {address} (uids not allowed; {detail})",
            count=self._count,
            address=self._address,
            detail=", ".join(parts),
            byUid=dict(self._byUid),
            otherUids=self._otherUids,
        )
        self._count = 0
        self._byUid = {}
        self._otherUids = 0
