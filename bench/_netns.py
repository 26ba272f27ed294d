"""
A peer that is not loopback, for the benchmarks of the accept path a
connection from another host takes: a network namespace of its own joined
to this one by a veth pair, as the offline tests build one
(C{tests/conftest.py}'s C{foreignHost}), with other names and addresses so
that the two never collide.

The server listens on L{SERVER_IP} (our end of the pair); the C client runs
inside the namespace (C{ip netns exec}) and connects from L{PEER_IP}. Both
are in the RFC 2544 benchmarking range and exist only on this pair, which
is removed again when the context ends, whatever happened.  Needs root and
iproute2 (C{ip}); L{available} says whether this process has them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator

from ._harness import BenchError, Context

#: Our end of the veth pair: what the servers listen on.
SERVER_IP = "198.18.9.1"
#: The namespace's end: where the client's connections come from.
PEER_IP = "198.18.9.2"


def available() -> bool:
    """
    Whether a network namespace can be made here: root and C{ip}.
    """
    return os.getuid() == 0 and shutil.which("ip") is not None


def _run(argv: list[str], check: bool = True) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@contextmanager
def peerNamespace(ctx: Context) -> Iterator[list[str]]:
    """
    Create the namespace and the veth pair; yield the command prefix that
    runs a program inside the namespace (C{["ip", "netns", "exec", NAME]}).
    Removes both on the way out, also on failure.

    @raise BenchError: if they cannot be created.
    """
    if not available():
        raise BenchError("a peer in a network namespace needs root and iproute2 (ip)")
    pid = os.getpid()
    name = f"tsbench{pid}"
    # Interface names: at most 15 characters.
    here, there = f"tbh{pid}"[:15], f"tbp{pid}"[:15]
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", name],
        ["ip", "addr", "add", f"{SERVER_IP}/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{PEER_IP}/30", "dev", there],
        ["ip", "netns", "exec", name, "ip", "link", "set", there, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            ctx.record(step)
            _run(step)
        yield ["ip", "netns", "exec", name]
    finally:
        # Deleting our end removes the pair; deleting the namespace, what is left.
        _run(["ip", "link", "del", here], check=False)
        _run(["ip", "netns", "del", name], check=False)
