# -*- test-case-name: tests.test_unix -*-
"""
Binding UNIX-domain server sockets safely.

The rules this module enforces (and Twisted's own UNIX port does not):

  - B{No clobbering.}  Anything already at the path - a live or stale
    socket, a regular file, a symbolic link, dangling or not - makes the
    bind fail with C{NS_ERROR_SOCKET_ADDRESS_IN_USE} and is left untouched.
    The final step is C{link()}, which never replaces an entry and never
    follows a symbolic link at the final component.
  - B{No permission window.}  The socket is bound inside a fresh private
    (0700) directory beside the target, C{chmod}ed to exactly the mode asked
    for (so the umask plays no part), made to C{listen()}, and only then
    linked into place: it is never reachable at the path with another mode,
    nor refuse connections there.
  - B{The right group, from the start.}  A group asked for (C{gid}) is
    given to the socket file inside the private directory, before the
    chmod and the link, as systemd's C{SocketGroup=} does.  Without one
    the file gets the group the parent gives new entries: the private
    directory keeps the set-group-ID bit a set-group-ID parent passes on
    (clearing it would give the socket the process's group, and a web
    server relying on the directory's group would be refused).
  - B{No leftovers.}  The private directory and the temporary name are
    removed on every path, success or failure.
  - B{Symbolic links.}  One at the final component is never followed
    (C{lstat} sees it and the bind is refused; C{link()} would not follow
    one that appears later; the lock file is opened C{O_NOFOLLOW}).  Links
    above it are followed, as for any path, but the parent directory is
    resolved exactly once and everything after goes through its
    descriptor; the private directory is opened C{O_NOFOLLOW} and refused
    unless it is owned by us, so someone who may write to the parent
    cannot slip their own directory (and then their own socket) in.
  - B{Clean up only what is ours.}  On close the path is unlinked only if it
    is still the very inode we linked there (same device and inode number).
  - B{Reclaim only when asked, and only the dead.}  With C{reclaimStale}, an
    existing entry is removed only if it is a socket, a connect to it is
    refused (nobody listens), and we hold an C{flock} on C{path + ".lock"},
    which serialises two processes starting at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
import sys
import secrets
from typing import Any

from . import _advice
from .results import (
    NS_ERROR_FAILURE,
    NS_ERROR_FILE_NAME_TOO_LONG,
    NS_ERROR_INVALID_ARG,
    NS_ERROR_SOCKET_ADDRESS_IN_USE,
    NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED,
    NSError,
)

#: The longest path C{bind()} takes (Linux: C{sizeof(sun_path)} = 108, less
#: the terminating NUL).
MAX_PATH = 107
#: The longest abstract name (the leading NUL takes one more byte).
MAX_ABSTRACT_NAME = 106

#: The longest socket mode accepted.
_MODE_BITS = 0o777


_CRED = struct.Struct("3i")


def peerCredentials(skt: socket.socket) -> tuple[int, int, int]:
    """
    C{(pid, uid, gid)} of the peer of connected UNIX socket C{skt}
    (C{SO_PEERCRED}).

    @raise OSError: if the kernel cannot tell.
    """
    pid, uid, gid = _CRED.unpack(skt.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid


def fsPath(path: Any) -> bytes:
    """
    Convert a user-supplied path (C{str}, C{bytes} or C{os.PathLike}) to
    bytes, with no system call.

    @raise NSError: C{NS_ERROR_INVALID_ARG} for anything else, an empty path
        or one containing a NUL byte; C{NS_ERROR_FILE_NAME_TOO_LONG} past
        L{MAX_PATH} bytes.
    """
    try:
        raw = os.fsencode(path)
    except TypeError:
        raise NSError(NS_ERROR_INVALID_ARG, f"not a path: {path!r}") from None
    if not raw:
        raise NSError(NS_ERROR_INVALID_ARG, "the socket path is empty")
    if b"\0" in raw:
        raise NSError(NS_ERROR_INVALID_ARG, f"the socket path contains a NUL byte: {path!r}")
    if len(raw) > MAX_PATH:
        raise NSError(
            NS_ERROR_FILE_NAME_TOO_LONG,
            f"the socket path is {len(raw)} bytes; the limit is {MAX_PATH}",
        )
    return raw


def abstractName(name: Any) -> bytes:
    """
    The kernel address (C{b"\\0" + name}) of abstract name C{name}.

    @raise NSError: C{NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED} off Linux,
        C{NS_ERROR_INVALID_ARG} for a non-string or a NUL in the name,
        C{NS_ERROR_FILE_NAME_TOO_LONG} past L{MAX_ABSTRACT_NAME} bytes.
    """
    if not sys.platform.startswith("linux"):
        raise NSError(NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED, "abstract UNIX addresses exist on Linux only")
    if isinstance(name, str):
        raw = name.encode("utf-8")
    elif isinstance(name, bytes):
        raw = name
    else:
        raise NSError(NS_ERROR_INVALID_ARG, f"an abstract name is a string, not {name!r}")
    if b"\0" in raw:
        raise NSError(NS_ERROR_INVALID_ARG, f"an abstract name cannot contain NUL: {name!r}")
    if len(raw) > MAX_ABSTRACT_NAME:
        raise NSError(
            NS_ERROR_FILE_NAME_TOO_LONG,
            f"the abstract name is {len(raw)} bytes; the limit is {MAX_ABSTRACT_NAME}",
        )
    return b"\0" + raw


def checkMode(mode: Any) -> int:
    """
    Validate a socket file mode.

    @raise NSError: C{NS_ERROR_INVALID_ARG} unless an integer in 0..0o777.
    """
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= _MODE_BITS:
        raise NSError(NS_ERROR_INVALID_ARG, f"permissions must be an integer from 0 to 0o777, not {mode!r}")
    return mode


def _oserror(e: OSError, what: str, directory: bytes | None = None) -> NSError:
    if e.errno == errno.EEXIST:
        return NSError(NS_ERROR_SOCKET_ADDRESS_IN_USE, f"{what}: something already exists at that path")
    advice = _advice.forUNIXDirectory(e, os.fsdecode(directory)) if directory is not None else ""
    return NSError.fromOSError(e, what, advice)


def _inUse(path: bytes, why: str, advice: str = "") -> NSError:
    return NSError(
        NS_ERROR_SOCKET_ADDRESS_IN_USE,
        f"{os.fsdecode(path)}: {why}; it was left untouched" + (f"; {advice}" if advice else ""),
    )


def listenAbstract(address: bytes, backlog: int) -> socket.socket:
    """
    Create a listening socket bound to abstract C{address}.
    """
    skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        skt.bind(address)
        skt.listen(backlog)
        skt.setblocking(False)
    except OSError as e:
        skt.close()
        raise _oserror(e, f"listen on abstract address @{address[1:].decode('utf-8', 'replace')}") from None
    return skt


def listenFilename(
    path: bytes, mode: int, backlog: int, reclaimStale: bool = False, gid: int | None = None
) -> tuple[socket.socket, tuple[int, int]]:
    """
    Create a listening UNIX socket at C{path} with exactly C{mode}, and
    group C{gid} if given (else the group the parent directory gives new
    entries).

    @return: the socket, and C{(st_dev, st_ino)} of the file that now stands
        at C{path} (for L{unlinkIfOurs}).
    @raise NSError: see the module docstring.
    """
    shown = os.fsdecode(path)
    parent = os.path.dirname(path) or b"."
    name = os.path.basename(path)
    if not name:
        raise NSError(NS_ERROR_INVALID_ARG, f"the socket path names a directory: {shown}")
    lock = _lock(path) if reclaimStale else None
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise NSError.fromOSError(e, f"check {shown}") from None
        else:
            if reclaimStale and stat.S_ISSOCK(st.st_mode) and not _reclaim(path, st):
                # (reclaim=1's advice would be no help: it was tried.)
                raise _inUse(path, "a server is listening on the socket there (or it could not be probed)", "stop it or choose another path")
            if not (reclaimStale and stat.S_ISSOCK(st.st_mode)):
                raise _inUse(path, _describeEntry(path, st), _advice.forUNIXEntry(path, st))
        return _bindAndLink(path, parent, name, mode, backlog, gid)
    finally:
        if lock is not None:
            os.close(lock)


def _describeEntry(path: bytes, st: os.stat_result) -> str:
    if stat.S_ISSOCK(st.st_mode):
        return "a socket already exists there"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link is in the way"
    if stat.S_ISDIR(st.st_mode):
        return "a directory is in the way"
    return "a file is in the way"


def _bindAndLink(
    path: bytes, parent: bytes, name: bytes, mode: int, backlog: int, gid: int | None = None
) -> tuple[socket.socket, tuple[int, int]]:
    """
    Bind, chown, chmod and listen in a private directory, then link into
    place.

    The parent directory is resolved once, here; everything after goes
    through its descriptor, so a symbolic link above the socket that is
    re-pointed meanwhile cannot split the work between two directories.
    """
    try:
        # O_PATH: link() needs write and search permission on the parent,
        # not read (a drop-box directory, mode 0733, must do).
        parentFD = os.open(parent, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _oserror(e, f"create a socket in {os.fsdecode(parent)}", parent) from None
    try:
        return _bindInParent(path, parent, parentFD, name, mode, backlog, gid)
    finally:
        os.close(parentFD)


def _bindInParent(
    path: bytes, parent: bytes, parentFD: int, name: bytes, mode: int, backlog: int, gid: int | None
) -> tuple[socket.socket, tuple[int, int]]:
    shown = os.fsdecode(path)
    try:
        privateName = _makePrivate(parentFD)
    except OSError as e:
        raise _oserror(e, f"create a socket in {os.fsdecode(parent)}", parent) from None
    private = os.path.join(parent, privateName)
    privateFD = -1
    skt: socket.socket | None = None
    bound = False
    try:
        privateFD = _openPrivate(parentFD, privateName, private)
        skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        skt.bind(_shortName(private, privateFD))
        bound = True
        # Through the descriptor: if the name was swapped for another
        # directory, the bind above went there and this fails (ENOENT).
        # The group first (chown may clear mode bits), while only we can
        # reach the file: like systemd's SocketGroup=, it never appears at
        # the path with another group.
        if gid is not None:
            _chgrp(privateFD, gid, shown)
        os.chmod(b"s", mode, dir_fd=privateFD)
        skt.listen(backlog)
        skt.setblocking(False)
        st = os.stat(b"s", dir_fd=privateFD, follow_symlinks=False)
        os.link(b"s", name, src_dir_fd=privateFD, dst_dir_fd=parentFD, follow_symlinks=False)
    except BaseException as e:
        if skt is not None:
            skt.close()
        if isinstance(e, OSError):
            raise _oserror(e, f"listen on {shown}") from None
        raise
    finally:
        if bound:
            try:
                os.unlink(b"s", dir_fd=privateFD)
            except OSError:
                pass
        _removePrivate(parentFD, privateName, privateFD)
    return skt, (st.st_dev, st.st_ino)


_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)


def _chgrp(privateFD: int, gid: int, shown: str) -> None:
    """
    Give the socket file C{s} in the private directory the group C{gid}.

    @raise NSError: naming the group, if we may not (an unprivileged
        process may only give its files a group it is a member of).
    """
    try:
        os.chown(b"s", -1, gid, dir_fd=privateFD, follow_symlinks=False)
    except OSError as e:
        raise NSError.fromOSError(e, f"give {shown} the group {gid} (is this process a member of it?)") from None


def _makePrivate(parentFD: int) -> bytes:
    """
    Create a fresh directory C{.tss-XXXXXXXX} (mode 0700 less the umask) in
    the directory open as C{parentFD}, and return its name.
    """
    for _ in range(100):
        name = b".tss-" + secrets.token_hex(4).encode()
        try:
            os.mkdir(name, 0o700, dir_fd=parentFD)
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no unused name for a private directory")


def _removePrivate(parentFD: int, name: bytes, privateFD: int) -> None:
    """
    Close and remove the (by now empty) private directory, unless the name
    has come to mean another directory: then ours was moved away by
    someone who can write to the parent, and what stands there now is not
    ours to remove.
    """
    try:
        mine = None
        if privateFD >= 0:
            try:
                mine = os.fstat(privateFD)
            finally:
                os.close(privateFD)
        there = os.stat(name, dir_fd=parentFD, follow_symlinks=False)
        if mine is not None:
            if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino):
                return
        elif not stat.S_ISDIR(there.st_mode) or there.st_uid != os.geteuid():
            return
        os.rmdir(name, dir_fd=parentFD)
    except OSError:
        pass


def _openPrivate(parentFD: int, name: bytes, private: bytes) -> int:
    """
    Open the private directory C{_makePrivate} just made, check that it is
    still ours, and make sure its owner may use it.

    B{Still ours}: between C{mkdir} and this C{open}, anyone who may write
    to the parent directory can rename our directory away and put one of
    their own under its name (a sticky directory such as C{/tmp} forbids
    that; a group- or world-writable one does not).  Binding in it would
    let them swap the socket for theirs before it is linked into place, so
    a directory that is not owned by us is refused.  (The name is opened
    with C{O_NOFOLLOW}: a symbolic link there is refused too.)

    B{Usable}: C{mkdir} applies the umask: under a umask such as 0777 the
    directory is mode 0, and an unprivileged process could then neither
    open nor bind in it.  The owner's bits are given back through the
    descriptor (C{O_PATH} needs no permission on the directory, and
    C{/proc/self/fd} names exactly that inode, never whatever a name may
    point to by now), falling back to the name where there is no C{O_PATH}
    or no C{/proc}.

    @raise NSError: C{NS_ERROR_FAILURE} if the directory is not ours.
    """
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    opath = getattr(os, "O_PATH", 0)
    if not opath:
        os.chmod(private, 0o700)
        fd = os.open(name, os.O_RDONLY | flags, dir_fd=parentFD)
    else:
        fd = os.open(name, opath | flags, dir_fd=parentFD)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise NSError(
                NS_ERROR_FAILURE,
                f"{os.fsdecode(private)}: our private directory was replaced by one owned by uid "
                f"{st.st_uid}; someone who can write to {os.fsdecode(os.path.dirname(private))} "
                "is interfering, so nothing was bound",
            )
        # Only the owner's bits are given back, and the set-group-ID bit a
        # set-group-ID parent passed on is kept: without it the socket
        # would get the process's group instead of the directory's (the
        # group a web server in it relies on).
        bits = stat.S_IMODE(st.st_mode)
        if opath and bits & 0o700 != 0o700:
            wanted = 0o700 | (bits & stat.S_ISGID)
            try:
                os.chmod(b"/proc/self/fd/%d" % fd, wanted)
            except FileNotFoundError:  # no /proc
                os.chmod(private, wanted)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _shortName(private: bytes, privateFD: int) -> bytes:
    """
    A name by which C{bind()} can create "s" in the private directory:
    the plain path if it fits C{sun_path}, else the same directory reached
    through C{/proc/self/fd}, which always fits.
    """
    direct = os.path.join(private, b"s")
    if len(direct) <= MAX_PATH:
        return direct
    return b"/proc/self/fd/%d/s" % privateFD


def _lock(path: bytes) -> int:
    """
    Take an exclusive C{flock} on C{path + ".lock"} (created if missing,
    mode 0600, never removed: removing a lock file others may wait on
    breaks the lock).  Released when the descriptor is closed, or when the
    process dies.
    """
    lockPath = path + b".lock"
    try:
        fd = os.open(lockPath, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise _oserror(e, f"open the lock file {os.fsdecode(lockPath)}") from None
    try:
        # Created under a umask that takes the owner's bits (0777, say), the
        # file would be mode 0, and the next start could not open it.
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o600 != 0o600:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise _inUse(path, "another process holds its lock file") from None
        raise _oserror(e, f"lock {os.fsdecode(lockPath)}") from None
    return fd


def _reclaim(path: bytes, st: os.stat_result) -> bool:
    """
    Remove the entry at C{path} if it is a socket nobody listens on.

    @return: whether it was removed.
    """
    if not stat.S_ISSOCK(st.st_mode):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody listens: stale
    except OSError:
        return False  # alive (EAGAIN: its queue is full), or we cannot tell
    else:
        return False  # alive
    finally:
        probe.close()
    return unlinkIfOurs(path, (st.st_dev, st.st_ino))


def unlinkIfOurs(path: bytes, identity: tuple[int, int]) -> bool:
    """
    Unlink C{path} if the socket file there is the inode C{identity}
    (C{(st_dev, st_ino)}).

    @return: whether it was unlinked.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISSOCK(st.st_mode) or (st.st_dev, st.st_ino) != identity:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
