# -*- test-case-name: tests.test_ipc -*-
"""
The parent side of Gecko's C{TCPServerSocketChild} for one child: the
listeners the child asked for (L{ChildListeners}), bound here only on the
ports the parent allows, their connections handed to the child through the
dispatcher, their errors sent back to the child's C{onerror}.
"""

from __future__ import annotations

import inspect
import socket
from typing import Any, Callable, Container

from twisted.logger import Logger
from zope.interface import implementer

from ..results import NS_BINDING_ABORTED, NS_ERROR_CONNECTION_REFUSED, NSError, nameOf
from ..serversocket import ServerSocket
from .dispatch import Dispatcher, Route
from .interfaces import IRawAcceptor
from .links import ILink

__all__ = ["ChildListeners"]

_log = Logger()


class ChildListeners:
    """
    The listeners one child asked for.

    @ivar open: each open listener's server socket and route, by the
        child's listen id.
    """

    def __init__(self, link: ILink, dispatcher: Dispatcher, reactor: Any, allowed: Container[int]) -> None:
        """
        @param link: the child's link: its connections go there, and the
            messages about its listeners.
        @param allowed: the ports the child may ask for (see
            L{WorkerLink<twisted_serversock.ipc.parent.WorkerLink>}).
        """
        self._link = link
        self._dispatcher = dispatcher
        self._reactor = reactor
        self._allowed = allowed
        self._gone = False
        self.open: dict[int, tuple[ServerSocket, Route]] = {}

    def listen(self, id: int, port: Any, backlog: Any) -> None:
        """
        Gecko's C{PTCPServerSocket} constructor: listen here on C{port} for
        the child, if it may; forward the listener's connections and errors.
        The port and backlog are checked by the server socket, whose
        C{NSError} goes back to the child as an error message.
        """
        if not self._mayListen(port):
            _log.warn("{link!r} asked to listen on port {port!r}, which it may not; refused", link=self._link, port=port)
            self.sendError(id, f"{nameOf(NS_ERROR_CONNECTION_REFUSED)}: this process does not let its children listen on port {port!r}")
            return
        serv = ServerSocket(self._reactor)
        try:
            serv.init(port, False, backlog)
        except NSError as e:
            self.sendError(id, f"{e.name}: {e}")
            return
        route = self._dispatcher.addRoute(f"listen {id} of {self._link!r}", closeWhenOrphaned=True)
        route.onOrphaned = serv.close

        def unexpectedStop(message: str) -> None:
            if not self._gone:
                self.sendError(id, message)

        serv.asyncListen(_ForwardingListener(self._dispatcher, route, unexpectedStop))
        # After asyncListen: ServerSocket.pauseAccepting needs its port.
        route.watchPort(serv)
        self.open[id] = (serv, route)
        self._dispatcher.join(route, self._link)
        self._link.sendControl("listening", id=id, route=route.id, port=serv.port)

    def _mayListen(self, port: Any) -> bool:
        if type(port) is not int:
            return False
        try:
            return port in self._allowed
        except TypeError:
            return False

    def close(self, id: int) -> None:
        """The child closed its listener C{id}."""
        entry = self.open.pop(id, None)
        if entry is not None:
            entry[0].close()

    def closeAll(self) -> None:
        """The child is gone: close every listener it had."""
        self._gone = True
        for serv, _route in list(self.open.values()):
            serv.close()
        self.open.clear()

    def sendError(self, id: int, message: str) -> None:
        """Tell the child that its listener C{id} failed (its C{onerror} gets C{message}, with this file and the caller's line)."""
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        self._link.sendControl("error", id=id, message=message, filename=__file__, lineNumber=caller.f_lineno if caller is not None else 0, columnNumber=0)


@implementer(IRawAcceptor)
class _ForwardingListener:
    """The parent-side listener of a child-requested server socket: an unexpected stop is forwarded to the child as an error."""

    def __init__(self, dispatcher: Dispatcher, route: Route, unexpectedStop: Callable[[str], None]) -> None:
        """
        @param unexpectedStop: called with the error message when the
            listener stops for another reason than being closed.
        """
        self._dispatcher = dispatcher
        self._route = route
        self._unexpectedStop = unexpectedStop

    def socketAccepted(self, skt: socket.socket, addr: Any) -> None:
        self._dispatcher.submit(self._route, skt)

    def onStopListening(self, serv: ServerSocket, status: int) -> None:
        self._dispatcher.closeRoute(self._route)
        if status != NS_BINDING_ABORTED:
            self._unexpectedStop(f"{nameOf(status)}: Server socket was closed by unexpected reason.")
