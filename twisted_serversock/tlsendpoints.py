# -*- test-case-name: tests.test_tls_endpoint -*-
"""
The C{geckotls:} and C{geckounixtls:} endpoints: TLS as Twisted's C{ssl:}
does it (the same options, read by Twisted's own code, and the same
C{TLSMemoryBIOFactory} around the application's factory, so ALPN and
everything else behave alike), over the addressing of C{gecko:} or
C{geckounix:}.  Swapping C{ssl:} for C{geckotls:} changes nothing else.

Beyond C{ssl:}:

  - C{handshakeTimeout}: a client that has not finished its handshake
    after this many seconds (default 30; 0: no limit) is closed;
  - C{sniDir}: a directory of PEM files, one per host name
    (C{<host>.pem}, its certificate and key, as txsni names them); the
    client's server name (SNI) picks the certificate;
  - C{clientCert=request|require} with C{clientCA}: ask for (or demand) a
    client certificate, verified against the CA certificates in
    C{clientCA};
  - behind C{haproxy:} (C{haproxy:geckotls:...}) the PROXY header is read
    before the TLS handshake, as HAProxy sends it when it passes TLS
    through (TCP mode, C{send-proxy-v2}).

A failed handshake closes that connection with one log line and no
traceback; the server keeps serving.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from . import endpoints
from ._listeningport import GeckoListeningPort
from ._tlsconn import DEFAULT_HANDSHAKE_TIMEOUT, TLSFactory
from ._tlscontext import ReloadableCreator
from ._tlsfiles import HandOver, TLSFiles, certificateOptions, handedOver
from ._twistedcompat import OWN_ALPN, unwrapHAProxy

__all__ = [
    "GeckoTLSServerEndpoint",
    "TLSListeningPort",
    "parseGeckoTLS",
    "parseGeckoUNIXTLS",
    "contextFactoryFromOptions",
    "DEFAULT_HANDSHAKE_TIMEOUT",
]

_log = Logger()


@implementer(IStreamServerEndpoint)
class GeckoTLSServerEndpoint:
    """
    TLS over another server endpoint (a L{GeckoServerEndpoint
    <twisted_serversock.endpoints.GeckoServerEndpoint>} or
    L{GeckoUNIXServerEndpoint
    <twisted_serversock.endpoints.GeckoUNIXServerEndpoint>}, or any
    C{IStreamServerEndpoint}), as Twisted's C{ssl:} puts it over TCP: the
    application's factory wrapped in Twisted's C{TLSMemoryBIOFactory}.

    @param reactor: the reactor (an C{IReactorTime} for the timeout).
    @param endpoint: the endpoint to listen on.
    @param contextFactory: the TLS configuration, as for Twisted's
        C{SSL4ServerEndpoint} (a C{CertificateOptions}).
    @param handshakeTimeout: seconds a client gets to finish its handshake;
        C{None} or 0 for no limit.
    @param reader: what reads the TLS configuration again (a new
        C{CertificateOptions} from the same files), for
        L{TLSListeningPort.reloadCertificates}; the string parsers pass
        one.  C{None}: a reload needs its new configuration given.
    """

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        contextFactory: Any,
        handshakeTimeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        reader: Callable[[], Any] | None = None,
    ) -> None:
        if isinstance(handshakeTimeout, bool) or not (
            handshakeTimeout is None or (isinstance(handshakeTimeout, (int, float)) and handshakeTimeout >= 0)
        ):
            raise ValueError(f"handshakeTimeout must be a number of seconds (0: none), not {handshakeTimeout!r}")
        self._reactor = reactor
        self._endpoint = endpoint
        self._contextFactory = contextFactory
        self._handshakeTimeout = handshakeTimeout or None
        self._reader = reader

    @property
    def addressEndpoint(self) -> Any:
        """
        The endpoint under TLS (a C{GeckoServerEndpoint}, ...): where the
        connections come from.
        """
        return self._endpoint

    def __repr__(self) -> str:
        return f"<GeckoTLSServerEndpoint over {self._endpoint!r}>"

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        """
        Listen on the wrapped endpoint with C{protocolFactory} behind TLS.
        Behind C{haproxy:}, the PROXY header is read first (HAProxy sends it
        before the client's TLS handshake).

        @return: a L{TLSListeningPort} around what the wrapped endpoint's
            C{listen} returns.
        """
        creator = ReloadableCreator(self._contextFactory)
        factory = self._wrap(protocolFactory, creator)
        listening: defer.Deferred[IListeningPort] = self._endpoint.listen(factory).addCallback(self._listening, creator)
        return listening

    def serverFactory(self, protocolFactory: Any) -> Any:
        """
        What L{listen} listens with, for connections accepted elsewhere
        without TLS and handed to this process (a C{twistd serversock}
        worker): C{protocolFactory} behind this endpoint's TLS.
        """
        return self._wrap(protocolFactory, ReloadableCreator(self._contextFactory))

    def _wrap(self, protocolFactory: Any, creator: ReloadableCreator) -> Any:
        haproxy = unwrapHAProxy(protocolFactory)
        if haproxy is not None:
            wrap, application = haproxy
            return wrap(self._tls(application, creator))
        return self._tls(protocolFactory, creator)

    def _listening(self, port: Any, creator: ReloadableCreator) -> TLSListeningPort:
        if isinstance(port, GeckoListeningPort):
            # "(TLS Port N Closed)", as Twisted's ssl: ports log it.
            port.tcpKind = "TLS"
        return TLSListeningPort(port, creator, self._reader, getattr(self._endpoint, "description", "") or repr(self))

    def _tls(self, factory: Any, creator: ReloadableCreator) -> TLSFactory:
        return TLSFactory(creator, factory, self._reactor, self._handshakeTimeout)


@implementer(IListeningPort)
class TLSListeningPort:
    """
    What L{GeckoTLSServerEndpoint.listen} returns: the listening port of
    the endpoint under TLS (everything it has, it has: C{getHost},
    C{stopListening}, C{factory}, ...) that can also serve renewed
    certificates without closing its socket (L{reloadCertificates}).
    """

    def __init__(self, port: Any, creator: ReloadableCreator, reader: Callable[[], Any] | None, description: str) -> None:
        self.port = port
        self._creator = creator
        self._reader = reader
        self._description = description

    def __repr__(self) -> str:
        return f"<TLSListeningPort {self.port!r}>"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.port, name)

    def startListening(self) -> None:
        self.port.startListening()

    def stopListening(self) -> Any:
        return self.port.stopListening()

    def getHost(self) -> Any:
        return self.port.getHost()

    def reloadCertificates(self, contextFactory: Any = None) -> bool:
        """
        Serve renewed certificates: connections accepted from now on get
        the TLS configuration read again from the description's files
        (C{privateKey}, C{certKey}, C{sniDir}, C{clientCA}, ...) or
        C{contextFactory} if given; connections already open keep theirs.
        The files are read now, in this call (a few small local files).

        With C{workers=}, call it in each worker (it reads the disk, as
        the worker's user), or send the cluster primary SIGHUP: it reads
        the files anew and hands them to its new workers.  Called in the
        primary, which serves no TLS itself, it logs that and returns
        C{False}.

        @param contextFactory: the new configuration (a C{CertificateOptions}),
            for an endpoint made in Python from one.
        @return: whether the new configuration is served.  A renewal that
            cannot be used (a missing file, a key that does not match its
            certificate) is logged in one line, and the configuration
            served so far stays.
        @raise ValueError: without C{contextFactory}, for an endpoint that
            has no files to read again (made from a C{CertificateOptions}).
        """
        if getattr(self.port, "handsOver", False):
            _log.error(
                "{description}: certificates not reloaded here: the workers serve this listener's TLS; send the "
                "cluster primary SIGHUP to start workers with the renewed files",
                description=self._description,
            )
            return False
        if contextFactory is None:
            if self._reader is None:
                raise ValueError("this endpoint was given its TLS configuration, not files: pass the new one")
            try:
                contextFactory = self._reader()
            except ValueError as e:
                _log.error(
                    "{description}: certificates not reloaded, the old ones stay ({error})",
                    description=self._description,
                    error=e,
                )
                return False
        self._creator.replace(contextFactory)
        _log.info("{description}: certificates reloaded; new connections get them", description=self._description)
        return True


# ----------------------------------------------------------------------
# The TLS configuration.


def _readable(option: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(f"{option}: cannot read {path!r}: {e.strerror or e}") from None
    return path


def _warnIfExpired(option: str, path: str, certificate: Any) -> None:
    if certificate is not None and certificate.has_expired():
        notAfter = certificate.get_notAfter().decode("ascii", "replace")
        when = datetime.datetime.strptime(notAfter, "%Y%m%d%H%M%SZ").strftime("%Y-%m-%d %H:%M UTC")
        _log.warn(
            "{option}: the certificate in {path} expired on {when}; clients will refuse it",
            option=option,
            path=path,
            when=when,
        )


def _options(files: TLSFiles, option: str, privateKey: str, certKey: str | None = None, **more: Any) -> Any:
    """
    Twisted's C{CertificateOptions} for these C{ssl:} options, read from
    C{files}, every failure a one-line C{ValueError} naming the option and
    file.
    """
    keyPEM = files.read(option, privateKey)
    certPEM = files.read("certKey", certKey) if certKey is not None else keyPEM
    chain = more.get("extraCertChain")
    chainPEM = files.read("extraCertChain", chain) if chain is not None else None
    if more.get("dhParameters") is not None:
        # Public data, which OpenSSL loads from its path: read by each process.
        _readable("dhParameters", more["dhParameters"])
    try:
        options = certificateOptions(keyPEM, certPEM, more.get("sslmethod"), chainPEM, chain or "", more.get("dhParameters"))
    except AttributeError:
        raise ValueError(f"sslmethod: unknown method {more.get('sslmethod')!r} (for example TLS_METHOD)") from None
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None
    except Exception as e:
        what = "does not match the certificate" if "match" in str(e).lower() else f"is not a usable PEM certificate and key ({e or type(e).__name__})"
        named = privateKey if certKey is None else f"{privateKey} (key) and {certKey} (certificate)"
        raise ValueError(f"{option}: the private key in {named} {what}") from None
    _warnIfExpired(option, certKey or privateKey, options.certificate)
    return options


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _chainAfterFirst(option: str, path: str, pem: bytes) -> list[Any]:
    """
    The certificates in C{pem} (the PEM file C{path}'s bytes) after the
    first (the leaf): the intermediates that complete its chain, as
    pyOpenSSL C{X509}s.
    """
    from OpenSSL import crypto

    found = _PEM_CERTIFICATE.findall(pem)
    try:
        return [crypto.load_certificate(crypto.FILETYPE_PEM, pem) for pem in found[1:]]
    except crypto.Error as e:
        raise ValueError(f"{option}: {path!r} holds a certificate that cannot be read ({e})") from None


def _negotiateForFactory(context: Any) -> None:
    """
    Let C{context} (the listening one, and each SNI host's) choose the
    application protocol (ALPN): the first of the wrapped factory's
    C{acceptableProtocols()} that the client offers - and when there is
    none (a factory that speaks no ALPN protocol, a client that offers only
    others), no ALPN at all: the handshake goes on and the application
    speaks its default protocol.  (Twisted's own callback answers C{b""}
    then, which pyOpenSSL 26 refuses: the handshake fails with an internal
    error alert, so over C{ssl:} every client that offers ALPN - every
    browser, curl - fails against a factory without ALPN protocols.)
    Twisted before 25 sets its callback up per connection on the context
    the connection starts with only, so a host picked by SNI answered no
    ALPN (no HTTP/2); later releases set it on every context, as this does.
    """
    from OpenSSL import SSL
    from twisted.internet.interfaces import IProtocolNegotiationFactory

    noOverlap = getattr(SSL, "NO_OVERLAPPING_PROTOCOLS", b"")

    def select(connection: Any, offered: list[bytes]) -> Any:
        tls = connection.get_app_data()
        wrapped = getattr(getattr(tls, "factory", None), "wrappedFactory", None)
        negotiation = IProtocolNegotiationFactory(wrapped, None)
        if negotiation is not None:
            for name in negotiation.acceptableProtocols():
                if name in offered:
                    return name
        return noOverlap

    context.set_alpn_select_callback(select)
    OWN_ALPN.add(context)


def _verifyClients(context: Any, mode: str | None, clientCA: str | None, caPEM: bytes | None) -> None:
    from OpenSSL import SSL, crypto

    if mode is None or caPEM is None:
        return
    flags = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if mode == "require" else 0)
    context.set_verify(flags)
    # The CA certificates into the context's store, as OpenSSL's
    # load_verify_locations would put them, from the bytes.
    store = context.get_cert_store()
    try:
        found = [crypto.load_certificate(crypto.FILETYPE_PEM, pem) for pem in _PEM_CERTIFICATE.findall(caPEM)]
        if not found:
            raise crypto.Error("no PEM certificate in it")
        for certificate in found:
            store.add_cert(certificate)
    except crypto.Error as e:
        raise ValueError(f"clientCA: {clientCA!r} holds no usable CA certificate ({e})") from None


def contextFactoryFromOptions(
    privateKey: str = "server.pem",
    certKey: str | None = None,
    sslmethod: str | None = None,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
    sniDir: str | None = None,
    clientCert: str | None = None,
    clientCA: str | None = None,
) -> Any:
    """
    The TLS configuration a C{geckotls:} string describes: what Twisted's
    C{ssl:} makes of its options, plus SNI and client certificates.

    @raise ValueError: one line naming the option and what is wrong with
        it (a missing or unreadable file, a key that does not match its
        certificate, an unknown method, C{clientCert} without C{clientCA}).
    """
    return _contextFactory(
        TLSFiles(), privateKey, certKey, sslmethod, extraCertChain, dhParameters, sniDir, clientCert, clientCA
    )


def _contextFactory(
    files: TLSFiles,
    privateKey: str = "server.pem",
    certKey: str | None = None,
    sslmethod: str | None = None,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
    sniDir: str | None = None,
    clientCert: str | None = None,
    clientCA: str | None = None,
) -> Any:
    """
    L{contextFactoryFromOptions}, its files read through C{files} (the
    disk, or the bytes a cluster primary handed over).
    """
    if clientCert is not None and clientCert not in ("request", "require"):
        raise ValueError(f"clientCert must be request or require, not {clientCert!r}")
    if (clientCert is None) != (clientCA is None):
        raise ValueError(
            "clientCert=request|require and clientCA=FILE go together: client certificates are verified against clientCA"
        )
    caPEM = files.read("clientCA", clientCA) if clientCA is not None else None
    more = {"sslmethod": sslmethod, "extraCertChain": extraCertChain, "dhParameters": dhParameters}
    hosts: dict[bytes, Any] = {}
    if sniDir is not None:
        for name in files.names("sniDir", sniDir):
            host = name[: -len(".pem")].lower()
            path = os.path.join(sniDir, name)
            options = _options(files, f"sniDir ({name})", path, None, sslmethod=sslmethod, dhParameters=dhParameters)
            # ssl:'s reading keeps the key and the first certificate; the
            # others in the file complete its chain (as txsni serves them).
            options.extraCertChain = _chainAfterFirst(f"sniDir ({name})", path, files.held[path])
            context = options.getContext()
            _verifyClients(context, clientCert, clientCA, caPEM)
            _negotiateForFactory(context)
            hosts[host.encode("idna")] = context
        if not hosts:
            raise ValueError(f"sniDir: {sniDir!r} has no <host>.pem files")
    options = _options(files, "privateKey", privateKey, certKey, **more)
    context = options.getContext()
    _verifyClients(context, clientCert, clientCA, caPEM)
    _negotiateForFactory(context)
    if hosts:

        def pick(connection: Any) -> None:
            name = connection.get_servername()
            chosen = hosts.get(name.lower()) if name else None
            if chosen is not None:
                connection.set_context(chosen)

        context.set_tlsext_servername_callback(pick)
    return options


# ----------------------------------------------------------------------
# The string parsers.

_TLS_OPTIONS = (
    "privateKey", "certKey", "sslmethod", "extraCertChain", "dhParameters", "handshakeTimeout",
    "sniDir", "clientCert", "clientCA",
)  # fmt: skip
_GECKO_ADDRESS = ("port", "loopback", "backlog", "keepWhenOffline", "interface", "ipv6", "dualstack", "workers", "grace", "lameduck", "control", "metrics")
_UNIX_ADDRESS = ("path", "mode", "backlog", "abstract", "reclaim", "uids", "group", "workers", "grace", "lameduck", "control", "metrics")


def _split(prefix: str, kwargs: dict[Any, Any], address: tuple[str, ...]) -> tuple[dict[Any, Any], dict[str, str]]:
    names = {n.lower(): n for n in address + _TLS_OPTIONS}
    addressKw: dict[Any, Any] = {}
    tls: dict[str, str] = {}
    for key, value in kwargs.items():
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        canonical = names.get(text.lower())
        if canonical is None:
            raise ValueError(
                f"unknown option {text!r} for {prefix}: endpoints; valid options are " + ", ".join(sorted(names.values()))
            )
        if canonical in _TLS_OPTIONS:
            if canonical in tls:
                raise ValueError(f"option {canonical!r} given twice")
            tls[canonical] = value
        else:
            addressKw[key] = value
    return addressKw, tls


def _handshakeTimeout(value: str | None) -> float | None:
    if value is None:
        return DEFAULT_HANDSHAKE_TIMEOUT
    try:
        seconds = float(value.strip())
    except ValueError:
        raise ValueError(f"handshakeTimeout must be a number of seconds (0: none), not {value!r}") from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"handshakeTimeout must be a number of seconds (0: none), not {value!r}")
    return seconds or None


def _build(reactor: Any, address: Any, tls: dict[str, str], description: str) -> GeckoTLSServerEndpoint:
    timeout = _handshakeTimeout(tls.pop("handshakeTimeout", None))
    # The address endpoint goes by the whole TLS description: the cluster
    # primary logs its listener by it, and a worker (which runs the same
    # program, so parses the same string) attaches to it by it.
    address.description = description
    # In a cluster worker, the files as its primary read them (maybe while
    # privileged); a primary keeps what it read for its workers.
    files = TLSFiles(handedOver(address.clusterDescription()))
    contextFactory = _contextFactory(files, **tls)
    address.handOver = HandOver(description, lambda fresh: _contextFactory(fresh, **tls), files)
    # A reload reads the disk (renewed files), in a worker too.
    return GeckoTLSServerEndpoint(reactor, address, contextFactory, timeout, lambda: contextFactoryFromOptions(**tls))


def parseGeckoTLS(reactor: Any, *args: Any, **kwargs: Any) -> GeckoTLSServerEndpoint:
    """
    Build a L{GeckoTLSServerEndpoint} over a L{GeckoServerEndpoint
    <twisted_serversock.endpoints.GeckoServerEndpoint>} from the arguments
    of a C{geckotls:} description: every C{gecko:} option (C{workers}
    included: the handshakes then run in the worker processes) and
    C{ssl:}'s.

    @raise ValueError: naming the offending option or value.
    """
    addressKw, tls = _split("geckotls", kwargs, _GECKO_ADDRESS)
    address = endpoints.parseGecko(reactor, *args, **addressKw)
    return _build(reactor, address, tls, endpoints.endpointString("geckotls", args, kwargs.items()))


def parseGeckoUNIXTLS(reactor: Any, *args: Any, **kwargs: Any) -> GeckoTLSServerEndpoint:
    """
    Build a L{GeckoTLSServerEndpoint} over a L{GeckoUNIXServerEndpoint
    <twisted_serversock.endpoints.GeckoUNIXServerEndpoint>} from the
    arguments of a C{geckounixtls:} description: every C{geckounix:}
    option (C{workers} included) and C{ssl:}'s.

    @raise ValueError: naming the offending option or value.
    """
    addressKw, tls = _split("geckounixtls", kwargs, _UNIX_ADDRESS)
    address = endpoints.parseGeckoUNIX(reactor, *args, **addressKw)
    return _build(reactor, address, tls, endpoints.endpointString("geckounixtls", args, kwargs.items()))
