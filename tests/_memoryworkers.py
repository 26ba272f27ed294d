"""
The memory-reactor pieces of the tests that drive the worker pool and
cluster mode without starting a process (C{test_pool_units},
C{test_cluster_units}): a memory reactor whose "processes" are stand-ins
whose channel ends the test holds, and reading and writing those channels.
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any

from twisted.internet.testing import MemoryReactorClock

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import Channel


def pump(reactor: MemoryReactorClock) -> None:
    """
    Let every channel the memory reactor watches read what waits for it.
    """
    for reader in list(reactor.getReaders()):
        if isinstance(reader, Channel):
            reader.doRead()


def receive(skt: socket.socket) -> list[Any]:
    """
    Every message waiting on C{skt} (the other end of a channel).
    """
    skt.setblocking(False)
    messages = []
    while True:
        try:
            data, ancillary, _flags, _addr = skt.recvmsg(wire.MAX_MESSAGE + 1, socket.CMSG_SPACE(64))
        except BlockingIOError:
            return messages
        fds = array.array("i")
        for _level, _type, cdata in ancillary:
            fds.frombytes(cdata)
        messages.append(wire.decode(data, list(fds)))


def controls(skt: socket.socket, type: str) -> list[dict[str, Any]]:
    """
    The fields of each control message C{type} waiting on C{skt}.
    """
    return [m.fields for m in receive(skt) if isinstance(m, wire.Control) and m.type == type]


def send(skt: socket.socket, type: str, **fields: Any) -> None:
    """
    Send control message C{type} with C{fields} on C{skt}, as the other
    end of a channel would.
    """
    skt.sendmsg([wire.encodeControl(type, **fields)])


class StandInProcess:
    """
    Stands in for a worker process.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)


class StandInReactor(MemoryReactorClock):
    """
    A memory reactor that starts stand-ins for worker processes: the test
    holds each one's end of its channel (in L{children}, in the order they
    were started) and its command line and environment (in L{commands}).
    """

    def __init__(self) -> None:
        super().__init__()
        self.children: list[socket.socket] = []
        self.commands: list[tuple[list[str], dict[str, str]]] = []
        self.protocols: list[Any] = []
        self.processes: list[StandInProcess] = []

    def spawnProcess(self, processProtocol: Any, executable: Any, args: Any = (), env: Any = None, path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False, childFDs: Any = None) -> Any:
        self.children.append(socket.socket(fileno=os.dup(childFDs[3])))
        self.commands.append((list(args), dict(env or {})))
        self.protocols.append(processProtocol)
        self.processes.append(StandInProcess(1000 + len(self.children)))
        return self.processes[-1]
