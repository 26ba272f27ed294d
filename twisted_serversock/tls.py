# -*- test-case-name: tests.test_tls_server -*-
"""
L{TLSServerSocket}: Gecko's C{nsITLSServerSocket}, a server socket whose
connections speak TLS, and the TLS side of each connection it accepts
(L{TLSServerConnectionInfo}, an accepted transport's C{securityInfo}).

Certificates are Twisted's: C{serverCert} is a
C{twisted.internet.ssl.PrivateCertificate} (the certificate and its key;
Gecko's C{nsIX509Cert} finds its key in NSS's database), and a client's
certificate (C{status.peerCert}) a C{twisted.internet.ssl.Certificate}.
Both load from PEM (C{PrivateCertificate.loadPEM(cert + key)}) and compare
equal when their DER encodings are equal.

TLS itself is Twisted's own TLS protocol (the one behind C{ssl:}) put
between the socket and whatever the listener uses: the streams, or a
protocol it attaches.  Importing this module does not import pyOpenSSL;
C{asyncListen} does.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from ._accepted import AcceptedSocket
from ._acceptpipe import AcceptPipeline
from ._callqueue import CallQueue
from ._streammode import StreamMode
from .interfaces import IRawAcceptor
from ._twistedcompat import tlsBufferedOutput
from .interfaces import ITLSServerConnectionInfo, ITLSServerSocket
from .results import NS_ERROR_FAILURE, NS_ERROR_IN_PROGRESS, NS_ERROR_INVALID_ARG, NS_ERROR_NOT_INITIALIZED, NSError
from .serversocket import ServerSocket
from .transport import SocketTransport

__all__ = [
    "TLSServerSocket",
    "TLSServerConnectionInfo",
    "TLSSocketTransport",
    "REQUEST_NEVER",
    "REQUEST_FIRST_HANDSHAKE",
    "REQUEST_ALWAYS",
    "REQUIRE_FIRST_HANDSHAKE",
    "REQUIRE_ALWAYS",
    "TLS_VERSION_1",
    "TLS_VERSION_1_1",
    "TLS_VERSION_1_2",
    "TLS_VERSION_1_3",
    "TLS_VERSION_UNKNOWN",
]

REQUEST_NEVER = 0
REQUEST_FIRST_HANDSHAKE = 1
REQUEST_ALWAYS = 2
REQUIRE_FIRST_HANDSHAKE = 3
REQUIRE_ALWAYS = 4

TLS_VERSION_1 = 0x301
TLS_VERSION_1_1 = 0x302
TLS_VERSION_1_2 = 0x303
TLS_VERSION_1_3 = 0x304
TLS_VERSION_UNKNOWN = -1

_VERSIONS = (TLS_VERSION_1, TLS_VERSION_1_1, TLS_VERSION_1_2, TLS_VERSION_1_3)

_log = Logger()


@implementer(ITLSServerConnectionInfo)
class TLSServerConnectionInfo:
    """
    The TLS side of one accepted connection (Gecko's
    C{nsITLSServerConnectionInfo}): the transport's C{securityInfo}.  See
    L{ITLSServerConnectionInfo}.

    @ivar serverSocket: the L{TLSServerSocket} that accepted the connection.
    @ivar status: what the handshake established (a C{TLSClientStatus}),
        or C{None} before it finished.
    """

    def __init__(self, serverSocket: TLSServerSocket, queue: Any) -> None:
        """
        @param serverSocket: the server socket that accepted the connection.
        @param queue: its FIFO of deferred callbacks (a C{CallQueue}).
        """
        self.serverSocket = serverSocket
        self.status: Any = None
        self._queue = queue
        self._observer: Any = None
        #: An observer was told (or is queued to be told) of this
        #: connection's handshake: no other will be.
        self._told = False

    def __repr__(self) -> str:
        return f"<TLSServerConnectionInfo {self.status!r}>"

    def setSecurityObserver(self, observer: Any) -> None:
        if observer is not None and not callable(getattr(observer, "onHandshakeDone", None)):
            raise NSError(NS_ERROR_INVALID_ARG, f"the observer {observer!r} has no onHandshakeDone()")
        self._observer = observer
        if observer is not None and self.status is not None:
            # Set after the handshake finished: told at once (through the
            # reactor), as in Gecko - unless an observer was told already:
            # at most once per connection.
            self._observer = None
            if not self._told:
                self._told = True
                self._queue.call(self._notify, observer)

    def handshakeDone(self, connection: Any) -> None:
        """
        Package-internal: the handshake finished on C{connection} (the
        pyOpenSSL connection): read what it established and tell the
        observer, if any, through the reactor.
        """
        from ._tlsconn import TLSClientStatus

        status = TLSClientStatus()
        status.update(connection)
        self.status = status
        observer, self._observer = self._observer, None
        if observer is not None and not self._told:
            self._told = True
            self._queue.call(self._notify, observer)

    def _notify(self, observer: Any) -> None:
        try:
            observer.onHandshakeDone(self.serverSocket, self.status)
        except Exception:
            _log.failure("Unhandled error in {observer!r}.onHandshakeDone", observer=observer)


class _TLSSetup:
    """
    What a listening period's accepted sockets need to become TLS
    connections: the Twisted transport class, the TLS factory, and the
    server socket and FIFO their connection info reports to.
    """

    __slots__ = ("transportClass", "factory", "serverSocket", "queue")

    def __init__(self, transportClass: Any, factory: Any, serverSocket: TLSServerSocket, queue: Any) -> None:
        self.transportClass = transportClass
        self.factory = factory
        self.serverSocket = serverSocket
        self.queue = queue


class _TLSAcceptedSocket(AcceptedSocket):
    """
    An accepted socket whose Twisted transport speaks TLS: the protocol it
    is built for is connected to a TLS protocol over the socket's
    C{tcp.Server} (or C{unix.Server}).

    @ivar info: the connection's L{TLSServerConnectionInfo}, from the start.
    """

    __slots__ = ("info", "_factory")

    def __init__(self, setup: _TLSSetup, skt: Any, peer: Any, port: Any, reactor: Any) -> None:
        super().__init__(setup.transportClass, skt, peer, port, reactor)
        self.info = TLSServerConnectionInfo(setup.serverSocket, setup.queue)
        self._factory = setup.factory

    def build(self, protocol: Any) -> Any:
        """
        Build the TLS transport for C{protocol}; the caller connects
        C{protocol} to it (see L{AcceptedSocket.build}).

        @return: the TLS protocol, which is C{protocol}'s transport.
        """
        tls = self._factory.connectionFor(protocol)
        tls.connectionInfo = self.info
        tls.makeConnection(super().build(tls))
        return tls


class _TLSStreamMode(StreamMode):
    """
    Stream mode on a TLS connection: the output stream's buffer counts
    also the plaintext waiting in TLS (held for the next reactor turn, or
    for the handshake to finish), so that writing until
    C{NS_BASE_STREAM_WOULD_BLOCK} stops before the handshake too.
    """

    __slots__ = ()

    def bufferedOutput(self) -> int:
        return tlsBufferedOutput(self.connection())


class TLSSocketTransport(SocketTransport):
    """
    An accepted TLS connection: a L{SocketTransport} whose bytes go through
    TLS, with its C{securityInfo}.
    """

    __slots__ = ()

    _streamModeClass = _TLSStreamMode

    @property
    def securityInfo(self) -> TLSServerConnectionInfo:
        """
        The connection's L{TLSServerConnectionInfo}.
        """
        accepted = self._accepted
        assert isinstance(accepted, _TLSAcceptedSocket)
        return accepted.info

    def _rehome(self, tcp: Any, protocol: Any) -> None:
        # tcp is the TLS protocol: the new protocol is the one it wraps.
        tcp.wrappedProtocol = protocol


@implementer(ITLSServerSocket)
class TLSServerSocket(ServerSocket):
    """
    A server socket whose connections speak TLS (Gecko's
    C{nsITLSServerSocket}).  See L{ITLSServerSocket}.

    Initialise it like a L{ServerSocket} (any C{init*}, TCP or UNIX), set
    C{serverCert} (and the other settings), then C{asyncListen}.
    """

    REQUEST_NEVER = REQUEST_NEVER
    REQUEST_FIRST_HANDSHAKE = REQUEST_FIRST_HANDSHAKE
    REQUEST_ALWAYS = REQUEST_ALWAYS
    REQUIRE_FIRST_HANDSHAKE = REQUIRE_FIRST_HANDSHAKE
    REQUIRE_ALWAYS = REQUIRE_ALWAYS

    def __init__(self, reactor: Any = None, ioService: Any = None) -> None:
        super().__init__(reactor, ioService)
        self._serverCert: Any = None
        self._sessionTickets = True
        self._clientCertificate = REQUEST_NEVER
        self._versionRange = (TLS_VERSION_1_2, TLS_VERSION_1_3)
        self._factory: Any = None

    def __repr__(self) -> str:
        return "<TLS" + super().__repr__()[1:]

    def _checkNotListening(self) -> None:
        if self._listener is not None:
            raise NSError(NS_ERROR_IN_PROGRESS, "TLS settings cannot change while the server socket listens")

    @property
    def serverCert(self) -> Any:
        return self._serverCert

    @serverCert.setter
    def serverCert(self, cert: Any) -> None:
        self._checkNotListening()
        from twisted.internet.ssl import PrivateCertificate

        if not isinstance(cert, PrivateCertificate):
            raise NSError(
                NS_ERROR_INVALID_ARG,
                f"serverCert must be a twisted.internet.ssl.PrivateCertificate (a certificate with its key), not {cert!r}",
            )
        self._serverCert = cert

    def setSessionTickets(self, enabled: bool) -> None:
        self._checkNotListening()
        if not isinstance(enabled, (bool, int)):
            raise NSError(NS_ERROR_INVALID_ARG, f"enabled must be a boolean, not {enabled!r}")
        self._sessionTickets = bool(enabled)

    def setRequestClientCertificate(self, mode: int) -> None:
        self._checkNotListening()
        if isinstance(mode, bool) or mode not in (0, 1, 2, 3, 4):
            raise NSError(NS_ERROR_INVALID_ARG, f"mode must be one of REQUEST_NEVER (0) to REQUIRE_ALWAYS (4), not {mode!r}")
        self._clientCertificate = mode

    def setVersionRange(self, minVersion: int, maxVersion: int) -> None:
        self._checkNotListening()
        for name, value in (("minVersion", minVersion), ("maxVersion", maxVersion)):
            if isinstance(value, bool) or value not in _VERSIONS:
                raise NSError(NS_ERROR_INVALID_ARG, f"{name} must be a TLS_VERSION_* constant (0x301 to 0x304), not {value!r}")
        if minVersion > maxVersion:
            raise NSError(NS_ERROR_INVALID_ARG, f"minVersion {minVersion:#x} is above maxVersion {maxVersion:#x}")
        self._versionRange = (minVersion, maxVersion)

    def reloadCertificates(self, cert: Any) -> bool:
        """
        Serve C{cert} (a C{PrivateCertificate}, like C{serverCert}) from now
        on, while listening: connections accepted after this call get it,
        connections already open keep theirs.  (Gecko's C{serverCert} cannot
        change once listening; a long-running server still has to renew
        its certificate without closing its socket, and this is how.)  The
        other settings stay as they were.  Before C{asyncListen} this is
        setting C{serverCert}.

        @return: whether C{cert} is served now.  A certificate TLS cannot be
            set up with (a key that does not match) is logged in one line
            and the certificate served so far stays.

        @raise NSError: C{NS_ERROR_INVALID_ARG} if C{cert} is not a
            C{PrivateCertificate}.
        """
        from twisted.internet.ssl import PrivateCertificate

        if not isinstance(cert, PrivateCertificate):
            raise NSError(NS_ERROR_INVALID_ARG, f"cert must be a twisted.internet.ssl.PrivateCertificate, not {cert!r}")
        if self._factory is None or self._listener is None:
            self.serverCert = cert
            return True
        from ._tlscontext import contextFor

        try:
            context = contextFor(cert, self._sessionTickets, self._clientCertificate, self._versionRange)
        except Exception as e:
            _log.error("{server!r}: certificates not reloaded, the old ones stay ({error})", server=self, error=e)
            return False
        self._factory.creator.replace(context)
        self._serverCert = cert
        return True

    def asyncListen(self, listener: Any) -> None:
        """
        See L{IServerSocket.asyncListen}.

        @raise NSError: C{NS_ERROR_INVALID_ARG} for a listener that takes
            sockets raw (C{IRawAcceptor}: it would get them without TLS);
            C{NS_ERROR_NOT_INITIALIZED} without C{serverCert};
            C{NS_ERROR_FAILURE} if TLS cannot be set up with it (a key that
            does not match the certificate); otherwise as a
            L{ServerSocket}'s.
        """
        if self._bound is not None and self._listener is None:
            if IRawAcceptor.providedBy(listener):
                raise NSError(
                    NS_ERROR_INVALID_ARG,
                    f"the listener {listener!r} takes sockets raw (IRawAcceptor): a TLS server socket's connections need TLS",
                )
            if self._serverCert is None:
                raise NSError(NS_ERROR_NOT_INITIALIZED, "a TLS server socket needs its serverCert before asyncListen")
            from ._tlscontext import GeckoTLSFactory, contextFor

            try:
                context = contextFor(self._serverCert, self._sessionTickets, self._clientCertificate, self._versionRange)
            except Exception as e:
                raise NSError(NS_ERROR_FAILURE, f"cannot set up TLS with serverCert: {e}") from None
            self._factory = GeckoTLSFactory(context, self._getReactor())
        super().asyncListen(listener)

    def _newPipeline(self, listener: Any, queue: CallQueue, reactor: Any, bound: Any) -> AcceptPipeline:
        setup = _TLSSetup(bound.transportClass, self._factory, self, queue)
        return AcceptPipeline(
            self,
            listener,
            queue,
            reactor,
            setup,
            self._ioService,
            self._allowedUids,
            bound.address,
            acceptedClass=_TLSAcceptedSocket,
            connectionClass=TLSSocketTransport,
        )
