"""
The control socket and C{serversockctl}, against real clusters: the
installed C{twistd web} with C{workers=2:control=PATH} (and C{twistd
serversock --control}), driven by the installed C{serversockctl} and by
real HTTP clients; what it prints is parsed, not just its exit status.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, utils
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_serversock.control import ControlFactory

from ._procs import BIN, PRIMARY_LISTENING, SERVERSOCK, TWISTD, Proc, spawn, stopCleanly
from .conftest import _othersCanRead, asNobody, connect, eventually, nobodyEnv, sleep, timeout

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and TCP_INFO")

#: The installed client, as users run it.
CTL = os.path.join(BIN, "serversockctl")


async def ctl(*args: str, argv: list[str] | None = None, env: dict[str, str] | None = None) -> tuple[str, str, int]:
    """Run C{serversockctl ARGS} (or C{argv}); its standard output, standard error and exit status."""
    command = argv if argv is not None else [CTL, *args]
    out, err, code = await timeout(utils.getProcessOutputAndValue(command[0], command[1:], env=env if env is not None else dict(os.environ)), 30)
    return out.decode(), err.decode(), int(code)


async def status(path: str) -> dict[str, Any]:
    out, err, code = await ctl("-s", path, "status", "--json")
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


async def until(check: Any, tries: int = 150) -> None:
    """Poll the async C{check} every 0.2 s until it is true (an AssertionError after C{tries})."""
    for _ in range(tries):
        if await check():
            return
        await sleep(0.2)
    raise AssertionError(f"{check.__doc__ or check} never held")


async def startWeb(workdir: str, workers: int = 2) -> tuple[Proc, int, str]:
    """The installed twistd web with C{workers} and a control socket; its port and the socket's path, once every worker is ready."""
    control = os.path.join(workdir, "ctl.sock")
    with open(os.path.join(workdir, "index.html"), "w") as f:
        f.write("hello")
    listen = f"gecko:port=0:loopback=1:workers={workers}:control={control}"
    proc = spawn([*TWISTD, "-n", "--pidfile=", "web", "--listen", listen, "--path", workdir], workdir)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    for i in range(1, workers + 1):
        await proc.waitFor(rf"Worker {i} \(pid \d+\) is ready")
    return proc, port, control


async def get(port: int, n: int) -> None:
    """C{n} HTTP/1.1 requests on new connections, each answered in full."""
    for _ in range(n):
        client = await connect(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await timeout(client.whenClosed())
        assert client.received.endswith(b"hello"), client.received


@pytest_twisted.ensureDeferred
async def test_statusShowsWorkersConnectionsAndListeners(workdir: str) -> None:
    """
    C{status --json}: the primary's pid, each worker's pid (as the log
    names them), state, memory and CPU; connections accepted and served
    balance after real requests; the listener's accept queue is empty and
    its limit is the backlog.  The table says the same to a person.
    """
    proc, port, control = await startWeb(workdir)
    try:
        assert oct(os.stat(control).st_mode & 0o777) == "0o600"
        await get(port, 6)
        s = await status(control)
        pids = {int(p) for p in re.findall(r"Worker \d \(pid (\d+)\) is ready", proc.output)}
        assert s["pid"] == proc.transport.pid
        assert {w["pid"] for w in s["workers"]} == pids
        assert [w["state"] for w in s["workers"]] == ["serving", "serving"]
        assert all(w["rss"] > 1 << 20 and w["cpu"] > 0 for w in s["workers"])
        c = s["connections"]
        assert c["accepted"] == c["handedOff"] == 6 == sum(w["served"] for w in s["workers"])
        assert c["closedUnserved"] == c["inFlight"] == c["waiting"] == 0
        [listener] = s["listeners"]
        assert listener["queue"] == 0 and listener["backlog"] > 0 and not listener["paused"]
        out, _, code = await ctl("-s", control, "status")
        assert code == 0
        assert f"primary pid {proc.transport.pid}" in out and "2 of 2 worker(s) serving" in out
        assert "6 accepted, 6 handed off" in out
        rows = [line.split() for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s+serving", line)]
        assert {int(row[1]) for row in rows} == pids
    finally:
        assert await stopCleanly(proc) == 0, proc.output
    assert not os.path.exists(control)


@pytest_twisted.ensureDeferred
async def test_scaleAndReload(workdir: str) -> None:
    """
    C{scale +1} starts a third worker, C{scale 2} retires it, C{scale 0}
    is refused with a reason; C{reload} replaces every worker (new pids).
    """
    proc, port, control = await startWeb(workdir)
    try:
        out, err, code = await ctl("-s", control, "scale", "+1")
        assert (out, code) == ("3 worker(s)\n", 0), err
        await proc.waitFor(r"Worker 3 \(pid \d+\) is ready")
        s = await status(control)
        assert s["target"] == 3 and sorted(w["index"] for w in s["workers"]) == [1, 2, 3]
        out, err, code = await ctl("-s", control, "scale", "2")
        assert (out, code) == ("2 worker(s)\n", 0), err
        await proc.waitFor(r"worker 3 \(pid \d+\) exited")
        out, err, code = await ctl("-s", control, "scale", "0")
        assert code == 1 and "workers must stay at 1 or more, not 0" in err, (out, err)
        out, err, code = await ctl("-s", control, "scale", "+9999")
        assert code == 1 and "workers can be at most 1024, not 10001" in err, (out, err)
        before = {w["pid"] for w in (await status(control))["workers"]}
        out, err, code = await ctl("-s", control, "reload")
        assert (out, code) == ("reloading: reload 1\n", 0), err

        async def replaced() -> bool:
            """two new workers serve, the old ones gone"""
            s = await status(control)
            return s["reloads"] == 1 and [w["state"] for w in s["workers"]] == ["serving"] * 2 and not before & {w["pid"] for w in s["workers"]}

        await until(replaced)
        await get(port, 2)
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_topShowsLiveFrames(workdir: str) -> None:
    """C{top -n 2}: two frames, the second with each worker's CPU % since the first."""
    proc, _port, control = await startWeb(workdir)
    try:
        out, err, code = await ctl("-s", control, "top", "-n", "2", "-i", "0.2")
        assert code == 0, err
        frames = [f for f in re.split(r"(?m)^(?=primary pid)", out) if f.strip()]
        assert len(frames) == 2, out
        assert "CPU%" in frames[1]
        rows = [line.split() for line in frames[1].splitlines() if re.match(r"\s+\d+\s+\d+\s+serving", line)]
        assert len(rows) == 2 and all(float(row[7]) >= 0 for row in rows), frames[1]
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_acceptQueueGrowsWhileWorkersAreStopped(workdir: str) -> None:
    """
    Every worker SIGSTOPped under a stream of connections: once the
    dispatcher pauses accepting, the listener's accept queue (TCP_INFO)
    grows in C{status}; after SIGCONT every connection is served and the
    queue is empty again.
    """
    proc, port, control = await startWeb(workdir)
    pids = [int(p) for p in re.findall(r"Worker \d \(pid (\d+)\) is ready", proc.output)]
    clients = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # In batches: the primary holds a few dozen itself before it
        # pauses, and the workers must not stay stopped long enough to be
        # taken for hung (30 s without a heartbeat).
        for _ in range(10):
            for _ in range(20):
                client = await connect(port)
                client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                clients.append(client)
            s = await status(control)
            if (s["listeners"][0]["queue"] or 0) >= 5:
                break
        assert s["listeners"][0]["paused"] and s["listeners"][0]["queue"] >= 5, s
        # Counters balance with connections waiting in the primary too.
        c = s["connections"]
        assert c["waiting"] > 0 and c["inFlight"] > 0, c
        assert c["accepted"] == c["handedOff"] + c["closedUnserved"] + c["inFlight"] + c["waiting"], c
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    try:
        await timeout(defer.gatherResults([c.whenClosed() for c in clients]), 60)
        assert all(c.received.endswith(b"hello") for c in clients)
        s = await status(control)
        assert s["listeners"][0]["queue"] == 0 and s["connections"]["handedOff"] == len(clients)
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_whoMayUseIt(workdir: str) -> None:
    """
    Nothing at the path, a user the file's mode keeps out, and a user the
    peer-credential check turns away (the file opened to all): each a
    one-line error and exit status 1; no path at all: exit status 2.
    """
    out, err, code = await ctl("-s", os.path.join(workdir, "none.sock"), "status")
    assert code == 1 and "no control socket at" in err, err
    with open(os.path.join(workdir, "plain.sock"), "w"):
        pass  # not a socket
    out, err, code = await ctl("-s", os.path.join(workdir, "plain.sock"), "status")
    assert code == 1 and err.startswith("serversockctl: ") and "Traceback" not in err, err
    env = {k: v for k, v in os.environ.items() if k != "SERVERSOCK_CONTROL"}
    out, err, code = await ctl("status", env=env)
    assert code == 2 and "give the control socket's path" in err, err
    if os.getuid() != 0:
        return  # the other cases need another user: root runs them as nobody (CI does)
    proc, _port, control = await startWeb(workdir)
    try:
        os.chmod(workdir, 0o755)
        script = CTL
        if not _othersCanRead(script):
            script = os.path.join(workdir, "serversockctl")
            shutil.copy(CTL, script)
            os.chmod(script, 0o644)
        nobody = asNobody([sys.executable, script, "-s", control, "status"])
        out, err, code = await ctl(argv=nobody, env=nobodyEnv())
        assert code == 1 and f"not allowed to use {control}" in err, (out, err)
        os.chmod(control, 0o666)  # the file no longer keeps anyone out: the uid check does
        out, err, code = await ctl(argv=nobody, env=nobodyEnv())
        assert code == 1 and "not allowed to steer it" in err, (out, err)
        assert (await status(control))["target"] == 2
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_serversockControl(workdir: str) -> None:
    """C{twistd serversock --control PATH}: the same status for its workers."""
    control = os.path.join(workdir, "ctl.sock")
    proc = spawn([*SERVERSOCK, "--listen", "gecko:port=0:loopback=1", "--workers", "2", "--control", control], workdir)
    try:
        await proc.waitFor(r"Worker 2 \(pid \d+\) is ready")
        s = await status(control)
        assert s["target"] == 2 and len(s["workers"]) == 2 and s["listeners"][0]["backlog"] > 0
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest.mark.parametrize(
    "description, message",
    [
        ("gecko:port=0:control=/tmp/x.sock", "control is a cluster primary's option: it needs workers=N"),
        ("gecko:port=0:workers=2:control=", "control must be a socket file's path, not ''"),
        ("gecko:port=0:workers=2:control=/" + "x" * 120, "control: a UNIX socket path is at most 107 bytes"),
    ],
)
def test_badControlOption(description: str, message: str) -> None:
    """A bad C{control=}: a C{ValueError} naming it."""
    with pytest.raises(ValueError, match=re.escape(message)):
        serverFromString(MemoryReactor(), description)


def test_badRequests() -> None:
    """Requests the control socket cannot answer: each a clear error, never an exception."""
    factory = ControlFactory(target=None)  # type: ignore[arg-type]
    assert factory.answer(b"nonsense") == {"ok": False, "error": "a request is one JSON object per line"}
    assert factory.answer(b'{"command": "explode"}')["error"].startswith("unknown command 'explode'; known: reload, scale, status")
    assert factory.answer(b"[1]")["error"].startswith("unknown command None")
    assert factory.answer(b"[" * 4000) == {"ok": False, "error": "a request is one JSON object per line"}


@pytest_twisted.ensureDeferred
async def test_aLiveControlSocketIsNotTaken(workdir: str) -> None:
    """
    A second cluster asked for the control socket a running one listens
    on: it does not start, and says why in one line; the first one's
    socket still answers.
    """
    proc, _port, control = await startWeb(workdir)
    try:
        other = spawn([*SERVERSOCK, "--listen", "gecko:port=0:loopback=1", "--workers", "1", "--control", control], workdir)
        assert await timeout(other.ended, 30) == 1, other.output
        assert re.search(rf"serversock: cannot listen on --control={re.escape(control)}: .*a server is listening on the socket there", other.output), other.output
        assert (await status(control))["target"] == 2
    finally:
        assert await stopCleanly(proc) == 0, proc.output


@pytest_twisted.ensureDeferred
async def test_aStoppedPrimaryIsATimeoutNotAHang(workdir: str) -> None:
    """A primary that does not answer (SIGSTOPped): C{-t SECONDS}, then one line and exit status 1."""
    proc, _port, control = await startWeb(workdir, workers=1)
    try:
        proc.transport.signalProcess(signal.SIGSTOP)
        try:
            out, err, code = await ctl("-s", control, "-t", "0.5", "status")
        finally:
            proc.transport.signalProcess(signal.SIGCONT)
        assert code == 1 and f"no answer from the cluster at {control} within 0.5 s" in err, (out, err)
        assert (await status(control))["target"] == 1
    finally:
        assert await stopCleanly(proc) == 0, proc.output
