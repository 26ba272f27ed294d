# -*- test-case-name: tests.test_tap -*-
"""
The worker process of C{twistd serversock}: C{python -m
twisted_serversock.ipc.worker --channel-fd 3 --factory MODULE.NAME}.

It adopts each connection the parent hands over with the protocol factory,
and on the parent's C{stop} message (or if the parent goes away) lets its
open connections finish for the grace period, then exits 0.  Its log goes
to stderr, one line an event, which the parent relays into its own log.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from typing import Any

from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent, globalLogBeginner
from zope.interface import implementer
from twisted.python.failure import Failure

__all__ = ["main", "resolveFactory"]

_log = Logger()


def resolveFactory(name: str) -> Any:
    """
    The protocol factory C{name} names: an C{IProtocolFactory} provider, or
    a zero-argument callable returning one (resolved with C{namedAny}).

    @raise ValueError: with a one-line reason if it cannot be imported or
        is not a protocol factory.
    """
    from twisted.internet.interfaces import IProtocolFactory
    from twisted.python.reflect import namedAny

    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"--factory must be a dotted name such as mypackage.mymodule.factory, not {name!r}")
    try:
        obj = namedAny(name)
    except Exception as e:
        raise ValueError(f"--factory {name} cannot be imported: {type(e).__name__}: {e}") from None
    if IProtocolFactory.providedBy(obj):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except Exception as e:
            raise ValueError(f"--factory {name}() failed: {type(e).__name__}: {e}") from None
        if IProtocolFactory.providedBy(made):
            return made
        raise ValueError(f"--factory {name}() returned {made!r}, which is not an IProtocolFactory")
    raise ValueError(f"--factory {name} is {obj!r}, which is neither an IProtocolFactory nor a callable returning one")


@implementer(ILogObserver)
def _stderrObserver(event: dict[str, Any]) -> None:
    """
    One line an event (plus a traceback), for the parent to relay; the
    level is written unless it is info.
    """
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    level = event.get("log_level")
    if level is not None and level is not LogLevel.info:
        text = f"{level.name}: {text}"
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Worker:
    """
    One worker: adopts connections, drains on stop.

    @ivar adopted: how many connections this worker adopted.
    """

    def __init__(self, reactor: Any, factory: Any, channel: socket.socket, index: int) -> None:
        from .child import ParentLink

        self._reactor = reactor
        self._factory = factory
        self._index = index
        self._transports: list[Any] = []
        self._pruneAt = 256
        self.adopted = 0
        self._stopping = False
        self.link = ParentLink(channel, reactor, name=f"worker {index} channel")
        self.link.onConnection = self._adopt
        self.link.onControl = self._control
        self.link.onLost = self._parentLost

    def start(self) -> None:
        self._factory.doStart()
        self.link.sendControl("ready", pid=os.getpid())

    def factoryFor(self, route: int) -> Any:
        """
        The protocol factory for connections of C{route}: the one factory
        here; cluster mode's workers have one per listener.

        @return: the factory, or L{None} for a route this worker does not
            serve (the connection is then closed and the error logged).
        """
        return self._factory

    def _adopt(self, route: int, skt: socket.socket) -> None:
        factory = self.factoryFor(route)
        if factory is None:
            _log.error("A connection for route {route}, which this worker does not serve, arrived; closing it", route=route)
            skt.close()
            return
        try:
            transport = self._reactor.adoptStreamConnection(skt.fileno(), skt.family, factory)
        finally:
            skt.close()  # the reactor holds its own duplicate
        self.adopted += 1
        if transport is not None:
            self._transports.append(transport)
            if len(self._transports) > self._pruneAt:
                # Forget closed connections now and then (amortised O(1)).
                self._transports = [t for t in self._transports if t.connected]
                self._pruneAt = max(256, 2 * len(self._transports))

    def _control(self, message: Any) -> None:
        if message.type == "stop":
            grace = message.fields.get("grace", 10.0)
            self.stop(float(grace) if isinstance(grace, (int, float)) else 10.0)
        else:
            _log.warn("Ignored an unknown control message {type!r} from the parent", type=message.type)

    def _parentLost(self, reason: Failure) -> None:
        if not self._stopping:
            _log.warn("The parent process went away; finishing open connections")
            self.stop(10.0)

    def stop(self, grace: float) -> None:
        """
        Let open connections finish for C{grace} seconds, then exit.
        """
        if self._stopping:
            return
        self._stopping = True
        self._deadline = time.monotonic() + grace
        self._poll()

    def _poll(self) -> None:
        self._transports = [t for t in self._transports if t.connected]
        if not self._transports:
            self._finish()
        elif time.monotonic() >= self._deadline:
            _log.warn("Grace period over; aborting {n} open connection(s)", n=len(self._transports))
            for t in self._transports:
                t.abortConnection()
            self._reactor.callLater(0, self._finish)
        else:
            self._reactor.callLater(0.05, self._poll)

    def _finish(self) -> None:
        _log.info("Worker {index} adopted {n} connection(s); exiting", index=self._index, n=self.adopted)
        try:
            self._factory.doStop()
        finally:
            self.link.channel.loseConnection()
            self._reactor.stop()


def main(argv: list[str] | None = None) -> int:
    """
    Run one worker (the parent starts it; not for direct use).
    """
    parser = argparse.ArgumentParser(prog="twisted_serversock.ipc.worker")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--factory", required=True)
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([_stderrObserver], redirectStandardIO=False)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    try:
        factory = resolveFactory(args.factory)
    except ValueError as e:
        _log.error("{error}", error=e)
        return 2
    channel = socket.socket(fileno=args.channel_fd)
    worker = Worker(reactor, factory, channel, args.index)
    # The parent decides when workers stop: a terminal's Ctrl-C reaches the
    # whole process group, so SIGINT is ignored here; SIGTERM (sent to a
    # worker directly) is a graceful stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(worker.stop, 10.0))
    reactor.callWhenRunning(worker.start)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
