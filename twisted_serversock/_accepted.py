# -*- test-case-name: tests.test_lazy_transport -*-
"""
L{AcceptedSocket}: a socket the listening port accepted, and what building
its Twisted transport takes.

The Twisted transport (C{tcp.Server} or C{unix.Server}) is built once, for
the protocol that will own it: the user's, when a listener attaches one
from C{onSocketAccepted}, else the stream-mode protocol.  Until then the
connection is only this value.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from .results import NS_ERROR_FAILURE, NSError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ._types import Address, Peer, PortLike, ServerTransport, TransportClass

__all__ = ["AcceptedSocket"]


class AcceptedSocket:
    """
    An accepted socket whose Twisted transport is not built yet.

    @ivar socket: the accepted socket.
    @ivar peer: the address C{accept()} returned: a tuple for IP (an IPv6
        scope already in the host), a C{str} or C{bytes} path for UNIX.
    @ivar port: the listening port (the object whose C{sessionno} numbers
        connections; Twisted's server transports also read its repr).
    @ivar pending: C{True} until the transport is built or the socket
        closed.
    """

    __slots__ = ("_transportClass", "socket", "peer", "port", "_reactor", "pending")

    def __init__(
        self,
        transportClass: TransportClass,
        skt: socket.socket,
        peer: Peer,
        port: PortLike,
        reactor: IReactorTime,
    ) -> None:
        """
        @param transportClass: called as C{transportClass(skt, protocol,
            peer, port, sessionno, reactor)} to build the transport, like
            Twisted's C{tcp.Server}.
        @param skt: the accepted socket.
        @param peer: its peer address, as C{accept()} returned it.
        @param port: the listening port.
        @param reactor: the reactor the transport runs on.
        """
        self._transportClass = transportClass
        self.socket = skt
        self.peer = peer
        self.port = port
        self._reactor = reactor
        self.pending = True

    def __repr__(self) -> str:
        return f"<AcceptedSocket from {self.peer!r}{' pending' if self.pending else ''}>"

    def build(self, protocol: object) -> ServerTransport:
        """
        Build the Twisted transport with C{protocol} as its protocol (it
        starts reading at once); the caller calls C{makeConnection}.  Only a
        connection that gets a protocol takes a session number.

        @return: the Twisted transport.
        @raise NSError: C{NS_ERROR_FAILURE} if it was built or closed
            before.
        @raise Exception: whatever building raised; the socket is closed
            then.
        """
        if not self.pending:
            raise NSError(NS_ERROR_FAILURE, "the accepted connection could not be set up")
        self.pending = False
        port = self.port
        sessionno = port.sessionno
        port.sessionno = sessionno + 1
        try:
            return self._transportClass(self.socket, protocol, self.peer, port, sessionno, self._reactor)
        except BaseException:
            self.socket.close()
            raise

    def close(self) -> None:
        """
        Close the socket if no transport was built for it (no session
        number is taken); else nothing.
        """
        if self.pending:
            self.pending = False
            self.socket.close()

    def peerAddress(self) -> Address:
        """
        @return: the peer's Twisted address (what the transport's
            C{getPeer()} will say), without building the transport.
        """
        addr = self.peer
        if isinstance(addr, tuple):
            return (IPv4Address if len(addr) == 2 else IPv6Address)("TCP", *addr)
        return UNIXAddress(addr or None)
