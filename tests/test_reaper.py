"""
The orphan reaper of a primary that is PID 1: it reaps zombies nobody
waits for, after they stayed zombies for a whole period, and never one
Twisted reaps itself.  (The real thing, in a PID namespace with the
installed C{twistd} as PID 1: C{tests/test_containers.py}.)
"""

from __future__ import annotations

from twisted.internet.task import Clock

from twisted_serversock._reaper import PERIOD, OrphanReaper


class Zombies:
    """Stand-in for the kernel: zombie children in order, and what was reaped."""

    def __init__(self, *pids: int) -> None:
        self.pids = list(pids)
        self.reaped: list[int] = []

    def peek(self) -> int | None:
        return self.pids[0] if self.pids else None

    def reap(self, pid: int) -> None:
        self.pids.remove(pid)
        self.reaped.append(pid)


def _reaper(zombies: Zombies, twisteds: frozenset[int] = frozenset()) -> tuple[OrphanReaper, Clock]:
    clock = Clock()
    reaper = OrphanReaper(clock, zombies.peek, zombies.reap, lambda: twisteds)
    reaper.start()
    return reaper, clock


def test_anOrphanIsReapedAfterAWholePeriod() -> None:
    """A zombie first seen at one look is reaped at the next: a waiter already waiting had that long to take it."""
    zombies = Zombies(42)
    reaper, clock = _reaper(zombies)
    clock.advance(PERIOD)
    assert zombies.reaped == []
    clock.advance(PERIOD)
    assert zombies.reaped == [42] and reaper.reaped == 1


def test_aChildReapedMeanwhileIsNotReapedAgain() -> None:
    """A zombie its own waiter took between two looks is gone; a new one behind it starts its own period."""
    zombies = Zombies(42)
    _unused, clock = _reaper(zombies)
    clock.advance(PERIOD)
    zombies.pids = [43]  # someone waited for 42; 43 is new
    clock.advance(PERIOD)
    assert zombies.reaped == []
    clock.advance(PERIOD)
    assert zombies.reaped == [43]


def test_twistedsOwnChildrenAreLeftToTwisted() -> None:
    """A zombie Twisted spawned is never reaped here (its processEnded needs the exit status)."""
    zombies = Zombies(7)
    reaper, clock = _reaper(zombies, frozenset({7}))
    for _ in range(5):
        clock.advance(PERIOD)
    assert zombies.reaped == [] and reaper.reaped == 0


def test_severalOrphansAllReaped() -> None:
    """Orphans queue behind each other and each is reaped in turn."""
    zombies = Zombies(1001, 1002, 1003)
    reaper, clock = _reaper(zombies)
    for _ in range(8):
        clock.advance(PERIOD)
    assert zombies.reaped == [1001, 1002, 1003]


def test_stop() -> None:
    """Once stopped it looks no more."""
    zombies = Zombies(5)
    reaper, clock = _reaper(zombies)
    reaper.stop()
    clock.advance(PERIOD * 3)
    assert zombies.reaped == [] and clock.getDelayedCalls() == []
