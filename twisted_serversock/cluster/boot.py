# -*- test-case-name: tests.test_cluster -*-
"""
A cluster worker's first module: C{python [interpreter options] -m
twisted_serversock.cluster.boot}, started by the primary with the worker's
facts in the environment (L{MARKER}).  It makes this process a worker, fits
C{twistd} and C{twist} to one, and runs the primary's program - its script,
C{-m} module or C{-c} command, with its arguments - as the interpreter
would have, with the same C{sys.argv} and C{sys.path[0]}.
"""

from __future__ import annotations

import builtins
import os
import runpy
import sys
import types

from .._twistedcompat import fitRunnersToWorker
from ._cmdline import splitCommandLine
from ._env import MARKER, WorkerEnvironment
from .worker import logObserver, setEnvironment

__all__ = ["main"]


def main() -> None:
    """
    Become a cluster worker and run the program.
    """
    text = os.environ.pop(MARKER, None)
    if text is None:
        sys.exit(f"{__name__} runs cluster workers; a cluster primary starts it with {MARKER} set")
    env = WorkerEnvironment.decode(text)
    os.set_inheritable(env.channelFd, False)  # not for the program's own children
    setEnvironment(env)
    program = splitCommandLine(env.argv)
    # twistd and twist: in the foreground, no pidfile, no second switch of
    # user, one line an event on standard error for the primary to relay.
    fitRunnersToWorker(logObserver)
    # The primary relays each line as it comes: no block buffering on pipes.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    sys.orig_argv = list(env.argv)
    # "-m" put the working directory first on sys.path; the program gets
    # what its own command line would have put there instead.
    safePath = getattr(sys.flags, "safe_path", False)  # -P, -I (Python 3.11+)
    if not safePath and sys.path:
        del sys.path[0]
    if program.kind == "module":
        first = os.getcwd()
    elif program.kind == "command":
        first = ""
    else:
        first = os.path.dirname(os.path.realpath(program.target))
    if not safePath:
        sys.path.insert(0, first)
    if program.kind == "script":
        sys.argv = [program.target, *program.args]
        runpy.run_path(program.target, run_name="__main__")
    elif program.kind == "module":
        sys.argv = [program.target, *program.args]
        runpy.run_module(program.target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *program.args]
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = module
        exec(compile(program.target, "<string>", "exec"), module.__dict__)


if __name__ == "__main__":
    main()
