# -*- test-case-name: tests.test_ipc -*-
"""
The child's end of its channel (L{ParentLink}), and
L{TCPServerSocketChild}, Gecko's C{nsITCPServerSocketInternal}.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Callable

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import _args
from ..interfaces import ITCPServerSocket, ITCPServerSocketInternal
from ..results import NS_ERROR_FAILURE, NS_ERROR_INVALID_ARG, NS_ERROR_NOT_INITIALIZED, NSError
from ..tcpsocket import TCPSocket, TCPSocketErrorEvent, _checkBinaryType, _ClientFactory, _connected, _fire
from .channel import Channel, closeAll
from .control import INTEGER, STRING, ControlTable, optional
from .wire import Conn, Control, Message, encodeControl, encodeReport

__all__ = ["ParentLink", "TCPServerSocketChild", "REPORT_DELAY"]

_log = Logger()

#: Seconds a close waits for an ack to carry it before it is reported alone.
REPORT_DELAY = 0.02


class ParentLink:
    """
    The child's end of its channel to the parent.

    @ivar onConnection: gets C{(route, socket)}, to own, for a connection of
        a route no L{TCPServerSocketChild} asked for.
    @ivar onControl: gets each control message not handled here.
    @ivar onLost: called once when the parent's end is gone.
    """

    controls = ControlTable()

    def __init__(self, skt: socket.socket, reactor: Any, name: str = "parent") -> None:
        self.reactor = reactor
        self.onConnection: Callable[[int, socket.socket], None] | None = None
        self.onControl: Callable[[Control], None] | None = None
        self.onLost: Callable[[Failure], None] | None = None
        self._servers: dict[int, TCPServerSocketChild] = {}  # by route
        self._requests: dict[int, TCPServerSocketChild] = {}  # by listen id
        self._listenIds = itertools.count(1)
        self._adopting: dict[int, socket.socket] = {}
        self._spares: dict[int, int] = {}  # connId: a descriptor kept free for its adoption
        self._unacked: list[tuple[int, int, int]] = []  # (connId, route, fd), to ack at readDone
        self._closed = 0  # closes not yet reported
        self._reportLater: Any = None
        self.channel = Channel(skt, self, reactor, name)
        self.channel.startReading()

    @property
    def connected(self) -> bool:
        return self.channel.connected

    def sendControl(self, type: str, **fields: Any) -> None:
        self.channel.send(encodeControl(type, **fields))

    def requestListener(self, server: TCPServerSocketChild, port: int, backlog: int) -> int:
        """Ask the parent to listen on C{port} for C{server}; returns the request's id, for L{closeListener}."""
        listenId = next(self._listenIds)
        self._requests[listenId] = server
        self.sendControl("listen", id=listenId, port=port, backlog=backlog)
        return listenId

    def closeListener(self, listenId: int, route: int) -> None:
        """Ask the parent to close the listener of request C{listenId}, whose connections come on C{route}."""
        self._requests.pop(listenId, None)
        self._servers.pop(route, None)
        if self.channel.connected:
            self.sendControl("close", id=listenId)

    def messageReceived(self, message: Message) -> None:
        if isinstance(message, Conn):
            if message.fd >= 0:  # -1: the kernel had no room for it
                self._adopting[message.connId] = socket.socket(fileno=message.fd)
            self._unacked.append((message.connId, message.route, message.fd))
        elif isinstance(message, Control):
            # Connections that came before it are acknowledged and adopted
            # before it is handled, as if one at a time.
            self.readDone()
            if self.controls.dispatch(message, "the parent", self.channel, self):
                return
            if self.onControl is not None:
                self.onControl(message)
            else:
                _log.warn("Ignored an unknown control message {type!r} from the parent", type=message.type)
        else:
            _log.warn("Ignored an ack from the parent: only children acknowledge")

    def reportClosed(self) -> None:
        """
        An adopted connection ended: the parent (its least-loaded dispatch)
        learns it with the next ack, or after L{REPORT_DELAY}: under load,
        closes cost no message of their own.
        """
        self._closed += 1
        if self._reportLater is None and self.channel.connected:
            self._reportLater = self.reactor.callLater(REPORT_DELAY, self._report)

    def _report(self) -> None:
        self._reportLater = None
        if self._closed and self.channel.connected:
            closed, self._closed = self._closed, 0
            self.channel.send(encodeReport((), closed))

    def readDone(self) -> None:
        """
        Acknowledge one readable event's connections (and report closes) in
        one message, saving the parent a wakeup and a C{recvmsg} per
        connection under load; adopt them once the kernel took it: until the
        parent has the ack, it may give them to another child.  Those this
        process has no descriptors for (see L{_reserve}) are refused
        instead, after the ack: the parent gives them to another child.
        """
        unacked = self._unacked
        if not unacked:
            return
        self._unacked = []
        unacked, refused = self._reserve(unacked)
        closed, self._closed = self._closed, 0

        def deliverAll() -> None:
            for connId, route, _fd in unacked:
                self._deliver(connId, route)

        if unacked or closed:
            self.channel.send(encodeReport([connId for connId, _r, _fd in unacked], closed), then=deliverAll)
        if refused:
            self.sendControl("refused", ids=refused)

    def _reserve(self, unacked: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], list[int]]:
        """
        Reserve, for each connection, the descriptor its adoption takes (the
        reactor's duplicate; once adopted, the one received is closed and
        left free for what serving it opens, a file); return those reserved
        for, and the ids of the others, closed here (see L{_reserveSome}).
        """
        spares = self._spares
        try:
            for connId, _route, fd in unacked:
                spares[connId] = os.dup(fd)  # -1 (none received) fails too
        except OSError:
            for connId, _route, _fd in unacked:
                if (spare := spares.pop(connId, None)) is not None:
                    os.close(spare)
            return self._reserveSome(unacked)
        return unacked, []

    def _reserveSome(self, unacked: list[tuple[int, int, int]]) -> tuple[list[tuple[int, int, int]], list[int]]:
        """
        L{_reserve} without room for all: refuse those the kernel had no
        room for, and the last ones while no reserve is left (closing one
        frees a number for those before it).
        """
        pending, spares, i = list(unacked), self._spares, 0
        refused: set[int] = set()
        while i < len(pending):
            connId, _route, fd = pending[i]
            try:
                spares[connId] = os.dup(fd)
                i += 1
            except OSError:
                self._drop(pending.pop(i if fd < 0 else -1), refused)
        return pending, [connId for connId, _r, _fd in unacked if connId in refused]

    def _drop(self, entry: tuple[int, int, int], refused: set[int]) -> None:
        refused.add(entry[0])
        if (skt := self._adopting.pop(entry[0], None)) is not None:
            skt.close()

    def _deliver(self, connId: int, route: int) -> None:
        if (spare := self._spares.pop(connId, None)) is not None:
            os.close(spare)  # for the reactor's duplicate
        if (skt := self._adopting.pop(connId, None)) is None:
            return
        try:
            if (server := self._servers.get(route)) is not None:
                server.callListenerAccept(skt)
            elif self.onConnection is not None:
                self.onConnection(route, skt)
            else:
                _log.error("A connection for unknown route {route} arrived; closing it", route=route)
                skt.close()
        except Exception:
            _log.failure("Could not adopt connection {id}; closing it", id=connId)
            skt.close()

    def channelLost(self, reason: Failure) -> None:
        # Connections received but not acknowledged go back with the
        # parent's copies; ours are closed.
        for skt in self._adopting.values():
            skt.close()
        self._adopting.clear()
        closeAll(list(self._spares.values()))
        self._spares.clear()
        self._unacked = []
        if self._reportLater is not None and self._reportLater.active():
            self._reportLater.cancel()
        if self.onLost is not None:
            self.onLost(reason)

    @controls.handler("listening", id=INTEGER, route=INTEGER, port=INTEGER)
    def _onListening(self, id: int, route: int, port: int) -> None:
        if (server := self._requests.get(id)) is not None:
            self._servers[route] = server
            server.listening(route, port)

    @controls.handler("error", id=INTEGER, message=STRING, filename=optional(STRING, ""), lineNumber=optional(INTEGER, 0), columnNumber=optional(INTEGER, 0))
    def _onError(self, id: int, message: str, filename: str, lineNumber: int, columnNumber: int) -> None:
        if (server := self._requests.get(id)) is not None:
            server.callListenerError(message, filename, lineNumber, columnNumber)
        else:
            _log.error("Error from the parent: {message} ({filename}:{line})", message=message, filename=filename, line=lineNumber)


@implementer(ITCPServerSocket, ITCPServerSocketInternal)
class TCPServerSocketChild:
    """
    A L{TCPServerSocket<twisted_serversock.tcpsocket.TCPServerSocket>}
    whose listening socket is in the parent process (C{init}, then
    C{listen}; see C{docs/workers.md}).

    @ivar localPort: the requested port until the parent reports the bound
        one (Gecko's child never learns it; this one does).
    @ivar windowVal: what L{init} stored.
    """

    def __init__(self, parent: ParentLink, reactor: Any = None) -> None:
        """@param reactor: runs the accepted connections (C{None}: C{parent}'s)."""
        self._parent = parent
        self._reactor = reactor if reactor is not None else parent.reactor
        self.windowVal: Any = None
        self.binaryType = "string"
        self.localPort = -1
        self.onconnect: Callable[[Any], Any] | None = None
        self.onerror: Callable[[Any], Any] | None = None
        self._listenId: int | None = None
        self._route: int | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<TCPServerSocketChild port {self.localPort}>"

    def init(self, windowVal: object) -> None:
        self.windowVal = windowVal

    def listen(self, localPort: int, options: object, backlog: int) -> None:
        """
        Ask the parent to listen on C{localPort}.

        @raise NSError: C{NS_ERROR_FAILURE} if already listening,
            C{NS_ERROR_NOT_INITIALIZED} if the parent is gone,
            C{NS_ERROR_INVALID_ARG} for bad options.
        """
        if self._listenId is not None:
            raise NSError(NS_ERROR_FAILURE, "Child TCPServerSocket is already listening.")
        if not self._parent.connected:
            raise NSError(NS_ERROR_NOT_INITIALIZED, "the channel to the parent process is closed")
        _args.asNSError(_args.integer, localPort, "localPort", None, 65535)
        _args.asNSError(_args.integer, backlog, "backlog")
        self.binaryType = _checkBinaryType(options)
        self.localPort = localPort
        self._listenId = self._parent.requestListener(self, localPort, backlog)

    def listening(self, route: int, port: int) -> None:
        """Package-internal: the parent listens on C{port}, connections come on C{route}."""
        self._route, self.localPort = route, port
        if self._closed:
            self._parent.closeListener(self._listenId or 0, route)

    def callListenerAccept(self, socketChild: object) -> None:
        """A connection accepted in the parent: its C{socket.socket} here (this call takes it)."""
        if not isinstance(socketChild, socket.socket):
            raise NSError(NS_ERROR_INVALID_ARG, f"expected a connected socket.socket, not {socketChild!r}")
        if self._closed:
            socketChild.close()
            return
        sock = TCPSocket(self.binaryType)
        try:
            # The factory of one built socket (adopting fails no connect).
            self._reactor.adoptStreamConnection(socketChild.fileno(), socketChild.family, _ClientFactory(sock))
        finally:
            socketChild.close()  # the reactor adopted a duplicate
        _connected(self, sock)

    def callListenerError(self, message: str, filename: str, lineNumber: int, columnNumber: int) -> None:
        """
        An error in the parent: report it to C{onerror}.

        @raise NSError: C{NS_ERROR_INVALID_ARG}, naming the bad argument.
        """
        _args.asNSError(_args.text, message, "message")
        _args.asNSError(_args.text, filename, "filename")
        _args.asNSError(_args.integer, lineNumber, "lineNumber", 0)
        _args.asNSError(_args.integer, columnNumber, "columnNumber", 0)
        name = message.split(":", 1)[0] if message.startswith("NS_") else "Error"
        event = TCPSocketErrorEvent(self, message, name=name, filename=filename, lineNumber=lineNumber, columnNumber=columnNumber)
        if self.onerror is None:
            _log.error("{server!r}: {message} ({filename}:{line})", server=self, message=message, filename=filename, line=lineNumber)
            return
        _fire(self.onerror, event, self)

    def close(self) -> None:
        """Ask the parent to stop listening; accepted sockets stay open. Idempotent."""
        if not self._closed and self._listenId is not None and self._route is not None:
            self._parent.closeListener(self._listenId, self._route)
        self._closed = True

