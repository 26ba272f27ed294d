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


def openFiles(pid: int | str = "self") -> set[str]:
    """
    What process C{pid}'s descriptors refer to (C{socket:[INODE]},
    C{pipe:[INODE]}, paths): a descriptor opened later is a new member even
    when it reuses the number of one closed meanwhile.
    """
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed since the listing
            pass
    return found


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
