"""
Importing C{--factory MODULE.NAME}: from the installed packages, and from
the working directory, as C{twistd -y} finds a C{.tac} file beside you.

The installed C{twistd} and C{twist} scripts put their own directory (the
virtualenv's C{bin}), not the working directory, first on C{sys.path}; so
C{--factory shout.make} with C{shout.py} in the working directory would not
be found, although C{python -m twisted} finds it.  The working directory is
added at the I{end} of C{sys.path}: an installed package of the same name
wins, as it does for C{python -m}.  The parent does this before its first
import, and so does each worker (which also gets the parent's C{sys.path}).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

__all__ = ["importFactory"]


def _addWorkingDirectory() -> None:
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.append(cwd)


def importFactory(name: str) -> Any:
    """
    The object C{name} (C{MODULE.NAME}) names, looked up with C{namedAny}
    once the working directory is on C{sys.path}.

    @raise ValueError: one line: what was not found, where it was looked
        for, and how to make it found; or the error importing it raised.
    """
    from twisted.python.reflect import namedAny

    _addWorkingDirectory()
    top = name.split(".", 1)[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        cwd = os.getcwd()
        places = ", ".join(entry for entry in sys.path if entry and os.path.abspath(entry) != cwd)
        raise ValueError(
            f"--factory {name} cannot be imported: no module or package named {top!r} in the working "
            f"directory {cwd} nor on sys.path ({places}); run from the directory that "
            f"holds {top}.py (or the package {top}/), add that directory to PYTHONPATH, or install it"
        )
    try:
        return namedAny(name)
    except Exception as e:
        raise ValueError(f"--factory {name} cannot be imported: {type(e).__name__}: {e}") from None
