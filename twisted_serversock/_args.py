"""
Checks for arguments given from Python, shared by the endpoint classes and
the Gecko API.

Python does not check types, and the bugs this prevents are quiet ones:
C{reclaimStale="no"} is truthy and turned reclaim I{on}, C{port="80"}
failed deep inside with an unrelated message.  Each check raises
C{TypeError} (wrong kind) or C{ValueError} (right kind, bad value) with a
message that names the argument; the Gecko API turns them into
C{NSError(NS_ERROR_INVALID_ARG)} with L{asNSError}.
"""

from __future__ import annotations

import grp
import operator
import os
from typing import Any, Callable, TypeVar

from .results import NS_ERROR_INVALID_ARG, NSError

__all__ = [
    "MAX_PORT",
    "MAX_BACKLOG",
    "boolean",
    "integer",
    "text",
    "pathLike",
    "SELF_UID",
    "uids",
    "groupId",
    "asNSError",
]

#: The highest TCP port.
MAX_PORT = 65535

#: The largest backlog a server socket or an endpoint takes (C{listen(2)}'s
#: argument is a C int; the kernel caps it at C{net.core.somaxconn}).
MAX_BACKLOG = 2**31 - 1

#: An C{allowedUids} member that stands for the uid the server runs as when
#: a peer connects (its effective uid), looked up then, not when the set is
#: given: a C{twistd --uid} server binds as root and then serves as that uid.
SELF_UID = "self"

_T = TypeVar("_T")


def boolean(value: object, name: str) -> bool:
    """
    C{value} as a C{bool}: C{True}/C{False}, or the integers 0 and 1 (XPCOM
    booleans).  A string is refused: C{"no"} would be true.

    @raise TypeError: naming C{name}.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, not {value!r}")


def integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """
    C{value} as an C{int} (any object with C{__index__}, never a C{bool} or
    a string), within C{low}..C{high} when given.

    @raise TypeError: naming C{name}, for a value that is not an integer.
    @raise ValueError: naming C{name}, for one out of range.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {value!r}") from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name} must be from {low} to {high}, not {number}")
    return number


def text(value: object, name: str) -> str:
    """
    C{value}, which must be a C{str}.

    @raise TypeError: naming C{name}.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {value!r}")
    return value


def pathLike(value: Any, name: str) -> Any:
    """
    C{value}, which must be a non-empty C{str}, C{bytes} or
    C{os.PathLike} (its length is checked where it is bound, with the
    platform's limit).

    @raise TypeError: naming C{name}, for anything else.
    @raise ValueError: naming C{name}, for an empty path or a NUL in it.
    """
    try:
        raw = os.fsencode(value)
    except TypeError:
        raise TypeError(f"{name} must be a str, bytes or os.PathLike path, not {value!r}") from None
    if not raw:
        raise ValueError(f"{name} is empty")
    if b"\0" in raw:
        raise ValueError(f"{name} contains a NUL byte: {value!r}")
    return value


def uids(value: Any, name: str = "allowedUids") -> frozenset[int | str] | None:
    """
    C{value} (C{None}, or an iterable of uids, and maybe L{SELF_UID}) as a
    frozen set.

    @raise TypeError: naming C{name}, for a non-iterable (or a string: its
        characters are not uids) or a member that is neither an integer nor
        L{SELF_UID}.
    @raise ValueError: naming C{name}, for a negative uid.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of integer uids, not the string {value!r}")
    try:
        members = frozenset(value)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of integer uids, not {value!r}") from None
    return frozenset(
        uid if isinstance(uid, str) and uid == SELF_UID else integer(uid, f"{name} member {uid!r}", 0, 2**32 - 1)
        for uid in members
    )


def groupId(value: object, name: str = "group") -> int | None:
    """
    The group id C{value} names: C{None}, a gid (an integer, or a string of
    digits, as systemd's C{SocketGroup=} takes), or a group name (looked up
    in the group database; this may ask NSS, so it happens once, when the
    endpoint or socket is set up, as Twisted's own C{unix:} does with the
    file system).

    @raise TypeError: naming C{name}, for anything else.
    @raise ValueError: naming C{name} and the group, for an unknown group
        or a bad gid.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} is empty")
        if value.isdigit():
            return integer(int(value), name, 0, 2**32 - 2)
        try:
            return grp.getgrnam(value).gr_gid
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            raise ValueError(f"{name}: unknown group {value!r}") from None
    return integer(value, name, 0, 2**32 - 2)


def asNSError(check: Callable[..., _T], *args: object) -> _T:
    """
    Run one of the checks above for the Gecko API: its C{TypeError} or
    C{ValueError} becomes C{NSError(NS_ERROR_INVALID_ARG)} with the same
    message.
    """
    try:
        return check(*args)
    except (TypeError, ValueError) as e:
        raise NSError(NS_ERROR_INVALID_ARG, str(e)) from None
