"""
The source text of Twisted's (and h2's) code, which the private-name checks
of L{_twistedcompat<twisted_serversock._twistedcompat>} and
L{_h2compat<twisted_serversock._h2compat>} read to see that what they rely
on is still there.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["mroSource", "source"]


def source(obj: Any) -> str:
    """C{obj}'s source, or C{""} where there is none to read."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def mroSource(cls: type) -> str:
    """The source of C{cls} and of every Twisted class it inherits from."""
    return "\n".join(source(klass) for klass in cls.__mro__ if klass.__module__.startswith("twisted."))
