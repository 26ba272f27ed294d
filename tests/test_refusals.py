"""
Connections refused by C{allowedUids} under abuse: many
peers - each a new process, from many uids - must neither grow the server's
memory without bound nor log one line each.  The first refusal is logged at
once with its pid and uid; the rest are summed up, one line per interval.

Real peers: C{socat} processes, each run as another uid with C{setpriv}
(so CI, which runs as root, exercises the many-uid case).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted

from twisted_serversock._refusals import RefusalLog

from ._hardening import CollectingProcess
from .conftest import Recorder, connectUNIX, eventually, timeout, theReactor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED is Linux's")

ROOT = os.getuid() == 0
ALLOWED = 54321


@pytest.fixture
def top() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="/tmp/tsr")
    os.chmod(d, 0o755)  # peers running as other uids must reach the socket
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def refusalLines(logged: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    The immediate refusal warnings and the summary lines, in order.
    """
    first = [e for e in logged if "Refused a connection" in (e.get("log_format") or "")]
    summaries = [e for e in logged if "more connection(s)" in (e.get("log_format") or "")]
    return first, summaries


@pytest.mark.skipif(not ROOT or not shutil.which("socat") or not shutil.which("setpriv"), reason="needs root, socat and setpriv to connect as many uids")
@pytest_twisted.ensureDeferred
async def test_manyRefusedPeers(servers: Any, top: str, logged: Any) -> None:
    """
    400 connections, each from a new socat process, from 40 uids none of
    which is allowed: one warning at once, then summary lines whose counts
    add up to the rest, each naming at most C{maxUids} uids one by one.
    """
    peers, uids = 400, 40
    path = os.path.join(top, "app.sock")
    srv = servers()
    srv.initWithFilename(path, 0o666, -1, allowedUids={ALLOWED})
    rec = Recorder()
    srv.asyncListen(rec)
    started = theReactor().seconds()
    script = (
        f'i=0; while [ $i -lt {peers} ]; do u=$((30000 + i % {uids})); '
        f'setpriv --reuid=$u --regid=$u --clear-groups socat -u OPEN:/dev/null UNIX-CONNECT:"$1" 2>/dev/null; '
        f"i=$((i + 1)); done"
    )
    shell = CollectingProcess()
    theReactor().spawnProcess(shell, "/bin/sh", ["/bin/sh", "-c", script, "sh", path], env=dict(os.environ))
    assert await timeout(shell.ended, 120) == 0, shell.err
    # The kernel queues connections in order: once one from the allowed
    # uid is accepted, every refused one before it has been handled.
    sentinel = CollectingProcess()
    theReactor().spawnProcess(
        sentinel,
        "/bin/sh",
        ["/bin/sh", "-c", f'setpriv --reuid={ALLOWED} --regid={ALLOWED} --clear-groups socat -u OPEN:/dev/null UNIX-CONNECT:"$1"', "sh", path],
        env=dict(os.environ),
    )
    t = await rec.nextAccepted()
    assert t.getPeerCredentials()[1] == ALLOWED
    t.close(0)
    await timeout(sentinel.ended, 60)
    elapsed = theReactor().seconds() - started
    srv.close()
    await rec.whenStopped()

    first, summaries = refusalLines(logged)
    assert len(first) == 1, f"{len(first)} immediate warnings for {peers} refused peers"
    assert 30000 <= first[0]["uid"] < 30000 + uids
    assert 1 + sum(e["count"] for e in summaries) == peers
    # One line per interval (and the last one at close), never one per peer.
    assert 1 <= len(summaries) <= elapsed / RefusalLog.interval + 2
    for e in summaries:
        assert len(e["byUid"]) <= RefusalLog.maxUids
        assert all(30000 <= uid < 30000 + uids for uid in e["byUid"])
    assert sum(e["otherUids"] for e in summaries) > 0
    assert [e for e in logged if e.get("log_failure") is not None] == []


@pytest_twisted.ensureDeferred
async def test_oneSummaryPerInterval(servers: Any, top: str, logged: Any, monkeypatch: Any) -> None:
    """
    A steady stream of refusals gives one summary line per interval; after
    a quiet interval the next refusal is logged at once again.
    """
    monkeypatch.setattr(RefusalLog, "interval", 0.3)
    # Each end of an interval, and whether the log went quiet at it.
    quiet: list[bool] = []
    intervalOver = RefusalLog._intervalOver

    def recordIntervalOver(self: RefusalLog) -> None:
        intervalOver(self)
        quiet.append(self._timer is None)

    monkeypatch.setattr(RefusalLog, "_intervalOver", recordIntervalOver)
    path = os.path.join(top, "app.sock")
    srv = servers()
    srv.initWithFilename(path, 0o600, -1, allowedUids={ALLOWED})
    rec = Recorder()
    srv.asyncListen(rec)

    async def refusedOnce() -> None:
        client = await connectUNIX(path)
        await client.whenClosed()
        assert client.received == b""

    started = theReactor().seconds()
    for _ in range(6):  # refusals over several intervals
        for _ in range(5):
            await refusedOnce()
        ended = len(quiet)
        await eventually(lambda: len(quiet) > ended)
    elapsed = theReactor().seconds() - started
    await eventually(lambda: quiet[-1])  # quiet: the timer stops
    first, summaries = refusalLines(logged)
    assert len(first) == 1
    assert 2 <= len(summaries) <= elapsed / 0.3 + 2
    assert 1 + sum(e["count"] for e in summaries) == 30
    await refusedOnce()
    first, _ = refusalLines(logged)
    assert len(first) == 2, "after a quiet interval a refusal is logged at once"
    srv.close()
    await rec.whenStopped()
    assert [kind for kind, _ in rec.events] == ["stopped"]
