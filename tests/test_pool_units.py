"""
The worker pool's transitions, driven on a memory reactor's clock: worker
processes are stand-ins (the test holds each one's end of its channel and
ends it when it likes), so every state - starting, serving, retiring,
killed, restarting - and every order of events is the test's to make, in
milliseconds.  The real-process tests (C{test_lifecycle}, C{test_tap},
C{test_cluster}) prove that the same pool runs.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from twisted_serversock.ipc.slots import ENDED, RETIRING, SERVING, STARTING, Slot, Worker

from ._memoryworkers import GRACE, TIMEOUT, Pool, pump, send



@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pool]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    made = Pool()
    yield made
    made.close()


def test_readyWorkerServes(pool: Pool) -> None:
    """
    A started worker gets no connection until it says it is ready.
    """
    assert len(pool.reactor.children) == 1 and pool.serving() == []
    assert pool.pool.status().startswith("0 of 1 worker(s) serving, 1 starting, 0 retiring")
    pool.ready(0)
    assert pool.serving() == [0] and pool.pool.everReady
    assert pool.pool.status().startswith("1 of 1 worker(s) serving, 0 starting, 0 retiring")


def test_workerStatesMoveOneWay() -> None:
    """
    A worker's state moves only forward - starting, serving, retiring,
    ended - and a move the lifecycle does not have is a bug, caught where
    it happens.
    """
    worker = Worker(Slot(1), None, 0.0)  # type: ignore[arg-type]
    assert worker.state == STARTING
    assert worker.enter(SERVING) == STARTING
    assert worker.enter(RETIRING) == SERVING
    with pytest.raises(AssertionError, match="retiring -> serving"):
        worker.enter(SERVING)
    assert worker.enter(ENDED) == RETIRING
    with pytest.raises(AssertionError):
        worker.enter(ENDED)


def test_silentWorkerIsKilledAndReplaced(pool: Pool) -> None:
    """
    Heartbeats keep a worker alive; one silent for the timeout is killed,
    and once it has exited a new one starts.
    """
    pool.ready(0)
    for _ in range(3):
        pool.wait(TIMEOUT / 2)
        send(pool.reactor.children[0], "heartbeat")
        pump(pool.reactor)
    assert pool.reactor.processes[0].signals == []
    pool.wait(TIMEOUT + 1)
    assert pool.reactor.processes[0].signals == ["KILL"] and pool.pool.killedForTimeout == 1
    assert pool.serving() == []
    pool.end(0, signal=9)
    pool.wait(1)
    assert len(pool.reactor.children) == 2


def test_successorDyingBeforeReadyLeavesTheOldWorkerServing(pool: Pool) -> None:
    """
    A reload's new worker that dies before it is ready changes nothing: the
    old one keeps serving and is never told to stop.
    """
    pool.ready(0)
    pool.pool.reload()
    assert len(pool.reactor.children) == 2 and pool.serving() == [0]
    pool.end(1, signal=9)
    pool.wait(1)
    assert pool.serving() == [0] and pool.stops(0) == []
    assert len(pool.reactor.children) == 2  # not restarted: the old one serves


def test_crashDuringReloadCountsOnTheSuccessor(pool: Pool) -> None:
    """
    The current worker dying during a reload is not restarted: its starting
    successor takes the slot when it is ready.
    """
    pool.ready(0)
    pool.pool.reload()
    pool.end(0, signal=9)
    pool.wait(1)
    assert len(pool.reactor.children) == 2 and pool.serving() == []
    pool.ready(1)
    assert pool.serving() == [1]
    assert pool.pool.status().startswith("1 of 1 worker(s) serving, 0 starting, 0 retiring")


def test_maxRequestsRecyclesGracefully(pool: Pool) -> None:
    """
    A worker given its C{maxRequests} connections gets no more; its
    successor starts, and once the successor is ready the old one is told
    to stop within the grace period - and killed if still there after it.
    """
    pool.ready(0)
    pool.connect()
    pool.connect()
    assert pool.pool.recycled == 1 and len(pool.reactor.children) == 2
    pool.ready(1)
    assert pool.serving() == [1] and pool.stops(0) == [GRACE]
    pool.wait(GRACE + 2.5)
    assert pool.reactor.processes[0].signals == ["KILL"]
    pool.end(0, signal=9)
    assert pool.pool.status().startswith("1 of 1 worker(s) serving, 0 starting, 0 retiring")


def test_oneWorkerMoreAndFewerDuringAReload(pool: Pool) -> None:
    """
    SIGTTIN during a reload starts one worker more at once; SIGTTOU retires
    the highest-numbered one, whatever state it is in; the reload finishes.
    """
    pool.ready(0)
    pool.pool.reload()
    pool.pool.addWorker()
    assert [command[0][1] for command in pool.reactor.commands] == ["1", "1", "2"]
    pool.pool.removeWorker()
    assert pool.stops(2) == [GRACE]
    pool.ready(1)
    assert pool.serving() == [1] and pool.stops(0) == [GRACE]
    pool.pool.removeWorker()  # never below one
    assert pool.serving() == [1]
