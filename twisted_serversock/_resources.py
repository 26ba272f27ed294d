# -*- test-case-name: tests.test_resources -*-
"""
What a server process may use of the machine.

How many CPUs, for C{workers=auto} (L{availableCPUs}): the CPUs it may
run on (its scheduler affinity), and no more than its cgroup's CPU quota
allows - in a container limited to 2 CPUs on a 64-core host that is 2, not
64 (each worker costs tens of MiB; 64 of them would share 2 CPUs' time).

The quota is read as container-aware runtimes read it (Go's GOMAXPROCS,
the JDK): cgroup v2's C{cpu.max} or v1's C{cpu.cfs_quota_us} /
C{cpu.cfs_period_us}, of this process's cgroup and every ancestor up to
the hierarchy's root, the smallest wins, rounded up to whole CPUs.

How many descriptors (L{raiseOpenFilesLimit}): each connection is one,
and systemd (like most login shells) leaves the soft limit at 1024 while
the hard limit is far higher; a server that keeps the soft limit refuses
connections at about a thousand open ones though the system allows more.
Servers raise it themselves (nginx's C{worker_rlimit_nofile}, HAProxy at
start-up, Go since 1.19): so do the processes of a cluster.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass

__all__ = ["CPUs", "availableCPUs", "raiseOpenFilesLimit"]


@dataclass(frozen=True)
class CPUs:
    """
    The CPUs this process may use, and why (for the log).

    @ivar count: at least 1.
    @ivar why: how C{count} was chosen, in words.
    """

    count: int
    why: str


def availableCPUs(proc: str = "/proc/self") -> CPUs:
    """
    The CPUs this process may use: its affinity, capped by its cgroup's
    CPU quota.  A quota that cannot be read (no cgroup file system, an
    unexpected format) caps nothing.

    @param proc: this process's C{/proc} directory (tests give another).
    """
    try:
        affinity = len(os.sched_getaffinity(0))
        where = "this process may run on"
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
        where = "this machine has"
    quota = _quota(proc)
    if quota is None:
        return CPUs(affinity, f"the {affinity} CPU(s) {where}")
    limit, directory = quota
    allowed = max(1, math.ceil(limit))
    if allowed >= affinity:
        return CPUs(affinity, f"the {affinity} CPU(s) {where} (the CPU quota of {directory} allows {limit:g})")
    return CPUs(allowed, f"the CPU quota of {directory}, {limit:g} CPU(s) rounded up, not the {affinity} CPU(s) {where}")


def _quota(proc: str) -> tuple[float, str] | None:
    """The smallest CPU quota over this process's cgroup and its ancestors (in CPUs), and where it is set."""
    try:
        with open(os.path.join(proc, "cgroup")) as f:
            groups = f.read().splitlines()
        with open(os.path.join(proc, "mountinfo")) as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    found: list[tuple[float, str]] = []
    for line in groups:
        _id, controllers, path = line.split(":", 2)
        v2 = controllers == ""
        if not v2 and "cpu" not in controllers.split(","):
            continue
        for directory in _directories(mounts, path, v2):
            limit = _limit(directory, v2)
            if limit is not None:
                found.append((limit, directory))
    if not found:
        return None
    return min(found)


def _directories(mounts: list[str], path: str, v2: bool) -> list[str]:
    """The cgroup directories of C{path} and its ancestors, on the mount of its hierarchy."""
    for mount in mounts:
        fields = mount.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        fstype, superOptions = fields[dash + 1], fields[dash + 3] if len(fields) > dash + 3 else ""
        if fstype != ("cgroup2" if v2 else "cgroup") or (not v2 and "cpu" not in superOptions.split(",")):
            continue
        root, mountPoint = fields[3], fields[4]
        # Inside a cgroup namespace (a container) the path is relative to
        # the mount's root already; on the host it starts with that root.
        relative = os.path.relpath(path, root) if path.startswith(root) else path.lstrip("/")
        parts = [] if relative in (".", "") else relative.split("/")
        return [os.path.join(mountPoint, *parts[:n]) for n in range(len(parts), -1, -1)]
    return []


def _limit(directory: str, v2: bool) -> float | None:
    """The CPUs the quota in C{directory} allows, or None: no quota there (or none readable)."""
    try:
        if v2:
            with open(os.path.join(directory, "cpu.max")) as f:
                quota, period = f.read().split()
        else:
            with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def raiseOpenFilesLimit(ceiling: int = 1 << 20) -> tuple[int, int]:
    """
    Raise this process's soft C{RLIMIT_NOFILE} to its hard limit (at most
    C{ceiling}: an unlimited or huge hard limit would make C{select()}-era
    code and per-descriptor tables needlessly large), never lowering it.

    @return: the soft limit before and the soft limit now (equal when it
        was already as high as allowed, or could not be raised).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(ceiling if hard == resource.RLIM_INFINITY else hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, wanted
    return soft, soft
