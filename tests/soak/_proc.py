"""
What C{/proc} says about a process: open descriptors, resident set, CPU.
(No Twisted and no pytest here: the soak script uses it standalone.)
"""

from __future__ import annotations

import os


def fdCount(pid: int | str = "self") -> int:
    """
    How many descriptors process C{pid} has open.
    """
    return len(os.listdir(f"/proc/{pid}/fd"))


def rssKiB(pid: int | str = "self") -> int:
    """
    The resident set size of process C{pid}, in KiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpuSeconds(pid: int | str = "self") -> float:
    """
    User plus system CPU time process C{pid} has used, in seconds.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
