"""
L{IRawAcceptor}, in a leaf module: the core imports it without importing
the rest of L{twisted_serversock.ipc}.
"""

import socket
from typing import Any

from zope.interface import Interface

__all__ = ["IRawAcceptor"]


class IRawAcceptor(Interface):
    """
    Takes accepted sockets raw, without a Twisted transport: the process
    that hands connections to workers must not build one (its orderly close
    would C{shutdown()} the worker's copy too).  Provided by a protocol
    factory given to a gecko endpoint, or by a listener given to
    C{ServerSocket.asyncListen}.
    """

    def socketAccepted(skt: socket.socket, addr: Any) -> None:
        """Take ownership of C{skt}, accepted from C{addr} (the raw C{accept()} address; an IPv6 host keeps its scope)."""
