# -*- test-case-name: tests.test_lifecycle -*-
"""
The parent's signals, in gunicorn's vocabulary: SIGTERM/SIGINT graceful
stop, SIGHUP graceful reload, SIGTTIN/SIGTTOU one worker more/fewer, SIGUSR1
log rotation (twistd's own handler when it logs to a file).

Handlers only schedule work on the reactor (C{callFromThread} is safe from
a signal handler and before the reactor runs): a signal that arrives during
start-up is acted on as soon as the reactor runs, instead of killing the
process with the signal's default action.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.logger import Logger

__all__ = ["installSignals"]

_log = Logger()


def installSignals(reactor: Any, pool: Any, terminate: Callable[[str], None]) -> None:
    """
    Install the parent's signal handlers.

    @param pool: the L{WorkerPool<twisted_serversock.ipc.pool.WorkerPool>},
        or None when serving in this process (then SIGHUP, SIGTTIN and
        SIGTTOU are logged and ignored).
    @param terminate: called (on the reactor) with the signal's name for
        SIGTERM and SIGINT.
    """

    def later(action: Callable[[], None]) -> Callable[[int, Any], None]:
        def handler(signum: int, frame: Any) -> None:
            reactor.callFromThread(action)

        return handler

    def stop(signum: int, frame: Any) -> None:
        reactor.callFromThread(terminate, signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    if pool is not None:
        actions: dict[signal.Signals, Callable[[], None]] = {
            signal.SIGHUP: pool.reload,
            signal.SIGTTIN: pool.addWorker,
            signal.SIGTTOU: pool.removeWorker,
        }
    else:

        def ignored(name: str) -> Callable[[], None]:
            return lambda: _log.info("{signal}: no worker processes (--workers 0); ignored", signal=name)

        actions = {sig: ignored(sig.name) for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)}
    for sig, action in actions.items():
        signal.signal(sig, later(action))
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        # twistd rotates its log file on SIGUSR1 when it has one; without a
        # file (--logfile=-, twist) there is nothing to reopen - but the
        # default action would kill the process.
        signal.signal(
            signal.SIGUSR1,
            later(lambda: _log.info("SIGUSR1: logging to a stream, not a file; nothing to reopen")),
        )
