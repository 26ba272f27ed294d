# -*- test-case-name: tests.test_results -*-
"""
Gecko result codes (C{nsresult}), the L{NSError} exception that carries
them, and the mapping from operating-system C{errno} values to them.

Every failure of the twisted-serversock API is an L{NSError}: Gecko callers
test C{error.result == NS_ERROR_...}, Python callers read C{str(error)},
which names the code, its hexadecimal value and the human reason.

The values are Gecko's, computed as Gecko computes them
(C{0x80000000 | ((module + 0x45) << 16) | code}), so a port of Gecko code
can compare against the numbers it already knows.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "NSError",
    "nameOf",
    "fromErrno",
    "succeeded",
    "failed",
    "NS_OK",
    "NS_BINDING_ABORTED",
    "NS_ERROR_NOT_INITIALIZED",
    "NS_ERROR_ALREADY_INITIALIZED",
    "NS_ERROR_NOT_IMPLEMENTED",
    "NS_ERROR_ABORT",
    "NS_ERROR_FAILURE",
    "NS_ERROR_UNEXPECTED",
    "NS_ERROR_OUT_OF_MEMORY",
    "NS_ERROR_INVALID_ARG",
    "NS_ERROR_NOT_AVAILABLE",
    "NS_ERROR_CONNECTION_REFUSED",
    "NS_ERROR_NET_TIMEOUT",
    "NS_ERROR_IN_PROGRESS",
    "NS_ERROR_OFFLINE",
    "NS_ERROR_NET_RESET",
    "NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED",
    "NS_ERROR_SOCKET_ADDRESS_IN_USE",
    "NS_BASE_STREAM_CLOSED",
    "NS_BASE_STREAM_WOULD_BLOCK",
    "NS_ERROR_FILE_UNRESOLVABLE_SYMLINK",
    "NS_ERROR_FILE_NOT_DIRECTORY",
    "NS_ERROR_FILE_IS_DIRECTORY",
    "NS_ERROR_FILE_NO_DEVICE_SPACE",
    "NS_ERROR_FILE_NAME_TOO_LONG",
    "NS_ERROR_FILE_NOT_FOUND",
    "NS_ERROR_FILE_READ_ONLY",
    "NS_ERROR_FILE_ACCESS_DENIED",
]

NS_OK = 0x00000000

NS_ERROR_NOT_INITIALIZED = 0xC1F30001
NS_ERROR_ALREADY_INITIALIZED = 0xC1F30002
NS_ERROR_NOT_IMPLEMENTED = 0x80004001
NS_ERROR_ABORT = 0x80004004
NS_ERROR_FAILURE = 0x80004005
NS_ERROR_UNEXPECTED = 0x8000FFFF
NS_ERROR_OUT_OF_MEMORY = 0x8007000E
NS_ERROR_INVALID_ARG = 0x80070057
NS_ERROR_NOT_AVAILABLE = 0x80040111

# Network module (6): 0x804B....
NS_BINDING_ABORTED = 0x804B0002
NS_ERROR_CONNECTION_REFUSED = 0x804B000D
NS_ERROR_NET_TIMEOUT = 0x804B000E
NS_ERROR_IN_PROGRESS = 0x804B000F
NS_ERROR_OFFLINE = 0x804B0010
NS_ERROR_NET_RESET = 0x804B0014
NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED = 0x804B0035
NS_ERROR_SOCKET_ADDRESS_IN_USE = 0x804B0036

# Base module (2): 0x8047....
NS_BASE_STREAM_CLOSED = 0x80470002
NS_BASE_STREAM_WOULD_BLOCK = 0x80470007

# Files module (13): 0x8052....
NS_ERROR_FILE_UNRESOLVABLE_SYMLINK = 0x80520002
NS_ERROR_FILE_NOT_DIRECTORY = 0x8052000C
NS_ERROR_FILE_IS_DIRECTORY = 0x8052000D
NS_ERROR_FILE_NO_DEVICE_SPACE = 0x80520010
NS_ERROR_FILE_NAME_TOO_LONG = 0x80520011
NS_ERROR_FILE_NOT_FOUND = 0x80520012
NS_ERROR_FILE_READ_ONLY = 0x80520013
NS_ERROR_FILE_ACCESS_DENIED = 0x80520015

_NAMES: dict[int, str] = {
    value: name
    for name, value in sorted(globals().items())
    if name.startswith("NS_") and isinstance(value, int)
}


def nameOf(code: int) -> str:
    """
    Return the Gecko name of a result code.

    @param code: an C{nsresult} value.
    @return: the constant's name, e.g. C{"NS_ERROR_SOCKET_ADDRESS_IN_USE"},
        or C{"0x........"} for a code this module does not name.
    """
    try:
        return _NAMES[code]
    except (KeyError, TypeError):
        try:
            return f"0x{int(code) & 0xFFFFFFFF:08X}"
        except (TypeError, ValueError):
            return repr(code)


def succeeded(code: int) -> bool:
    """
    Whether C{code} is a success code (C{NS_SUCCEEDED}: the high bit is
    clear).
    """
    return not (code & 0x80000000)


def failed(code: int) -> bool:
    """
    Whether C{code} is a failure code (C{NS_FAILED}: the high bit is set).
    """
    return bool(code & 0x80000000)


_ERRNO_MAP: dict[int, int] = {}


def _map(result: int, *names: str) -> None:
    for n in names:
        value = getattr(_errno, n, None)
        if value is not None:
            _ERRNO_MAP.setdefault(value, result)


_map(NS_ERROR_SOCKET_ADDRESS_IN_USE, "EADDRINUSE")
_map(NS_ERROR_CONNECTION_REFUSED, "EACCES", "EPERM", "EADDRNOTAVAIL")
_map(NS_ERROR_FILE_NOT_FOUND, "ENOENT")
_map(NS_ERROR_FILE_NOT_DIRECTORY, "ENOTDIR")
_map(NS_ERROR_FILE_NAME_TOO_LONG, "ENAMETOOLONG")
_map(NS_ERROR_FILE_IS_DIRECTORY, "EISDIR")
_map(NS_ERROR_FILE_UNRESOLVABLE_SYMLINK, "ELOOP")
_map(NS_ERROR_FILE_READ_ONLY, "EROFS")
_map(NS_ERROR_FILE_NO_DEVICE_SPACE, "ENOSPC", "EDQUOT")
_map(NS_ERROR_OUT_OF_MEMORY, "EMFILE", "ENFILE", "ENOMEM", "ENOBUFS")
_map(NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED, "EAFNOSUPPORT")
_map(NS_ERROR_NET_TIMEOUT, "ETIMEDOUT")
_map(NS_ERROR_NET_RESET, "ECONNRESET", "EPIPE", "ECONNABORTED")


def fromErrno(errnum: int | None) -> int:
    """
    Map an operating-system error number to the result code Gecko reports
    for it (Gecko goes errno → NSPR error → nsresult; this is the composed
    table).

    @param errnum: an C{errno} value, e.g. C{OSError.errno}.
    @return: the result code; C{NS_ERROR_FAILURE} for anything unmapped
        (including C{None}).
    """
    if errnum is None:
        return NS_ERROR_FAILURE
    return _ERRNO_MAP.get(errnum, NS_ERROR_FAILURE)


class NSError(Exception):
    """
    A failed Gecko API call.

    @ivar result: the C{nsresult} code (an C{int}).
    @ivar name: the code's Gecko name (see L{nameOf}).
    @ivar message: the human reason (may be empty).
    """

    def __init__(self, result: int, message: str = "") -> None:
        super().__init__(result, message)
        self.result: int = int(result)
        self.name: str = nameOf(self.result)
        self.message: str = message

    @classmethod
    def fromOSError(cls, error: OSError, what: str = "", advice: str = "") -> NSError:
        """
        Build an L{NSError} from an C{OSError}, mapping its errno with
        L{fromErrno} and keeping the OS's own words in the message.

        @param error: the error raised by a system call.
        @param what: what was being done, e.g. C{"bind 127.0.0.1:80"}.
        @param advice: what the user can do about it, appended after a
            semicolon (see L{twisted_serversock._advice}).
        """
        reason = error.strerror or str(error)
        if what:
            reason = f"{what}: {reason}"
        if advice:
            reason = f"{reason}; {advice}"
        return cls(fromErrno(error.errno), reason)

    def __str__(self) -> str:
        text = f"{self.name} (0x{self.result & 0xFFFFFFFF:08X})"
        if self.message:
            text += f": {self.message}"
        return text

    def __repr__(self) -> str:
        return f"NSError({self.name}, {self.message!r})"
