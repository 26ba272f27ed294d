"""
What to do about a listening socket that cannot be had.

A failed bind says what went wrong; these functions add the one clause a
newcomer needs next (C{reclaim=1} for a stale socket file, the rule for
ports below 1024, the directory to create...).  The clause goes into the
L{NSError}'s message, so it reaches every place that shows the error: the
one-line start-up error of C{twistd serversock}, and the last line of the
traceback other C{twistd} plugins print for a C{CannotListenError}.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["forTCP", "forUNIXDirectory", "forUNIXEntry"]


def _unprivilegedPortStart() -> int:
    """
    The lowest port an unprivileged process may bind on this machine
    (Linux's C{net.ipv4.ip_unprivileged_port_start}, 1024 by default).
    """
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


def forTCP(error: OSError, port: int) -> str:
    """
    Advice for a TCP bind or listen that failed with C{error}.

    @param port: the port asked for (0 or -1: any free port).
    @return: a clause to append to the error message, or C{""}.
    """
    if error.errno == errno.EADDRINUSE:
        return (
            f"another socket is bound to port {port}: stop the program that has it "
            f"(ss -ltnp 'sport = :{port}' names it), or choose another port (port=0 picks a free one)"
        )
    if error.errno in (errno.EACCES, errno.EPERM) and 0 < port < _unprivilegedPortStart():
        return (
            f"ports below {_unprivilegedPortStart()} need root (or CAP_NET_BIND_SERVICE): start as root "
            f"and let twistd drop privileges with --uid/--gid after binding, or use a port of "
            f"{_unprivilegedPortStart()} or above"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address: use one it has (ip -brief address), or leave interface= out"
    if error.errno == errno.EAFNOSUPPORT:
        return "this machine has IPv6 turned off: listen on IPv4 instead"
    return ""


def forUNIXDirectory(error: OSError, directory: str) -> str:
    """
    Advice for a UNIX socket that could not be created in C{directory}.

    @return: a clause to append to the error message, or C{""}.
    """
    if error.errno == errno.ENOENT:
        return f"create the directory first (mkdir -p {directory}), or choose a path in one that exists"
    if error.errno == errno.ENOTDIR:
        return f"{directory} is not a directory: choose a path in one"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"this user (uid {os.geteuid()}) may not create files in {directory}: run as a user who may, "
            f"or choose a directory it can write to (e.g. $XDG_RUNTIME_DIR)"
        )
    return ""


def forUNIXEntry(path: bytes, st: os.stat_result) -> str:
    """
    Advice for a UNIX socket path where something already exists (C{st} is
    its C{lstat}).

    A socket file is not probed: a connect would reach a live server as a
    spurious connection.  (C{reclaim=1} does probe, and removes the file
    only if the connect is refused.)

    @return: a clause to append to the error message.
    """
    if not stat.S_ISSOCK(st.st_mode):
        return "move it away, or choose another path"
    return (
        "if no server uses it any more (a stale socket file, e.g. left by a crash), add reclaim=1 "
        "to the endpoint to remove it, or delete it; if one does, stop it or choose another path"
    )
