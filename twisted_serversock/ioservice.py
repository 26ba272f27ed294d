# -*- test-case-name: tests.test_offline -*-
"""
The offline switch of Gecko's I/O service, for server sockets and the
connections they accepted.

The service is a registry: it knows nothing of what it switches off.
Every bound server socket registers a callback (L{IOService.register}),
whether or not it survives going offline: one that does not closes itself
from it, and every one takes offline the connection from a non-local peer
its listener is still deciding about.  A connection from a peer that is
not local is then watched weakly (L{IOService.watch}) once the listener
has seen it.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, TypeVar

from twisted.logger import Logger
from zope.interface import implementer

from . import _args
from .interfaces import IIOService

__all__ = ["IOService", "ioService"]

_log = Logger()

_T = TypeVar("_T")


@implementer(IIOService)
class IOService:
    """
    An I/O service: a set of server sockets (and their non-local
    connections) that go offline together.

    The module-level L{ioService} is the default every
    L{ServerSocket<twisted_serversock.serversocket.ServerSocket>} uses;
    construct your own for tests and pass it as C{ServerSocket(ioService=...)}.

    @ivar _serverSockets: the go-offline callbacks registered with
        L{register} (by every bound server socket, from C{init*} until
        C{close}), keyed by their registration.  Holding them also keeps
        those server sockets alive, as Gecko's socket service holds its
        sockets.
    @ivar _connections: the objects L{watch}ed (the live Twisted transports
        of accepted connections whose peer is not local) and their
        callbacks; held weakly, so a connection that ends is forgotten
        without any bookkeeping on the connection's side.
    """

    def __init__(self) -> None:
        self._offline = False
        self._serverSockets: dict[object, Callable[[], None]] = {}
        self._connections: weakref.WeakKeyDictionary[object, Callable[[Any], None]] = weakref.WeakKeyDictionary()

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
        for goOffline in list(self._serverSockets.values()):
            goOffline()
        for obj, goOfflineObj in list(self._connections.items()):
            goOfflineObj(obj)

    def register(self, goOffline: Callable[[], None]) -> Callable[[], None]:
        """
        Package-internal: call C{goOffline()} when the service goes offline
        (once per switch, until unregistered).  Every server socket
        registers while it is bound, survivor or not (see the module
        docstring), and unregisters when it closes.

        @return: the unregister handle: call it (any number of times) to
            forget C{goOffline}.
        """
        key = object()
        registered = self._serverSockets
        registered[key] = goOffline

        def unregister() -> None:
            registered.pop(key, None)

        return unregister

    def watch(self, obj: _T, goOffline: Callable[[_T], None]) -> None:
        """
        Package-internal: call C{goOffline(obj)} when the service goes
        offline, for as long as C{obj} lives (it is held weakly: a
        connection that ends needs no unregistering).  The accept pipeline
        watches the Twisted transport of each connection from a peer that
        is not local, once the listener's C{onSocketAccepted} returned.
        """
        self._connections[obj] = goOffline


ioService = IOService()
