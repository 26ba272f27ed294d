# -*- test-case-name: tests.test_testing -*-
"""
Test doubles for code that uses twisted_serversock, in the spirit of
treq's C{testing}: test a listener (an C{nsIServerSocketListener}) or a
protocol without sockets, threads or sleeps.

  - L{MemoryServerSocket} provides L{IServerSocket}: the C{init*} methods
    record the address without a socket, and L{MemoryServerSocket.connect}
    injects an accepted connection.
  - L{MemoryConnection} is one accepted connection.  Its
    L{MemoryConnection.transport} is the I{real}
    L{SocketTransport<twisted_serversock.transport.SocketTransport>} with
    its real streams, over a Twisted
    C{StringTransport}: a test
    feeds it bytes, an end of stream or a reset as the peer, and reads
    what was written to the peer.
  - L{RecordingListener} records C{onSocketAccepted} and
    C{onStopListening}.
  - Everything is driven by a C{Clock}:
    callbacks go through the reactor as they do in production, and
    L{flush} runs them all, deterministically, with no time passing.
    Advance the clock to test timeouts.

Example::

    clock = Clock()
    serv = MemoryServerSocket(clock)
    serv.init(8080, True, -1)
    listener = RecordingListener()
    serv.asyncListen(listener)
    conn = serv.connect()
    flush(clock)
    [transport] = listener.accepted
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _args
from ._accepted import AcceptedSocket
from ._callqueue import CallQueue
from ._memorytransport import FakeSocket, MemoryPort, MemoryTwistedTransport
from .interfaces import IServerSocket, IServerSocketListener, ISocketTransport
from .results import (
    NS_BINDING_ABORTED,
    NS_ERROR_ALREADY_INITIALIZED,
    NS_ERROR_CONNECTION_REFUSED,
    NS_ERROR_FAILURE,
    NS_ERROR_IN_PROGRESS,
    NS_ERROR_INVALID_ARG,
    NS_ERROR_NOT_INITIALIZED,
    NSError,
)
from .transport import SocketTransport

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ._types import Address, Peer, PortLike, ServerTransport

__all__ = ["MemoryServerSocket", "MemoryConnection", "RecordingListener", "flush"]

#: Ports handed out for "any port" (0 or negative) and to peers.
_ports = itertools.count(49152)


def flush(clock: Clock) -> None:
    """
    Run every call due now on C{clock}, and every call those calls schedule
    for now, until none is left: the listener callbacks and stream
    notifications queued by server sockets and connections driven by
    C{clock}, and the connection losses of L{MemoryConnection}.  No time
    passes (use C{clock.advance} for timeouts).  (A call that reschedules
    itself for now, forever, would never let it return.)
    """
    clock.advance(0)


class MemoryConnection:
    """
    An accepted connection without a socket: the real L{SocketTransport}
    and streams over a C{StringTransport}, driven by a C{Clock}.  The test
    plays the peer.

    @ivar transport: the L{SocketTransport} (what a listener's
        C{onSocketAccepted} gets).
    @ivar clock: the clock that drives it.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        peer: Peer | None = None,
        host: Address | None = None,
        queue: CallQueue | None = None,
        port: MemoryPort | None = None,
    ) -> None:
        """
        @param clock: drives the connection's callbacks; a new C{Clock} if
            not given.
        @param peer: the peer, as C{accept()} gives it: C{(host, port)} for
            TCP (C{("127.0.0.1", N)} if not given), a path C{str} (C{""}
            for an unnamed peer) for UNIX.
        @param host: the local Twisted address (C{IPv4Address("TCP",
            "127.0.0.1", 8080)} if not given).
        @param queue: the server socket's callback FIFO, when a
            L{MemoryServerSocket} accepts it.
        @param port: the port that numbers its connections (internal).
        """
        self.clock = clock if clock is not None else Clock()
        if peer is None:
            peer = ("127.0.0.1", next(_ports))
        if host is None:
            host = (
                UNIXAddress("/memory.sock") if isinstance(peer, (str, bytes)) else IPv4Address("TCP", "127.0.0.1", 8080)
            )
        family = socket.AF_UNIX if isinstance(peer, (str, bytes)) else socket.AF_INET
        self._socket = FakeSocket(family)
        self._tcp: MemoryTwistedTransport | None = None
        self._accepted = AcceptedSocket(
            self._build, cast(socket.socket, self._socket), peer, port or MemoryPort(host), self.clock
        )
        self.transport: SocketTransport = SocketTransport(queue or CallQueue(self.clock), self._accepted)

    def __repr__(self) -> str:
        return f"<MemoryConnection {self.transport!r}>"

    def _build(
        self, skt: socket.socket, protocol: object, peer: Peer, port: PortLike, sessionno: int, reactor: IReactorTime
    ) -> ServerTransport:
        # The accepted socket's transport class: keep what it builds.
        fake, memoryPort = cast(FakeSocket, skt), cast(MemoryPort, port)
        tcp = self._tcp = MemoryTwistedTransport(fake, protocol, peer, memoryPort, sessionno, reactor)
        return tcp

    def _built(self) -> MemoryTwistedTransport:
        """
        The Twisted transport; built in stream mode, as the server socket
        does once C{onSocketAccepted} returns, if nothing built it yet.
        """
        if self._tcp is None:
            self.transport.startStreaming()
        assert self._tcp is not None
        return self._tcp

    def accept(self) -> None:
        """
        What a server socket does once its listener's C{onSocketAccepted}
        returned: build the connection in stream mode unless the listener
        attached a protocol or refused it.
        """
        if self._accepted.pending:
            self.transport.startStreaming()

    @property
    def protocol(self) -> Any:
        """
        The Twisted protocol now receiving the connection's events: the
        stream-mode protocol or the attached one; C{None} before either.
        """
        return None if self._tcp is None else self._tcp.protocol

    def feed(self, data: bytes) -> None:
        """
        The peer sends C{data}.  While reading is paused (a full input
        stream, or a protocol's C{pauseProducing}), it is held back and
        delivered on resume, as the kernel would.
        """
        self._built().deliver(data)

    def feedEnd(self) -> None:
        """
        The peer shuts down its sending side (a half-close): the input
        stream ends cleanly; the output stays usable.
        """
        tcp = self._built()
        if tcp.connected and not tcp.lost:
            tcp.readConnectionLost(Failure(ConnectionDone()))

    def reset(self) -> None:
        """
        The connection is reset: both streams close with
        C{NS_ERROR_NET_RESET} (an attached protocol's C{connectionLost}
        gets a C{ConnectionLost}).
        """
        tcp = self._built()
        tcp.connectionLost(Failure(ConnectionLost("reset by the test")))

    def written(self) -> bytes:
        """
        @return: every byte written to the peer so far.
        """
        return b"" if self._tcp is None else bytes(self._tcp.value())

    def clear(self) -> None:
        """
        Forget the bytes written so far (L{written} starts again).
        """
        if self._tcp is not None:
            self._tcp.clear()

    @property
    def closed(self) -> bool:
        """
        Whether the connection is gone (closed by either side, or
        refused).
        """
        return self._socket.closed

    @property
    def aborted(self) -> bool:
        """
        Whether the connection was aborted rather than closed after a flush.
        """
        return self._tcp is not None and self._tcp.aborted


@implementer(IServerSocketListener)
class RecordingListener:
    """
    An C{nsIServerSocketListener} that records what it is told.

    @ivar accepted: the transports of C{onSocketAccepted}, in order.
    @ivar stopped: the statuses of C{onStopListening} (one, once stopped).
    @ivar events: every call, in order: C{("accepted", transport)} and
        C{("stopped", status)}.
    """

    def __init__(self, onAccepted: Callable[[IServerSocket, ISocketTransport], object] | None = None) -> None:
        """
        @param onAccepted: called as C{onAccepted(serv, transport)} after
            recording each connection (to open streams, attach a protocol,
            ...), as a listener would.
        """
        self.accepted: list[ISocketTransport] = []
        self.stopped: list[int] = []
        self.events: list[tuple[str, Any]] = []
        self._onAccepted = onAccepted

    def onSocketAccepted(self, serv: IServerSocket, transport: ISocketTransport) -> None:
        self.accepted.append(transport)
        self.events.append(("accepted", transport))
        if self._onAccepted is not None:
            self._onAccepted(serv, transport)

    def onStopListening(self, serv: IServerSocket, status: int) -> None:
        self.stopped.append(status)
        self.events.append(("stopped", status))


@implementer(IServerSocket)
class MemoryServerSocket:
    """
    An L{IServerSocket} without a socket, driven by a C{Clock}.

    The C{init*} methods check their arguments as the real server socket
    does for the common cases and record the address (port 0 or a negative
    port picks a free-looking one); L{connect} plays a client.  Callbacks go
    through the clock, as they go through the reactor in production: run
    them with L{flush} (or L{MemoryServerSocket.flush}).

    @ivar clock: the clock that drives it and its connections.
    @ivar connections: every L{MemoryConnection} accepted, in order.
    @ivar backlog: the backlog the last C{init*} asked for.
    """

    LoopbackOnly = 1
    KeepWhenOffline = 2

    def __init__(self, clock: Clock | None = None) -> None:
        """
        @param clock: drives the callbacks; a new C{Clock} if not given.
        """
        self.clock = clock if clock is not None else Clock()
        self.connections: list[MemoryConnection] = []
        self.backlog: int | None = None
        self._queue = CallQueue(self.clock)
        #: The address last bound: kept after close, as the real one keeps it.
        self._address: Address | None = None
        #: Bound from a successful C{init*} until L{close}, as the real one.
        self._bound = False
        self._port: MemoryPort | None = None
        self._listener: Any = None
        self._waiting: list[MemoryConnection] = []

    def __repr__(self) -> str:
        return f"<MemoryServerSocket {self._address!r}>"

    def flush(self) -> None:
        """
        Run every callback due now (see L{flush}).
        """
        flush(self.clock)

    # --- the init family

    def _bind(self, address: Address, backLog: int) -> None:
        if self._bound:
            raise NSError(NS_ERROR_ALREADY_INITIALIZED, "the server socket is already initialised")
        if isinstance(backLog, bool) or not isinstance(backLog, int):
            raise NSError(NS_ERROR_INVALID_ARG, f"backlog must be an integer, not {backLog!r}")
        self._address = address
        self._bound = True
        self._port = MemoryPort(address)
        self.backlog = backLog if backLog >= 0 else socket.SOMAXCONN

    @staticmethod
    def _portNumber(port: int) -> int:
        if isinstance(port, bool) or not isinstance(port, int) or port > _args.MAX_PORT:
            raise NSError(NS_ERROR_INVALID_ARG, f"port must be an integer <= {_args.MAX_PORT}, not {port!r}")
        return port if port > 0 else next(_ports)

    def init(self, port: int, loopbackOnly: bool, backLog: int) -> None:
        host = "127.0.0.1" if loopbackOnly else "0.0.0.0"
        self._bind(IPv4Address("TCP", host, self._portNumber(port)), backLog)

    def initIPv6(self, port: int, loopbackOnly: bool, backLog: int) -> None:
        host = "::1" if loopbackOnly else "::"
        self._bind(IPv6Address("TCP", host, self._portNumber(port)), backLog)

    def initDualStack(self, port: int, backLog: int) -> None:
        self._bind(IPv6Address("TCP", "::", self._portNumber(port)), backLog)

    def initSpecialConnection(self, port: int, flags: int, backLog: int) -> None:
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise NSError(NS_ERROR_INVALID_ARG, f"flags must be an integer, not {flags!r}")
        self.init(port, bool(flags & self.LoopbackOnly), backLog)

    def initWithAddress(self, addr: Any, backLog: int) -> None:
        if isinstance(addr, (IPv4Address, IPv6Address)) and addr.type == "TCP":
            self._bind(type(addr)("TCP", addr.host, self._portNumber(addr.port)), backLog)
            return
        if isinstance(addr, UNIXAddress):
            self._bind(addr, backLog)
            return
        if isinstance(addr, tuple) and len(addr) == 2:
            host, port = addr
        elif hasattr(addr, "family") and hasattr(addr, "address"):
            host, port = addr.address, getattr(addr, "port", 0)
        else:
            raise NSError(NS_ERROR_INVALID_ARG, f"not an address: {addr!r}")
        try:
            ip = ipaddress.ip_address(host)
        except (TypeError, ValueError):
            raise NSError(NS_ERROR_INVALID_ARG, f"not an IP literal: {host!r}") from None
        addressType = IPv4Address if ip.version == 4 else IPv6Address
        self._bind(addressType("TCP", str(ip), self._portNumber(port)), backLog)

    def initWithFilename(self, path: Any, permissions: int, backlog: int, **kwargs: Any) -> None:
        name = os.fsdecode(os.fspath(path))
        self._bind(UNIXAddress(name), backlog)

    def initWithAbstractAddress(self, name: str, backlog: int, **kwargs: Any) -> None:
        self._bind(UNIXAddress("\0" + name), backlog)

    # --- listening

    @property
    def port(self) -> int:
        address = self._address
        if not isinstance(address, (IPv4Address, IPv6Address)):
            raise NSError(NS_ERROR_FAILURE, "no TCP port: not initialised, or a UNIX socket")
        return int(address.port)

    def getAddress(self) -> Address:
        if self._address is None:
            raise NSError(NS_ERROR_NOT_INITIALIZED, "the server socket is not initialised")
        return self._address

    def asyncListen(self, listener: Any) -> None:
        if not self._bound:
            raise NSError(NS_ERROR_NOT_INITIALIZED, "asyncListen needs a successful init first")
        if self._listener is not None:
            raise NSError(NS_ERROR_IN_PROGRESS, "asyncListen was called before")
        if not (
            callable(getattr(listener, "onSocketAccepted", None))
            and callable(getattr(listener, "onStopListening", None))
        ):
            raise NSError(
                NS_ERROR_INVALID_ARG,
                f"listener needs onSocketAccepted and onStopListening: {listener!r}",
            )
        self._listener = listener
        waiting, self._waiting = self._waiting, []
        for conn in waiting:
            self._queue.call(self._deliver, conn, listener)

    def close(self) -> None:
        """
        Stop listening, as the real one: the connections not yet accepted
        are refused; a listener gets its one C{onStopListening} through the
        clock.  It can be initialised again afterwards, and keeps its
        address until then.
        """
        if not self._bound:
            return
        listener = self._listener
        self._bound = False
        self._listener = None
        for conn in self._waiting:
            conn.transport.refuse()
        self._waiting = []
        if listener is not None:
            self._queue.call(listener.onStopListening, self, NS_BINDING_ABORTED)

    def connect(self, peer: Peer | None = None) -> MemoryConnection:
        """
        A client connects: the listener's C{onSocketAccepted} gets the new
        connection's transport through the clock (once listening, in the
        order of the connects; before L{asyncListen} it waits, as in the
        kernel's queue).

        @param peer: the peer address as C{accept()} gives it (see
            L{MemoryConnection}); for a UNIX server socket, C{""} if not
            given.
        @return: the connection, to play the peer with.
        @raise NSError: C{NS_ERROR_CONNECTION_REFUSED} when not listening
            (never initialised, or closed).
        """
        if not self._bound:
            raise NSError(NS_ERROR_CONNECTION_REFUSED, "the server socket is not listening")
        if peer is None and isinstance(self._address, UNIXAddress):
            peer = ""
        conn = MemoryConnection(self.clock, peer, self._address, self._queue, self._port)
        self.connections.append(conn)
        listener = self._listener
        if listener is None:
            self._waiting.append(conn)
        else:
            self._queue.call(self._deliver, conn, listener)
        return conn

    def _deliver(self, conn: MemoryConnection, listener: Any) -> None:
        if self._listener is not listener:
            # Closed in the meantime: the client's connection is refused.
            conn.transport.refuse()
            return
        try:
            listener.onSocketAccepted(self, conn.transport)
        finally:
            conn.accept()
