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
import struct
from typing import Any, Callable, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _args
from ._accepted import AcceptedSocket
from ._callqueue import CallQueue
from .interfaces import IServerSocket, IServerSocketListener
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


class _FakeSocket:
    """
    The handle of a L{MemoryConnection}'s Twisted transport: what
    L{SocketTransport} asks of a socket (its family, socket options, a
    C{MSG_PEEK} for C{isAlive()}), without a socket.
    """

    def __init__(self, family: int) -> None:
        self.family = family
        self.closed = False
        self.options: dict[tuple[int, int], int] = {}

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1

    def recv(self, size: int, flags: int = 0) -> bytes:
        raise BlockingIOError("nothing to read from a memory connection")

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[level, option] = int(value)

    def getsockopt(self, level: int, option: int, size: int = 0) -> Any:
        if (level, option) == (socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", -1)):
            if self.family != socket.AF_UNIX:
                raise OSError("SO_PEERCRED on a TCP connection")
            return struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        return self.options.get((level, option), 0)


class _MemoryTwistedTransport(StringTransport):
    """
    A C{StringTransport} standing in for Twisted's C{tcp.Server}: it keeps
    the attributes the accepted-connection code reads, delivers the
    connection's loss through the clock as the reactor would, and holds
    bytes fed while reading is paused.
    """

    def __init__(self, skt: _FakeSocket, protocol: Any, peer: Any, port: Any, sessionno: int, reactor: Clock) -> None:
        super().__init__(hostAddress=port.getHost(), peerAddress=port.peerAddress(peer))
        self.socket = skt
        self.protocol = protocol
        self.reactor = reactor
        self.sessionno = sessionno
        self.client = peer if type(peer) is tuple else (peer, None)
        self.hostname = self.client[0]
        # What bufferedOutput() reads: everything written is sent at once.
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self._aborting = False
        self.aborted = False
        self.held: list[bytes] = []
        self.lost = False
        self.logstr = self._getLogPrefix(protocol)
        self.repstr = f"<{type(protocol).__name__} #{sessionno} on memory>"

    def __repr__(self) -> str:
        return self.repstr

    def _getLogPrefix(self, protocol: Any) -> str:
        logPrefix = getattr(protocol, "logPrefix", None)
        return logPrefix() if callable(logPrefix) else type(protocol).__name__

    def getHandle(self) -> _FakeSocket:
        return self.socket

    def resumeProducing(self) -> None:
        super().resumeProducing()
        held, self.held = self.held, []
        for data in held:
            self.deliver(data)

    def deliver(self, data: bytes) -> None:
        if not self.connected or self.disconnecting:
            return
        if self.producerState != "producing" or self.held:
            self.held.append(data)
        else:
            self.protocol.dataReceived(data)

    def readConnectionLost(self, reason: Failure) -> None:
        # tcp.Connection's: a half-closeable protocol hears of it, any
        # other loses the connection.
        protocol = self.protocol
        if IHalfCloseableProtocol.providedBy(protocol):
            protocol.readConnectionLost()
        else:
            self.loseConnection()

    def loseWriteConnection(self) -> None:
        # Our side's half-close: the bytes written so far are all the peer
        # gets; the connection stays up for reading.
        pass

    def loseConnection(self) -> None:
        if self.lost:
            return
        super().loseConnection()
        self.reactor.callLater(0, self.connectionLost, Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        if self.lost:
            return
        self._aborting = self.aborted = True
        super().loseConnection()
        self.reactor.callLater(0, self.connectionLost, Failure(ConnectionLost()))

    def connectionLost(self, reason: Failure) -> None:
        if self.lost:
            return
        self.lost = True
        self.connected = False
        self.disconnected = True
        self.socket.close()
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.stopProducing()
        self.protocol.connectionLost(reason)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.disconnected:
            producer.stopProducing()
            return
        super().registerProducer(producer, streaming)
        if not streaming:
            # As Twisted's FileDescriptor: a pull producer is asked at once.
            producer.resumeProducing()


class _MemoryPort:
    """
    The listening port a L{MemoryConnection} says it was accepted on: it
    numbers connections and knows the addresses.
    """

    def __init__(self, host: Any) -> None:
        self.sessionno = 0
        self.host = host

    def getHost(self) -> Any:
        return self.host

    def peerAddress(self, peer: Any) -> Any:
        if type(peer) is tuple:
            return (IPv4Address if len(peer) == 2 else IPv6Address)("TCP", *peer[:2])
        return UNIXAddress(peer or None)


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
        peer: Any = None,
        host: Any = None,
        queue: CallQueue | None = None,
        port: Any = None,
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
        self._socket = _FakeSocket(family)
        self._tcp: _MemoryTwistedTransport | None = None
        self._accepted = AcceptedSocket(
            self._build, cast(socket.socket, self._socket), peer, port or _MemoryPort(host), self.clock
        )
        self.transport: SocketTransport = SocketTransport(queue or CallQueue(self.clock), self._accepted)

    def __repr__(self) -> str:
        return f"<MemoryConnection {self.transport!r}>"

    def _build(self, *args: Any) -> _MemoryTwistedTransport:
        # The accepted socket's transport class: keep what it builds.
        tcp = self._tcp = _MemoryTwistedTransport(*args)
        return tcp

    def _built(self) -> _MemoryTwistedTransport:
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

    def __init__(self, onAccepted: Callable[[Any, Any], object] | None = None) -> None:
        """
        @param onAccepted: called as C{onAccepted(serv, transport)} after
            recording each connection (to open streams, attach a protocol,
            ...), as a listener would.
        """
        self.accepted: list[Any] = []
        self.stopped: list[int] = []
        self.events: list[tuple[str, Any]] = []
        self._onAccepted = onAccepted

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        self.accepted.append(transport)
        self.events.append(("accepted", transport))
        if self._onAccepted is not None:
            self._onAccepted(serv, transport)

    def onStopListening(self, serv: Any, status: int) -> None:
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
        self._address: Any = None
        #: Bound from a successful C{init*} until L{close}, as the real one.
        self._bound = False
        self._port: _MemoryPort | None = None
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

    def _bind(self, address: Any, backLog: int) -> None:
        if self._bound:
            raise NSError(NS_ERROR_ALREADY_INITIALIZED, "the server socket is already initialised")
        if isinstance(backLog, bool) or not isinstance(backLog, int):
            raise NSError(NS_ERROR_INVALID_ARG, f"backlog must be an integer, not {backLog!r}")
        self._address = address
        self._bound = True
        self._port = _MemoryPort(address)
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

    def getAddress(self) -> Any:
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

    def connect(self, peer: Any = None) -> MemoryConnection:
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
