"""
The worker pool's transitions, driven on a memory reactor's clock: worker
processes are stand-ins (the test holds each one's end of its channel and
ends it when it likes), so every state - starting, serving, retiring,
killed, restarting - and every order of events is the test's to make, in
milliseconds.  The real-process tests (C{test_lifecycle}, C{test_tap},
C{test_cluster}) prove that the same pool runs.
"""

from __future__ import annotations

import socket

from typing import Any, Iterator

import pytest
from twisted.internet.task import Clock

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.slots import ENDED, KILL_MARGIN, RETIRING, SERVING, STARTING, Restarts, Slot, Worker

from ._memoryworkers import GRACE, TIMEOUT, Pool, pump, receive, send


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
    worker = Worker(Slot(1), None, 0.0, 0, lambda worker, reason: None)  # type: ignore[arg-type]
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


def test_exitsAreCountedByWhyTheWorkerLeft(pool: Pool) -> None:
    """
    A worker's exit is counted by why it left, decided when it is retired:
    a reload whose new worker died before it was ready leaves the old one
    serving, unretired, so when that one dies later it is a crash; a
    worker a reload replaced is a reload; one fewer is a scale.
    """
    pool.ready(0)
    pool.pool.reload()
    pool.end(1, signal=9)
    pool.wait(1)
    pool.end(0, signal=9)
    assert pool.pool.exits == {"crash": 2}
    pool.wait(Restarts.FIRST_DELAY * 2)
    pool.ready(2)
    pool.pool.reload()
    pool.ready(3)
    pool.end(2)
    pool.pool.addWorker()
    pool.ready(4)
    pool.pool.removeWorker()
    pool.end(4)
    assert pool.pool.exits == {"crash": 2, "reload": 1, "scale": 1}
    assert pool.pool.starts == 5


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


def test_emptySlotRestartsWhenItsSuccessorDies(pool: Pool) -> None:
    """
    The serving worker dying while its successor starts leaves the slot to
    the successor; if the successor then dies before it is ready too, the
    slot is empty and starts again after the backoff delay.
    """
    pool.ready(0)
    pool.pool.reload()
    pool.end(0, signal=9)
    pool.end(1, signal=9)
    pool.reactor.advance(Restarts.FIRST_DELAY / 2)
    assert len(pool.reactor.children) == 2
    pool.reactor.advance(Restarts.FIRST_DELAY)
    assert len(pool.reactor.children) == 3 and pool.pool.slot(1).restarts == 1
    pool.ready(2)
    assert pool.serving() == [2]


def test_retiringWorkerIsKilledAfterGraceAndMargin(pool: Pool) -> None:
    """
    A retired worker (alive: it sends heartbeats) still there at the end
    of its grace period gets a margin more, then is killed - not for
    silence.
    """
    pool.ready(0)
    pool.pool.reload()
    pool.ready(1)
    assert pool.stops(0) == [GRACE]
    for _ in range(int(GRACE + KILL_MARGIN) - 1):
        pool.wait(1)
        pool.heartbeat(0, 1)
    pool.wait(0.9)
    assert pool.reactor.processes[0].signals == []
    pool.wait(0.6)  # a tick (a tenth of the timeout) later
    assert pool.reactor.processes[0].signals == ["KILL"] and pool.pool.killedForTimeout == 0
    assert pool.reactor.processes[1].signals == []
    pool.end(0, signal=9)
    assert pool.pool.status().startswith("1 of 1 worker(s) serving, 0 starting, 0 retiring")


def test_stopWhileAReloadIsPending(pool: Pool) -> None:
    """
    Stopping during a reload tells the old worker and its starting
    successor to stop; the successor's readiness changes nothing, neither
    is restarted, systemd never hears the reload is done, and the stop is
    done once both have exited.
    """
    pool.ready(0)
    pool.pool.reload()
    stopped = pool.pool.stop(GRACE)
    assert pool.stops(0) == [GRACE] and pool.stops(1) == [GRACE]
    pool.ready(1)
    assert 1 not in pool.serving()
    pool.end(1)
    pool.wait(1)
    assert len(pool.reactor.children) == 2 and not stopped.called
    pool.end(0)
    assert stopped.called and pool.notifier.said == ["ready", "reloading", "stopping"]


def test_stopClosesHeldConnectionsAtTheEndOfTheGracePeriod(pool: Pool) -> None:
    """
    Connections no worker could take yet are handed over first; those still
    held when the grace period ends are closed, and the workers are then
    told to stop with what is left of it (nothing).
    """
    pool.connect()
    stopped = pool.pool.stop(GRACE)
    assert pool.stops(0) == []
    pool.wait(GRACE + 0.1)
    assert pool.dispatcher.dropped == 1 and pool.stops(0) == [0.0]
    pool.end(0)
    assert stopped.called


def test_systemdHearsReadyOnceAtStartAndOnceAReloadIsDone(pool: Pool) -> None:
    """
    systemd is told READY when the first worker is ready, RELOADING on a
    reload, and READY again only once the reload's worker is ready.
    """
    pool.ready(0)
    pool.pool.reload()
    assert pool.notifier.said == ["ready", "reloading"]
    pool.ready(1)
    assert pool.notifier.said == ["ready", "reloading", "ready"]


def test_silenceIsTheTimeoutNotAFixedDelay(pool: Pool) -> None:
    """
    A starting worker too is killed once silent for the timeout, and its
    slot restarts when it has exited.
    """
    pool.wait(TIMEOUT - 0.5)
    assert pool.reactor.processes[0].signals == []
    pool.wait(1)
    assert pool.reactor.processes[0].signals == ["KILL"]
    pool.end(0, signal=9)
    pool.wait(1)
    assert len(pool.reactor.children) == 2


def test_restartBackoffGrowsAndResetsAfterAStableRun() -> None:
    """
    A slot whose workers keep dying waits twice as long each time, up to a
    ceiling; one that ran for a stable while restarts after the shortest
    delay again.
    """
    clock, slot, started = Clock(), Slot(1), []  # type: ignore[var-annotated]
    restarts = Restarts(clock, [slot], started.append)
    delays = []
    for _ in range(9):
        restarts.died(slot, lived=0.5)
        delays.append(restarts.schedule(slot))
        clock.advance(delays[-1])
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, Restarts.MAX_DELAY, Restarts.MAX_DELAY])
    assert started == [slot] * 9 and slot.restarts == 9 and slot.pending is None
    restarts.died(slot, lived=Restarts.STABLE_SECONDS)
    assert restarts.schedule(slot) == Restarts.FIRST_DELAY
    restarts.cancelAll()
    assert clock.getDelayedCalls() == [] and slot.pending is None


def test_giveUpOnAProgramThatNeverStarts() -> None:
    """
    Until some worker was ready, the slot's C{maxStarts}th start says the
    program cannot run as a worker (with the exits so far), after the
    start.
    """
    clock, slot, gaveUp = Clock(), Slot(1), []  # type: ignore[var-annotated]
    restarts = Restarts(clock, [slot], lambda slot: None, 3, lambda *args: gaveUp.append(args))
    for _ in range(2):
        restarts.untried(slot)
        clock.advance(0)
        assert gaveUp == []
        slot.restarts += 1
    restarts.untried(slot)
    assert gaveUp == []
    clock.advance(0)
    assert gaveUp == [(1, 2)]


def test_aDeadWorkerIsRecordedInItsSlot(pool: Pool) -> None:
    """
    The connections a worker adopted stay counted in its slot after it has
    gone; the next worker of the slot starts from there.
    """
    pool.ready(0)
    pool.connect()
    connIds = [m.connId for m in _conns(pool, 0)]
    pool.reactor.children[0].sendmsg([wire.encodeReport(connIds, 0)])
    pump(pool.reactor)
    pool.end(0, signal=9)
    assert pool.pool.slot(1).adopted == 1 and pool.pool.slot(1).failures == 1


def _conns(pool: Pool, n: int) -> list[Any]:
    messages = [m for m in receive(pool.reactor.children[n]) if isinstance(m, wire.Conn)]
    for message in messages:
        socket.socket(fileno=message.fd).close()
    return messages


def test_stopCancelsAPendingRestartAtOnce(pool: Pool) -> None:
    """
    A worker that died is due for a restart; a stop cancels that restart
    when the workers are told to stop, not once the last one has exited.
    """
    pool.pool.addWorker()
    pool.ready(0)
    pool.ready(1)
    pool.end(1, signal=9)
    assert pool.pool.slot(2).pending is not None
    stopped = pool.pool.stop(GRACE)
    assert pool.pool.slot(2).pending is None and not stopped.called
    pool.end(0)
    assert stopped.called and len(pool.reactor.children) == 2


def test_anErrorInTheHungCheckEndsNothing(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An exception in one hung-worker check is logged; the checks go on, and
    a reload (which needs the pool started) still starts fresh workers.
    """
    from twisted_serversock.ipc import pool as poolModule

    pool.ready(0)
    real = poolModule.killHung

    def broken(*args: Any) -> int:
        raise RuntimeError("a bug in one check")

    monkeypatch.setattr(poolModule, "killHung", broken)
    pool.reactor.advance(1.0)
    monkeypatch.setattr(poolModule, "killHung", real)
    pool.pool.reload()
    assert len(pool.reactor.children) == 2
    pool.reactor.advance(TIMEOUT + 1.0)  # silent since: the checks still run and kill both
    assert pool.pool.killedForTimeout == 2
