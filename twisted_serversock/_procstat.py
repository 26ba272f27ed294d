"""
What Linux says about a process and a listening socket, for the control
socket's C{status} and C{top}: a process's resident memory and CPU time
(C{/proc}), and a listening TCP socket's accept queue (C{TCP_INFO}).

Each returns C{None} where the system cannot say (not Linux, the process
gone, a UNIX socket), never raises: a status must never fail because one
worker exited while it was being read.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import NamedTuple

__all__ = ["ProcessStats", "acceptQueue", "processStats"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: struct tcp_info up to tcpi_sacked: 8 one-byte fields, then u32s;
#: tcpi_unacked and tcpi_sacked are the 5th and 6th u32.
_TCP_INFO = struct.Struct("8B6I")
_TCP_LISTEN = 10


class ProcessStats(NamedTuple):
    """A process's resident memory (bytes) and CPU time used (user + system, seconds)."""

    rss: int
    cpu: float


def processStats(pid: int) -> ProcessStats | None:
    """C{pid}'s L{ProcessStats} from C{/proc}, or C{None} if it cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the
    # fields that follow start after its last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        utime, stime, rss = int(fields[11]), int(fields[12]), int(fields[21])
    except (IndexError, ValueError):
        return None
    return ProcessStats(rss * _PAGE, (utime + stime) / _TICKS)


def acceptQueue(fd: int) -> tuple[int, int] | None:
    """
    The accept queue of the listening TCP socket C{fd}: connections the
    kernel completed that nobody accepted yet, and the queue's limit (the
    backlog); C{None} for anything else (a UNIX socket, not Linux).

    For a socket in the LISTEN state Linux reports these in C{TCP_INFO}'s
    C{tcpi_unacked} and C{tcpi_sacked} (what C{ss -ltn} shows as Recv-Q
    and Send-Q).
    """
    tcpInfo = getattr(socket, "TCP_INFO", None)
    if tcpInfo is None:
        return None
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        skt = socket.socket(fileno=copy)
    except OSError:
        os.close(copy)  # not a socket
        return None
    try:
        if skt.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        raw = skt.getsockopt(socket.IPPROTO_TCP, tcpInfo, _TCP_INFO.size)
    except OSError:
        return None
    finally:
        skt.close()
    if len(raw) < _TCP_INFO.size:
        return None
    info = _TCP_INFO.unpack(raw)
    if info[0] != _TCP_LISTEN:
        return None
    return info[8 + 4], info[8 + 5]
