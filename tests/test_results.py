"""
Gecko's result codes (the values Gecko defines), NSError, nameOf and
fromErrno (Gecko's errno mapping).
"""

from __future__ import annotations

import errno

import pytest

from twisted_serversock import NSError, results

SPEC_VALUES = {
    "NS_OK": 0x00000000,
    "NS_BINDING_ABORTED": 0x804B0002,
    "NS_ERROR_NOT_INITIALIZED": 0xC1F30001,
    "NS_ERROR_CONNECTION_REFUSED": 0x804B000D,
    "NS_ERROR_ALREADY_INITIALIZED": 0xC1F30002,
    "NS_ERROR_NET_TIMEOUT": 0x804B000E,
    "NS_ERROR_NOT_IMPLEMENTED": 0x80004001,
    "NS_ERROR_IN_PROGRESS": 0x804B000F,
    "NS_ERROR_ABORT": 0x80004004,
    "NS_ERROR_OFFLINE": 0x804B0010,
    "NS_ERROR_FAILURE": 0x80004005,
    "NS_ERROR_NET_RESET": 0x804B0014,
    "NS_ERROR_UNEXPECTED": 0x8000FFFF,
    "NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED": 0x804B0035,
    "NS_ERROR_OUT_OF_MEMORY": 0x8007000E,
    "NS_ERROR_SOCKET_ADDRESS_IN_USE": 0x804B0036,
    "NS_ERROR_INVALID_ARG": 0x80070057,
    "NS_BASE_STREAM_CLOSED": 0x80470002,
    "NS_ERROR_NOT_AVAILABLE": 0x80040111,
    "NS_BASE_STREAM_WOULD_BLOCK": 0x80470007,
    "NS_ERROR_FILE_NOT_DIRECTORY": 0x8052000C,
    "NS_ERROR_FILE_NAME_TOO_LONG": 0x80520011,
    "NS_ERROR_FILE_IS_DIRECTORY": 0x8052000D,
    "NS_ERROR_FILE_NOT_FOUND": 0x80520012,
    "NS_ERROR_FILE_NO_DEVICE_SPACE": 0x80520010,
    "NS_ERROR_FILE_READ_ONLY": 0x80520013,
    "NS_ERROR_FILE_UNRESOLVABLE_SYMLINK": 0x80520002,
    "NS_ERROR_FILE_ACCESS_DENIED": 0x80520015,
}


@pytest.mark.parametrize("name,value", sorted(SPEC_VALUES.items()))
def test_constantValue(name: str, value: int) -> None:
    assert getattr(results, name) == value
    assert results.nameOf(value) == name


def test_nameOfUnknown() -> None:
    assert results.nameOf(0x80041234) == "0x80041234"


def test_gecko_formula() -> None:
    """
    The network, base and files values follow Gecko's formula
    C{0x80000000 | ((module + 0x45) << 16) | code}.
    """

    def failure(module: int, code: int) -> int:
        return 0x80000000 | ((module + 0x45) << 16) | code

    assert results.NS_ERROR_SOCKET_ADDRESS_IN_USE == failure(6, 54)
    assert results.NS_BASE_STREAM_WOULD_BLOCK == failure(2, 7)
    assert results.NS_ERROR_FILE_NOT_FOUND == failure(13, 18)


def test_nserror() -> None:
    e = NSError(results.NS_ERROR_SOCKET_ADDRESS_IN_USE, "bind /run/app.sock: Address already in use")
    assert isinstance(e, Exception)
    assert e.result == 0x804B0036
    assert e.name == "NS_ERROR_SOCKET_ADDRESS_IN_USE"
    text = str(e)
    assert "NS_ERROR_SOCKET_ADDRESS_IN_USE" in text
    assert "0x804B0036" in text
    assert "/run/app.sock" in text and "Address already in use" in text


def test_nserrorWithoutMessage() -> None:
    e = NSError(results.NS_ERROR_FAILURE)
    assert str(e) == "NS_ERROR_FAILURE (0x80004005)"


def test_nserrorFromOSError() -> None:
    e = NSError.fromOSError(OSError(errno.EADDRINUSE, "Address already in use"), "bind 0.0.0.0:80")
    assert e.result == results.NS_ERROR_SOCKET_ADDRESS_IN_USE
    assert "bind 0.0.0.0:80" in str(e)
    assert "Address already in use" in str(e)


ERRNO_MAP = [
    ("EADDRINUSE", "NS_ERROR_SOCKET_ADDRESS_IN_USE"),
    ("EACCES", "NS_ERROR_CONNECTION_REFUSED"),
    ("EPERM", "NS_ERROR_CONNECTION_REFUSED"),
    ("EADDRNOTAVAIL", "NS_ERROR_CONNECTION_REFUSED"),
    ("ENOENT", "NS_ERROR_FILE_NOT_FOUND"),
    ("ENOTDIR", "NS_ERROR_FILE_NOT_DIRECTORY"),
    ("ENAMETOOLONG", "NS_ERROR_FILE_NAME_TOO_LONG"),
    ("EISDIR", "NS_ERROR_FILE_IS_DIRECTORY"),
    ("ELOOP", "NS_ERROR_FILE_UNRESOLVABLE_SYMLINK"),
    ("EROFS", "NS_ERROR_FILE_READ_ONLY"),
    ("ENOSPC", "NS_ERROR_FILE_NO_DEVICE_SPACE"),
    ("EDQUOT", "NS_ERROR_FILE_NO_DEVICE_SPACE"),
    ("EMFILE", "NS_ERROR_OUT_OF_MEMORY"),
    ("ENFILE", "NS_ERROR_OUT_OF_MEMORY"),
    ("ENOMEM", "NS_ERROR_OUT_OF_MEMORY"),
    ("ENOBUFS", "NS_ERROR_OUT_OF_MEMORY"),
    ("EAFNOSUPPORT", "NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED"),
    ("ETIMEDOUT", "NS_ERROR_NET_TIMEOUT"),
    ("ECONNRESET", "NS_ERROR_NET_RESET"),
    ("EPIPE", "NS_ERROR_NET_RESET"),
    ("ECONNABORTED", "NS_ERROR_NET_RESET"),
]


@pytest.mark.parametrize("errname,resultname", ERRNO_MAP)
def test_fromErrno(errname: str, resultname: str) -> None:
    assert results.fromErrno(getattr(errno, errname)) == getattr(results, resultname)


@pytest.mark.parametrize("errnum", [errno.EINVAL, errno.EBADF, errno.ECONNREFUSED, 0, 99999, None])
def test_fromErrnoOther(errnum: int | None) -> None:
    assert results.fromErrno(errnum) == results.NS_ERROR_FAILURE


def test_succeededFailed() -> None:
    assert results.succeeded(results.NS_OK)
    assert results.failed(results.NS_BINDING_ABORTED)
    assert not results.succeeded(results.NS_ERROR_NOT_INITIALIZED)
