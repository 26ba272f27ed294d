"""
C{geckotls:} under real programs, started as users start them: the
installed C{twistd} serving a directory, C{curl --http2} as the client
(HTTP/2 through ALPN, exactly when Twisted's own C{ssl:} gets it), and a
real HAProxy in TCP mode passing TLS through with C{send-proxy-v2} (the
PROXY header arrives before the ClientHello).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

import pytest
import pytest_twisted
from twisted.internet import utils

from ._procs import STARTING, TWISTD, Proc, freePort, spawn
from ._tlshelp import Certs, certs
from .conftest import timeout

__all__ = ["certs"]

CURL = shutil.which("curl")

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed (.ci/run installs it)")


def _twistedALPNBroken() -> bool:
    """
    Whether Twisted's own TLS cannot serve an ALPN-capable site (C{twistd
    web} with C{h2} installed) here: Twisted before 25 sets the ALPN
    callback on a context that already made a connection, which pyOpenSSL
    25 and later refuse, so C{ssl:} and C{geckotls:} alike fail each
    connection.
    """
    from OpenSSL import SSL
    from twisted.protocols.tls import TLSMemoryBIOFactory

    if not hasattr(TLSMemoryBIOFactory, "_applyProtocolNegotiation"):
        return False
    ctx = SSL.Context(SSL.TLS_METHOD)
    SSL.Connection(ctx, None)
    try:
        ctx.set_alpn_select_callback(lambda conn, protos: b"")
    except ValueError:
        return True
    return False


needsALPN = pytest.mark.skipif(
    _twistedALPNBroken(), reason="this Twisted's own ssl: cannot do ALPN with this pyOpenSSL (Twisted < 25, pyOpenSSL >= 25)"
)


@pytest.fixture
def site() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="/tmp/tlsw")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "hello.txt"), "wb") as f:
        f.write(b"hello over tls\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def curl(url: str, *args: str) -> tuple[int, str, str]:
    """
    Run C{curl -sk ARGS URL}: its exit code, the body and the HTTP version
    it used.
    """
    out, err, code = await timeout(
        utils.getProcessOutputAndValue(
            CURL or "curl", ["-sk", "--max-time", "10", "-w", "\n%{http_version}", *args, url], env=dict(os.environ)
        ),
        20,
    )
    text = out.decode("utf-8", "replace")
    body, _, version = text.rpartition("\n")
    return code, body.strip(), version


async def twistdWeb(site: str, description: str) -> tuple[Proc, int]:
    proc = spawn([*TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--listen", description, "--path", site], site)
    port = int((await proc.waitFor(STARTING)).group(1))
    return proc, port


@needsALPN
@pytest.mark.parametrize("prefix", ["ssl", "geckotls"])
@pytest_twisted.ensureDeferred
async def test_twistdWebHTTP2(certs: Certs, site: str, prefix: str) -> None:
    """
    C{twistd web} on C{ssl:} and on C{geckotls:} with the same options:
    C{curl --http2} negotiates C{h2} with both (Twisted's ALPN, from the
    site's factory), and HTTP/1.1 without it.
    """
    key = certs["server.pem"].replace(":", "\\:")
    where = "interface=127.0.0.1" if prefix == "ssl" else "loopback=1"
    proc, port = await twistdWeb(site, f"{prefix}:0:{where}:privateKey={key}")
    try:
        code, body, version = await curl(f"https://127.0.0.1:{port}/hello.txt", "--http2")
        assert (code, body, version) == (0, "hello over tls", "2"), proc.output
        code, body, version = await curl(f"https://127.0.0.1:{port}/hello.txt", "--http1.1")
        assert (code, body, version) == (0, "hello over tls", "1.1")
        assert "Site (TLS) starting on" in proc.output
    finally:
        clean = await proc.stop()
    assert clean, proc.output
    assert "Traceback" not in proc.output


HAPROXY_TCP = """
global
    maxconn 100

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend tls
    bind 127.0.0.1:{front}
    default_backend app

backend app
    server app 127.0.0.1:{back} send-proxy-v2
"""


@needsALPN
@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)")
@pytest.mark.parametrize("prefix", ["ssl", "geckotls", "geckotls-workers"])
@pytest_twisted.ensureDeferred
async def test_behindHAProxy(certs: Certs, site: str, prefix: str) -> None:
    """
    HAProxy in TCP mode passes TLS through and sends a PROXY v2 header
    first: C{haproxy:geckotls:} reads the header, then does the handshake,
    and curl gets the file over HTTP/2 - also with C{workers=2}, where
    both happen in the worker.  (Twisted's C{haproxy:ssl:} puts TLS
    outside the PROXY parser: its handshake reads the header and fails, so
    curl gets nothing; this test pins that difference.)
    """
    key = certs["server.pem"].replace(":", "\\:")
    where = "interface=127.0.0.1" if prefix == "ssl" else "loopback=1"
    workers = ":workers=2" if prefix.endswith("-workers") else ""
    prefix = prefix.removesuffix("-workers")
    proc, back = await twistdWeb(site, f"haproxy:{prefix}:0:{where}:privateKey={key}{workers}")
    front = freePort()
    with open(os.path.join(site, "haproxy.cfg"), "w") as f:
        f.write(HAPROXY_TCP.format(front=front, back=back))
    haproxy = Proc()
    from .conftest import theReactor

    theReactor().spawnProcess(
        haproxy, shutil.which("haproxy") or "haproxy", ["haproxy", "-db", "-f", "haproxy.cfg"], env=dict(os.environ), path=site
    )
    try:
        code, body, version = await curl(f"https://127.0.0.1:{front}/hello.txt", "--http2", "--retry", "5", "--retry-connrefused")
        if prefix == "geckotls":
            assert (code, body, version) == (0, "hello over tls", "2"), proc.output + haproxy.output
        else:
            assert code != 0 and body == ""
    finally:
        haproxy.transport.signalProcess("TERM")
        await timeout(haproxy.ended, 10)
        clean = await proc.stop()
    assert clean, proc.output
    if prefix == "geckotls":
        assert "Traceback" not in proc.output


@needsALPN
@pytest_twisted.ensureDeferred
async def test_twistdWebClientOfferingOnlyUnknownALPN(certs: Certs, site: str) -> None:
    """
    C{twistd web} on C{geckotls:}, a client (C{openssl s_client -alpn})
    that offers only protocols the site does not speak: the handshake
    completes without ALPN and the site answers in HTTP/1.x, its default;
    a client offering C{h2} (curl) still gets it.
    """
    from ._tlshelp import sClient

    key = certs["server.pem"].replace(":", "\\:")
    proc, port = await twistdWeb(site, f"geckotls:0:loopback=1:privateKey={key}")
    try:
        code, out, err = await sClient(port, "-alpn", "foo,bar", send=b"GET /hello.txt HTTP/1.0\r\n\r\n")
        assert code == 0 and "No ALPN negotiated" in out and "HTTP/1.0 200" in out and "hello over tls" in out, out + err
        code, body, version = await curl(f"https://127.0.0.1:{port}/hello.txt", "--http2")
        assert (code, body, version) == (0, "hello over tls", "2")
    finally:
        clean = await proc.stop()
    assert clean, proc.output
    assert "failed" not in proc.output
