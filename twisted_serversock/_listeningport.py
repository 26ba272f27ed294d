# -*- test-case-name: tests.test_endpoints -*-
"""
L{GeckoListeningPort}: the C{IListeningPort} a gecko endpoint's C{listen()}
returns, and the listener through which it builds and attaches a protocol
for each connection, as Twisted's own ports do.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Protocol, cast

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import log as legacyLog
from twisted.python.reflect import qual
from zope.interface import implementer

from ._labels import describeAddress, factoryLogPrefix
from .interfaces import IRawAcceptor
from .results import NS_BINDING_ABORTED, NS_ERROR_INVALID_ARG, NSError, nameOf

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocolFactory

    from ._types import Accept, Address
    from .serversocket import ServerSocket
    from .transport import SocketTransport

__all__ = ["GeckoListeningPort"]

_log = Logger()


class _Bindable(Protocol):
    """
    What a L{GeckoListeningPort} needs of its endpoint: a server socket,
    bound and listening, each time it starts listening.
    """

    def bindServerSocket(self) -> ServerSocket: ...


class _Listener:
    """
    The L{IServerSocketListener} of a L{GeckoListeningPort}: builds a
    protocol for each connection and attaches it, as Twisted's port does.
    A connection whose protocol cannot be built is closed at once.
    """

    __slots__ = ("_port", "_stopped")

    def __init__(self, port: GeckoListeningPort, stopped: Callable[[_Listener, int], None]) -> None:
        """
        @param port: the listening port, whose C{factory} builds each
            connection's protocol (read per connection, as Twisted's own
            port reads its C{factory}).
        @param stopped: called with this listener and the status when the
            server socket stops listening.
        """
        self._port = port
        self._stopped = stopped

    def logPrefix(self) -> str:
        # Twisted's port's: a log.msg in buildProtocol shows the factory.
        return qual(type(self._port.factory))

    def onSocketAccepted(self, serv: ServerSocket, transport: SocketTransport) -> None:
        factory = self._port.factory
        addr = transport.getPeerAddr()
        try:
            protocol = factory.buildProtocol(addr)
        except Exception:
            _log.failure("{factory!r}.buildProtocol({addr!r}) raised; closing the connection", factory=factory, addr=addr)
            transport.refuse()
            return
        if protocol is None:
            # Twisted's way to refuse a connection: closed, not an error.
            transport.refuse()
            return
        try:
            transport.attachProtocol(protocol)
        except NSError as e:
            if e.result != NS_ERROR_INVALID_ARG:
                raise
            _log.error(
                "{factory!r}.buildProtocol({addr!r}) returned {protocol!r}, not a protocol; closing the connection",
                factory=factory,
                addr=addr,
                protocol=protocol,
            )
            transport.refuse()
        except Exception:
            # The protocol's makeConnection/connectionMade raised: logged
            # naming it; the connection stays its own, as in Twisted.
            _log.failure("Unhandled error in {protocol!r}.makeConnection", protocol=protocol)

    def onStopListening(self, serv: ServerSocket, status: int) -> None:
        self._stopped(self, status)


@implementer(IRawAcceptor)
class _RawListener(_Listener):
    """
    The listener of a port whose factory provides L{IRawAcceptor} (the
    worker pool's hand-off factory): accepted sockets go to the factory
    raw.
    """

    __slots__ = ("socketAccepted",)

    def __init__(self, port: GeckoListeningPort, stopped: Callable[[_Listener, int], None]) -> None:
        _Listener.__init__(self, port, stopped)
        # The factory's own method, bound once: the hand-off of every
        # connection takes no extra call through this listener.
        self.socketAccepted: Accept = cast("IRawAcceptor", port.factory).socketAccepted


@implementer(IListeningPort)
class GeckoListeningPort:
    """
    The C{IListeningPort} of a gecko endpoint.

    @ivar serverSocket: the L{ServerSocket} behind this port (a new one after
        each L{startListening} that follows a L{stopListening}).
    @ivar factory: the protocol factory.
    @ivar tcpKind: what the close line calls a TCP port: C{"TCP"}, or
        C{"TLS"} behind C{geckotls:} (as Twisted's C{ssl:} ports say).
    """

    tcpKind = "TCP"

    def __init__(self, endpoint: _Bindable, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self.factory = factory
        self.serverSocket: ServerSocket | None = None
        self._listener: _Listener | None = None
        self._stopping: list[defer.Deferred[None]] = []
        self._address: Address | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} on {describeAddress(self._address)}>"

    def logPrefix(self) -> str:
        """
        The factory's class, as Twisted's own ports have it.
        """
        return qual(type(self.factory))

    def _portName(self) -> str:
        # What Twisted's ports call their "port number": the TCP port, or
        # the UNIX socket's name ("\0name" for an abstract one, as
        # Twisted's unix: would show it).
        # (Only asked once listening: the address is known.)
        address = self._address
        if isinstance(address, UNIXAddress):
            return os.fsdecode(address.name or b"")
        assert address is not None
        return str(address.port)

    def startListening(self) -> None:
        """
        Listen (again, after L{stopListening}); binds synchronously.

        @raise CannotListenError: if binding fails; its C{socketError} is the
            L{NSError}.
        """
        if self._listener is not None:
            return
        serv = self._endpoint.bindServerSocket()
        self.serverSocket = serv
        self._address = serv.getAddress()
        if IRawAcceptor.providedBy(self.factory):
            self._listener = _RawListener(self, self._stopped)
        else:
            self._listener = _Listener(self, self._stopped)
        # Twisted's own lines, in Twisted's order (before doStart), through
        # the legacy API as Twisted's ports log them: tools and Twisted's
        # own tests read these exact messages.
        if isinstance(self._address, UNIXAddress):
            legacyLog.msg(f"{factoryLogPrefix(self.factory)} starting on {self._portName()!r}")
        else:
            legacyLog.msg(f"{factoryLogPrefix(self.factory)} starting on {self._portName()}")
        try:
            self.factory.doStart()
        except BaseException:
            # Nothing may stay bound for a port listen() reported failed.
            serv.close()
            self._listener = None
            raise
        serv.asyncListen(self._listener)

    def pauseAccepting(self) -> None:
        """
        Accept nothing until L{resumeAccepting} (queued connections wait in
        the kernel's backlog): the worker pool's back-pressure.
        """
        if self.serverSocket is not None:
            self.serverSocket.pauseAccepting()

    def resumeAccepting(self) -> None:
        """
        Accept again after L{pauseAccepting}.
        """
        if self.serverSocket is not None:
            self.serverSocket.resumeAccepting()

    def stopListening(self) -> defer.Deferred[None]:
        """
        Stop listening; accepted connections are not affected, and those
        already in the kernel's accept queue are accepted and built (not
        reset) before the factory stops.

        @return: a Deferred that fires once the server socket has reported
            C{onStopListening}.
        """
        if self._listener is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stopping.append(d)
        assert self.serverSocket is not None
        self.serverSocket.close()
        return d

    loseConnection = stopListening

    def _stopped(self, listener: _Listener, status: int) -> None:
        if listener is not self._listener:
            return
        self._listener = None
        kind = "UNIX" if isinstance(self._address, UNIXAddress) else self.tcpKind
        legacyLog.msg(f"({kind} Port {self._portName()} Closed)")
        if status != NS_BINDING_ABORTED:
            _log.warn(
                "{endpoint} on {address} stopped listening: {status}",
                endpoint=type(self._endpoint).__name__,
                address=describeAddress(self._address),
                status=nameOf(status),
            )
        try:
            self.factory.doStop()
        finally:
            stopping, self._stopping = self._stopping, []
            for d in stopping:
                d.callback(None)

    def getHost(self) -> Address | None:  # type: ignore[override]
        """
        The address actually bound (the real port when 0 or -1 was asked;
        an IPv6 scope as bound); C{None} before it first listened (where
        C{IListeningPort} promises an address, which it cannot have yet).
        """
        return self._address
