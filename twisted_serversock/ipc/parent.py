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

import socket
from collections import deque
from typing import Any, Callable, Container

from twisted.internet import tcp
from twisted.internet.interfaces import ILoggingContext, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .._twistedcompat import closeWithoutShutdown, unwrapProxied
from .._labels import factoryLogPrefix
from .interfaces import IRawAcceptor
from .channel import Channel, closeAll
from .childlisten import ChildListeners
from .control import ANY, INTEGER, ControlTable, optional, reject
from .dispatch import ACK_DEADLINE, FAST_ACK, INITIAL_WINDOW, MAX_INFLIGHT, Dispatcher, Route, _Held
from .wire import Ack, Conn, Control, Message, encodeConn, encodeControl

__all__ = ["Dispatcher", "Route", "WorkerLink", "HandOffFactory"]

_log = Logger()


class WorkerLink:
    """
    The parent's end of one child's channel.  Its counts change only
    through its methods, which the dispatcher calls.

    @ivar inflight: connections sent to the child and not yet acknowledged.
    @ivar sentOrder: C{(connection id, when sent)} in the order sent (may
        still name acknowledged ones after its start, never at its start:
        L{adopt} keeps it so).
    @ivar window: how many unacknowledged it may have (see
        L{MAX_INFLIGHT<twisted_serversock.ipc.dispatch.MAX_INFLIGHT>}).
    @ivar adopted: connections the child acknowledged; C{open}: those it
        has not yet reported closed; C{sent}: those sent to it.
    @ivar accepting: False once the child gets no new connections.
    @ivar lastHeard: when (the reactor's C{seconds()}) the child last sent
        anything; children send heartbeats while idle.
    @ivar limit: the C{sent} count at which C{onLimit} is called once (0:
        none).
    @ivar listeners: the listeners the child asked for (Gecko's
        C{TCPServerSocketChild}), a L{ChildListeners}.
    @ivar onControl: called with C{(link, message)} for a control message
        this class has no handler for (cluster mode's); without it such a
        message is logged and counted as rejected.
    """

    controls = ControlTable()

    def __init__(
        self, dispatcher: Dispatcher, skt: socket.socket, reactor: Any, name: str, listenPorts: Container[int] = ()
    ) -> None:
        """
        @param listenPorts: the ports the child may ask this process to
            listen on (Gecko's C{TCPServerSocket} in a child,
            L{TCPServerSocketChild<twisted_serversock.ipc.child.TCPServerSocketChild>});
            the listener binds every interface, with this process's
            privileges.  Empty (the default, and what the workers of
            C{twistd serversock} and cluster mode get): the child may not
            listen at all, and its C{onerror} says so.  C{range(65536)}
            lets it listen anywhere, port 0 (any free port) included.
        """
        self._dispatcher, self._reactor, self.name = dispatcher, reactor, name
        self.inflight: dict[int, _Held] = {}
        self.sentOrder: deque[tuple[int, float]] = deque()
        self.window = INITIAL_WINDOW
        self.adopted = self.open = self.sent = self.limit = 0
        self.routes: list[Route] = []
        self.ready = self.lost = False
        self.accepting = True
        self.lastHeard = reactor.seconds()
        self.onReady: Callable[[WorkerLink], None] | None = None
        self.onLimit: Callable[[WorkerLink], None] | None = None
        self.onControl: Callable[[WorkerLink, Control], None] | None = None
        self.listeners = ChildListeners(self, dispatcher, reactor, listenPorts)
        self.channel = Channel(skt, self, reactor, name, drainOnLoss=True)
        self.channel.startReading()

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def sendControl(self, type: str, **fields: Any) -> None:
        """Send a control message to the child."""
        self.channel.send(encodeControl(type, **fields))

    def serve(self, route: Route) -> None:
        """The child serves C{route} from now on."""
        self.routes.append(route)

    def unserve(self, route: Route) -> None:
        """The child serves C{route} no more."""
        if route in self.routes:
            self.routes.remove(route)

    def stopAccepting(self) -> None:
        """The child gets no new connections (it is retiring or gone)."""
        self.accepting = False

    def resumeAccepting(self) -> None:
        """The child gets new connections again (its successor failed)."""
        self.accepting = True

    def hand(self, held: _Held, now: float) -> None:
        """
        Send C{held} to the child at C{now}: it is the child's until
        acknowledged; call L{onLimit} when this makes C{limit}.
        """
        self.inflight[held.connId] = held
        self.sentOrder.append((held.connId, now))
        self.sent += 1
        self.channel.send(encodeConn(held.connId, held.route.id), (held.socket.fileno(),))
        if self.limit and self.sent == self.limit and self.onLimit is not None:
            self.onLimit(self)

    def adopt(self, connIds: tuple[int, ...], closed: int, now: float) -> tuple[list[_Held], list[int]]:
        """
        The child adopted C{connIds} and C{closed} of its connections ended;
        the window grows after a fast ack and halves after a slow one.

        @return: the adopted connections, and the ids it was not given.
        """
        if closed:
            self.open = max(self.open - closed, 0)
        first = self.inflight.get(connIds[0]) if connIds else None
        if first is not None:
            took = now - first.sentAt
            if took <= FAST_ACK:
                if self.window < MAX_INFLIGHT:
                    self.window += 1
            elif took > ACK_DEADLINE:
                self.window = max(1, self.window // 2)
        popped = [(connId, self.inflight.pop(connId, None)) for connId in connIds]
        adopted = [held for _, held in popped if held is not None]
        unknown = [connId for connId, held in popped if held is None]
        self.adopted += len(adopted)
        self.open += len(adopted)
        order, inflight = self.sentOrder, self.inflight
        while order and order[0][0] not in inflight:
            order.popleft()
        return adopted, unknown

    def detach(self) -> tuple[list[Route], list[_Held]]:
        """
        The child is gone: it serves nothing and holds nothing from now on.

        @return: the routes it served and the connections it had not
            acknowledged.
        """
        self.accepting = False
        routes, self.routes = self.routes, []
        unacked, self.inflight = list(self.inflight.values()), {}
        self.sentOrder.clear()
        return routes, unacked

    def close(self) -> None:
        """
        Close the channel (the child sees its end), after reading what the
        child sent.  Only once the child process is gone: a live child may
        have an acknowledgement on its way, and the connections it had not
        acknowledged go to another child.
        """
        self.channel.loseConnection()

    # Receiver
    def messageReceived(self, message: Message) -> None:
        self.lastHeard = self._reactor.seconds()
        if isinstance(message, Ack):
            self._dispatcher.acked(self, message.connIds, message.closed)
        elif isinstance(message, Control):
            if self.controls.dispatch(message, repr(self), self.channel, self):
                pass
            elif self.onControl is not None:
                self.onControl(self, message)
            else:
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
        self.accepting = False
        self.listeners.closeAll()
        self._dispatcher.linkLost(self)

    # Control messages from the child.
    @controls.handler("heartbeat")
    def _onHeartbeat(self) -> None:
        pass  # lastHeard is enough

    @controls.handler("ready", pid=optional(INTEGER, 0))
    def _onReady(self, pid: int) -> None:
        self.markReady()

    def markReady(self) -> None:
        """The child is ready for connections (its C{ready} message says so)."""
        self.ready = True
        if self.onReady is not None:
            self.onReady(self)

    @controls.handler("listen", id=INTEGER, port=ANY, backlog=optional(ANY, -1))
    def _onListen(self, id: int, port: Any, backlog: Any) -> None:
        if id in self.listeners.open:
            reject("listen", repr(self), self.channel, f"listen id {id} is already in use")
            return
        self.listeners.listen(id, port, backlog)

    @controls.handler("close", id=INTEGER)
    def _onClose(self, id: int) -> None:
        self.listeners.close(id)


@implementer(IProtocolFactory, ILoggingContext, IRawAcceptor)
class HandOffFactory:
    """
    The protocol factory the parent listens with: connections go to the
    dispatcher for C{route}.

    A C{gecko:}/C{geckounix:} endpoint gives it accepted sockets raw
    (L{socketAccepted}).  Other endpoints build a transport first
    (L{buildProtocol}); if that transport is a plain TCP or UNIX connection
    its descriptor is handed over all the same.  Behind C{haproxy:} the
    descriptor is handed over before the PROXY header is read, and the
    route is marked so that the worker parses the header itself (its
    protocols see the client's address).  Any other wrapper (TLS), whose
    bytes the parent would have to process, is served in the parent with
    C{fallback} - never dropped.
    """

    def __init__(self, dispatcher: Dispatcher, route: Route, fallback: Any) -> None:
        self.dispatcher, self.route, self.fallback = dispatcher, route, fallback
        self._warned = False

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def socketAccepted(self, skt: socket.socket, addr: Any) -> None:
        self.dispatcher.submit(self.route, skt)

    def logPrefix(self) -> str:
        """
        The served factory's prefix, so that the parent's port logs
        Twisted's C{"Site starting on 8080"}, as the same program on C{tcp:}
        would, not the name of this internal factory.
        """
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
        raw, proxy = transport, False
        unwrapped = unwrapProxied(transport)
        if unwrapped is not None:
            # haproxy:...: the wrapper connects us before it has read
            # anything, so the PROXY header is still in the socket - the
            # worker parses it (its factory is wrapped for this route).
            raw, proxy = unwrapped, True
        if isinstance(raw, tcp.Connection) and isinstance(getattr(raw, "socket", None), socket.socket):
            reader: Any = raw  # (Twisted's FileDescriptor is not annotated)
            reader.stopReading()
            skt = raw.socket.dup()
            # Close without shutdown(2), which would end the child's copy too.
            closeWithoutShutdown(raw)
            if proxy:
                factory.dispatcher.markProxy(factory.route)
            factory.dispatcher.submit(factory.route, skt)
            return
        inner = factory.serveHere(self._addr, transport)
        if inner is None:
            transport.loseConnection()
            return
        self._inner = inner
        self._inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._inner is not None:
            self._inner.connectionLost(reason)
