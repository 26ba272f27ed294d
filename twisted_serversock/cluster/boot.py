# -*- test-case-name: tests.test_cluster -*-
"""
How a cluster worker runs the primary's program (its C{sys.orig_argv}),
once its start-up message is read (L{twisted_serversock.ipc.__main__}): as
the interpreter would have, with the same C{sys.argv} and C{sys.path[0]},
with C{twistd} and C{twist} fitted to a worker.
"""

from __future__ import annotations

import builtins
import os
import runpy
import socket
import sys
import types
from typing import Any

from .._twistedcompat import fitRunnersToWorker
from ..ipc.worker import logObserver
from . import registry
from .primary import splitCommandLine

__all__ = ["run"]


def run(channel: socket.socket, startup: dict[str, Any]) -> None:
    """Become the cluster worker C{startup} describes, with C{channel} to the primary, and run the program."""
    registry.becomeWorker(channel, startup)
    argv = startup["argv"]
    program = splitCommandLine(argv)
    # twistd and twist: in the foreground, no pidfile, no second switch of
    # user, each log event to the primary (one line of JSON on standard
    # error): the user's --logger/--logfile/--syslog is the primary's.
    fitRunnersToWorker(logObserver)
    # What the program prints itself reaches the primary line by line.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    sys.orig_argv = list(argv)
    # "-m" put the working directory first on sys.path; the program gets
    # what its own command line would have put there instead.
    if not getattr(sys.flags, "safe_path", False):  # -P, -I (Python 3.11+)
        places = {"module": os.getcwd(), "command": ""}
        sys.path[0:1] = [places.get(program.kind, os.path.dirname(os.path.realpath(program.target)))]
    if program.kind == "command":
        sys.argv = ["-c", *program.args]
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = module
        exec(compile(program.target, "<string>", "exec"), module.__dict__)
        return
    sys.argv = [program.target, *program.args]
    if program.kind == "module":
        runpy.run_module(program.target, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(program.target, run_name="__main__")
