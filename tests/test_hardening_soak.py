"""
Hardening: the soak, run through L{tests.soak.soak} in a child process
(short mode here: 10,000 connect/echo/close cycles through a C{gecko:}
endpoint and through C{ServerSocket} + streams, and 10,000 C{init*}/C{close}
cycles of every initialiser; C{SERVERSOCK_SOAK=long} runs the long mode).
The limits - descriptors back to their baseline, less than 5 MiB of RSS
growth, nothing left on disk or registered - are checked by the soak
itself; this test reports which part broke them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from ._hardening import LONG, ROOT, CollectingProcess, childEnv, reactorName
from .conftest import theReactor, timeout

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


class SoakProcess(CollectingProcess):
    """
    The soak, whose progress can be awaited: it writes a line to its
    standard error as each part ends.
    """

    _next: defer.Deferred[None] | None = None

    def progress(self) -> defer.Deferred[None]:
        """
        Fires when the soak next writes to its standard error, or ends.
        """
        self._next = defer.Deferred()
        return self._next

    def _poke(self) -> None:
        d, self._next = self._next, None
        if d is not None:
            d.callback(None)

    def errReceived(self, data: bytes) -> None:
        super().errReceived(data)
        self._poke()

    def processEnded(self, reason: Any) -> None:
        super().processEnded(reason)
        self._poke()


@pytest_twisted.ensureDeferred
async def test_soak() -> None:
    """
    The soak's work is fixed (a number of cycles per part), so a busy
    machine only makes it slower: the test fails when no part ends for two
    minutes (an hour in the long mode), not when the whole run takes long.
    """
    proc = SoakProcess()
    argv = [sys.executable, "-m", "tests.soak.soak", "--reactor", reactorName()]
    if LONG:
        argv.append("--long")
    theReactor().spawnProcess(proc, sys.executable, argv, env=childEnv(), path=ROOT)
    while not proc.ended.called:
        await timeout(proc.progress(), 3600 if LONG else 120)
    code = await proc.ended
    assert proc.out, proc.err.decode()
    report = json.loads(proc.out.decode().strip().splitlines()[-1])
    parts = {row["part"] for row in report}
    assert {"echo/gecko", "echo/streams", "init/init", "init/initWithFilename", "init/initWithAbstractAddress"} <= parts
    broken = [row for row in report if not row["ok"]]
    assert broken == [], json.dumps(broken, indent=1)
    assert code == 0, proc.err.decode()
