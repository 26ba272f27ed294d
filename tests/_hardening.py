"""
Helpers shared by the hardening tests: process measurements from
C{/proc}, the short/long switch, and a driver for the echo server of
L{tests.soak.echoserver} running in its own process.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from twisted.internet import defer, protocol

from .conftest import theReactor, timeout
from .soak._proc import cpuSeconds, fdCount, openFiles, rssKiB

__all__ = ["cpuSeconds", "fdCount", "openFiles", "rssKiB"]  # (re-exported for the tests)

#: The repository root (the echo server runs as C{-m tests.soak.echoserver}).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: C{SERVERSOCK_SOAK=long} selects the long mode of the soak and load tests.
LONG = os.environ.get("SERVERSOCK_SOAK", "").lower() == "long"


@contextmanager
def nofile(wanted: int) -> Iterator[int]:
    """
    Raise this process's C{RLIMIT_NOFILE} soft limit to at least C{wanted}
    (and the hard limit with it, if we may), restoring both afterwards.

    @return: the soft limit in force inside the block.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    newHard = hard
    if hard != infinite and hard < wanted:
        try:  # root with CAP_SYS_RESOURCE may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
            newHard = wanted
        except (ValueError, OSError):
            pass
    newSoft = max(soft, wanted if newHard == infinite else min(wanted, newHard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (newSoft, newHard))
    try:
        yield newSoft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def reactorName() -> str:
    """
    C{"asyncio"} when the tests run on the asyncio reactor, else
    C{"default"}: child servers run on the same kind.
    """
    return "asyncio" if "asyncio" in type(theReactor()).__module__ else "default"


def childEnv() -> dict[str, str]:
    """
    The environment for a Python child that imports C{tests.*} from here.
    """
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + path if path else ""))


class CollectingProcess(protocol.ProcessProtocol):
    """
    A child process whose output is collected.

    @ivar out: its standard output.
    @ivar err: its standard error.
    @ivar ended: fires with its exit code.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class EchoServer(protocol.ProcessProtocol):
    """
    A L{tests.soak.echoserver} process.

    @ivar info: its C{listening} line (C{pid}, C{port} or C{path}, C{fds}).
    @ivar logs: its log events, in order.
    """

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.logs: list[dict[str, Any]] = []
        self.stderr = b""
        self._buffer = b""
        self.listening: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._stats: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            event = json.loads(line)
            kind = event.pop("event")
            if kind == "listening":
                self.info = event
                self.listening.callback(event)
            elif kind == "stats":
                self._stats.put(event)
            else:
                self.logs.append(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        if not self.listening.called:
            self.listening.errback(AssertionError(f"the echo server exited ({code}): {self.stderr.decode()}"))
        self.ended.callback(code)

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    async def stats(self) -> dict[str, Any]:
        self.transport.write(b"stats\n")
        return await timeout(self._stats.get())  # type: ignore[no-any-return]

    async def stop(self) -> int:
        if not self.ended.called:
            self.transport.closeStdin()
        return await timeout(self.ended)  # type: ignore[no-any-return]

    def logged(self, level: str, text: str) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["level"] == level and text in (e["format"] or "")]

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.logs if e["failure"] or e["level"] in ("error", "critical")]


async def startEchoServer(*args: str) -> EchoServer:
    """
    Start an echo server process with C{args} and wait until it listens.
    """
    proc = EchoServer()
    argv = [sys.executable, "-m", "tests.soak.echoserver", "--reactor", reactorName(), *args]
    theReactor().spawnProcess(proc, sys.executable, argv, env=childEnv(), path=ROOT)
    await timeout(proc.listening, 30)
    return proc
