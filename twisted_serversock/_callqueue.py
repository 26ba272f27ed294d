"""
One FIFO of deferred calls, drained by one scheduled reactor call.

Several C{reactor.callLater(0, ...)} calls are not guaranteed to run in the
order they were made (the timed-call heap orders by time only), yet Gecko
promises listeners their callbacks in order.  A server socket therefore
owns one L{CallQueue}; everything it and its connections must report "later"
goes through it.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()


class CallQueue:
    """
    Run calls later, in the order they were queued, from the reactor.

    @ivar _calls: the pending C{(function, args)} pairs.
    @ivar _scheduled: the delayed call that will drain the queue, if one
        is scheduled.
    """

    __slots__ = ("_reactor", "_calls", "_scheduled")

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._calls: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._scheduled: IDelayedCall | None = None

    def call(self, function: Callable[..., object], *args: object) -> None:
        """
        Queue C{function(*args)}; it runs in a later reactor turn, after every
        call queued before it.  An exception it raises is logged.
        """
        self._calls.append((function, args))
        if self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._drain)

    def flush(self) -> None:
        """
        Run every queued call now, in order, and cancel the scheduled drain.

        For a reactor that is shutting down: it will not run the drain, and
        a delayed call must not outlive it.
        """
        while self._calls:
            self._run(*self._calls.popleft())
        # After the loop: a call it ran may have queued another, and so
        # scheduled a drain the loop then ran the call of.
        scheduled, self._scheduled = self._scheduled, None
        if scheduled is not None and scheduled.active():
            scheduled.cancel()

    def _run(self, function: Callable[..., object], args: tuple[object, ...]) -> None:
        try:
            function(*args)
        except Exception:
            _log.failure("Unhandled error in callback {function!r}", function=function)

    def _drain(self) -> None:
        # Run only what was queued before this turn: calls queued by these
        # callbacks wait for the next turn, so a callback that keeps queueing
        # cannot starve the reactor.
        self._scheduled = None
        calls = self._calls
        for _ in range(len(calls)):
            self._run(*calls.popleft())
        if calls and self._scheduled is None:
            self._scheduled = self._reactor.callLater(0, self._drain)
