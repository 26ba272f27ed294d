"""
A peer that is not loopback, for the benchmarks of the accept path a
connection from another host takes: a network namespace of its own joined
to this one by a veth pair, as the offline tests build one
(C{tests/conftest.py}'s C{foreignHost}), with other names and addresses so
that the two never collide.

The server listens on our end of the pair, L{Peer.serverIP}; the C client
runs inside the namespace (C{ip netns exec}) and connects from
L{Peer.peerIP}.  Both are in 198.19.0.0/16 (RFC 2544's benchmarking range;
the tests take theirs from 198.18.0.0/16), in a /30 picked from this process's id and
not in use on this host, so that two benchmark runs at once do not share
one, and exist only on this pair, which is removed again when the context
ends, whatever happened.  Needs root and iproute2 (C{ip}); L{available}
says whether this process has them.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ._harness import BenchError, Context

#: Where the /30s come from.
RANGE = ipaddress.IPv4Network("198.19.0.0/16")

#: The placeholder for L{Peer.serverIP} in endpoint descriptions.
SERVER_IP = "$SERVER_IP"


@dataclass(frozen=True)
class Peer:
    """
    A network namespace joined to this one.

    @ivar serverIP: our end of the veth pair: what servers listen on.
    @ivar peerIP: the namespace's end: where the client's connections come
        from.
    @ivar inside: the command prefix that runs a program inside the
        namespace (C{["ip", "netns", "exec", NAME]}).
    """

    serverIP: str
    peerIP: str
    inside: list[str]

    def describe(self, description: str) -> str:
        """
        An endpoint description with L{SERVER_IP} replaced by our address.
        """
        return description.replace(SERVER_IP, self.serverIP)


def available() -> bool:
    """
    Whether a network namespace can be made here: root and C{ip}.
    """
    return os.getuid() == 0 and shutil.which("ip") is not None


def _run(argv: list[str], check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _freeSubnet(pid: int) -> ipaddress.IPv4Network:
    """
    A /30 of L{RANGE} that no address of this host is in, starting from
    one picked by C{pid}.
    """
    words = _run(["ip", "-o", "-4", "addr", "show"]).split()
    inUse = [ipaddress.IPv4Interface(word).ip for word in words if "/" in word and word[0].isdigit()]
    subnets = list(RANGE.subnets(new_prefix=30))
    for i in range(len(subnets)):
        subnet = subnets[(pid + i) % len(subnets)]
        if not any(address in subnet for address in inUse):
            return subnet
    raise BenchError(f"no free /30 in {RANGE}")


@contextmanager
def peerNamespace(ctx: Context) -> Iterator[Peer]:
    """
    Create the namespace and the veth pair; yield the L{Peer}.  Removes
    both on the way out, also on failure.

    @raise BenchError: if they cannot be created.
    """
    if not available():
        raise BenchError("a peer in a network namespace needs root and iproute2 (ip)")
    pid = os.getpid()
    name = f"tsbench{pid}"
    # Interface names: at most 15 characters.
    here, there = f"tbh{pid}"[:15], f"tbp{pid}"[:15]
    server, peer = (str(a) for a in list(_freeSubnet(pid).hosts())[:2])
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", name],
        ["ip", "addr", "add", f"{server}/30", "dev", here],
        ["ip", "link", "set", here, "up"],
        ["ip", "netns", "exec", name, "ip", "addr", "add", f"{peer}/30", "dev", there],
        ["ip", "netns", "exec", name, "ip", "link", "set", there, "up"],
        ["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            ctx.record(step)
            _run(step)
        yield Peer(server, peer, ["ip", "netns", "exec", name])
    finally:
        # Deleting our end removes the pair; deleting the namespace, what is left.
        _run(["ip", "link", "del", here], check=False)
        _run(["ip", "netns", "del", name], check=False)
