"""
Start-up failures of C{twistd serversock} and C{twist serversock} as one
line, not a traceback.

A port that cannot be had is the user's to fix, not a bug: the line names
the C{--listen} endpoint, the Gecko result and what to do (the advice is in
the L{NSError}'s message, see L{twisted_serversock._advice}), and the process
exits with status 1.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import NoReturn

from twisted.internet.error import CannotListenError

__all__ = ["StartupError", "failStartup", "cannotListenReason"]


class StartupError(Exception):
    """
    The program cannot start; the message (one line) says why and what to
    do.  Under C{twistd}'s daemon mode the message travels through its
    status pipe (which takes an C{Exception}); otherwise it is printed
    without a traceback.
    """


def cannotListenReason(error: Exception) -> str:
    """
    Why listening failed, without the wrapper's words: the L{NSError} a
    C{CannotListenError} carries (result, reason, advice), or the error
    itself.
    """
    if isinstance(error, CannotListenError) and error.socketError is not None:
        return str(error.socketError)
    return f"{type(error).__name__}: {error}"


def failStartup(message: str) -> NoReturn:
    """
    Raise L{StartupError} with C{message}, prefixed with the program's name
    (C{twistd serversock: ...}), after making sure Python reports it as that
    one line, not a traceback, if nothing catches it.
    """
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "twistd"
    previous = sys.excepthook

    def oneLine(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, StartupError):
            sys.stderr.write(f"{value}\n")
            sys.stderr.flush()
        else:
            previous(kind, value, tb)

    sys.excepthook = oneLine
    raise StartupError(f"{program} {message}")
