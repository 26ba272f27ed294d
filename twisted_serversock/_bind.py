# -*- test-case-name: tests.test_serversocket,tests.test_unix -*-
"""
Binding a server socket: plain functions that create, bind and listen on a
socket and return a L{BoundSocket}, the value a
L{ServerSocket<twisted_serversock.serversocket.ServerSocket>} keeps until it
closes.  Argument checks stay with the caller; the UNIX safety rules live in
L{twisted_serversock._unix}.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, NamedTuple

from twisted.internet import tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from . import _advice, _unix
from .results import NS_ERROR_INVALID_ARG, NSError

if TYPE_CHECKING:
    from ._types import Address, PortLike, StrOrBytesPath, TransportClass

__all__ = ["BoundSocket", "bindIP", "bindFilename", "bindAbstract", "describeIP"]

_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


class _UNIXServer(unix.Server):
    """
    An accepted UNIX connection whose C{getHost()} is the path the server
    socket was created at.  (The kernel's name for the listening socket is
    the temporary one it was bound to before being linked into place; see
    L{twisted_serversock._unix}.)
    """

    def getHost(self) -> Address:
        port: PortLike = self.server
        return port.getHost()


class BoundSocket(NamedTuple):
    """
    A socket bound and listening (non-blocking), and what goes with it.

    @ivar socket: the listening socket.
    @ivar address: the Twisted address actually bound.
    @ivar transportClass: the Twisted server transport class for the
        connections it accepts.
    @ivar fileIdentity: C{(st_dev, st_ino)} of a UNIX socket file, for
        unlinking it only if it is still ours; C{None} for other sockets.
    @ivar filePath: the absolute path of that socket file (C{b""} if none).
    """

    socket: socket.socket
    address: Address
    transportClass: TransportClass
    fileIdentity: tuple[int, int] | None = None
    filePath: bytes = b""

    def unlink(self) -> None:
        """
        Remove the socket file, if there is one and it is still the one
        bound here: before the socket is closed, since a path left behind
        would refuse connections.
        """
        if self.fileIdentity is not None:
            _unix.unlinkIfOurs(self.filePath, self.fileIdentity)


def describeIP(family: int, host: str, port: int) -> str:
    """
    C{host:port}, with the host in brackets for IPv6.
    """
    if family == socket.AF_INET6:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def bindIP(family: int, host: str, port: int, backlog: int, v6only: bool = True) -> BoundSocket:
    """
    Listen on IP literal C{host} (of address family C{family}) and C{port}
    (0: any free one).

    @param v6only: for IPv6, whether to refuse IPv4 (always set explicitly:
        the result must not depend on the host's C{net.ipv6.bindv6only}).
    @raise NSError: with the result code of the system error and advice.
    """
    if family == socket.AF_INET6:
        try:
            sockaddr = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]
        except socket.gaierror as e:
            raise NSError(NS_ERROR_INVALID_ARG, f"bad IPv6 address {host!r}: {e}") from None
    else:
        sockaddr = (host, port)
    skt = None
    try:
        skt = socket.socket(family, socket.SOCK_STREAM)
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        skt.bind(sockaddr)
        skt.listen(backlog)
        skt.setblocking(False)
        name = skt.getsockname()
    except OSError as e:
        if skt is not None:
            skt.close()
        what = f"listen on {describeIP(family, host, port)} (backlog {backlog})"
        raise NSError.fromOSError(e, what, _advice.forTCP(e, port)) from None
    if family == socket.AF_INET6:
        # The numeric host keeps a scope ("fe80::1%eth0"), as Twisted's
        # own port reports it: without it the address cannot be reached.
        host = socket.getnameinfo(name, _NUMERIC)[0] if name[3] else name[0]
        address: Address = IPv6Address("TCP", host, name[1], name[2], name[3])
    else:
        address = IPv4Address("TCP", name[0], name[1])
    return BoundSocket(skt, address, tcp.Server)


def bindFilename(
    path: StrOrBytesPath, raw: bytes, mode: int, backlog: int, reclaimStale: bool = False, gid: int | None = None
) -> BoundSocket:
    """
    Listen on a socket file at C{raw} (the checked bytes of C{path}, which
    names the address) with exactly C{mode}; see
    L{_unix.listenFilename<twisted_serversock._unix.listenFilename>}.
    """
    skt, identity = _unix.listenFilename(raw, mode, backlog, reclaimStale=reclaimStale, gid=gid)
    name: str | bytes = path if isinstance(path, (str, bytes)) else os.fspath(path)
    return BoundSocket(skt, UNIXAddress(name), _UNIXServer, (identity[0], identity[1]), os.path.abspath(raw))


def bindAbstract(name: str | bytes, address: bytes, backlog: int) -> BoundSocket:
    """
    Listen on the abstract UNIX address C{address} (C{b"\\0" + name}).
    """
    skt = _unix.listenAbstract(address, backlog)
    shown: str | bytes = "\0" + name if isinstance(name, str) else address
    return BoundSocket(skt, UNIXAddress(shown), _UNIXServer)
