"""
Every worker process (C{python -m twisted_serversock.ipc}, started by its
parent with the channel as descriptor 3): its start-up message says which
worker it is, C{twistd serversock}'s (L{twisted_serversock.ipc.worker.serve})
or a cluster's (L{twisted_serversock.cluster.boot.run}).
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.logger import LogLevel

from .._tlsfiles import receive
from .logs import writeOwnLines
from .spawn import CHANNEL_FD, readStartup
from .worker import logObserver, serve


def main() -> int:
    """Become the worker the start-up message says; return the exit status."""
    os.set_inheritable(CHANNEL_FD, False)  # never into a process this one starts
    channel = socket.socket(fileno=CHANNEL_FD)
    try:
        startup = readStartup(channel)
    except ValueError as e:
        logObserver({"log_format": "{e}", "e": e, "log_level": LogLevel.critical})
        return 2
    startup["heartbeat"] = max(startup["heartbeat"], 0.01)
    writeOwnLines(startup.pop("log", None), startup["index"])  # where the parent logs text to a plain descriptor
    receive(startup.pop("files"))  # the TLS files the parent read for this worker (kept here only)
    if startup["worker"] == "cluster":
        from ..cluster.boot import run

        run(channel, startup)
        return 0
    return serve(channel, startup)


if __name__ == "__main__":
    sys.exit(main())
