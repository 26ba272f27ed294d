"""
What the TLS tests share: certificates made with the real C{openssl}
program, and the two real clients (Python's C{ssl} module, run in a thread
so the reactor keeps serving, and C{openssl s_client}, a real process).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from twisted.internet import defer, threads

from ._hardening import CollectingProcess
from .conftest import WAIT, theReactor, timeout

OPENSSL = shutil.which("openssl") or "openssl"

#: The cipher suites a Firefox client prefers, so that the server picks
#: what Gecko's test expects (128-bit AES-GCM).
GECKO_TLS12_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"
GECKO_TLS13_CIPHER = "TLS_AES_128_GCM_SHA256"


@dataclass
class Certs:
    """
    A directory of PEM files: C{server.pem} (certificate and key, CN
    localhost), C{cert.pem}/C{key.pem} (the same, apart), C{other.pem}/
    C{otherkey.pem} (another self-signed pair), C{ca.pem}/C{cakey.pem} (a
    CA) and C{client.pem}/C{clientkey.pem} (a client certificate it signed),
    C{expired.pem} (certificate and key, expired).
    """

    dir: str
    files: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def privateCertificate(self) -> Any:
        from twisted.internet.ssl import PrivateCertificate

        with open(self["server.pem"]) as f:
            return PrivateCertificate.loadPEM(f.read())


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _expired(d: str) -> None:
    # (OpenSSL 3.0's req cannot back-date a certificate.)
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    with open(os.path.join(d, "expiredcert.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(d, "expiredkey.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def makeCerts() -> Certs:
    d = tempfile.mkdtemp(prefix="/tmp/tlsc")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    rsa = ["-newkey", "rsa:2048"]
    _openssl("req", "-x509", *rsa, "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "30",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)  # fmt: skip
    _openssl("req", "-x509", *ec, "-nodes", "-keyout", "otherkey.pem", "-out", "other.pem", "-days", "30",
             "-subj", "/CN=other.example", cwd=d)  # fmt: skip
    _openssl("req", "-x509", *ec, "-nodes", "-keyout", "cakey.pem", "-out", "ca.pem", "-days", "30",
             "-subj", "/CN=Test CA", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-nodes", "-keyout", "clientkey.pem", "-out", "client.csr", "-subj", "/CN=client", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "cakey.pem", "-CAcreateserial",
             "-out", "client.pem", "-days", "30", cwd=d)  # fmt: skip
    _expired(d)
    for out, parts in (("server.pem", ("cert.pem", "key.pem")), ("expired.pem", ("expiredcert.pem", "expiredkey.pem"))):
        with open(os.path.join(d, out), "w") as f:
            for part in parts:
                with open(os.path.join(d, part)) as p:
                    f.write(p.read())
    return Certs(d)


@pytest.fixture(scope="session")
def certs() -> Iterator[Certs]:
    made = makeCerts()
    yield made
    shutil.rmtree(made.dir, ignore_errors=True)


# ----------------------------------------------------------------------
# Python's ssl, in a thread.


@dataclass
class ClientResult:
    """
    What a client saw: the bytes it read, its view of the session, or the
    error that ended it.
    """

    data: bytes = b""
    version: str | None = None
    cipher: tuple[str, str, int] | None = None
    error: str | None = None
    peerCert: bytes | None = None
    alpn: str | None = None


def _pythonClient(
    port: int, send: bytes, version: str | None, cert: tuple[str, str] | None, ciphers: str | None,
    host: str = "127.0.0.1", serverName: str | None = None, family: int = socket.AF_INET, preamble: bytes = b"",
    alpn: list[str] | None = None,
) -> ClientResult:  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif version == "1.3":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if ciphers:
        ctx.set_ciphers(ciphers)
    if cert:
        ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    result = ClientResult()
    try:
        with socket.socket(family) as raw:
            raw.settimeout(WAIT)
            raw.connect(host if family == socket.AF_UNIX else (host, port))
            raw.sendall(preamble)  # (a PROXY header, as HAProxy sends it before TLS)
            with ctx.wrap_socket(raw, server_hostname=serverName) as t:
                result.version, result.cipher = t.version(), t.cipher()
                result.peerCert = t.getpeercert(binary_form=True)
                result.alpn = t.selected_alpn_protocol()
                t.sendall(send)
                while len(result.data) < len(send):
                    chunk = t.recv(4096)
                    if not chunk:
                        break
                    result.data += chunk
    except (OSError, ssl.SSLError) as e:
        result.error = str(e)
    return result


def pythonClient(port: int, send: bytes = b"HELLO", version: str | None = None, cert: tuple[str, str] | None = None,
                 ciphers: str | None = None, **kw: Any) -> defer.Deferred[ClientResult]:  # fmt: skip
    """
    Connect with Python's C{ssl} (in a thread), send C{send}, read as many
    bytes back.
    """
    return timeout(threads.deferToThread(_pythonClient, port, send, version, cert, ciphers, **kw), WAIT + 5)


# ----------------------------------------------------------------------
# openssl s_client, a real process.


class _Collect(CollectingProcess):
    """
    A L{CollectingProcess} that is sent C{send} on its standard input, which
    is then closed.
    """

    def __init__(self, send: bytes) -> None:
        super().__init__()
        self.send = send

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.send)
        self.transport.closeStdin()


async def sClient(port: int, *args: str, send: bytes = b"HELLO\n") -> tuple[int, str, str]:
    """
    Run C{openssl s_client -connect 127.0.0.1:port ARGS} with C{send} on
    its standard input (it waits for the server to close: C{-ign_eof}).

    @return: its exit code, standard output and standard error.
    """
    proc = _Collect(send)
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args]
    theReactor().spawnProcess(proc, OPENSSL, argv, env={"PATH": os.environ.get("PATH", "")})
    code = await timeout(proc.ended, WAIT + 5)
    return code, proc.out.decode("utf-8", "replace"), proc.err.decode("utf-8", "replace")
