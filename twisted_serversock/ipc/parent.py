# -*- test-case-name: tests.test_ipc -*-
"""
The parent side of cross-process server sockets: it owns the listening
sockets, accepts, and hands each connection's descriptor to a child::

    parent                                   child
    accept() -> socket S (held)
    conn(id, route) + dup of S  ---------->  adopt? first: ack(id)
                                <----------  ack(id)
    close S (no shutdown)                    serve the connection

The parent keeps S until the ack: if the child dies first, the kernel
discards the copy in flight and the parent sends S to another child of the
same route.  The parent never builds a Twisted transport for S (an orderly
Twisted close would C{shutdown()} the child's copy too) and never reads
from it.
"""

from __future__ import annotations

import inspect
import socket
from typing import Any, Callable, Container

from twisted.internet import tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._labels import factoryLogPrefix
from .._twistedcompat import closeWithoutShutdown, unwrapProxied
from ..results import NS_BINDING_ABORTED, NS_ERROR_CONNECTION_REFUSED, NSError, nameOf
from ..serversocket import ServerSocket
from .channel import Channel, closeAll
from .control import ANY, INTEGER, INTEGERS, ControlTable, optional, reject
from .dispatch import Dispatcher, Link, Route
from ..interfaces import IRawAcceptor
from .wire import Ack, Control, Message

__all__ = ["Dispatcher", "Route", "WorkerLink", "HandOffFactory"]

_log = Logger()


class WorkerLink(Link):
    """
    The parent's end of one child's channel, and the parent side of Gecko's
    C{TCPServerSocketChild}: the listeners the child asks for.

    @ivar lastHeard: when the child last sent anything (it sends heartbeats while idle).
    @ivar listeners: the child's listeners: server socket and route by its listen id.
    @ivar onControl: called with C{(link, message)} for a control message
        this class has no handler for (cluster mode's); returns whether it
        handled it.  One nobody handles is logged and counted as rejected.
    """

    controls = ControlTable()

    def __init__(self, dispatcher: Dispatcher, skt: socket.socket, reactor: Any, name: str, listenPorts: Container[int] = ()) -> None:
        """
        @param listenPorts: the ports the child may ask this process to
            listen on, on every interface, with its privileges.  Empty (the
            default; the workers of C{twistd serversock} and cluster mode):
            none, and the child's C{onerror} says so.  C{range(65536)}: any, 0 included.
        """
        super().__init__(Channel(skt, self, reactor, name, drainOnLoss=True))
        self._dispatcher, self._reactor, self.name = dispatcher, reactor, name
        self.ready = self.lost = False
        self.lastHeard = reactor.seconds()
        self.onReady: Callable[[WorkerLink], None] | None = None
        self.onControl: Callable[[WorkerLink, Control], bool] | None = None
        self._listenPorts = listenPorts
        self.listeners: dict[int, tuple[ServerSocket, Route]] = {}
        self.channel.startReading()

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def close(self) -> None:
        """
        Close the channel after reading what the child sent; only once the
        child process is gone: a live child may have an ack on its way, and
        what it had not acknowledged goes to another child.
        """
        self.channel.loseConnection()

    def messageReceived(self, message: Message) -> None:
        self.lastHeard = self._reactor.seconds()
        if isinstance(message, Ack):
            self._dispatcher.acked(self, message.connIds, message.closed)
        elif not isinstance(message, Control):
            self.channel.rejected += 1
            closeAll([message.fd])
            _log.warn("{link!r}: a child may not send connections; closed the descriptor", link=self)
        elif self.controls.dispatch(message, repr(self), self.channel, self) or (self.onControl and self.onControl(self, message)):
            pass
        else:
            self.channel.rejected += 1
            _log.warn("{link!r}: ignored an unknown control message {type!r}", link=self, type=message.type)

    def channelLost(self, reason: Failure) -> None:
        self.lost = True
        self.ready = self.accepting = False
        listeners = list(self.listeners.values())
        self.listeners.clear()  # first: what their queues held is closed (_ChildListener)
        for serv, _route in listeners:
            serv.close()
        self._dispatcher.linkLost(self)

    # Control messages from the child; a heartbeat needs nothing but lastHeard.
    @controls.handler("heartbeat")
    def _onHeartbeat(self) -> None:
        pass

    @controls.handler("refused", ids=INTEGERS)
    def _onRefused(self, ids: list[int]) -> None:
        """The child is at its descriptor limit and did not adopt C{ids}: they go to another child."""
        self._dispatcher.refusedBy(self, tuple(ids))

    @controls.handler("ready", pid=optional(INTEGER, 0))
    def markReady(self, pid: int = 0) -> None:
        """The child is ready for connections (its C{ready} message says so)."""
        self.ready = True
        if self.onReady is not None:
            self.onReady(self)

    @controls.handler("listen", id=INTEGER, port=ANY, backlog=optional(ANY, -1))
    def _onListen(self, id: int, port: Any, backlog: Any) -> None:
        """
        Gecko's C{PTCPServerSocket} constructor in the child: listen here for
        it, if it may; the C{NSError} of the server socket's checks goes back.
        """
        if id in self.listeners:
            reject("listen", repr(self), self.channel, f"listen id {id} is already in use")
            return
        if not self._mayListen(port):
            _log.warn("{link!r} asked to listen on port {port!r}, which it may not; refused", link=self, port=port)
            self._sendError(id, f"{nameOf(NS_ERROR_CONNECTION_REFUSED)}: this process does not let its children listen on port {port!r}")
            return
        serv = ServerSocket(self._reactor)
        try:
            serv.init(port, False, backlog)
        except NSError as e:
            self._sendError(id, f"{e.name}: {e}")
            return
        route = self._dispatcher.addRoute(f"listen {id} of {self!r}", onOrphaned=serv.close)
        serv.asyncListen(_ChildListener(self._dispatcher, route, self, id))
        # After asyncListen: ServerSocket.pauseAccepting needs its port.
        route.watchPort(serv)
        self.listeners[id] = (serv, route)
        self._dispatcher.join(route, self)
        self.sendControl("listening", id=id, route=route.id, port=serv.port)

    def _mayListen(self, port: Any) -> bool:
        try:
            return type(port) is int and port in self._listenPorts
        except TypeError:
            return False

    @controls.handler("close", id=INTEGER)
    def _onClose(self, id: int) -> None:
        entry = self.listeners.pop(id, None)
        if entry is not None:
            entry[0].close()

    def listenerStopped(self, id: int, route: Route, status: int) -> None:
        """The child's listener C{id} stopped: an unexpected stop goes to the child's C{onerror}."""
        self._dispatcher.closeRoute(route)
        if status != NS_BINDING_ABORTED and not self.lost:
            self._sendError(id, f"{nameOf(status)}: Server socket was closed by unexpected reason.")

    def _sendError(self, id: int, message: str) -> None:
        # The child's onerror gets this file and the caller's line, as
        # Gecko's error events name the source that raised them.
        frame = inspect.currentframe()
        line = frame.f_back.f_lineno if frame is not None and frame.f_back is not None else 0
        self.sendControl("error", id=id, message=message, filename=__file__, lineNumber=line, columnNumber=0)


@implementer(IRawAcceptor)
class _Submitter:
    """Takes accepted sockets raw (L{IRawAcceptor}) and submits them to a dispatcher's C{route}."""

    def __init__(self, dispatcher: Dispatcher, route: Route) -> None:
        self.dispatcher, self.route = dispatcher, route

    def socketAccepted(self, skt: socket.socket, addr: Any) -> None:
        self.dispatcher.submit(self.route, skt)


class HandOffFactory(Factory, _Submitter):
    """
    The protocol factory the parent listens with: connections go to the
    dispatcher for C{route}, raw from a C{gecko:}/C{geckounix:} endpoint.
    Other endpoints build a transport first (L{buildProtocol}): a plain TCP
    or UNIX one is handed over all the same; behind C{haproxy:}, before the
    PROXY header is read, for the worker to parse.  Any other wrapper (TLS),
    whose bytes the parent would have to process, is served here with
    C{fallback} - never dropped.
    """

    noisy = False  # no "Starting factory": the port logs what it serves (logPrefix)

    def __init__(self, dispatcher: Dispatcher, route: Route, fallback: Any) -> None:
        _Submitter.__init__(self, dispatcher, route)
        self.fallback = fallback
        self._warned = False

    def logPrefix(self) -> str:
        """The served factory's: the port logs C{"Site starting on 8080"}, as the same program on C{tcp:} would."""
        return factoryLogPrefix(self.fallback)

    def buildProtocol(self, addr: Any) -> Protocol:
        return _HandOff(self, addr)

    def serveHere(self, addr: Any, transport: Any) -> Protocol | None:
        """The fallback's protocol for a wrapped (TLS) connection; the first is logged."""
        if not self._warned:
            self._warned = True
            why = "Connections of {route!r} come through {transport!r}, which cannot be handed to a worker"
            _log.warn(why + "; serving them in the parent process", route=self.route, transport=type(transport).__name__)
        protocol: Protocol | None = self.fallback.buildProtocol(addr)
        return protocol


class _HandOff(Protocol):
    """One connection of a L{HandOffFactory}: handed over, or served here."""

    def __init__(self, factory: HandOffFactory, addr: Any) -> None:
        self._factory, self._addr = factory, addr
        self._inner: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        factory = self._factory
        # haproxy:...: the wrapper connects us before it has read anything,
        # so the PROXY header is still in the socket - the worker parses it
        # (its factory is wrapped for this route).
        unwrapped = unwrapProxied(transport)
        raw = transport if unwrapped is None else unwrapped
        if isinstance(raw, tcp.Connection) and isinstance(getattr(raw, "socket", None), socket.socket):
            reader: Any = raw  # (Twisted's FileDescriptor is not annotated)
            reader.stopReading()
            skt = raw.socket.dup()
            # Close without shutdown(2), which would end the child's copy too.
            closeWithoutShutdown(raw)
            if unwrapped is not None:
                factory.dispatcher.markProxy(factory.route)
            factory.socketAccepted(skt, self._addr)
            return
        self._inner = factory.serveHere(self._addr, transport)
        if self._inner is None:
            transport.loseConnection()
        else:
            self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._inner is not None:
            self._inner.connectionLost(reason)


class _ChildListener(_Submitter):
    """The listener of a server socket a child asked for."""

    def __init__(self, dispatcher: Dispatcher, route: Route, link: WorkerLink, id: int) -> None:
        super().__init__(dispatcher, route)
        self._link, self._id = link, id

    def socketAccepted(self, skt: socket.socket, addr: Any) -> None:
        entry = self._link.listeners.get(self._id)
        if entry is None or entry[1] is not self.route:
            # The child closed this listener, or is gone: what the kernel
            # had queued, taken at the close, has nobody to go to.
            skt.close()
            return
        super().socketAccepted(skt, addr)

    def onStopListening(self, serv: ServerSocket, status: int) -> None:
        self._link.listenerStopped(self._id, self.route, status)
