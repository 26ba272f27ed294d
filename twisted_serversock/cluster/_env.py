# -*- test-case-name: tests.test_cluster -*-
"""
What a cluster worker is told when it starts: one environment variable
holding a JSON object, read (and removed, so that the program's own child
processes do not inherit it) by L{twisted_serversock.cluster.boot}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

__all__ = ["MARKER", "WorkerEnvironment", "encodeAddress", "decodeAddress"]

#: The environment variable that makes a process a cluster worker.
MARKER = "TWISTED_SERVERSOCK_CLUSTER_WORKER"


def encodeAddress(address: Any) -> list[Any]:
    """
    A listener's address as JSON-able data (for L{decodeAddress}).
    """
    if isinstance(address, IPv6Address):
        return ["TCP6", address.host, address.port, address.flowInfo, address.scopeID]
    if isinstance(address, IPv4Address):
        return ["TCP4", address.host, address.port]
    if isinstance(address, UNIXAddress):
        name: Any = address.name
        return ["UNIX", os.fsdecode(name) if name is not None else None]
    return ["OTHER", repr(address)]


def decodeAddress(data: list[Any]) -> Any:
    """
    The address L{encodeAddress} encoded.
    """
    kind = data[0]
    if kind == "TCP6":
        return IPv6Address("TCP", data[1], data[2], data[3], data[4])
    if kind == "TCP4":
        return IPv4Address("TCP", data[1], data[2])
    if kind == "UNIX":
        return UNIXAddress(None if data[1] is None else os.fsencode(data[1]))
    return data[1]


class WorkerEnvironment:
    """
    A worker's start-up facts.

    @ivar channelFd: the descriptor of the worker's channel to the primary.
    @ivar index: the worker's number (1, 2, ...).
    @ivar argv: the primary's command line (C{sys.orig_argv}), which the
        worker runs again.
    @ivar listeners: the primary's listeners when the worker started: for
        each description, C{(route id, address)}.
    @ivar primaryPid: the primary's process id.
    @ivar heartbeat: how often the worker says it is alive while idle
        (seconds).
    """

    def __init__(
        self,
        channelFd: int,
        index: int,
        argv: list[str],
        listeners: dict[str, tuple[int, Any]],
        primaryPid: int,
        heartbeat: float,
    ) -> None:
        self.channelFd = channelFd
        self.index = index
        self.argv = argv
        self.listeners = listeners
        self.primaryPid = primaryPid
        self.heartbeat = heartbeat

    def encode(self) -> str:
        """
        The value of the L{MARKER} variable.
        """
        return json.dumps(
            {
                "fd": self.channelFd,
                "index": self.index,
                "argv": self.argv,
                "listeners": {k: [route, encodeAddress(a)] for k, (route, a) in self.listeners.items()},
                "primary": self.primaryPid,
                "heartbeat": self.heartbeat,
            }
        )

    @classmethod
    def decode(cls, text: str) -> WorkerEnvironment:
        """
        Read the value of the L{MARKER} variable.

        @raise ValueError: if it is not what L{encode} wrote.
        """
        try:
            data = json.loads(text)
            return cls(
                int(data["fd"]),
                int(data["index"]),
                [str(a) for a in data["argv"]],
                {str(k): (int(v[0]), decodeAddress(v[1])) for k, v in data["listeners"].items()},
                int(data["primary"]),
                max(float(data["heartbeat"]), 0.01),
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{MARKER} is not a cluster worker's environment: {e}") from None
