# -*- test-case-name: tests.test_transport -*-
"""
L{AcceptedSocket}: a socket the listening port accepted, and what building
its Twisted transport takes, until that transport is built (or the socket
closed unserved).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from .results import NS_ERROR_FAILURE, NSError

__all__ = ["AcceptedSocket"]


class AcceptedSocket:
    """
    An accepted socket not yet given a Twisted transport.

    @ivar socket: the accepted socket.
    @ivar peer: the raw C{accept()} address: a tuple for IP (an IPv6 scope
        already in the host), C{str}/C{bytes} for UNIX.
    @ivar port: the listening port (the object with C{sessionno}).
    @ivar pending: whether the socket is neither built into a transport
        nor closed yet.
    """

    __slots__ = ("transportClass", "socket", "peer", "port", "reactor", "pending")

    def __init__(self, transportClass: Any, skt: socket.socket, peer: Any, port: Any, reactor: Any) -> None:
        self.transportClass = transportClass
        self.socket = skt
        self.peer = peer
        self.port = port
        self.reactor = reactor
        self.pending = True

    def __repr__(self) -> str:
        return f"<AcceptedSocket from {self.peer!r}>"

    def build(self, protocol: Any) -> Any:
        """
        Build the Twisted transport with C{protocol} as its protocol (the
        caller calls C{makeConnection} if it needs to); it takes the next
        session number of the port.  If construction raises, the socket is
        closed.

        @raise NSError: C{NS_ERROR_FAILURE} if already built or closed.
        """
        if not self.pending:
            raise NSError(NS_ERROR_FAILURE, "the accepted connection could not be set up")
        self.pending = False
        port = self.port
        sessionno = port.sessionno
        port.sessionno = sessionno + 1
        skt = self.socket
        try:
            return self.transportClass(skt, protocol, self.peer, port, sessionno, self.reactor)
        except BaseException:
            skt.close()
            raise

    def close(self) -> None:
        """
        Close the socket unserved if it is still pending (no session number
        is taken).
        """
        if self.pending:
            self.pending = False
            self.socket.close()

    def peerAddress(self) -> Any:
        """
        The Twisted address of the peer, as the transport's C{getPeer()}
        will say, without building the transport.
        """
        peer = self.peer
        if type(peer) is tuple:
            return (IPv4Address if len(peer) == 2 else IPv6Address)("TCP", *peer)
        return UNIXAddress(peer or None)
