"""
What a server process may use of the machine.

C{workers=auto} counts the CPUs this process may use: its affinity, capped
by its cgroup's CPU quota (cgroup v2 C{cpu.max}, v1 C{cpu.cfs_quota_us}),
the smallest over the cgroup and its ancestors, rounded up.  The parsing
on made-up C{/proc} and cgroup trees; the cap for real, with the installed
C{twistd} in a cgroup v1 limited to one CPU where this machine has one.

The soft descriptor limit is raised towards the hard one (never lowered).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from twisted_serversock._resources import availableCPUs, raiseOpenFilesLimit

from ._procs import PRIMARY_LISTENING, TWISTD, spawn, stopCleanly
from .conftest import eventually

AFFINITY = len(os.sched_getaffinity(0))


def _tree(tmp_path: Path, cgroup: str, mounts: list[str], files: dict[str, str]) -> str:
    """A made-up C{/proc/self} (its C{cgroup} and C{mountinfo}) and cgroup files under C{tmp_path}."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("\n".join(line.replace("$ROOT", str(tmp_path)) for line in mounts) + "\n")
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(proc)


V2_MOUNT = "35 24 0:30 / $ROOT/cg rw,nosuid - cgroup2 cgroup2 rw"
V1_MOUNT = "32 31 0:29 / $ROOT/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct"


def test_v2QuotaCapsTheAffinity(tmp_path: Path) -> None:
    """C{cpu.max} of 50000/100000 is half a CPU: one worker, and the log line says where the number came from."""
    proc = _tree(tmp_path, "0::/app\n", [V2_MOUNT], {"cg/app/cpu.max": "50000 100000\n", "cg/cpu.max": "max 100000\n"})
    cpus = availableCPUs(proc)
    assert cpus.count == 1
    assert f"{tmp_path}/cg/app" in cpus.why and "0.5 CPU(s) rounded up" in cpus.why


def test_v2SmallestAncestorWins(tmp_path: Path) -> None:
    """A parent's quota binds the children that set none (or a larger one), as the kernel enforces it."""
    if AFFINITY < 2:
        pytest.skip("needs two CPUs to see a cap")
    files = {"cg/cpu.max": "max 100000\n", "cg/a/cpu.max": "100000 100000\n", "cg/a/b/cpu.max": "400000 100000\n"}
    proc = _tree(tmp_path, "0::/a/b\n", [V2_MOUNT], files)
    assert availableCPUs(proc).count == 1


def test_v2NoQuota(tmp_path: Path) -> None:
    """C{max}: no cap; the affinity counts."""
    proc = _tree(tmp_path, "0::/\n", [V2_MOUNT], {"cg/cpu.max": "max 100000\n"})
    cpus = availableCPUs(proc)
    assert cpus.count == AFFINITY and "quota" not in cpus.why


def test_quotaAboveTheAffinity(tmp_path: Path) -> None:
    """A quota larger than the CPUs this process may run on caps nothing (and is said)."""
    proc = _tree(tmp_path, "0::/app\n", [V2_MOUNT], {"cg/app/cpu.max": f"{(AFFINITY + 6) * 100000} 100000\n"})
    cpus = availableCPUs(proc)
    assert cpus.count == AFFINITY and f"allows {AFFINITY + 6}" in cpus.why


def test_v1QuotaOnTheHost(tmp_path: Path) -> None:
    """cgroup v1, seen from the host: C{/proc/self/cgroup} names the path below the cpu hierarchy's mount."""
    if AFFINITY < 2:
        pytest.skip("needs two CPUs to see a cap")
    cgroup = "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    files = {"cpu/docker/abc/cpu.cfs_quota_us": "150000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"}
    files |= {"cpu/docker/cpu.cfs_quota_us": "-1\n", "cpu/docker/cpu.cfs_period_us": "100000\n"}
    cpus = availableCPUs(_tree(tmp_path, cgroup, [V1_MOUNT, V2_MOUNT], files))
    assert cpus.count == min(2, AFFINITY)
    assert "1.5 CPU(s)" in cpus.why or cpus.count == AFFINITY


def test_v1InsideACgroupNamespace(tmp_path: Path) -> None:
    """In a container the mount's root is the container's cgroup, and the process's path is relative to it."""
    mount = "32 31 0:29 /docker/abc $ROOT/cpu rw - cgroup cgroup rw,cpu,cpuacct"
    files = {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert availableCPUs(_tree(tmp_path, "3:cpu,cpuacct:/\n", [mount], files)).count == 1


@pytest.mark.parametrize(
    "cgroup, files",
    [
        ("0::/app\n", {"cg/app/cpu.max": "fifty 100000\n"}),
        ("0::/app\n", {"cg/app/cpu.max": "50000 0\n"}),
        ("0::/app\n", {}),
        ("3:cpu:/app\n", {"cpu/app/cpu.cfs_quota_us": "50000\n"}),
    ],
    ids=["garbage", "zero-period", "no-file", "v1-no-period"],
)
def test_unreadableQuotaCapsNothing(tmp_path: Path, cgroup: str, files: dict[str, str]) -> None:
    """A quota file that is missing or not understood caps nothing: never fewer workers by a misreading."""
    assert availableCPUs(_tree(tmp_path, cgroup, [V2_MOUNT, V1_MOUNT], files)).count == AFFINITY


def test_noCgroupFileSystem(tmp_path: Path) -> None:
    """No C{/proc/self/cgroup} (not Linux, or a sandbox without it): the affinity."""
    assert availableCPUs(str(tmp_path / "absent")).count == AFFINITY


def _cpuCgroupV1() -> str | None:
    """The cgroup v1 cpu hierarchy's mount point, if this machine has one we may make cgroups in."""
    if os.getuid() != 0:
        return None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            if fields[dash + 1] == "cgroup" and "cpu" in fields[dash + 3].split(","):
                return fields[4] if os.access(fields[4], os.W_OK) else None
    return None


@pytest_twisted.ensureDeferred
async def test_twistdInACgroupLimitedToOneCPU(tmp_path: Path) -> None:
    """
    The installed C{twistd web} with C{workers=auto}, started in a cgroup
    whose CPU quota is one CPU (a container's C{--cpus=1}): one worker, not
    one per CPU of the machine.
    """
    mount = _cpuCgroupV1()
    if mount is None or AFFINITY < 2:
        pytest.skip("needs root, a writable cgroup v1 cpu hierarchy and two CPUs")
    group = tempfile.mkdtemp(prefix="tsscpu", dir=mount)
    members = Path(group, "cgroup.procs")
    try:
        Path(group, "cpu.cfs_quota_us").write_text("100000\n")
        Path(group, "cpu.cfs_period_us").write_text("100000\n")
        argv = [*TWISTD, "-n", "--pidfile=", "web", "--listen", "gecko:port=0:loopback=1:workers=auto", "--path", str(tmp_path)]
        # The shell joins the cgroup, then becomes twistd (so do its workers).
        shell = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *argv]
        proc = spawn(shell, str(tmp_path))
        served = await proc.waitFor(PRIMARY_LISTENING + r" (\d+) worker process")
        assert served.group(3) == "1", proc.output
        # The primary says how it chose the number.
        await proc.waitFor(rf"starting 1 worker\(s\) \(workers=auto: the CPU quota of {re.escape(group)}, 1 CPU\(s\) rounded up, not the {AFFINITY} CPU")
        await proc.waitFor(r"Worker 1 \(pid \d+\) is ready")
        assert await stopCleanly(proc) == 0, proc.output
        assert "Worker 2" not in proc.output
    finally:
        # A failed run leaves nothing behind: whatever still runs in the
        # cgroup is killed, and the cgroup removed once it is empty.
        for pid in members.read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        await eventually(lambda: not members.read_text().strip())
        os.rmdir(group)


@pytest.fixture
def openFilesLimit() -> Iterator[tuple[int, int]]:
    """This process's C{RLIMIT_NOFILE}, restored after the test (lowering a soft limit is always allowed)."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield before
    resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_openFilesLimitRaisedToTheHardLimit(openFilesLimit: tuple[int, int]) -> None:
    """A soft limit of 256 under a hard one of 4096 (systemd's 1024 under 524288, in small) is raised to 4096."""
    soft, hard = openFilesLimit
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip("this process's hard descriptor limit is below 4096")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096) if os.getuid() != 0 else (256, hard))
    was, now = raiseOpenFilesLimit(ceiling=4096)
    assert (was, now) == (256, 4096)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 4096


def test_openFilesLimitNeverLowered(openFilesLimit: tuple[int, int]) -> None:
    """A soft limit already above the ceiling stays; the answer says nothing changed."""
    soft, _hard = openFilesLimit
    was, now = raiseOpenFilesLimit(ceiling=max(1, soft // 2))
    assert was == now == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft


@pytest_twisted.ensureDeferred
async def test_twistdRaisesItsDescriptorLimitForItsWorkers(tmp_path: Path) -> None:
    """
    The installed C{twistd web ... workers=2} started with a soft
    descriptor limit of 256 under a hard one of 4096 (C{prlimit}, as
    systemd leaves 1024 under 524288): the primary raises the soft limit to
    4096, says so, and its workers have it too.
    """
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    argv = [*TWISTD, "-n", "--pidfile=", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", str(tmp_path)]
    proc = spawn(["prlimit", "--nofile=256:4096", "--", *argv], str(tmp_path))
    await proc.waitFor(r"Open files: soft limit 4096, raised from 256; the workers inherit it")
    pids = [int((await proc.waitFor(rf"Worker {i} \(pid (\d+)\) is ready")).group(1)) for i in (1, 2)]
    for pid in [proc.transport.pid, *pids]:
        with open(f"/proc/{pid}/limits") as f:
            [line] = [line for line in f if line.startswith("Max open files")]
        assert line.split()[3:5] == ["4096", "4096"], line
    assert await stopCleanly(proc) == 0, proc.output
