"""
A cluster as a container's PID 1 (no init in the container): the
installed C{twistd web ... workers=2} started as PID 1 of its own PID
namespace (C{unshare --pid --fork}, as C{docker run} without C{--init}
starts it).  SIGTERM and SIGINT stop it cleanly, and every process it
ends up the parent of is reaped - its workers, and the orphans a worker's
program leaves behind, which the kernel hands to PID 1.
"""

from __future__ import annotations

import os
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import threads

from ._procs import PRIMARY_LISTENING, TWISTD, Proc, alive, childrenOf, spawn
from .conftest import eventually, timeout

pytestmark = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("unshare") is None, reason="a PID namespace needs root and unshare (CI runs as root)"
)

#: A page whose request leaves an orphan: the shell it starts exits at
#: once (its parent waits for it), the shell's own background child lives
#: on for a moment and then ends - re-parented to PID 1, which must reap it.
ORPHAN_RPY = """\
import os
import subprocess
from twisted.web.resource import Resource


class Orphan(Resource):
    isLeaf = True

    def render_GET(self, request):
        subprocess.run(["sh", "-c", "sleep 0.2 &"], check=True)
        return str(os.getpid()).encode()


resource = Orphan()
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "orphan.rpy").write_text(ORPHAN_RPY)
    yield str(tmp_path)


def _asPid1(site: str) -> tuple[Proc, list[str]]:
    argv = [*TWISTD, "-n", "--pidfile=", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", site]
    # --kill-child: the namespace ends with unshare (nothing outlives a failed test).
    return spawn(["unshare", "--pid", "--fork", "--kill-child", "--", *argv], site), argv


def _primary(proc: Proc) -> int:
    """The host's PID of the namespace's PID 1 (unshare's one child)."""
    [pid] = childrenOf(proc.transport.pid)
    with open(f"/proc/{pid}/status") as f:
        assert any(line.split() == ["NSpid:", str(pid), "1"] for line in f), "twistd is not PID 1 of its namespace"
    return pid


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest_twisted.ensureDeferred
async def test_pid1StopsCleanlyAndReapsEveryChild(site: str, stop: signal.Signals) -> None:
    """
    As PID 1: the orphans left by the workers' requests do not stay zombies
    under the primary, and the signal stops the whole cluster (exit status
    0, no process of the namespace left).
    """
    proc, _argv = _asPid1(site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    for i in (1, 2):
        await proc.waitFor(rf"Worker {i} \(pid \d+\) is ready")
    primary = _primary(proc)
    workers = childrenOf(primary)
    for _ in range(6):
        await timeout(threads.deferToThread(_get, f"http://127.0.0.1:{port}/orphan.rpy"), 40)
    # Each orphan ends 0.2 s after its request, re-parented to PID 1: none
    # may stay a zombie (the reaper looks every second).
    await eventually(lambda: not childrenOf(primary, zombies=True) and childrenOf(primary) == workers)
    os.kill(primary, stop)
    assert await timeout(proc.ended, 40) == 0, proc.output
    assert not alive(primary) and not [w for w in workers if alive(w)]
    assert "Traceback" not in proc.output, proc.output
