"""
Helpers several test modules share that are neither fixtures (those are in
C{conftest.py}) nor about child processes (C{_procs.py}).
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any

from twisted.internet import defer

from .conftest import timeout


class Events:
    """
    Records every event of a L{TCPSocket} or L{TCPServerSocket}, and lets a
    test wait for the next one of a kind.
    """

    KINDS = ("open", "data", "drain", "error", "close", "connect")

    def __init__(self, target: Any) -> None:
        self.target = target
        self.log: list[tuple[str, Any]] = []
        self._queues: dict[str, defer.DeferredQueue[Any]] = {k: defer.DeferredQueue() for k in self.KINDS}
        for kind in self.KINDS:
            if hasattr(target, "on" + kind):
                setattr(target, "on" + kind, self._recorder(kind))

    def _recorder(self, kind: str) -> Any:
        def record(event: Any) -> None:
            self.log.append((kind, event))
            self._queues[kind].put(event)

        return record

    def next(self, kind: str) -> defer.Deferred[Any]:
        return timeout(self._queues[kind].get())

    def kinds(self) -> list[str]:
        return [k for k, _ in self.log]

    async def received(self, n: int) -> Any:
        """
        Everything received once C{n} bytes (or characters) have arrived.
        """
        got: Any = None
        while got is None or len(got) < n:
            event = await self.next("data")
            got = event.data if got is None else got + event.data
        return got


class FlakyListeningSocket:
    """
    Stands in for the listening socket: raises the given errors from
    accept() first, then behaves like the real one.
    """

    def __init__(self, real: socket.socket, errors: list[int]) -> None:
        self._real = real
        self._errors = list(errors)

    def accept(self) -> Any:
        if self._errors:
            err = self._errors.pop(0)
            raise OSError(err, os.strerror(err))
        return self._real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def openFds() -> set[int]:
    """
    This process's open descriptors.
    """
    return {int(n) for n in os.listdir("/proc/self/fd")}


class Collect:
    """
    The receiver of an IPC channel: records its messages, and fires
    C{lost} with the reason it was lost.
    """

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.lost: defer.Deferred[Any] = defer.Deferred()

    def messageReceived(self, message: Any) -> None:
        self.messages.append(message)

    def channelLost(self, reason: Any) -> None:
        self.lost.callback(reason.value)


def rawSend(skt: socket.socket, data: bytes, fds: list[int] = []) -> None:
    """
    Send C{data}, and descriptors C{fds} with it, on a channel's socket as
    a peer would, bypassing the channel's own encoding.
    """
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    skt.sendmsg([data], anc)
