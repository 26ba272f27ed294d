"""
The C{geckotls:} and C{geckounixtls:} endpoints: Twisted's C{ssl:} options
and behaviour over C{gecko:}'s addressing, a handshake timeout, SNI,
verified client certificates, and bad input (one clear line, nothing
lost).  Real sockets and real clients (Python's C{ssl}, C{openssl
s_client}).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogLevel
from zope.interface import implementer

from twisted_serversock.endpoints import GeckoServerEndpoint
from twisted_serversock.tlsendpoints import GeckoTLSServerEndpoint, contextFactoryFromOptions

from ._procs import esc
from ._tlshelp import Certs, certs, pythonClient, sClient
from .conftest import connect, eventually, failures, theReactor, timeout

__all__ = ["certs"]


class Echo(protocol.Protocol):
    """
    Echoes; closes after echoing a newline.  Keeps the client's
    certificate, if any.
    """

    peerCertificate: Any = None

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.peerCertificate = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
        self.transport.write(data)
        if data.endswith(b"\n"):
            self.transport.loseConnection()


class EchoFactory(protocol.Factory):
    protocol = Echo

    def __init__(self) -> None:
        self.built: list[Echo] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = super().buildProtocol(addr)
        self.built.append(p)
        return p


def parse(description: str, reactor: Any = None) -> Any:
    return serverFromString(reactor or MemoryReactor(), description)


@pytest.fixture
def served() -> Iterator[Any]:
    ports: list[Any] = []

    async def listen(description: str, factory: Any = None) -> tuple[Any, Any]:
        factory = factory or EchoFactory()
        port = await timeout(serverFromString(theReactor(), description).listen(factory))
        ports.append(port)
        return port, factory

    yield listen
    for port in ports:
        port.stopListening()


# ----------------------------------------------------------------------
# Parsing


@pytest_twisted.ensureDeferred
async def test_workersZeroAccepted(certs: Certs, served: Any) -> None:
    """
    C{workers=0}, the documented default (serve in this process), is
    accepted on C{geckotls:} as on C{gecko:}; the port serves TLS.
    """
    port, _ = await served(f"geckotls:0:loopback=1:workers=0:privateKey={esc(certs['server.pem'])}")
    result = await pythonClient(port.getHost().port)
    assert result.error is None and result.data == b"HELLO"


def test_parsesSSLOptions(certs: Certs) -> None:
    endpoint = parse(f"geckotls:0:loopback=1:privateKey={certs['server.pem']}")
    assert isinstance(endpoint, GeckoTLSServerEndpoint)
    endpoint = parse(f"GeckoTLS:port=0:privateKey={certs['key.pem']}:certKey={certs['cert.pem']}:sslmethod=TLS_METHOD"
                     f":extraCertChain={certs['ca.pem']}:handshakeTimeout=2.5")  # fmt: skip
    assert isinstance(endpoint, GeckoTLSServerEndpoint)
    assert isinstance(parse(f"geckounixtls:/tmp/x.sock:privateKey={certs['server.pem']}"), GeckoTLSServerEndpoint)


@pytest.mark.parametrize(
    "description",
    [
        "geckotls:0:loopback=1:privateKey={server.pem}:workers=2",
        "geckotls:port=0:WORKERS=auto:privateKey={server.pem}:handshakeTimeout=5",
        "geckounixtls:/tmp/x.sock:privateKey={server.pem}:workers=3",
    ],
)
def test_workersGoByTheWholeDescription(certs: Certs, description: str) -> None:
    """
    With C{workers=}, the address endpoint under TLS goes by the string the
    user wrote (the cluster primary logs its listener by it), and workers
    attach by that string without C{workers=}.
    """
    description = description.replace("{server.pem}", esc(certs["server.pem"]))
    endpoint = parse(description)
    address = endpoint.addressEndpoint
    assert address.description == description
    assert address.clusterDescription() == re.sub(r":workers=\w+", "", description, flags=re.IGNORECASE)


def test_pluginsFound() -> None:
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    prefixes = {p.prefix for p in getPlugins(IStreamServerEndpointStringParser)}
    assert {"geckotls", "geckounixtls"} <= prefixes


@pytest.mark.parametrize(
    "options,message",
    [
        ("privateKey=/nonexistent/k.pem", "privateKey: cannot read '/nonexistent/k.pem'"),
        ("privateKey={key.pem}:certKey=/nonexistent/c.pem", "certKey: cannot read"),
        ("privateKey={otherkey.pem}:certKey={cert.pem}", "does not match the certificate"),
        ("privateKey={ca.srl}", "is not a usable PEM certificate and key"),
        ("privateKey={server.pem}:sslmethod=NOPE", "sslmethod: unknown method 'NOPE'"),
        ("privateKey={server.pem}:extraCertChain={key.pem}", "doesn't contain any valid certificates"),
        ("privateKey={server.pem}:clientCert=require", "clientCA=FILE go together"),
        ("privateKey={server.pem}:clientCert=maybe:clientCA={ca.pem}", "clientCert must be request or require"),
        ("privateKey={server.pem}:handshakeTimeout=soon", "handshakeTimeout must be a number"),
        ("privateKey={server.pem}:workers=lots", "workers must be a whole number or 'auto', not 'lots'"),
        ("privateKey={server.pem}:nope=1", "unknown option 'nope' for geckotls: endpoints; valid options are"),
        ("privateKey={server.pem}:loopback=maybe", "loopback must be one of"),
        ("privateKey={server.pem}:sniDir=/nonexistent", "sniDir: cannot read '/nonexistent'"),
    ],
)
def test_badOptions(certs: Certs, options: str, message: str) -> None:
    """
    Every bad option is one C{ValueError} line naming it (and the file).
    """
    for name in ("key.pem", "otherkey.pem", "cert.pem", "ca.srl", "server.pem", "ca.pem"):
        options = options.replace("{" + name + "}", certs[name])
    with pytest.raises(ValueError) as e:
        parse("geckotls:0:" + options)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_expiredCertificateWarns(certs: Certs, logged: list[dict[str, Any]]) -> None:
    parse(f"geckotls:0:privateKey={certs['expired.pem']}")
    warnings = [e for e in logged if e.get("log_level") is LogLevel.warn and "expired" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert warnings[0]["when"] == "2020-01-31 00:00 UTC"


def test_handshakeTimeoutArgument(certs: Certs) -> None:
    cf = contextFactoryFromOptions(certs["server.pem"])
    with pytest.raises(ValueError):
        GeckoTLSServerEndpoint(Clock(), GeckoServerEndpoint(MemoryReactor()), cf, handshakeTimeout=-1)


# ----------------------------------------------------------------------
# Serving


@pytest.mark.parametrize("client", ["python", "s_client"])
@pytest_twisted.ensureDeferred
async def test_serves(certs: Certs, served: Any, client: str) -> None:
    port, factory = await served(f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}")
    number = port.getHost().port
    if client == "python":
        result = await pythonClient(number, b"HELLO\n")
        assert result.error is None and result.data == b"HELLO\n"
        assert result.version == "TLSv1.3"
    else:
        code, out, err = await sClient(number, "-servername", "localhost")
        assert code == 0 and "\nHELLO\n" in out, err


@pytest_twisted.ensureDeferred
async def test_servesOverUNIX(certs: Certs, served: Any) -> None:
    d = tempfile.mkdtemp(prefix="/tmp/tlsu")
    try:
        path = os.path.join(d, "s.sock")
        await served(f"geckounixtls:{path}:privateKey={esc(certs['server.pem'])}")
        result = await pythonClient(0, b"HELLO\n", host=path, family=socket.AF_UNIX)
        assert result.error is None and result.data == b"HELLO\n"
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_handshakeTimeout(certs: Certs, logged: list[dict[str, Any]]) -> None:
    """
    A client that connects and sends nothing is closed once the handshake
    timeout passes (on the endpoint's clock), with one log line; a client
    that finished its handshake is not.
    """
    clock = Clock()
    cf = contextFactoryFromOptions(certs["server.pem"])
    endpoint = GeckoTLSServerEndpoint(clock, GeckoServerEndpoint(theReactor(), 0, loopback=True), cf, handshakeTimeout=5)
    factory = EchoFactory()
    port = await timeout(endpoint.listen(factory))
    try:
        number = port.getHost().port
        silent = await connect(number)
        result = await pythonClient(number, b"HELLO\n")
        assert result.error is None and result.data == b"HELLO\n"
        await eventually(lambda: len(factory.built) == 2)
        clock.advance(4.9)
        assert not silent.closed.called
        clock.advance(0.2)
        await silent.whenClosed()
        lines = [e for e in logged if "not finished after" in e.get("log_format", "")]
        assert len(lines) == 1 and lines[0]["seconds"] == 5
        assert clock.getDelayedCalls() == []
    finally:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_garbageInsteadOfClientHello(certs: Certs, served: Any, logged: list[dict[str, Any]]) -> None:
    """
    Plain HTTP sent to a TLS port: that connection is closed with one log
    line and no traceback; the server keeps serving.
    """
    port, _ = await served(f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}")
    client = await connect(port.getHost().port)
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await client.whenClosed()
    result = await pythonClient(port.getHost().port, b"HELLO\n")
    assert result.error is None and result.data == b"HELLO\n"
    lines = [e for e in logged if "TLS handshake with" in e.get("log_format", "")]
    assert len(lines) == 1 and "failed" in lines[0]["log_format"]
    assert failures(logged) == []


@pytest_twisted.ensureDeferred
async def test_versionOutsideRange(certs: Certs, served: Any, logged: list[dict[str, Any]]) -> None:
    """
    A client offering only TLS 1.1 (below Twisted's minimum, 1.2) fails its
    handshake with a protocol version alert; the next client is served.
    """
    port, _ = await served(f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}")
    number = port.getHost().port
    code, out, err = await sClient(number, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert code != 0 and "protocol version" in err.replace("_", " ").lower(), err
    result = await pythonClient(number, b"HELLO\n")
    assert result.error is None and result.data == b"HELLO\n"
    assert failures(logged) == []


@pytest_twisted.ensureDeferred
async def test_sni(certs: Certs, served: Any) -> None:
    """
    With C{sniDir}, the client's server name picks C{<name>.pem}; an
    unknown name (or none) gets the C{privateKey} certificate.
    """
    from twisted.internet.ssl import Certificate

    d = tempfile.mkdtemp(prefix="/tmp/tlss")
    try:
        with open(os.path.join(d, "other.example.pem"), "w") as f:
            f.write(open(certs["other.pem"]).read() + open(certs["otherkey.pem"]).read())
        port, _ = await served(f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}:sniDir={esc(d)}")
        number = port.getHost().port

        def cn(result: Any) -> str:
            assert result.error is None, result.error
            subject = Certificate.load(result.peerCert).getSubject()
            return str(subject.commonName.decode())

        assert cn(await pythonClient(number, serverName="other.example")) == "other.example"
        assert cn(await pythonClient(number, serverName="OTHER.example")) == "other.example"
        assert cn(await pythonClient(number, serverName="unknown.example")) == "localhost"
        assert cn(await pythonClient(number)) == "localhost"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _chainFiles(certs: Certs, d: str) -> None:
    """
    In C{d}: C{chain.test.pem}, a certificate for C{chain.test} issued by
    an intermediate CA that C{certs}' CA issued, then the intermediate's
    certificate, then the key (what a server is given to serve the chain).
    """
    import subprocess

    from ._tlshelp import OPENSSL

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with open(os.path.join(d, "ext_ca"), "w") as f:
        f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
    with open(os.path.join(d, "ext_leaf"), "w") as f:
        f.write("subjectAltName=DNS:chain.test\n")
    run("req", *ec, "-keyout", "int.key", "-out", "int.csr", "-subj", "/CN=Test Intermediate")
    run("x509", "-req", "-in", "int.csr", "-CA", certs["ca.pem"], "-CAkey", certs["cakey.pem"], "-set_serial", "7",
        "-extfile", "ext_ca", "-out", "int.pem", "-days", "30")  # fmt: skip
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=chain.test")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "int.pem", "-CAkey", "int.key", "-set_serial", "8",
        "-extfile", "ext_leaf", "-out", "leaf.pem", "-days", "30")  # fmt: skip
    os.mkdir(os.path.join(d, "sni"))
    with open(os.path.join(d, "sni", "chain.test.pem"), "w") as out:
        for part in ("leaf.pem", "int.pem", "leaf.key"):
            with open(os.path.join(d, part)) as f:
                out.write(f.read())


def _verifiedClient(port: int, cafile: str) -> str:
    """
    Connect to C{chain.test} with Python's C{ssl}, verifying against
    C{cafile}; the error, or C{""}.
    """
    import ssl

    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="chain.test"):
            return ""
    except (OSError, ssl.SSLError) as e:
        return str(e)


@pytest_twisted.ensureDeferred
async def test_sniServesTheChain(certs: Certs, served: Any) -> None:
    """
    A C{<host>.pem} in C{sniDir} whose certificate an intermediate CA
    issued is served with the intermediate: clients that trust only the
    root verify it (C{openssl s_client -verify_return_error}, Python's
    C{ssl}).
    """
    from twisted.internet import threads

    d = tempfile.mkdtemp(prefix="/tmp/tlsch")
    try:
        _chainFiles(certs, d)
        port, _ = await served(f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}:sniDir={esc(os.path.join(d, 'sni'))}")
        number = port.getHost().port
        code, out, err = await sClient(
            number, "-servername", "chain.test", "-CAfile", certs["ca.pem"], "-verify_return_error", "-showcerts"
        )
        assert code == 0, err
        assert "Verify return code: 0 (ok)" in out, out
        assert "Test Intermediate" in out
        assert await timeout(threads.deferToThread(_verifiedClient, number, certs["ca.pem"])) == ""
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _alpnClient(port: int, serverName: str | None) -> str | None:
    """
    Offer C{h2} and C{http/1.1} (as C{curl --http2} does); the protocol the
    server chose.
    """
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=serverName) as t:
        return t.selected_alpn_protocol()


@pytest_twisted.ensureDeferred
async def test_sniHostsNegotiateALPN(certs: Certs, served: Any) -> None:
    """
    A host picked by SNI chooses the application protocol (ALPN) from the
    factory's C{acceptableProtocols()}, as the default certificate does (on
    every supported Twisted: before 25 it was set up on the first context
    only, and SNI hosts answered none, so no HTTP/2).
    """
    from twisted.internet import threads
    from twisted.internet.interfaces import IProtocolNegotiationFactory
    from zope.interface import implementer

    @implementer(IProtocolNegotiationFactory)
    class Negotiating(EchoFactory):
        def acceptableProtocols(self) -> list[bytes]:
            return [b"h2", b"http/1.1"]

    d = tempfile.mkdtemp(prefix="/tmp/tlsal")
    try:
        with open(os.path.join(d, "other.example.pem"), "w") as f:
            f.write(open(certs["other.pem"]).read() + open(certs["otherkey.pem"]).read())
        description = f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}:sniDir={esc(d)}"
        port, _ = await served(description, Negotiating())
        number = port.getHost().port
        for name in ("other.example", None, "unknown.example"):
            assert await timeout(threads.deferToThread(_alpnClient, number, name)) == "h2", name
        # A factory that negotiates nothing: the SNI host chooses no protocol.
        # (Not asked of the default certificate: there Twisted's own choice
        # answers, which pyOpenSSL 26 turns into a handshake failure.)
        plain, _ = await served(description)
        assert await timeout(threads.deferToThread(_alpnClient, plain.getHost().port, "other.example")) is None
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", ["require", "request"])
@pytest_twisted.ensureDeferred
async def test_clientCertificates(certs: Certs, served: Any, mode: str) -> None:
    """
    C{clientCert=require}: a certificate signed by C{clientCA} is served,
    a self-signed one or none fails.  C{request}: none is served too.
    """
    port, factory = await served(
        f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}:clientCert={mode}:clientCA={esc(certs['ca.pem'])}"
    )
    number = port.getHost().port
    signed = await pythonClient(number, cert=(certs["client.pem"], certs["clientkey.pem"]))
    assert signed.error is None and signed.data == b"HELLO"
    assert factory.built[-1].peerCertificate.get_subject().commonName == "client"
    selfSigned = await pythonClient(number, cert=(certs["other.pem"], certs["otherkey.pem"]))
    assert selfSigned.error is not None and "unknown ca" in selfSigned.error.lower()
    none = await pythonClient(number)
    if mode == "require":
        assert none.error is not None and "certificate required" in none.error.lower()
    else:
        assert none.error is None and none.data == b"HELLO"


@pytest_twisted.ensureDeferred
async def test_haproxyReordersFactories(certs: Certs, served: Any) -> None:
    """
    Behind C{haproxy:}, the PROXY header parser comes before TLS (HAProxy
    sends the header before the client's ClientHello), and the
    application's factory inside TLS.
    """
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    port, app = await served(f"haproxy:geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}")
    assert isinstance(port.factory, HAProxyWrappingFactory)
    assert isinstance(port.factory.wrappedFactory, TLSMemoryBIOFactory)
    assert port.factory.wrappedFactory.wrappedFactory is app


@pytest_twisted.ensureDeferred
async def test_proxyHeaderBeforeClientHello(certs: Certs, served: Any) -> None:
    """
    C{haproxy:geckotls:}: a PROXY header, then the TLS handshake on the
    same connection; the application sees the address from the header.
    """
    port, factory = await served(f"haproxy:geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}")
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 4567 443\r\n"
    result = await pythonClient(port.getHost().port, b"HELLO\n", preamble=header)
    assert result.error is None and result.data == b"HELLO\n"
    peer = factory.built[0].transport.getPeer()
    assert (peer.host, peer.port) == ("203.0.113.7", 4567)


@pytest.mark.parametrize(
    "address,host",
    [
        ("ipv6=1:loopback=1", "::1"),
        ("interface=\\:\\:1", "::1"),
        ("dualstack=1", "127.0.0.1"),
        ("dualstack=1", "::1"),
        ("keepWhenOffline=1:loopback=1", "127.0.0.1"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_geckoAddressing(certs: Certs, served: Any, address: str, host: str) -> None:
    """
    C{geckotls:} takes C{gecko:}'s address options.
    """
    from .conftest import hasIPv6Loopback

    if ":" in host and not hasIPv6Loopback():
        pytest.skip("no IPv6 loopback")
    port, _ = await served(f"geckotls:0:{address}:privateKey={esc(certs['server.pem'])}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    result = await pythonClient(port.getHost().port, b"HELLO\n", host=host, family=family)
    assert result.error is None and result.data == b"HELLO\n"


@pytest_twisted.ensureDeferred
async def test_stopLineSaysTLS(certs: Certs, logged: list[dict[str, Any]]) -> None:
    """
    A C{geckotls:} port logs its end as C{ssl:}'s does: "(TLS Port N
    Closed)" (docs/deviations.md).
    """
    from twisted.logger import formatEvent

    port = await timeout(serverFromString(theReactor(), f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}").listen(EchoFactory()))
    number = port.getHost().port
    await timeout(defer.maybeDeferred(port.stopListening))
    lines = [formatEvent(e) for e in logged]
    assert f"(TLS Port {number} Closed)" in lines
    assert f"(TCP Port {number} Closed)" not in lines


# ----------------------------------------------------------------------
# Renewed certificates in one process.


@pytest.fixture
def renewable(certs: Certs) -> Iterator[str]:
    """
    A directory with its own copy of C{server.pem}, to renew.
    """
    d = tempfile.mkdtemp(prefix="/tmp/tlsr")
    shutil.copy(certs["server.pem"], os.path.join(d, "server.pem"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _replace(path: str, *parts: str) -> None:
    with open(path + ".new", "w") as f:
        for part in parts:
            with open(part) as p:
                f.write(p.read())
    os.replace(path + ".new", path)


async def _tlsClient(port: int) -> Any:
    from twisted.internet.endpoints import SSL4ClientEndpoint
    from twisted.internet.ssl import CertificateOptions

    from .conftest import Client

    endpoint = SSL4ClientEndpoint(theReactor(), "127.0.0.1", port, CertificateOptions())
    return await timeout(endpoint.connect(protocol.Factory.forProtocol(Client)))


@pytest_twisted.ensureDeferred
async def test_reloadCertificates(certs: Certs, renewable: str, served: Any, logged: list[dict[str, Any]]) -> None:
    """
    What C{geckotls:}'s C{listen()} returns reloads the description's files
    on C{reloadCertificates()}: connections made afterwards get the renewed
    certificate, a connection open since before keeps its own and goes on;
    a renewal that cannot be used (a key that does not match) is logged in
    one line, and the certificate served before stays.
    """
    pem = os.path.join(renewable, "server.pem")
    port, _ = await served(f"geckotls:0:loopback=1:privateKey={esc(pem)}")
    number = port.getHost().port
    held = await _tlsClient(number)
    held.transport.write(b"A")
    await held.waitFor(1)
    before = held.transport.getPeerCertificate().digest("sha256")
    _replace(pem, certs["other.pem"], certs["otherkey.pem"])
    assert port.reloadCertificates() is True
    after = await pythonClient(number)
    with open(certs["other.pem"]) as f:
        other = ssl.PEM_cert_to_DER_cert(f.read())
    assert after.error is None and after.peerCert == other
    held.transport.write(b"B\n")
    assert await held.whenClosed() == b"AB\n"
    assert held.transport.getPeerCertificate().digest("sha256") == before
    _replace(pem, certs["cert.pem"], certs["otherkey.pem"])
    assert port.reloadCertificates() is False
    errors = [e for e in logged if "certificates not reloaded" in e.get("log_format", "")]
    assert len(errors) == 1 and "does not match" in str(errors[0]["error"])
    still = await pythonClient(number)
    assert still.error is None and still.peerCert == other


@pytest_twisted.ensureDeferred
async def test_reloadWithOptionsGiven(certs: Certs, served: Any) -> None:
    """
    An endpoint made in Python from a C{CertificateOptions} has no files to
    read again: C{reloadCertificates} takes the new configuration, and
    without one says so.
    """
    endpoint = GeckoTLSServerEndpoint(theReactor(), GeckoServerEndpoint(theReactor(), loopback=True), contextFactoryFromOptions(certs["server.pem"]))
    port = await timeout(endpoint.listen(EchoFactory()))
    try:
        with pytest.raises(ValueError, match="pass the new one"):
            port.reloadCertificates()
        assert port.reloadCertificates(contextFactoryFromOptions(certs["otherkey.pem"], certs["other.pem"])) is True
        result = await pythonClient(port.getHost().port)
        with open(certs["other.pem"]) as f:
            assert result.error is None and result.peerCert == ssl.PEM_cert_to_DER_cert(f.read())
    finally:
        await timeout(port.stopListening())


# ----------------------------------------------------------------------
# ALPN without a match.


@implementer(IProtocolNegotiationFactory)
class ALPNEchoFactory(EchoFactory):
    """
    An echo factory that speaks C{x-echo} and C{http/1.1} over ALPN.
    """

    def acceptableProtocols(self) -> list[bytes]:
        return [b"x-echo", b"http/1.1"]


@pytest.mark.parametrize("sni", [False, True])
@pytest.mark.parametrize(
    "factoryClass, offered, chosen",
    [
        (EchoFactory, ["h2", "http/1.1"], None),
        (EchoFactory, ["foo"], None),
        (ALPNEchoFactory, ["foo", "bar"], None),
        (ALPNEchoFactory, ["h2", "http/1.1"], "http/1.1"),
        (ALPNEchoFactory, ["x-echo"], "x-echo"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_alpnWithoutAMatchGoesOn(certs: Certs, served: Any, factoryClass: Any, offered: list[str], chosen: str | None, sni: bool) -> None:
    """
    A client that offers only ALPN protocols the application does not have
    (or an application that has none, as most non-HTTP ones) completes its
    handshake with no protocol negotiated, and the application speaks its
    default; a protocol both have is negotiated.  On the listening
    certificate as on an SNI host's.
    """
    hosts = tempfile.mkdtemp(prefix="/tmp/tlsa")
    try:
        shutil.copy(certs["server.pem"], os.path.join(hosts, "localhost.pem"))
        extra = f":sniDir={esc(hosts)}" if sni else ""
        port, _ = await served(f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}{extra}", factoryClass())
        result = await pythonClient(port.getHost().port, alpn=offered, serverName="localhost" if sni else None)
        assert result.error is None and result.data == b"HELLO", result
        assert result.alpn == chosen
    finally:
        shutil.rmtree(hosts, ignore_errors=True)
