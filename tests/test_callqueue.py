"""
L{CallQueue} on the real reactor: calls run in order, and L{flush} leaves
no delayed call behind (a reactor shutting down would never run it).
"""

from __future__ import annotations

from twisted_serversock._callqueue import CallQueue

from .conftest import theReactor


def _drains(queue: CallQueue) -> list[object]:
    """
    The reactor's pending delayed calls that would drain C{queue}.
    """
    return [call for call in theReactor().getDelayedCalls() if getattr(call.func, "__self__", None) is queue]


def test_flushRunsCallsQueuedByCallsAndLeavesNoDelayedCall() -> None:
    """
    A call run by L{CallQueue.flush} that queues another: both run, in
    order, and no drain stays scheduled on the reactor.
    """
    queue = CallQueue(theReactor())
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        queue.call(ran.append, "queued by first")

    queue.call(first)
    queue.call(ran.append, "second")
    assert len(_drains(queue)) == 1
    try:
        queue.flush()
        assert ran == ["first", "second", "queued by first"]
        assert _drains(queue) == []
    finally:
        for call in _drains(queue):
            call.cancel()  # type: ignore[attr-defined]
