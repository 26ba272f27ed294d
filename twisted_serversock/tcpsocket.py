# -*- test-case-name: tests.test_tcpsocket -*-
"""
Gecko's web-facing socket API: L{TCPServerSocket} (a listener with
C{onconnect}/C{onerror}) and L{TCPSocket} (a connection with C{ondata},
C{ondrain}, C{onerror}, C{onclose} and C{send}).

A L{TCPSocket} is a Twisted protocol: the server side attaches it to the
connection with C{attachProtocol}, a worker process adopts a handed-over
descriptor with it (see L{twisted_serversock.ipc}), and L{TCPSocket.open}
connects one as a client.  Its events come from the reactor's own events
(bytes read, buffer drained, connection lost), never from inside a call the
program made.

C{binaryType} decides what data looks like: C{"string"} (the default, as in
Gecko) delivers C{str} with one character per byte (latin-1, so every byte
value round-trips) and C{send} takes such a C{str}; C{"arraybuffer"}
delivers and takes C{bytes}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol as _TypingProtocol, TypeVar, cast

from twisted.internet import error as _error
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorFDSet,
    IReactorTCP,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _args
from .interfaces import ITCPServerSocket, ITCPSocket
from .results import NS_BINDING_ABORTED, NS_ERROR_FAILURE, NS_ERROR_INVALID_ARG, NSError, nameOf
from .serversocket import ServerSocket
from .transport import SocketTransport, bufferedOutput

__all__ = [
    "TCPServerSocket",
    "TCPSocket",
    "TCPSocketEvent",
    "TCPServerSocketEvent",
    "TCPSocketErrorEvent",
    "BUFFER_SIZE",
]

#: C{send} returns False once more than this many bytes are buffered (Gecko's
#: C{BUFFER_SIZE}; also Twisted's transport C{bufferSize}).
BUFFER_SIZE = 65536

_BINARY_TYPES = ("string", "arraybuffer")

_log = Logger()

if TYPE_CHECKING:
    from ._types import Address


class _Connection(_TypingProtocol):
    """
    What a L{TCPSocket} uses of its Twisted transport (C{tcp.Client} or
    C{tcp.Server}; Twisted's C{Protocol.transport} says only C{ITransport}).
    """

    def getPeer(self) -> Address: ...
    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class _Connectable(_TypingProtocol):
    """
    A server socket that hands accepted L{TCPSocket}s to its C{onconnect}
    (L{TCPServerSocket}, and the child's in L{twisted_serversock.ipc.child}).
    """

    onconnect: Callable[[TCPServerSocketEvent], object] | None


class TCPSocketEvent:
    """
    An event of a L{TCPSocket}: C{open}, C{data} (with L{data}), C{drain},
    C{close}.

    @ivar type: the event name.
    @ivar target: the socket.
    @ivar data: for C{data} events, what was received (C{str} or C{bytes}
        by the socket's C{binaryType}); else C{None}.
    """

    def __init__(self, type: str, target: TCPSocket, data: str | bytes | None = None) -> None:
        self.type = type
        self.target = target
        self.data = data

    def __repr__(self) -> str:
        return f"<TCPSocketEvent {self.type}>"


class TCPServerSocketEvent:
    """
    The C{connect} event of a L{TCPServerSocket}.

    @ivar socket: the accepted L{TCPSocket}, already C{"open"}.
    """

    def __init__(self, type: str, target: object, socket: TCPSocket) -> None:
        self.type = type
        self.target = target
        self.socket = socket

    def __repr__(self) -> str:
        return f"<TCPServerSocketEvent {self.type} {self.socket!r}>"


class TCPSocketErrorEvent:
    """
    An C{error} event, shaped like the JavaScript C{Error} Gecko reports.

    @ivar name: a short error name (an C{NS_ERROR_*} name where there is
        one).
    @ivar message: what went wrong.
    @ivar filename: where it was detected (a file name; the parent's, for
        errors forwarded from a parent process).
    @ivar lineNumber: the line in C{filename}, or 0.
    @ivar columnNumber: always 0 (Python has no columns to report).
    """

    type = "error"

    def __init__(
        self,
        target: object,
        message: str,
        name: str = "Error",
        filename: str = "",
        lineNumber: int = 0,
        columnNumber: int = 0,
    ) -> None:
        self.target = target
        self.message = message
        self.name = name
        self.filename = filename
        self.lineNumber = lineNumber
        self.columnNumber = columnNumber

    def __repr__(self) -> str:
        return f"<TCPSocketErrorEvent {self.name}: {self.message}>"


#: An event a handler gets.
_E = TypeVar("_E", TCPSocketEvent, TCPServerSocketEvent, TCPSocketErrorEvent)


def _fire(handler: Callable[[_E], object] | None, event: _E, owner: object) -> None:
    """
    Call an event handler; an exception in it is logged, never propagated
    into the reactor event that delivered it.
    """
    if handler is None:
        return
    try:
        handler(event)
    except Exception:
        _log.failure("Unhandled error in {owner!r}'s on{type} handler", owner=owner, type=event.type)


def _binaryType(binaryType: object) -> str:
    if binaryType not in _BINARY_TYPES:
        raise NSError(NS_ERROR_INVALID_ARG, f'binaryType must be "string" or "arraybuffer", not {binaryType!r}')
    return str(binaryType)


def _checkBinaryType(options: object) -> str:
    if options is None:
        return "string"
    try:
        binaryType = cast("Mapping[str, object]", options).get("binaryType", "string")
    except AttributeError:
        raise NSError(NS_ERROR_INVALID_ARG, f"options must be a mapping such as {{'binaryType': 'string'}}, not {options!r}") from None
    return _binaryType(binaryType)


@implementer(IPushProducer)
class _DrainWatch:
    """
    Registered with the transport as a streaming producer, only so that the
    transport says when its buffer passes L{BUFFER_SIZE} (C{pauseProducing})
    and when it has drained completely (C{resumeProducing}).
    """

    __slots__ = ("_drained", "full")

    def __init__(self, drained: Callable[[], None]) -> None:
        """
        @param drained: called when the transport's buffer has drained.
        """
        self._drained = drained
        self.full = False

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False
        self._drained()

    def stopProducing(self) -> None:
        self.full = False


@implementer(ITCPSocket, IHalfCloseableProtocol)
class TCPSocket(Protocol):
    """
    One connection with Gecko's C{TCPSocket} API.  See L{ITCPSocket}.

    When the peer ends its side of the connection, everything sent so far
    (for example from the C{ondata} handler of the last bytes, which may
    arrive together with the peer's end of stream) is still delivered
    before the socket closes, as in Gecko: C{readyState} turns
    C{"closing"}, and C{ondrain} (if C{send} asked for it) and C{onclose}
    follow.  (Without C{IHalfCloseableProtocol} Twisted would take the end
    of stream as the end of the connection and drop what is buffered.)

    @ivar host: the peer's host (for an accepted socket) or the host
        connected to (for C{open}).
    @ivar port: the peer's port (0 for a UNIX peer).
    @ivar ssl: always False.
    @ivar binaryType: C{"string"} or C{"arraybuffer"}.
    @ivar readyState: C{"connecting"}, C{"open"}, C{"closing"}, C{"closed"}.
    @ivar onopen: (client sockets) called when the connection is open.
    """

    ssl = False

    def __init__(self, binaryType: str = "string") -> None:
        self.binaryType = _binaryType(binaryType)
        self.readyState = "connecting"
        self.host = ""
        self.port = 0
        self.onopen: Callable[[TCPSocketEvent], object] | None = None
        self.ondata: Callable[[TCPSocketEvent], object] | None = None
        self.ondrain: Callable[[TCPSocketEvent], object] | None = None
        self.onerror: Callable[[TCPSocketErrorEvent], object] | None = None
        self.onclose: Callable[[TCPSocketEvent], object] | None = None
        self._watch = _DrainWatch(self._drained)
        self._waitingForDrain = False
        self._suspended = 0
        self._aborted = False

    def __repr__(self) -> str:
        return f"<TCPSocket {self.readyState} {self.host}:{self.port}>"

    # ------------------------------------------------------------------
    # Protocol.

    def connectionMade(self) -> None:
        transport = cast("_Connection", self.transport)
        peer = transport.getPeer()
        if not isinstance(peer, UNIXAddress):
            self.host, self.port = peer.host, peer.port
        elif not self.host:
            name = peer.name
            self.host = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else (name or "")
        self.readyState = "open"
        transport.registerProducer(self._watch, True)
        if self._suspended:
            transport.pauseProducing()
        _fire(self.onopen, TCPSocketEvent("open", self), self)

    def dataReceived(self, data: bytes) -> None:
        if self.ondata is None:
            return
        payload: str | bytes = data.decode("latin-1") if self.binaryType == "string" else data
        _fire(self.ondata, TCPSocketEvent("data", self, payload), self)

    def readConnectionLost(self) -> None:
        """
        The peer sent its end of stream: close after everything buffered is
        written, as Gecko does.
        """
        self.close()

    def writeConnectionLost(self) -> None:
        """
        Our side was shut down; the connection ends when the peer's does.
        """

    def _drained(self) -> None:
        if self._waitingForDrain:
            self._waitingForDrain = False
            _fire(self.ondrain, TCPSocketEvent("drain", self), self)
        transport = cast("_Connection", self.transport)
        if self.readyState == "closing" and transport is not None:
            # close() left the producer registered so that this drain event
            # could come; now let the transport finish closing.
            transport.unregisterProducer()

    def connectionLost(self, reason: Failure = _error.ConnectionDone()) -> None:  # type: ignore[assignment]
        wasConnecting = self.readyState == "connecting"
        self.readyState = "closed"
        self._watch.full = False
        if not self._aborted and not reason.check(_error.ConnectionDone):
            if self._waitingForDrain and not wasConnecting:
                self._waitingForDrain = False
            error = reason.value
            _fire(
                self.onerror,
                TCPSocketErrorEvent(self, str(error) or type(error).__name__, name=type(error).__name__),
                self,
            )
        elif self._waitingForDrain:
            # Everything was written before an orderly close: say so, as
            # Gecko does ("drain" then "close").
            self._waitingForDrain = False
            _fire(self.ondrain, TCPSocketEvent("drain", self), self)
        self.transport = None
        _fire(self.onclose, TCPSocketEvent("close", self), self)

    # ------------------------------------------------------------------
    # ITCPSocket.

    @property
    def bufferedAmount(self) -> int:
        """
        Bytes given to L{send} and not yet written to the socket.
        """
        transport = cast("_Connection", self.transport)
        if transport is None:
            return 0
        try:
            return bufferedOutput(transport)
        except AttributeError:
            return 0

    def _payload(self, data: Any) -> bytes:
        # (Any: str or any bytes-like object, checked here at run time.)
        if self.binaryType == "string":
            if not isinstance(data, str):
                raise NSError(NS_ERROR_INVALID_ARG, f'a "string" socket sends str (one character per byte), not {type(data).__name__}')
            try:
                return data.encode("latin-1")
            except UnicodeEncodeError as e:
                raise NSError(
                    NS_ERROR_INVALID_ARG,
                    f'a "string" socket sends one character per byte; {data[e.start]!r} at {e.start} is above U+00FF',
                ) from None
        if isinstance(data, str):
            raise NSError(NS_ERROR_INVALID_ARG, 'an "arraybuffer" socket sends bytes, not str')
        try:
            return bytes(memoryview(data))
        except TypeError:
            raise NSError(NS_ERROR_INVALID_ARG, f'an "arraybuffer" socket sends bytes, not {type(data).__name__}') from None

    def send(self, data: object) -> bool:
        """
        Queue C{data}.

        @return: False once more than L{BUFFER_SIZE} bytes are buffered;
            C{ondrain} then follows when everything has been written.
        @raise NSError: C{NS_ERROR_FAILURE} unless the socket is open;
            C{NS_ERROR_INVALID_ARG} for data of the wrong kind.
        """
        if self.readyState != "open":
            raise NSError(NS_ERROR_FAILURE, f"cannot send on a {self.readyState} socket")
        payload = self._payload(data)
        transport = cast("_Connection", self.transport)
        transport.write(payload)
        if self._watch.full:
            self._waitingForDrain = True
            return False
        return True

    def suspend(self) -> None:
        """
        Stop reading (and delivering C{ondata}) until as many L{resume}
        calls as L{suspend} calls.
        """
        self._suspended += 1
        if self._suspended == 1 and self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume(self) -> None:
        """
        Undo one L{suspend}.
        """
        if self._suspended == 0:
            return
        self._suspended -= 1
        if self._suspended == 0 and self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> None:
        """
        Close after everything buffered is written; C{readyState} is
        C{"closing"} at once, C{onclose} follows.
        """
        if self.readyState in ("closing", "closed"):
            return
        transport = cast("_Connection", self.transport)
        self.readyState = "closing"
        if transport is None:
            return
        if not self._waitingForDrain:
            transport.unregisterProducer()
        transport.loseConnection()

    def closeImmediately(self) -> None:
        """
        Close now, dropping whatever is still buffered; C{onclose} follows
        (and no C{onerror}).
        """
        if self.readyState == "closed":
            return
        transport = cast("_Connection", self.transport)
        self.readyState = "closing"
        self._aborted = True
        self._waitingForDrain = False
        if transport is not None:
            transport.abortConnection()

    # ------------------------------------------------------------------
    # Client sockets (an extension: Gecko's TCPSocket constructor).

    @classmethod
    def open(
        cls, host: str, port: int, options: Mapping[str, object] | None = None, reactor: IReactorTCP | None = None
    ) -> TCPSocket:
        """
        Connect to C{host}:C{port}.  The socket starts C{"connecting"};
        C{onopen} or C{onerror} then C{onclose} follow.

        @param options: C{{"binaryType": "string" | "arraybuffer"}}.
        @raise NSError: C{NS_ERROR_INVALID_ARG}, naming the argument, for a
            host that is not a non-empty string or a port that is not an
            integer from 1 to 65535 (checked here: Twisted would otherwise
            take C{"80"} as a service name, or fail later inside the
            reactor).
        """
        if not isinstance(host, str) or not host:
            raise NSError(NS_ERROR_INVALID_ARG, f"host must be a non-empty string, not {host!r}")
        port = _args.asNSError(_args.integer, port, "port", 1, _args.MAX_PORT)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        sock = cls(_checkBinaryType(options))
        sock.host, sock.port = host, port
        reactor.connectTCP(host, port, _ClientFactory(sock))
        return sock


def _connected(server: _Connectable, sock: TCPSocket) -> None:
    """
    Give C{server}'s C{onconnect} the newly accepted, open C{sock}; with no
    handler (or one that raises) the socket is closed, as in Gecko.
    """
    if server.onconnect is None:
        _log.warn("{server!r} received a connection but has no onconnect; closing it", server=server)
        sock.close()
        return
    try:
        server.onconnect(TCPServerSocketEvent("connect", server, sock))
    except Exception:
        _log.failure("Unhandled error in {server!r}'s onconnect; closing the connection", server=server)
        sock.close()


class _ClientFactory(ClientFactory):
    def __init__(self, socket: TCPSocket) -> None:
        self._socket = socket

    def buildProtocol(self, addr: IAddress | None) -> TCPSocket:
        return self._socket

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._socket.connectionLost(reason)


@implementer(ITCPServerSocket)
class TCPServerSocket:
    """
    A listening socket with Gecko's C{TCPServerSocket} API.  See
    L{ITCPServerSocket}.

    As in Gecko it listens on every IPv4 address (C{0.0.0.0}); C{port} -1
    or 0 picks a free port; C{backlog} -1 means C{socket.SOMAXCONN}.

    @ivar localPort: the port actually bound.
    @ivar binaryType: what accepted sockets deliver and take.
    @raise NSError: if listening fails (with the specific code, such as
        C{NS_ERROR_SOCKET_ADDRESS_IN_USE}, where Gecko says only
        C{NS_ERROR_FAILURE}).
    """

    def __init__(
        self, port: int, options: Mapping[str, object] | None = None, backlog: int = -1, reactor: IReactorFDSet | None = None
    ) -> None:
        self.binaryType = _checkBinaryType(options)
        self.onconnect: Callable[[TCPServerSocketEvent], object] | None = None
        self.onerror: Callable[[TCPSocketErrorEvent], object] | None = None
        self._serverSocket = ServerSocket(reactor)
        self._serverSocket.init(port, False, backlog)
        self.localPort = self._serverSocket.port
        self._serverSocket.asyncListen(self)

    def __repr__(self) -> str:
        return f"<TCPServerSocket on port {self.localPort}>"

    def close(self) -> None:
        """
        Stop listening; accepted sockets stay open.  Idempotent.
        """
        self._serverSocket.close()

    # IServerSocketListener
    def onSocketAccepted(self, serv: ServerSocket, transport: SocketTransport) -> None:
        sock = TCPSocket(self.binaryType)
        transport.attachProtocol(sock)
        _connected(self, sock)

    def onStopListening(self, serv: ServerSocket, status: int) -> None:
        if status == NS_BINDING_ABORTED:
            return
        _fire(
            self.onerror,
            TCPSocketErrorEvent(
                self, "Server socket was closed by unexpected reason.", name=nameOf(status), filename=__file__
            ),
            self,
        )
