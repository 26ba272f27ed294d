# -*- test-case-name: tests.test_lifecycle -*-
"""
A parent's stop (L{ParentStop}) and signals, in gunicorn's vocabulary:
SIGTERM/SIGINT graceful stop, SIGHUP graceful reload, SIGTTIN/SIGTTOU one
worker more/fewer, SIGUSR1 log rotation (twistd's own handler when it logs
to a file).

Handlers only schedule work on the reactor (C{callFromThread} is safe from
a signal handler and before the reactor runs): a signal that arrives during
start-up is acted on as soon as the reactor runs, instead of killing the
process with the signal's default action.
"""

from __future__ import annotations

import signal
import socket
from functools import partial
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from .._twistedcompat import stopSignalsHandledBy

__all__ = ["ParentStop"]

_log = Logger()


class ParentStop:
    """
    How a parent stops, whoever asks (SIGTERM/SIGINT, the reactor's
    shutdown, C{stopService}): its listeners stop (a C{gecko:} one first
    takes the connections its kernel queue holds: they go to the workers
    too), then its workers get the grace period to finish their
    connections; once.  A signal then stops the reactor, without
    re-raising the signal, so a graceful stop under C{twistd} exits with
    status 0.

    @ivar pool: the L{WorkerPool<twisted_serversock.ipc.pool.WorkerPool>}
        to stop, once there is one.
    @ivar notifier: told C{stopping} on a signal when serving in this
        process (a pool tells systemd itself).
    @ivar grace: seconds the workers get to finish their connections.
    @ivar lameDuck: seconds a signal's stop waits first (0: none).
    """

    def __init__(self, reactor: Any, grace: float, ports: Callable[[], list[Any]], lameDuck: float = 0.0) -> None:
        """
        @param ports: returns the listening ports to stop (called once).
        @param lameDuck: seconds a signal's stop waits, still accepting and
            serving, before it begins (see L{terminate}).
        """
        self._reactor, self.grace, self._ports, self.lameDuck = reactor, grace, ports, lameDuck
        self.notifier: Any = None
        self.pool: Any = None
        self._stopped: defer.Deferred[Any] | None = None
        self._delay: Any = None  # the lame-duck delay's call, once begun

    @property
    def stopping(self) -> bool:
        """Whether the stop has begun."""
        return self._stopped is not None

    def installSignals(self) -> None:
        """
        Install the parent's signal handlers: SIGTERM and SIGINT L{terminate};
        without a pool, SIGHUP, SIGTTIN and SIGTTOU are logged and ignored.
        """
        reactor = self._reactor

        def later(action: Callable[[], None]) -> Callable[[int, Any], None]:
            return lambda signum, frame: reactor.callFromThread(action)

        def stop(signum: int, frame: Any) -> None:
            reactor.callFromThread(self.terminate, signal.Signals(signum).name)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        # And the handlers the reactor installs when it starts running: a
        # SIGTERM during start-up is then a graceful stop too.
        stopSignalsHandledBy(reactor, stop)
        ignored = "{signal}: no worker processes (--workers 0); ignored"
        for sig, action in ((signal.SIGHUP, "reload"), (signal.SIGTTIN, "addWorker"), (signal.SIGTTOU, "removeWorker")):
            signal.signal(sig, later(getattr(self.pool, action) if self.pool is not None else partial(_log.info, ignored, signal=sig.name)))
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            # twistd rotates its log file on SIGUSR1 when it has one; without a
            # file (--logfile=-, twist) there is nothing to reopen - but the
            # default action would kill the process.
            signal.signal(signal.SIGUSR1, later(partial(_log.info, "SIGUSR1: logging to a stream, not a file; nothing to reopen")))

    def terminate(self, why: str) -> None:
        """
        SIGTERM/SIGINT: stop, then stop the reactor.  With a lame-duck delay,
        first go on accepting and serving for L{lameDuck} seconds, so that a
        load balancer (or Kubernetes, which removes a terminating pod's
        endpoints while it sends SIGTERM) stops sending new connections
        before the listeners close; a second signal ends the delay at once.
        """
        if self._delay is not None and self._delay.active():
            self._delay.cancel()
            _log.info("{signal} during the lame-duck delay: stopping gracefully now (grace {grace} s)", signal=why, grace=self.grace)
        elif self._delay is None and self.lameDuck > 0 and not self.stopping:
            _log.info(
                "{signal}: lame duck: still accepting and serving for {delay} s, then stopping gracefully (grace {grace} s); "
                "another SIGTERM or SIGINT stops now", signal=why, delay=self.lameDuck, grace=self.grace,
            )  # fmt: skip
            if self.notifier is not None:
                self.notifier.stopping("stopping")
            self._delay = self._reactor.callLater(self.lameDuck, self._endDelay)
            return
        else:
            _log.info("{signal}: stopping gracefully (grace {grace} s)", signal=why, grace=self.grace)
        if self.notifier is not None and self._delay is None:
            self.notifier.stopping("stopping")
        self._stopReactor()

    def _endDelay(self) -> None:
        _log.info("Lame-duck delay over: closing the listeners, stopping gracefully (grace {grace} s)", grace=self.grace)
        self._stopReactor()

    def _stopReactor(self) -> None:
        self.stop().addBoth(lambda _: self._reactor.stop() if self._reactor.running else None)

    def stop(self) -> defer.Deferred[None]:
        """Stop listening, then stop the workers; every caller gets its own Deferred that fires when all of it is done."""
        if self._delay is not None and self._delay.active():
            self._delay.cancel()  # the reactor's shutdown, stopService: now
        if self._stopped is None:
            stops = [defer.maybeDeferred(_stopListening, port) for port in self._ports()]
            self._stopped = stopped = defer.gatherResults(stops, consumeErrors=True)
            stopped.addErrback(lambda f: _log.failure("Error while stopping listening", f))
            pool = self.pool
            if pool is not None:
                stopped.addCallback(lambda _: pool.stop(self.grace))
                stopped.addErrback(lambda f: _log.failure("Error while stopping the workers", f))
        d: defer.Deferred[None] = defer.Deferred()
        self._stopped.addBoth(lambda _: d.callback(None))
        return d


def _stopListening(port: Any) -> Any:
    """
    Stop C{port}.  A Twisted port of its own (C{twistd serversock --listen
    tcp:...}) first accepts what its kernel queue holds, in one accept run
    as long as its backlog (Twisted's would reset it); a gecko port does so
    itself, in its close.
    """
    if getattr(port, "connected", False) and isinstance(getattr(port, "numberAccepts", None), int) and callable(getattr(port, "doRead", None)):
        port.numberAccepts = int(getattr(port, "backlog", socket.SOMAXCONN)) + 1
        port.doRead()  # (it logs what it raises itself)
    return port.stopListening()
