# -*- test-case-name: tests.test_tap -*-
"""
Every worker process's L{Worker} (adopt, ack, heartbeat, drain; its
signals; its one log format), and C{twistd serversock}'s (L{serve}).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Iterator

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger, globalLogBeginner
from twisted.python.failure import Failure

from .._findfactory import importFactory
from .._h2compat import goAwayHTTP2
from .._twistedcompat import betweenRequests, innerProtocol, proxyWrapped
from .child import ParentLink
from .control import BOOLEAN, INTEGER, NUMBER, ControlTable, optional
from .logs import logObserver
from .spawn import GRACE
from .wire import Control

__all__ = ["Worker", "serve", "resolveFactory", "finishGracefully", "goAway", "closeAfterResponse", "idleHTTP", "logObserver", "IDLE_SETTLE"]

_log = Logger()


def resolveFactory(name: str) -> Any:
    """
    The protocol factory C{name} names: an C{IProtocolFactory} provider, or
    a zero-argument callable returning one.

    @raise ValueError: one line: why there is none.
    """
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"--factory must be a dotted name such as mypackage.mymodule.factory, not {name!r}")
    obj = importFactory(name)
    if IProtocolFactory.providedBy(obj):
        return obj
    if not callable(obj) or isinstance(obj, type):
        raise ValueError(f"--factory {name} is {obj!r}, which is neither an IProtocolFactory nor a callable returning one")
    try:
        made = obj()
    except Exception as e:
        raise ValueError(f"--factory {name}() failed: {type(e).__name__}: {e}") from None
    if not IProtocolFactory.providedBy(made):
        raise ValueError(f"--factory {name}() returned {made!r}, which is not an IProtocolFactory")
    return made


def layers(protocol: Any) -> Iterator[Any]:
    """
    C{protocol} and the protocols inside its wrappers (PROXY, TLS,
    twisted.web's HTTP/1-or-2 choice), outermost first.
    """
    for _ in range(8):  # a wrapper that wraps itself ends here
        if protocol is None:
            return
        yield protocol
        protocol = innerProtocol(protocol)


def innermost(transport: Any) -> Any:
    """The innermost of the L{layers} of C{transport}'s protocol (C{None} if it has none)."""
    layer = None
    for layer in layers(getattr(transport, "protocol", None)):
        pass
    return layer


def finishGracefully(protocol: Any) -> None:
    """
    Ask a connection's protocol to end at its next natural boundary, so that
    a worker being stopped or replaced drains without cutting a client off:
    the C{stopGracefully()} of the outermost of its L{layers} that has one
    is called; an autobahn WebSocket server protocol (daphne's) is sent a
    close frame (L{goAway}); Twisted's HTTP/2 connection a GOAWAY, its
    streams finishing (L{goAwayHTTP2<twisted_serversock._h2compat.goAwayHTTP2>}); Twisted's HTTP/1.1 channel says C{Connection:
    close} on the response being written and every later one
    (L{closeAfterResponse}), so a keep-alive client moves to a new
    connection (and so to a new worker) between requests (and
    L{Worker.stop} closes one that stays idle, L{idleHTTP}); anything else
    is left alone until it closes or the grace period ends.
    """
    for layer in layers(protocol):
        if callable(hook := getattr(layer, "stopGracefully", None)):
            hook()
            return
        if goAway(layer) or goAwayHTTP2(layer) or closeAfterResponse(layer):
            return


def goAway(protocol: Any) -> bool:
    """
    Whether C{protocol} is autobahn's Twisted WebSocket server protocol
    (daphne's is): if so, it is sent a close frame, 1001 Going Away: now
    if it is open, else once its opening handshake is done (after what the
    application sends on accepting it).  autobahn then waits for the
    client's close frame (until the worker's grace period ends, instead of
    its C{closeHandshakeTimeout}) and closes the connection; the
    application hears of the close (daphne's ASGI application gets its
    C{websocket.disconnect}).
    """
    websocket = sys.modules.get("autobahn.twisted.websocket")
    if websocket is None or not isinstance(protocol, websocket.WebSocketServerProtocol):
        return False
    if protocol.state == protocol.STATE_OPEN:
        # The client's answer is awaited until the grace period ends, not
        # autobahn's closeHandshakeTimeout; and sendClose() refuses 1001.
        protocol.closeHandshakeTimeout = 0
        protocol.sendCloseFrame(code=protocol.CLOSE_STATUS_CODE_GOING_AWAY, isReply=False)
    elif protocol.state in (protocol.STATE_CONNECTING, protocol.STATE_PROXY_CONNECTING):
        opened = protocol.onOpen

        def onOpen() -> None:
            try:
                opened()
            finally:
                protocol.factory.reactor.callLater(0, goAway, protocol)

        protocol.onOpen = onOpen
    return True


def closeAfterResponse(channel: Any) -> bool:
    """
    Whether C{channel} is Twisted's HTTP/1.x channel: if so, it says
    C{Connection: close} on the response being written (or the next one)
    and every later one, and closes after it.
    """
    if (http := sys.modules.get("twisted.web.http")) is None or not isinstance(channel, http.HTTPChannel):
        return False

    def checkPersistence(request: Any, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    channel.checkPersistence = checkPersistence
    # A request whose response has not begun closes after it too; one whose
    # headers are already out keeps its keep-alive, and the next one closes.
    requests = getattr(channel, "requests", [])
    if requests and not any(getattr(request, "startedWriting", True) for request in requests):
        channel.persistent = False
        for request in requests:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
    return True


#: Seconds a stopping worker's keep-alive connection must stay between
#: requests before it is closed (L{Worker.stop}): one in use sends a
#: request meanwhile, answered with C{Connection: close}.
IDLE_SETTLE = 0.5


def idleHTTP(transport: Any) -> Any | None:
    """
    The C{twisted.web} HTTP/1.x channel of C{transport} (its L{innermost}
    protocol) if it is idle between requests (L{betweenRequests}) with no
    byte of a next request waiting in the socket; else C{None}.
    """
    channel = innermost(transport)
    http = sys.modules.get("twisted.web.http")
    if http is None or not isinstance(channel, http.HTTPChannel) or not betweenRequests(channel):
        return None
    try:
        waiting = transport.getHandle().recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        waiting = b""
    except (OSError, AttributeError):
        return None
    return None if waiting else channel


class Worker:
    """
    One worker process: adopts the connections the parent hands over,
    reports their ends, sends heartbeats, drains on stop.

    @ivar index: the worker's number (1, 2, ...).
    @ivar adopted: how many connections this worker adopted.
    @ivar factories: route id -> the protocol factory of its connections;
        other routes' are served by C{factory}, started and stopped with the
        worker (C{twistd serversock}'s; a cluster worker's ports fill this).
    """

    controls = ControlTable()

    def __init__(self, reactor: Any, channel: socket.socket, index: int, heartbeat: float, factory: Any = None, grace: float = GRACE) -> None:
        """@param grace: the grace period a SIGTERM to this process, or the parent's end, gives (the parent's own, as it said)."""
        self._reactor = reactor
        self.grace = grace
        self._factory = factory
        self.factories: dict[int, Any] = {}
        self._proxied: set[int] = set()
        self.index = index
        self._heartbeat = heartbeat
        self._beat: Any = None
        self._transports: set[Any] = set()
        self.adopted = 0
        self._stopping = False
        self._told: dict[Any, Any] = {}  # draining: each connection told to finish, and its innermost protocol then
        self.link = ParentLink(channel, reactor, name=f"worker {index} channel")
        self.link.onConnection = self._adopt
        self.link.onControl = self._control
        self.link.onLost = self._parentLost
        reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        # After reactor.run, which may install its own SIGINT handler.  A
        # terminal's Ctrl-C or hangup, or kill of the process group, reaches the
        # workers too: the parent decides when they stop or reload.  SIGTTIN/SIGTTOU
        # would stop a worker that touches the terminal from the background.
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: self._reactor.callFromThread(self._terminated))
        if self._factory is not None:
            self._factory.doStart()
        # Also ends a cluster primary's count of this worker's failed starts.
        self.link.sendControl("ready", pid=os.getpid())
        self._beat = self._reactor.callLater(self._heartbeat, self._sendHeartbeat)

    def _sendHeartbeat(self) -> None:
        # From the reactor loop: a worker stuck in a handler sends none, and
        # the parent's --timeout replaces it.
        self._beat = None
        if self.link.connected:
            self.link.sendControl("heartbeat")
            self._beat = self._reactor.callLater(self._heartbeat, self._sendHeartbeat)

    def factoryFor(self, route: int) -> Any:
        """The protocol factory for C{route}'s connections (C{None}: not served, closed)."""
        return self.factories.get(route, self._factory)

    def _adopt(self, route: int, skt: socket.socket) -> None:
        if (factory := self.factoryFor(route)) is None:
            _log.error("A connection for route {route}, which this worker does not serve, arrived; closing it", route=route)
            skt.close()
            return
        try:
            transport = self._reactor.adoptStreamConnection(skt.fileno(), skt.family, factory)
        finally:
            skt.close()  # the reactor holds its own duplicate
        self.adopted += 1
        if transport is None:
            self.link.reportClosed()
            return
        self._transports.add(transport)
        # Its end is reported, for the parent's least-loaded dispatch: the
        # reactor calls the transport's connectionLost (an instance attribute wins).
        lost = transport.connectionLost

        def connectionLost(reason: Any) -> None:
            try:
                lost(reason)
            finally:
                self._transports.discard(transport)
                self.link.reportClosed()

        transport.connectionLost = connectionLost
        if self._stopping:
            # Handed over while draining (it was sent before the stop: a
            # listener's queue taken at its close, a retiring worker's):
            # it finishes like the others, within what is left of the grace.
            self._tell(transport)

    def _control(self, message: Control) -> None:
        if not self.controls.dispatch(message, "the parent", self.link.channel, self):
            _log.warn("Ignored an unknown control message {type!r} from the parent", type=message.type)

    @controls.handler("route", extra=True, id=INTEGER, proxy=optional(BOOLEAN, False))
    def _onRoute(self, id: int, proxy: bool) -> None:
        # A haproxy: listener's route in twistd serversock: the parent hands
        # its connections over with the PROXY header unread.  A cluster
        # worker (no factory of its own) ignores it: its program's factory
        # already parses the header (haproxy: in its endpoint string).
        if self._factory is None:
            _log.warn("Ignored a PROXY route message: this worker's program wraps its own factories")
            return
        factory = self.factoryFor(id)
        if proxy and id not in self._proxied and factory is not None:
            self._proxied.add(id)
            self.factories[id] = proxyWrapped(factory)

    @controls.handler("stop", grace=optional(NUMBER, GRACE))
    def _onStop(self, grace: float) -> None:
        self.stop(float(grace))

    def _parentLost(self, reason: Failure) -> None:
        if not self._stopping:
            _log.warn("The parent process went away; finishing open connections within {grace} s", grace=self.grace)
            self.stop(self.grace)

    def _terminated(self) -> None:
        # SIGTERM to this process itself: systemd's default KillMode sends
        # it to every process of the service, with the primary's.
        if not self._stopping:
            _log.info("SIGTERM: finishing open connections within {grace} s", grace=self.grace)
        self.stop(self.grace)

    def stop(self, grace: float) -> None:
        """Let open connections finish for C{grace} seconds, then exit."""
        if self._stopping:
            return
        self._stopping = True
        # Heartbeats go on while draining: without them the parent would
        # take a long drain for a hang.
        self._deadline = self._reactor.seconds() + grace
        self._drain(set())
        self._poll()

    def _tell(self, transport: Any) -> None:
        # A connection is told to finish (finishGracefully) once, and again
        # only if its protocol changed since (an HTTP request upgraded to a
        # WebSocket).
        if transport in self._told and self._told[transport] is innermost(transport):
            return
        self._told[transport] = innermost(transport)
        try:
            finishGracefully(getattr(transport, "protocol", None))
        except Exception:
            _log.failure("Could not ask {protocol!r} to finish", protocol=getattr(transport, "protocol", None))

    def _drain(self, seen: set[Any]) -> None:
        # Every IDLE_SETTLE while draining: each connection is told to
        # finish (L{_tell}), and idle HTTP/1.1 ones are closed.
        self._told = {t: self._told[t] for t in self._transports if t in self._told}
        for transport in list(self._transports):
            self._tell(transport)
        # Idle at two checks IDLE_SETTLE apart: any request meanwhile would
        # have closed it after its response (as nginx, at once but for the
        # race with a request crossing the close).
        idle = {t: channel for t in self._transports if (channel := idleHTTP(t)) is not None}
        for transport in seen & idle.keys():
            idle.pop(transport).loseConnection()
        if self._transports:
            self._reactor.callLater(IDLE_SETTLE, self._drain, set(idle))

    def _poll(self) -> None:
        if not self._transports:
            self._finish()
        elif self._reactor.seconds() >= self._deadline:
            _log.warn("Grace period over; aborting {n} open connection(s)", n=len(self._transports))
            for t in list(self._transports):
                t.abortConnection()
            self._reactor.callLater(0, self._finish)
        else:
            self._reactor.callLater(0.05, self._poll)

    def _finish(self) -> None:
        _log.info("Worker {index} adopted {n} connection(s); exiting", index=self.index, n=self.adopted)
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        try:
            if self._factory is not None:
                self._factory.doStop()
        finally:
            self.link.channel.loseConnection()
            self._reactor.stop()


def serve(channel: socket.socket, startup: dict[str, Any]) -> int:
    """Be the C{twistd serversock} worker C{startup} describes until it stops; return the exit status."""
    sys.path[:] = startup["path"] + [p for p in sys.path if p not in startup["path"]]
    globalLogBeginner.beginLoggingTo([logObserver], redirectStandardIO=False)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    try:
        factory = resolveFactory(startup["factory"])
        # The geckotls: routes' TLS (the parent hands their connections over
        # raw), from their descriptions and the files the parent read.
        tls = {int(route): serverFromString(reactor, description).serverFactory(factory) for route, description in startup["tls"].items()}
    except ValueError as e:
        _log.error("{error}", error=e)
        return 2
    worker = Worker(reactor, channel, startup["index"], startup["heartbeat"], factory, startup["grace"])
    worker.factories.update(tls)
    reactor.run(installSignalHandlers=False)
    return 0
