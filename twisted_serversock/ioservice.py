# -*- test-case-name: tests.test_offline -*-
"""
The offline switch of Gecko's I/O service, for server sockets and the
connections they accepted.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from . import _args
from ._streammode import goOffline
from .interfaces import IIOService
from .results import NS_ERROR_ABORT

if TYPE_CHECKING:
    from .serversocket import ServerSocket

__all__ = ["IOService", "ioService"]

_log = Logger()


@implementer(IIOService)
class IOService:
    """
    An I/O service: a set of server sockets (and their non-local
    connections) that go offline together.

    The module-level L{ioService} is the default every
    L{ServerSocket<twisted_serversock.serversocket.ServerSocket>} uses;
    construct your own for tests and pass it as C{ServerSocket(ioService=...)}.

    @ivar _serverSockets: the initialised server sockets of this service.
    @ivar _connections: the live Twisted transports of accepted connections
        whose peer is not local; held weakly, so a connection that ends is
        forgotten without any bookkeeping on the connection's side.
    """

    def __init__(self) -> None:
        self._offline = False
        self._serverSockets: set[ServerSocket] = set()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def offline(self) -> bool:
        """
        Whether the service is offline.  See L{IIOService.offline}.
        """
        return self._offline

    @offline.setter
    def offline(self, value: bool) -> None:
        # Strictly a boolean: "false" would be true, and going offline
        # closes every listener that does not survive it.
        value = _args.asNSError(_args.boolean, value, "offline")
        if value == self._offline:
            return
        self._offline = value
        if not value:
            _log.info("I/O service back online; nothing is reopened")
            return
        _log.info("I/O service going offline")
        for serv in list(self._serverSockets):
            if not serv._survivesOffline():
                serv._stop(NS_ERROR_ABORT)
        for transport in list(self._connections):
            goOffline(transport)

    def _addServerSocket(self, serv: ServerSocket) -> None:
        self._serverSockets.add(serv)

    def _removeServerSocket(self, serv: ServerSocket) -> None:
        self._serverSockets.discard(serv)

    def _addConnection(self, transport: Any) -> None:
        self._connections.add(transport)


ioService = IOService()
