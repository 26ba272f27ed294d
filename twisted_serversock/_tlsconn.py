# -*- test-case-name: tests.test_tls_server,tests.test_tls_endpoint -*-
"""
The TLS layer of one connection: Twisted's own TLS protocol (the one
C{TLSMemoryBIOFactory} builds, as behind C{ssl:}), which also

  - notices when its handshake finished and tells its factory
    (L{TLSFactory.handshakeDone}) once;
  - closes a connection whose handshake has not finished after the
    factory's C{handshakeTimeout} seconds (on the factory's clock, an
    C{IReactorTime});
  - logs one line for a handshake that failed (a client that sent garbage,
    offered no acceptable version, or no required certificate), with no
    traceback: the peer's mistake is not the server's error;
  - half-closes: C{loseWriteConnection} ends the sending side with a TLS
    C{close_notify} (after any plaintext still waiting for the handshake),
    then a TCP FIN, and goes on reading (Twisted's own TLS protocol has no
    C{loseWriteConnection}: the call would reach the socket under it and
    end the stream with a bare FIN);
  - survives losing its connection while it delivers received bytes (a
    socket whose sending side is already shut down closes at once when
    TLS closes it): the loss is handed on once the bytes are delivered;

and L{TLSClientStatus}, what a finished handshake established (Gecko's
C{nsITLSClientStatus}).

This module imports pyOpenSSL (through Twisted's TLS support); the rest of
the package imports it only when TLS is used.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from ._twistedcompat import KeepContextALPN, flushTLSWrites, tlsFailure, tlsPendingPlaintext, tlsProtocolWithoutConnecting
from .interfaces import ITLSClientStatus

__all__ = ["TLSFactory", "TLSProtocol", "TLSClientStatus", "DEFAULT_HANDSHAKE_TIMEOUT", "ianaCipherName"]

#: Seconds a client gets to finish its TLS handshake (C{geckotls:}'s
#: C{handshakeTimeout}).
DEFAULT_HANDSHAKE_TIMEOUT = 30.0

_log = Logger()

TLS_VERSION_UNKNOWN = -1


class TLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS protocol, with a handshake timeout and a report of the
    finished (or failed) handshake to its factory.

    @ivar producer: the producer registered through this transport (as
        Twisted's own transports say), or C{None}.
    @ivar handshakeFinished: whether the handshake finished.
    @ivar connectionInfo: what the factory keeps for this connection (the
        Gecko API's L{TLSServerConnectionInfo
        <twisted_serversock.tls.TLSServerConnectionInfo>}), or C{None}.
    """

    factory: TLSFactory
    producer: Any = None
    handshakeFinished = False
    connectionInfo: Any = None
    _timer: Any = None
    #: C{loseWriteConnection} was called; the C{close_notify} is sent once
    #: no plaintext waits for the handshake (C{_closeNotifySent}).
    _writeClosed = False
    _closeNotifySent = False
    #: Inside C{dataReceived}; a C{connectionLost} then is kept for its end.
    _receiving = False
    _lostWhileReceiving: Failure | None = None

    def makeConnection(self, transport: Any) -> None:
        timeout = self.factory.handshakeTimeout
        if timeout is not None:
            self._timer = self.factory.clock.callLater(timeout, self._handshakeTimedOut)
        super().makeConnection(transport)
        handle = self.getHandle()
        if handle is not None and handle.get_app_data() is None:
            # (Twisted before 25 does not say, for a server connection,
            # which protocol it is; an SNI host's ALPN choice asks.)
            handle.set_app_data(self)

    def dataReceived(self, data: bytes) -> None:
        # Twisted's receive loop delivers plaintext, then flushes what TLS
        # has to send; the application may close the connection meanwhile,
        # and the socket under it may then report its loss at once (it does
        # when its sending side is shut down already).  That loss waits
        # until the loop is done.
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False
        lost, self._lostWhileReceiving = self._lostWhileReceiving, None
        if lost is not None:
            self.connectionLost(lost)
            return
        if not self.handshakeFinished:
            handle = self.getHandle()
            # The server has the client's Finished message exactly when the
            # handshake is complete (public pyOpenSSL API; TLS 1.2 and 1.3).
            if handle is not None and handle.get_peer_finished() is not None:
                self.handshakeFinished = True
                self._cancelTimer()
                self.factory.handshakeDone(self, handle)
        if self._writeClosed and not self._closeNotifySent:
            self._maybeSendCloseNotify()

    def loseWriteConnection(self) -> None:
        """
        End the sending side: any plaintext still buffered is sent, then a
        TLS C{close_notify} and a TCP FIN; the connection goes on reading
        until the peer closes.  Before the handshake finished, the end
        waits for it (with the plaintext written before).
        """
        if self._writeClosed or self.disconnecting or not self.connected:
            return
        self._writeClosed = True
        flushTLSWrites(self)
        self._maybeSendCloseNotify()

    def _maybeSendCloseNotify(self) -> None:
        handle = self.getHandle()
        if handle is None or self.disconnecting or not self.handshakeFinished or tlsPendingPlaintext(self):
            return  # dataReceived comes back here once the handshake is done
        self._closeNotifySent = True
        try:
            bothClosed = handle.shutdown()
        except SSL.Error:
            bothClosed = False
        try:
            alert = handle.bio_read(2**15)
        except SSL.WantReadError:
            alert = b""
        transport: Any = self.transport  # a tcp.Server or unix.Server
        if alert:
            transport.write(alert)
        if bothClosed:
            transport.loseConnection()
        else:
            transport.loseWriteConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        super().registerProducer(producer, streaming)
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None
        super().unregisterProducer()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._receiving:
            if self._lostWhileReceiving is None:
                self._lostWhileReceiving = reason
            return
        self._cancelTimer()
        failure = tlsFailure(self) or reason
        if not self.handshakeFinished and failure is not None and failure.check(SSL.Error):
            _log.info(
                "TLS handshake with {peer} failed ({error}); connection closed",
                peer=_peerText(self),
                error=_errorText(failure.value),
            )
        super().connectionLost(reason)

    def _cancelTimer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshakeTimedOut(self) -> None:
        self._timer = None
        if self.handshakeFinished or not self.connected:
            return
        _log.info(
            "TLS handshake with {peer} not finished after {seconds}s; connection closed",
            peer=_peerText(self),
            seconds=self.factory.handshakeTimeout,
        )
        self.abortConnection()


def _peerText(protocol: Any) -> str:
    try:
        peer = protocol.transport.getPeer()
    except Exception:
        return "the client"
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None:
        return "a UNIX client"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _errorText(error: Any) -> str:
    """
    One line for a pyOpenSSL error: the reasons OpenSSL gave, without the
    library and function fields (C{"wrong version number"}).
    """
    args = getattr(error, "args", ())
    reasons = []
    if args and isinstance(args[0], list):
        for entry in args[0]:
            if isinstance(entry, tuple) and entry:
                reasons.append(str(entry[-1]))
    return ", ".join(reasons) or str(error) or type(error).__name__


class TLSFactory(KeepContextALPN, TLSMemoryBIOFactory):
    """
    Twisted's C{TLSMemoryBIOFactory} (server side), building
    L{TLSProtocol}s.

    @ivar handshakeTimeout: seconds a client gets to finish its handshake,
        or C{None} for no limit.
    @ivar clock: the C{IReactorTime} that times it.  (Twisted's TLS
        protocol batches its writes on the global reactor, as behind
        C{ssl:}.)
    """

    protocol = TLSProtocol
    handshakeTimeout: float | None

    def __init__(self, contextFactory: Any, wrappedFactory: Any, clock: Any, handshakeTimeout: float | None = None) -> None:
        super().__init__(contextFactory, False, wrappedFactory)
        self.clock = clock
        self.handshakeTimeout = handshakeTimeout

    def handshakeDone(self, protocol: TLSProtocol, connection: SSL.Connection) -> None:
        """
        C{protocol}'s handshake finished (called once per connection, from
        its C{dataReceived}).  Nothing here; the Gecko API's factory tells
        the connection's security observer.
        """

    def connectionFor(self, protocol: Any) -> TLSProtocol:
        """
        A TLS protocol for C{protocol}, not yet connected: the caller
        connects it to its transport, then C{protocol} to it.
        """
        tls: TLSProtocol = tlsProtocolWithoutConnecting(self.protocol, self, protocol)
        return tls


# ----------------------------------------------------------------------
# What the handshake established.

#: Key exchanges in OpenSSL's TLS 1.2 cipher names -> IANA's (none: RSA).
_KX = (("ECDHE-RSA-", "ECDHE_RSA"), ("ECDHE-ECDSA-", "ECDHE_ECDSA"), ("DHE-RSA-", "DHE_RSA"))
#: Bulk ciphers -> IANA's name, and whether it is AEAD (longest first).
_BULK = (
    ("CHACHA20-POLY1305", "CHACHA20_POLY1305", True),
    ("AES128-GCM", "AES_128_GCM", True),
    ("AES256-GCM", "AES_256_GCM", True),
    ("AES128-CCM", "AES_128_CCM", True),
    ("AES256-CCM", "AES_256_CCM", True),
    ("AES128", "AES_128_CBC", False),
    ("AES256", "AES_256_CBC", False),
)
_MAC_BITS = {"SHA": 160, "SHA256": 256, "SHA384": 384}


def ianaCipherName(openSSLName: str) -> tuple[str, bool]:
    """
    The IANA name of the cipher suite OpenSSL calls C{openSSLName}
    (C{ECDHE-RSA-AES128-GCM-SHA256} is C{TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}),
    and whether its cipher is AEAD.  TLS 1.3 names are IANA's already; a
    name this does not know is returned unchanged.
    """
    if openSSLName.startswith("TLS_"):
        return openSSLName, True
    kxName, rest = "RSA", openSSLName
    for prefix, name in _KX:
        if openSSLName.startswith(prefix):
            kxName, rest = name, openSSLName[len(prefix) :]
            break
    for bulk, bulkName, aead in _BULK:
        if rest == bulk or rest.startswith(bulk + "-"):
            mac = rest[len(bulk) + 1 :] or ("SHA256" if aead else "SHA")
            if mac in _MAC_BITS:
                return f"TLS_{kxName}_WITH_{bulkName}_{mac}", aead
    return openSSLName, False


@implementer(ITLSClientStatus)
class TLSClientStatus:
    """
    What a connection's handshake established (Gecko's
    C{nsITLSClientStatus}); see L{ITLSClientStatus}.  Until the handshake
    finishes, C{tlsVersionUsed} is C{TLS_VERSION_UNKNOWN}, C{cipherName}
    empty and the lengths 0.
    """

    SSL_VERSION_3 = 0x300
    TLS_VERSION_1 = 0x301
    TLS_VERSION_1_1 = 0x302
    TLS_VERSION_1_2 = 0x303
    TLS_VERSION_1_3 = 0x304
    TLS_VERSION_UNKNOWN = TLS_VERSION_UNKNOWN

    def __init__(self) -> None:
        self.peerCert: ssl.Certificate | None = None
        self.tlsVersionUsed = TLS_VERSION_UNKNOWN
        self.cipherName = ""
        self.keyLength = 0
        self.macLength = 0

    def __repr__(self) -> str:
        return (
            f"<TLSClientStatus version={self.tlsVersionUsed:#x} cipher={self.cipherName}"
            f" key={self.keyLength} mac={self.macLength} peerCert={self.peerCert is not None}>"
        )

    def update(self, connection: SSL.Connection) -> None:
        """
        Read what the finished handshake of C{connection} established.
        """
        peer = connection.get_peer_certificate()
        self.peerCert = None if peer is None else ssl.Certificate(peer)
        self.tlsVersionUsed = int(connection.get_protocol_version())
        name, aead = ianaCipherName(connection.get_cipher_name() or "")
        self.cipherName = name
        self.keyLength = int(connection.get_cipher_bits() or 0)
        self.macLength = 128 if aead else _MAC_BITS.get(name.rsplit("_", 1)[-1], 0)
