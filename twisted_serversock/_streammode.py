# -*- test-case-name: tests.test_offline -*-
"""
Going offline for one accepted connection's Twisted transport.

(Minimal stand-in for the stream-mode module of the transport split, per
its contract: only L{goOffline}.)
"""

from __future__ import annotations

from typing import Any

from .transport import SocketTransport

__all__ = ["goOffline"]


def goOffline(transport: Any) -> None:
    """
    Close the connection of Twisted transport C{transport} because the I/O
    service went offline: in stream mode its streams are closed with
    C{NS_ERROR_OFFLINE}; an attached protocol simply loses the connection.
    A connection still flushing after a close is aborted too: nothing more
    may reach a non-local peer.
    """
    if not transport.connected:
        return
    protocol = transport.protocol
    if isinstance(protocol, SocketTransport):
        protocol._goOffline()
    else:
        transport.abortConnection()
