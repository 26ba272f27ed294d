# -*- test-case-name: tests.test_tls_server -*-
"""
The OpenSSL context of a L{TLSServerSocket<twisted_serversock.tls.TLSServerSocket>}
with Gecko's semantics (C{TLSServerSocket.cpp}'s defaults), and the TLS
factory that reports each finished handshake to the connection's info.

  - no session cache (Gecko sets C{SSL_NO_CACHE}); session tickets as
    C{setSessionTickets} says (Gecko's default: on);
  - no renegotiation;
  - the version range C{setVersionRange} gave (default TLS 1.2 to 1.3);
  - client certificates requested per mode and never verified: any
    certificate the client sends is accepted, for the consumer to judge
    (Gecko's C{AuthCertificateHook} always succeeds); a required one that
    is missing fails the handshake.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from ._tlsconn import TLSFactory, TLSProtocol

__all__ = ["contextFor", "GeckoTLSFactory", "ReloadableCreator"]

#: The OpenSSL verify flags of each client-certificate mode.
_VERIFY = {
    0: SSL.VERIFY_NONE,
    1: SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE,
    2: SSL.VERIFY_PEER,
    3: SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
    4: SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


def _acceptAny(connection: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    # Gecko does not verify client certificates: the consumer judges peerCert.
    return True


def contextFor(cert: Any, sessionTickets: bool, clientCertificate: int, versionRange: tuple[int, int]) -> SSL.Context:
    """
    An OpenSSL context serving C{cert} (a C{PrivateCertificate}) with
    these settings.

    @raise Exception: what OpenSSL raised (a key that does not match).
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    options = SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
    if not sessionTickets:
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)
    try:  # cryptography objects (pyOpenSSL deprecates its own)
        ctx.use_certificate(cert.original.to_cryptography())
        ctx.use_privatekey(cert.privateKey.original.to_cryptography_key())
    except TypeError:
        ctx.use_certificate(cert.original)
        ctx.use_privatekey(cert.privateKey.original)
    ctx.check_privatekey()
    ctx.set_min_proto_version(versionRange[0])
    ctx.set_max_proto_version(versionRange[1])
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # OpenSSL refuses client certificates without a session id context.
    ctx.set_session_id(b"twisted-serversock")
    ctx.set_verify(_VERIFY[clientCertificate], _acceptAny)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableCreator:
    """
    Server connections on the context of the TLS configuration given last:
    replacing it (L{replace}) changes what new connections get, while open
    connections keep the context they started with.

    @ivar current: an C{SSL.Context}, or what makes one (Twisted's
        C{CertificateOptions}, an C{IOpenSSLContextFactory}).
    """

    def __init__(self, current: Any) -> None:
        self.current = current

    def replace(self, current: Any) -> None:
        """
        New connections use C{current} from now on.
        """
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        current = self.current
        if isinstance(current, SSL.Context):
            return SSL.Connection(current, None)
        if IOpenSSLServerConnectionCreator.providedBy(current):
            # (Twisted's CertificateOptions: as behind ssl:.)
            connection: SSL.Connection = current.serverConnectionForTLS(tlsProtocol)
            return connection
        return SSL.Connection(current.getContext(), None)


class GeckoTLSFactory(TLSFactory):
    """
    The TLS factory of a TLS server socket's listening period: no wrapped
    factory (the protocols come from the accepted connections), and each
    finished handshake reported to the connection's
    C{TLSServerConnectionInfo}.  No handshake timeout, as in Gecko.
    """

    def __init__(self, context: SSL.Context, reactor: Any) -> None:
        self.creator = ReloadableCreator(context)
        super().__init__(self.creator, None, reactor)

    def handshakeDone(self, protocol: TLSProtocol, connection: SSL.Connection) -> None:
        info = protocol.connectionInfo
        if info is not None:
            info.handshakeDone(connection)
