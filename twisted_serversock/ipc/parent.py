# -*- test-case-name: tests.test_ipc -*-
"""
The parent side of cross-process server sockets: it owns the listening
sockets, accepts, and hands each connection's descriptor to a child over the
child's L{Channel}.

The hand-off, for one connection::

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
import itertools
import socket
from collections import deque
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._twistedcompat import closeWithoutShutdown
from ..endpoints import _IRawAcceptingFactory
from ..results import NS_BINDING_ABORTED, NSError, nameOf
from ..serversocket import ServerSocket
from .wire import Ack, Channel, Conn, Control, Message, closeAll, dispatchControl, encodeConn, encodeControl

__all__ = ["Dispatcher", "Route", "WorkerLink", "HandOffFactory"]

_log = Logger()


class _Held:
    """
    An accepted connection the parent still holds.
    """

    __slots__ = ("connId", "route", "socket", "link")

    def __init__(self, connId: int, route: Route, skt: socket.socket) -> None:
        self.connId = connId
        self.route = route
        self.socket = skt
        self.link: WorkerLink | None = None


class Route:
    """
    One listener's way to its children: the links its connections may go
    to, taken in turn.

    @ivar id: the route's number on the wire.
    @ivar links: the children serving this route now.
    @ivar closeWhenOrphaned: close the listener (see L{onOrphaned}) when
        the last link goes away; False for a worker pool, whose workers come
        back.
    @ivar onOrphaned: called when the last link of a C{closeWhenOrphaned}
        route is lost.
    """

    def __init__(self, id: int, closeWhenOrphaned: bool, name: str) -> None:
        self.id = id
        self.links: list[WorkerLink] = []
        self.closeWhenOrphaned = closeWhenOrphaned
        self.name = name
        self.onOrphaned: Callable[[], None] | None = None
        self.closed = False
        self._next = 0

    def __repr__(self) -> str:
        return f"<Route {self.id} {self.name}>"

    def pick(self) -> WorkerLink | None:
        links = self.links
        if not links:
            return None
        self._next = (self._next + 1) % len(links)
        return links[self._next]


class Dispatcher:
    """
    Holds accepted connections and hands them to children.

    @ivar held: every connection not yet acknowledged, by id.
    @ivar waiting: connections with no child to go to yet, oldest first.
    @ivar accepted: how many connections were submitted.
    @ivar adopted: how many a child acknowledged.
    @ivar redispatched: how many connections went to a second child because
        the first one was lost before acknowledging.
    @ivar dropped: how many were closed unserved (their listener's last
        child gone, or a shutdown's grace period over).
    """

    def __init__(self) -> None:
        self.routes: dict[int, Route] = {}
        self.held: dict[int, _Held] = {}
        self.waiting: deque[_Held] = deque()
        self.accepted = 0
        self.adopted = 0
        self.redispatched = 0
        self.dropped = 0
        self._connIds = itertools.count(1)
        self._routeIds = itertools.count(1)
        self._idleWaiters: list[Callable[[], None]] = []

    def addRoute(self, name: str, closeWhenOrphaned: bool = False) -> Route:
        """
        A new route (for one listener).
        """
        route = Route(next(self._routeIds), closeWhenOrphaned, name)
        self.routes[route.id] = route
        return route

    def join(self, route: Route, link: WorkerLink) -> None:
        """
        Let C{link} serve C{route}, and give it what was waiting.
        """
        if route.closed or link in route.links:
            return
        route.links.append(link)
        link.routes.append(route)
        self._flushWaiting()

    def submit(self, route: Route, skt: socket.socket) -> None:
        """
        Take an accepted socket for C{route}; hand it on now or as soon as
        a child of the route can take it.
        """
        held = _Held(next(self._connIds), route, skt)
        self.accepted += 1
        self.held[held.connId] = held
        if not self._send(held):
            self.waiting.append(held)

    def _send(self, held: _Held) -> bool:
        link = held.route.pick()
        if link is None:
            return False
        held.link = link
        link.inflight[held.connId] = held
        link.channel.send(encodeConn(held.connId, held.route.id), (held.socket.fileno(),))
        return True

    def _flushWaiting(self) -> None:
        waiting = self.waiting
        for _ in range(len(waiting)):
            held = waiting.popleft()
            if held.connId in self.held:
                self._place(held, front=False)

    def _place(self, held: _Held, front: bool) -> None:
        """
        Send C{held} to a child of its route, or queue it (at the front:
        it was accepted before what waits) until one can take it; close it
        if its route has been closed and has no child left.
        """
        if held.route.closed and not held.route.links:
            self._drop(held, "its listener's last child is gone")
        elif not self._send(held):
            if front:
                self.waiting.appendleft(held)
            else:
                self.waiting.append(held)

    def acked(self, link: WorkerLink, connIds: tuple[int, ...]) -> None:
        """
        C{link}'s child adopted C{connIds}: close the parent's copies.
        """
        for connId in connIds:
            held = link.inflight.pop(connId, None)
            if held is None:
                _log.warn("{link!r} acknowledged connection {id}, which it was not given", link=link, id=connId)
                continue
            del self.held[connId]
            link.adopted += 1
            self.adopted += 1
            held.socket.close()  # a plain close: the child's copy lives on
        self._checkIdle()

    def linkLost(self, link: WorkerLink) -> None:
        """
        C{link}'s child is gone: re-route what it had not acknowledged.
        """
        for route in link.routes:
            if link in route.links:
                route.links.remove(link)
            if not route.links and route.closeWhenOrphaned and not route.closed:
                route.closed = True
                if route.onOrphaned is not None:
                    route.onOrphaned()
        link.routes = []
        unacked = list(link.inflight.values())
        link.inflight.clear()
        if unacked:
            _log.info(
                "{link!r} went away holding {n} unacknowledged connection(s); handing them to another child",
                link=link,
                n=len(unacked),
            )
        for held in unacked:
            held.link = None
            self.redispatched += 1
            self._place(held, front=True)
        self._checkIdle()

    def closeRoute(self, route: Route) -> None:
        """
        The listener of C{route} is closed: connections already accepted
        still go to its children.
        """
        route.closed = True
        self.routes.pop(route.id, None)
        if not route.links:
            self._flushWaiting()

    def _drop(self, held: _Held, why: str) -> None:
        self.held.pop(held.connId, None)
        self.dropped += 1
        _log.error(
            "Closing connection {id} of {route!r}: {why}",
            id=held.connId,
            route=held.route,
            why=why,
        )
        held.socket.close()

    def dropAll(self, why: str) -> int:
        """
        Close every held connection (at the end of a shutdown's grace
        period); returns how many there were.
        """
        held = list(self.held.values())
        for h in held:
            if h.link is not None:
                h.link.inflight.pop(h.connId, None)
            self._drop(h, why)
        self.waiting.clear()
        self._checkIdle()
        return len(held)

    def whenIdle(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} once no connection is held (at once if none is).
        """
        self._idleWaiters.append(callback)
        self._checkIdle()

    def _checkIdle(self) -> None:
        if self.held or not self._idleWaiters:
            return
        waiters, self._idleWaiters = self._idleWaiters, []
        for callback in waiters:
            callback()


class WorkerLink:
    """
    The parent's end of one child's channel.

    @ivar inflight: connections sent to the child and not yet acknowledged.
    @ivar adopted: how many connections the child has acknowledged.
    @ivar routes: the routes this child serves.
    @ivar onReady: called when the child says it is ready.
    @ivar onLost: called once when the channel is gone.
    """

    def __init__(self, dispatcher: Dispatcher, skt: socket.socket, reactor: Any, name: str) -> None:
        self._dispatcher = dispatcher
        self._reactor = reactor
        self.name = name
        self.inflight: dict[int, _Held] = {}
        self.adopted = 0
        self.routes: list[Route] = []
        self.ready = False
        self.lost = False
        self.onReady: Callable[[WorkerLink], None] | None = None
        self.onLost: Callable[[WorkerLink], None] | None = None
        self._listens: dict[int, tuple[ServerSocket, Route]] = {}
        self.channel = Channel(skt, self, reactor, name)
        self.channel.startReading()

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def sendControl(self, type: str, **fields: Any) -> None:
        """
        Send a control message to the child.
        """
        self.channel.send(encodeControl(type, **fields))

    def close(self) -> None:
        """
        Close the channel (the child sees its end).
        """
        self.channel.loseConnection()

    # Receiver
    def messageReceived(self, message: Message) -> None:
        if isinstance(message, Ack):
            self._dispatcher.acked(self, message.connIds)
        elif isinstance(message, Control):
            if not dispatchControl(self, message, repr(self)):
                self.channel.rejected += 1
                _log.warn("{link!r}: ignored an unknown control message {type!r}", link=self, type=message.type)
        else:
            assert isinstance(message, Conn)
            self.channel.rejected += 1
            closeAll([message.fd])
            _log.warn("{link!r}: a child may not send connections; closed the descriptor", link=self)

    def channelLost(self, reason: Failure) -> None:
        self.lost = True
        self.ready = False
        for serv, _route in list(self._listens.values()):
            serv.close()
        self._listens.clear()
        self._dispatcher.linkLost(self)
        if self.onLost is not None:
            self.onLost(self)

    # Control messages from the child.
    def _control_ready(self, pid: int = 0) -> None:
        self.ready = True
        if self.onReady is not None:
            self.onReady(self)

    def _control_listen(self, id: int, port: int, backlog: int = -1) -> None:
        """
        The child asks for a listener (Gecko's C{PTCPServerSocket}
        constructor): listen here, forward its connections and its errors.
        """
        if not isinstance(id, int) or id in self._listens:
            raise TypeError(f"listen id {id!r} is not a new integer")
        serv = ServerSocket(self._reactor)
        try:
            serv.init(port, False, backlog)
        except NSError as e:
            self._sendError(id, f"{e.name}: {e}")
            return
        route = self._dispatcher.addRoute(f"listen {id} of {self.name}", closeWhenOrphaned=True)
        route.onOrphaned = serv.close
        dispatcher = self._dispatcher

        def accepted(skt: socket.socket, addr: Any) -> None:
            dispatcher.submit(route, skt)

        serv._rawAccept = accepted
        serv.asyncListen(_ForwardingListener(self, id, route))
        self._listens[id] = (serv, route)
        self._dispatcher.join(route, self)
        self.sendControl("listening", id=id, route=route.id, port=serv.port)

    def _control_close(self, id: int) -> None:
        entry = self._listens.pop(id, None)
        if entry is not None:
            entry[0].close()

    def _sendError(self, id: int, message: str) -> None:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        self.sendControl(
            "error",
            id=id,
            message=message,
            filename=__file__,
            lineNumber=caller.f_lineno if caller is not None else 0,
            columnNumber=0,
        )


class _ForwardingListener:
    """
    The parent-side listener of a child-requested server socket: an
    unexpected stop is forwarded to the child as an error.
    """

    def __init__(self, link: WorkerLink, id: int, route: Route) -> None:
        self._link = link
        self._id = id
        self._route = route

    def onSocketAccepted(self, serv: ServerSocket, transport: Any) -> None:  # pragma: no cover
        # Not reached: accepted sockets go to the raw hook.
        transport.close(NS_BINDING_ABORTED)

    def onStopListening(self, serv: ServerSocket, status: int) -> None:
        self._link._dispatcher.closeRoute(self._route)
        if status != NS_BINDING_ABORTED and not self._link.lost:
            self._link._sendError(self._id, f"{nameOf(status)}: Server socket was closed by unexpected reason.")


@implementer(IProtocolFactory, _IRawAcceptingFactory)
class HandOffFactory:
    """
    The protocol factory the parent listens with: connections go to the
    dispatcher for C{route}.

    A C{gecko:}/C{geckounix:} endpoint gives it accepted sockets raw
    (L{socketAccepted}).  Other endpoints build a transport first
    (L{buildProtocol}); if that transport is a plain TCP or UNIX connection
    its descriptor is handed over all the same, and if it is not (a TLS or
    PROXY-protocol wrapper, whose bytes the parent has to process), the
    connection is served in the parent with C{fallback} - never dropped.
    """

    def __init__(self, dispatcher: Dispatcher, route: Route, fallback: Any) -> None:
        self.dispatcher = dispatcher
        self.route = route
        self.fallback = fallback
        self._warned = False

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def socketAccepted(self, skt: socket.socket, addr: Any) -> None:
        self.dispatcher.submit(self.route, skt)

    def buildProtocol(self, addr: Any) -> Protocol:
        return _HandOff(self, addr)


class _HandOff(Protocol):
    """
    Hands the connection's descriptor to the dispatcher and lets its
    Twisted transport go without C{shutdown()}; or, for a wrapped
    transport, serves it in this process.
    """

    def __init__(self, factory: HandOffFactory, addr: Any) -> None:
        self._factory = factory
        self._addr = addr
        self._inner: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        factory = self._factory
        if isinstance(transport, tcp.Connection) and isinstance(getattr(transport, "socket", None), socket.socket):
            transport.stopReading()
            skt = transport.socket.dup()
            # Close without shutdown(2), which would end the child's copy too.
            closeWithoutShutdown(transport)
            factory.dispatcher.submit(factory.route, skt)
            return
        if not factory._warned:
            factory._warned = True
            _log.warn(
                "Connections of {route!r} come through {transport!r}, which cannot be handed to a "
                "worker; serving them in the parent process",
                route=factory.route,
                transport=type(transport).__name__,
            )
        inner = factory.fallback.buildProtocol(self._addr)
        if inner is None:
            transport.loseConnection()
            return
        self._inner = inner
        inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._inner is not None:
            self._inner.connectionLost(reason)




