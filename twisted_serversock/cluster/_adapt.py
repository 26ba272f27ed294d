# -*- test-case-name: tests.test_cluster -*-
"""
C{twistd} and C{twist} fitted to a cluster worker: the primary already did
what a server does once - daemonized, wrote the pidfile, chose the log,
changed root, umask, user and group - and started the worker after it, so
the worker inherits all of it and must not do it again (a second pidfile
check would find the primary running; a second switch of user would fail
without root).  The worker runs in the foreground and logs one line an
event to standard error, which the primary relays into its own log.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["adaptTwistedRunners"]


def adaptTwistedRunners() -> None:
    """
    Patch C{twistd}'s application runner and C{twist}'s options in this
    (worker) process.  Imports neither the reactor nor the program.
    """
    from twisted.application.twist._options import TwistOptions
    from twisted.scripts._twistd_unix import UnixApplicationRunner

    from .worker import logObserver

    runnerInit = UnixApplicationRunner.__init__

    def workerRunnerInit(self: Any, config: Any) -> None:
        config["nodaemon"] = True
        config["pidfile"] = ""
        config["syslog"] = False
        config["logfile"] = "-"
        config["logger"] = lambda: logObserver
        config["chroot"] = None
        config["umask"] = None
        config["uid"] = config["gid"] = None
        config["euid"] = False
        runnerInit(self, config)

    def keepPrivileges(self: Any, euid: Any, uid: Any, gid: Any) -> None:
        pass  # the primary's user and group, inherited

    UnixApplicationRunner.__init__ = workerRunnerInit  # type: ignore[method-assign]
    UnixApplicationRunner.shedPrivileges = keepPrivileges  # type: ignore[method-assign]

    postOptions = TwistOptions.postOptions

    def workerPostOptions(self: Any) -> None:
        postOptions(self)
        self["logFile"] = sys.stderr
        self["fileLogObserverFactory"] = lambda f: logObserver

    TwistOptions.postOptions = workerPostOptions  # type: ignore[method-assign]
