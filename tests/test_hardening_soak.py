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

import pytest
import pytest_twisted

from ._hardening import LONG, ROOT, CollectingProcess, childEnv, reactorName
from .conftest import theReactor, timeout

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


@pytest_twisted.ensureDeferred
async def test_soak() -> None:
    proc = CollectingProcess()
    argv = [sys.executable, "-m", "tests.soak.soak", "--reactor", reactorName()]
    if LONG:
        argv.append("--long")
    theReactor().spawnProcess(proc, sys.executable, argv, env=childEnv(), path=ROOT)
    code = await timeout(proc.ended, 3600 if LONG else 120)
    assert proc.out, proc.err.decode()
    report = json.loads(proc.out.decode().strip().splitlines()[-1])
    parts = {row["part"] for row in report}
    assert {"echo/gecko", "echo/streams", "init/init", "init/initWithFilename", "init/initWithAbstractAddress"} <= parts
    broken = [row for row in report if not row["ok"]]
    assert broken == [], json.dumps(broken, indent=1)
    assert code == 0, proc.err.decode()
