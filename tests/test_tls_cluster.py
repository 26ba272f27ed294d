"""
C{geckotls:...:workers=N}: cluster mode on the TLS endpoints, in real
C{twistd web} processes.  The primary accepts and hands each connection
over before a byte of TLS is read; the worker that adopts it runs the
handshake (the TLS factory wraps the application's, and the workers run
the program again, with the key files' bytes the primary read - under
C{twistd -u/-g}, while it still could: keys only root may read).  Every TLS
option works there: ALPN (C{curl --http2}), SNI, client certificates, the
handshake timeout, C{haproxy:geckotls:} (the PROXY header before the
ClientHello), C{workers=auto}; SIGHUP starts workers with the renewed
certificate files the primary read again, with no failed handshake
meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, threads
from twisted.internet.utils import getProcessOutputAndValue

from ._procs import PRIMARY_LISTENING, READY, TWISTD, Proc, alive, childrenOf, esc, serving, spawn, twistdAsNobody
from ._tlshelp import Certs, certs, makeCerts, sClient
from .conftest import (
    WAIT,
    connect,
    eventually,
    timeout,
)

__all__ = ["certs"]

CURL = shutil.which("curl")


PID_RPY = """\
import os
from twisted.web.resource import Resource


class Pid(Resource):
    isLeaf = True

    def render_GET(self, request):
        host = getattr(request.getClientAddress(), "host", "unix")
        peer = getattr(request.transport, "getPeerCertificate", lambda: None)()
        who = peer.get_subject().CN if peer is not None else "-"
        return ("%d %s %s" % (os.getpid(), host, who)).encode()


resource = Pid()
"""


@pytest.fixture
def site() -> Iterator[str]:
    """
    A short world-readable directory with C{pid.rpy}: it answers its
    process id, the client's address and its certificate's CN (or C{-}).
    """
    d = tempfile.mkdtemp(prefix="/tmp/tlscl")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "pid.rpy"), "w") as f:
        f.write(PID_RPY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def twistdWeb(site: str, listen: str, *options: str) -> tuple[Proc, int]:
    """
    C{twistd -n web --listen LISTEN} serving C{site}, once both its
    workers serve; the process and the primary's port.
    """
    proc = spawn([*TWISTD, "-n", "--pidfile=", "--logfile=-", *options, "web", "--listen", listen, "--path", site], site)
    match = await proc.waitFor(PRIMARY_LISTENING)
    # The primary names the listener by the string the user wrote.
    assert match.group("description") == listen.removeprefix("haproxy:"), proc.output
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    return proc, int(match.group("port"))


async def stoppedCleanly(proc: Proc, tracebacks: bool = False) -> None:
    """
    SIGTERM the primary: it exits 0, no worker outlives it, nothing raised
    (unless C{tracebacks}).
    """
    workers = childrenOf(proc.transport.pid)
    proc.transport.signalProcess(signal.SIGTERM)
    code = await timeout(proc.ended, 40)
    assert code == 0 and proc.signal is None, proc.output
    await eventually(lambda: not any(alive(p) for p in workers), 10)
    assert tracebacks or "Traceback" not in proc.output, proc.output


@dataclass
class Reply:
    """
    What an HTTPS GET saw: the body, the server's certificate (DER), the
    TLS version, or the error that ended it.
    """

    body: bytes = b""
    certificate: bytes = b""
    version: str | None = None
    error: str | None = None

    @property
    def pid(self) -> int:
        return int(self.body.split()[0])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.certificate).hexdigest()


def _get(address: Any, path: str, family: int, preamble: bytes, cert: tuple[str, str] | None, serverName: str | None, version: str | None) -> Reply:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(*cert)
    reply = Reply()
    try:
        with socket.socket(family) as raw:
            raw.settimeout(WAIT)
            raw.connect(address)
            raw.sendall(preamble)
            with ctx.wrap_socket(raw, server_hostname=serverName) as t:
                reply.certificate = t.getpeercert(binary_form=True) or b""
                reply.version = t.version()
                t.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
                data = b""
                while chunk := t.recv(65536):
                    data += chunk
        head, _, reply.body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200"):
            reply.error = head.decode("latin-1")
    except (OSError, ssl.SSLError) as e:
        reply.error = f"{type(e).__name__}: {e}"
    return reply


def get(port: int | str, path: str = "/pid.rpy", preamble: bytes = b"", cert: tuple[str, str] | None = None,
        serverName: str | None = None, version: str | None = None) -> defer.Deferred[Reply]:  # fmt: skip
    """
    An HTTPS/1.0 GET with Python's C{ssl} (in a thread) to 127.0.0.1:C{port}
    (or the UNIX socket at C{port}, a path), after C{preamble} in the clear.
    """
    family, address = (socket.AF_UNIX, port) if isinstance(port, str) else (socket.AF_INET, ("127.0.0.1", port))
    return timeout(threads.deferToThread(_get, address, path, family, preamble, cert, serverName, version), WAIT + 5)


async def pidsAnswering(port: int | str, wanted: int = 2, **kw: Any) -> set[int]:
    """
    GET until C{wanted} different pids answered (a worker may still be
    starting); the pids.
    """
    pids: set[int] = set()
    for _ in range(60):
        reply = await get(port, **kw)
        assert reply.error is None, reply
        pids.add(reply.pid)
        if len(pids) >= wanted:
            break
    return pids


async def curlHTTP2(port: int) -> tuple[int, str, str]:
    """
    C{curl --http2 https://127.0.0.1:PORT/pid.rpy}: exit code, body, HTTP
    version.
    """
    out, _err, code = await timeout(
        getProcessOutputAndValue(
            CURL or "curl", ["-sk", "--http2", "--max-time", "10", "-w", "\n%{http_version}", f"https://127.0.0.1:{port}/pid.rpy"],
            env=dict(os.environ),
        ),
        20,
    )  # fmt: skip
    body, _, version = out.decode().rpartition("\n")
    return code, body, version


# ----------------------------------------------------------------------
# Serving from the workers.


@pytest.mark.skipif(CURL is None, reason="curl is not installed (.ci/run installs it)")
@pytest_twisted.ensureDeferred
async def test_twistdWebHandshakesInTheWorkers(certs: Certs, site: str) -> None:
    """
    C{twistd web --listen geckotls:...:workers=2}: both workers answer
    (neither is the primary; both are its children), C{curl --http2}
    negotiates h2 with each (ALPN from the site's factory, in the worker),
    C{openssl s_client} completes its handshake, and C{twistd} stops
    cleanly.
    """
    listen = f"geckotls:0:loopback=1:privateKey={esc(certs['key.pem'])}:certKey={esc(certs['cert.pem'])}:workers=2"
    proc, port = await twistdWeb(site, listen)
    primary = proc.transport.pid
    h2: set[int] = set()
    for _ in range(60):
        code, body, version = await curlHTTP2(port)
        assert (code, version) == (0, "2"), (code, body, version, proc.output)
        h2.add(int(body.split()[0]))
        if len(h2) == 2:
            break
    assert len(h2) == 2 and primary not in h2 and h2 == childrenOf(primary), (h2, proc.output)
    code, out, err = await sClient(port, "-servername", "localhost", send=b"GET /pid.rpy HTTP/1.0\r\n\r\n")
    assert code == 0 and "HTTP/1.0 200" in out and "Protocol  : TLSv1.3" in out + err, out + err
    assert not re.search(r"TLS handshake .* failed", proc.output), proc.output
    await stoppedCleanly(proc)


@pytest_twisted.ensureDeferred
async def test_everyTLSOptionInTheWorkers(certs: Certs, site: str) -> None:
    """
    SNI (C{sniDir}), a required client certificate (C{clientCert},
    C{clientCA}) and C{handshakeTimeout} behave in the workers as in one
    process, with C{workers=auto}: a client naming C{other.example} gets
    that host's certificate, a client without a certificate fails its
    handshake, a client that says nothing is closed after the timeout, and
    each refusal is one line in the worker's log.
    """
    hosts = tempfile.mkdtemp(prefix="/tmp/tlssni")
    try:
        with open(os.path.join(hosts, "other.example.pem"), "w") as f:
            for name in ("other.pem", "otherkey.pem"):
                with open(certs[name]) as part:
                    f.write(part.read())
        listen = (
            f"geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}:sniDir={esc(hosts)}:clientCert=require"
            f":clientCA={esc(certs['ca.pem'])}:handshakeTimeout=1:workers=auto"
        )
        proc, port = await twistdWeb(site, listen)
        client = (certs["client.pem"], certs["clientkey.pem"])
        pids = await pidsAnswering(port, len(os.sched_getaffinity(0)), cert=client)
        assert pids <= childrenOf(proc.transport.pid), proc.output
        with open(certs["other.pem"]) as f:
            other = ssl.PEM_cert_to_DER_cert(f.read())
        reply = await get(port, cert=client, serverName="other.example")
        assert reply.error is None and reply.certificate == other and reply.body.endswith(b" client"), reply
        refused = await get(port)
        assert refused.error is not None, refused
        silent = await connect(port)
        await timeout(silent.closed, 20)
        await proc.waitFor(r"\[worker \d+ pid \d+\] TLS handshake with 127\.0\.0\.1:\d+ not finished after 1\.0s")
        await proc.waitFor(r"\[worker \d+ pid \d+\] TLS handshake with 127\.0\.0\.1:\d+ failed")
        await stoppedCleanly(proc)
    finally:
        shutil.rmtree(hosts, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_haproxyThenTLSInTheWorkers(certs: Certs, site: str) -> None:
    """
    C{haproxy:geckotls:...:workers=2}: the primary hands the connection
    over before the PROXY header; the worker reads the header, then runs
    the handshake, and the application sees the proxied address.
    """
    listen = f"haproxy:geckotls:0:loopback=1:privateKey={esc(certs['server.pem'])}:workers=2"
    proc, port = await twistdWeb(site, listen)
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n"
    pids = await pidsAnswering(port, preamble=header)
    assert len(pids) == 2 and pids == childrenOf(proc.transport.pid), proc.output
    reply = await get(port, preamble=header)
    assert reply.body.split()[1] == b"192.0.2.7", reply
    await stoppedCleanly(proc)


@pytest_twisted.ensureDeferred
async def test_geckounixtlsInTheWorkers(certs: Certs, site: str) -> None:
    """
    C{geckounixtls:PATH:workers=2}: both workers answer over the UNIX
    socket, with TLS 1.2 as with 1.3.
    """
    path = os.path.join(site, "tls.sock")
    listen = f"geckounixtls:{esc(path)}:privateKey={esc(certs['server.pem'])}:workers=2"
    proc = spawn([*TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--listen", listen, "--path", site], site)
    await proc.waitFor(rf"Cluster primary \(pid \d+\): {re.escape(listen)} on ")
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    assert len(await pidsAnswering(path)) == 2
    assert len(await pidsAnswering(path, version="1.2")) == 2
    await stoppedCleanly(proc)


# ----------------------------------------------------------------------
# Renewed certificates: SIGHUP.


def _renew(d: str) -> None:
    """
    Replace C{d}/server.pem with a new certificate and key, atomically (as
    certbot's deploy hooks and a C{mv} do).
    """
    fresh = makeCerts()
    try:
        with open(fresh["server.pem"]) as f:
            text = f.read()
    finally:
        shutil.rmtree(fresh.dir, ignore_errors=True)
    with open(os.path.join(d, "server.pem.new"), "w") as f:
        f.write(text)
    os.replace(os.path.join(d, "server.pem.new"), os.path.join(d, "server.pem"))


@pytest_twisted.ensureDeferred
async def test_sighupServesRenewedCertificates(site: str) -> None:
    """
    The certificate file is renewed, then the primary gets SIGHUP: new
    workers run the program again and so read the new file.  Handshakes
    made all along by a stream of clients never fail; once the reload is
    done every new connection gets the new certificate.
    """
    own = makeCerts()
    try:
        listen = f"geckotls:0:loopback=1:privateKey={esc(own['server.pem'])}:workers=2"
        proc, port = await twistdWeb(site, listen)
        old = await pidsAnswering(port)
        before = (await get(port)).fingerprint
        replies: list[Reply] = []
        running = [True]

        async def stream() -> None:
            while running[0]:
                replies.append(await get(port))

        streams = [defer.ensureDeferred(stream()) for _ in range(2)]
        try:
            await eventually(lambda: len(replies) >= 4, 30, 0.05)
            _renew(own.dir)
            proc.transport.signalProcess(signal.SIGHUP)
            await proc.waitFor(r"Reload done")
            for pid in old:
                await proc.waitFor(rf"[Ww]orker \d \(pid {pid}\) exited \(status 0\)")
            count = len(replies)
            await eventually(lambda: len(replies) >= count + 4, 30, 0.05)
        finally:
            running[0] = False
            await timeout(defer.gatherResults(streams, consumeErrors=True), 60)
        assert [r for r in replies if r.error is not None] == []
        assert {r.fingerprint for r in replies} <= {before, replies[-1].fingerprint}
        after = [await get(port) for _ in range(6)]
        assert {r.fingerprint for r in after} == {replies[-1].fingerprint} != {before}, after
        assert not {r.pid for r in after} & old
        await stoppedCleanly(proc)
    finally:
        shutil.rmtree(own.dir, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_sighupWithABrokenRenewalKeepsServing(site: str) -> None:
    """
    A renewal that cannot be used (the file is not a key and certificate),
    then SIGHUP: the primary, which reads the files again for its new
    workers, says why in one line, and the new workers serve the files as
    read before - the old certificate, no failed handshake, no traceback.
    """
    own = makeCerts()
    try:
        listen = f"geckotls:0:loopback=1:privateKey={esc(own['server.pem'])}:workers=2"
        proc, port = await twistdWeb(site, listen)
        old = await pidsAnswering(port)
        before = (await get(port)).fingerprint
        with open(own["server.pem"], "w") as f:
            f.write("not a certificate\n")
        proc.transport.signalProcess(signal.SIGHUP)
        await proc.waitFor(
            r"new workers get the TLS files read before \(privateKey: the private key in .* is not a usable PEM certificate and key"
        )
        await proc.waitFor(r"Reload done")
        for pid in old:
            await proc.waitFor(rf"[Ww]orker \d \(pid {pid}\) exited \(status 0\)")
        after = [await get(port) for _ in range(6)]
        assert all(r.error is None and r.fingerprint == before and r.pid not in old for r in after), after
        await stoppedCleanly(proc)
    finally:
        shutil.rmtree(own.dir, ignore_errors=True)


# ----------------------------------------------------------------------
# A key only root may read, workers that run as another user.


def _rootOnlyKey(certs: Certs, site: str) -> tuple[str, str]:
    """A key only root may read (0600, owned by root) and its certificate (0644), in C{site}."""
    key = os.path.join(site, "key.pem")
    shutil.copy(certs["key.pem"], key)
    os.chmod(key, 0o600)
    cert = os.path.join(site, "cert.pem")
    shutil.copy(certs["cert.pem"], cert)
    os.chmod(cert, 0o644)
    return key, cert


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def _keyBody(path: str) -> bytes:
    """The base64 body of the PEM key in C{path}."""
    with open(path, "rb") as f:
        return f.read().split(b"-----")[2].strip()


def _neverOutside(pid: int, secret: bytes) -> None:
    """The bytes C{secret} are neither in process C{pid}'s command line nor in its environment."""
    for name in ("cmdline", "environ"):
        with open(f"/proc/{pid}/{name}", "rb") as f:
            assert secret not in f.read(), name


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest_twisted.ensureDeferred
async def test_keyOnlyRootMayReadIsHandedToTheWorkers(certs: Certs, site: str) -> None:
    """
    C{twistd -u/-g} with a key only root may read: the primary reads it
    while parsing (as root, before dropping), and hands its bytes to each
    worker in its start-up message, so the workers - running as nobody,
    unable to read the file - make the handshakes.  The key is in no
    worker's command line or environment.
    """
    key, cert = _rootOnlyKey(certs, site)
    listen = f"geckotls:0:loopback=1:privateKey={esc(key)}:certKey={esc(cert)}:workers=2"
    proc = twistdAsNobody(site, ["web", "--listen", listen, "--path", site])
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    pids = await pidsAnswering(port)
    assert len(pids) == 2 and {_uid(p) for p in pids} == {65534}, proc.output
    body = _keyBody(key)
    for pid in pids | {proc.transport.pid}:
        _neverOutside(pid, body[:40])
    assert "Permission denied" not in proc.output, proc.output
    await stoppedCleanly(proc)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest_twisted.ensureDeferred
async def test_sighupCannotReadARootOnlyKeyAgain(certs: Certs, site: str) -> None:
    """
    SIGHUP to a primary that dropped its privileges: it cannot read the
    root-only key again, says so in one line (and what to do: restart),
    and the new workers serve the bytes it read at start-up - no failed
    handshake.
    """
    key, cert = _rootOnlyKey(certs, site)
    listen = f"geckotls:0:loopback=1:privateKey={esc(key)}:certKey={esc(cert)}:workers=2"
    proc = twistdAsNobody(site, ["web", "--listen", listen, "--path", site])
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    old = await pidsAnswering(port)
    before = (await get(port)).fingerprint
    proc.transport.signalProcess(signal.SIGHUP)
    line = await proc.waitFor(r".*new workers get the TLS files read before \(privateKey: cannot read .*Permission denied\).*restart.*")
    assert "Traceback" not in line.group(0)
    await proc.waitFor(r"Reload done")
    for pid in old:
        await proc.waitFor(rf"[Ww]orker \d \(pid {pid}\) exited \(status 0\)")
    after = [await get(port) for _ in range(6)]
    assert all(r.error is None and r.fingerprint == before and r.pid not in old for r in after), after
    assert len(re.findall(r"Permission denied", proc.output)) == 1, proc.output
    await stoppedCleanly(proc)


@pytest.mark.skipif(os.getuid() != 0, reason="running as another user needs root")
@pytest_twisted.ensureDeferred
async def test_keyThePrimaryCannotRead(certs: Certs, site: str) -> None:
    """
    The whole C{twistd} runs as a user that may not read the key: the
    error names the option, the file and why in one line, and it exits
    non-zero without starting a worker.  (C{twistd web} prints the
    traceback of any C{--listen} its C{makeService} cannot parse, C{ssl:}'s
    as well; the error is its last line.)
    """
    key, cert = _rootOnlyKey(certs, site)
    proc = twistdAsNobody(
        site, ["web", "--listen", f"geckotls:0:loopback=1:privateKey={esc(key)}:certKey={esc(cert)}:workers=2", "--path", site], privileged=False
    )
    code = await timeout(proc.ended, 90)
    assert code != 0, proc.output
    last = proc.output.strip().splitlines()[-1]
    assert re.fullmatch(rf"[\w.]+: privateKey: cannot read '{re.escape(key)}': Permission denied", last), proc.output
    assert "Started worker" not in proc.output, proc.output


# ----------------------------------------------------------------------
# twistd serversock --listen geckotls:


PID_FACTORY = PID_RPY + """

from twisted.web.server import Site

factory = Site(resource)
"""


def _serversock(site: str, listen: str) -> list[str]:
    with open(os.path.join(site, "pidweb.py"), "w") as f:
        f.write(PID_FACTORY)
    return ["serversock", "--listen", listen, "--workers", "2", "--factory", "pidweb.factory"]


@pytest_twisted.ensureDeferred
async def test_serversockRunsTLSInTheWorkers(certs: Certs, site: str) -> None:
    """
    C{twistd serversock --listen geckotls:...}: the parent listens
    without TLS and hands each connection over raw; each worker serves the
    factory behind that listener's TLS.  Both workers answer HTTPS.
    """
    listen = f"geckotls:0:loopback=1:privateKey={esc(certs['key.pem'])}:certKey={esc(certs['cert.pem'])}"
    proc = spawn([*TWISTD, "-n", "--pidfile=", "--logfile=-", *_serversock(site, listen)], site)
    port = await serving(proc, 2)
    pids = await pidsAnswering(port)
    assert len(pids) == 2 and pids <= childrenOf(proc.transport.pid), proc.output
    assert "serving them in the parent" not in proc.output, proc.output
    await stoppedCleanly(proc)


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
@pytest_twisted.ensureDeferred
async def test_serversockHandsARootOnlyKeyToItsWorkers(certs: Certs, site: str) -> None:
    """
    The same under C{twistd -u/-g} with a key only root may read: the
    parent reads it while privileged and hands its bytes to the workers,
    which run as nobody and make the handshakes.
    """
    key, cert = _rootOnlyKey(certs, site)
    listen = f"geckotls:0:loopback=1:privateKey={esc(key)}:certKey={esc(cert)}"
    proc = twistdAsNobody(site, _serversock(site, listen))
    port = await serving(proc, 2)
    pids = await pidsAnswering(port)
    assert len(pids) == 2 and {_uid(p) for p in pids} == {65534}, proc.output
    for pid in pids | {proc.transport.pid}:
        _neverOutside(pid, _keyBody(key)[:40])
    await stoppedCleanly(proc)
