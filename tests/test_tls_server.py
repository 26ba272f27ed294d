"""
L{TLSServerSocket} (Gecko's C{nsITLSServerSocket}), ported from Gecko's
C{netwerk/test/unit/test_tls_server.js},
C{test_tls_server_multiple_clients.js} and the version-range case of
C{test_be_conservative.js}: real sockets, and real clients (Python's
C{ssl} and C{openssl s_client}).

As in Gecko's test, one certificate serves as the server's and the
client's; the server echoes what it reads once its security observer has
been told the handshake finished, and C{onHandshakeDone} reports the
version, the cipher (the IANA name), 128-bit key and MAC lengths for a
client that prefers AES-128-GCM, as Firefox does.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from zope.interface.verify import verifyObject

from twisted_serversock import NSError, TLSServerSocket
from twisted_serversock.interfaces import (
    ITLSClientStatus,
    ITLSServerConnectionInfo,
    ITLSServerSocket,
    nsITLSServerSocket,
)
from twisted_serversock.results import NS_BASE_STREAM_WOULD_BLOCK
from twisted_serversock.streams import bufferLimit

from ._tlshelp import GECKO_TLS12_CIPHER, GECKO_TLS13_CIPHER, Certs, certs, pythonClient, sClient
from .conftest import code, eventually, timeout

__all__ = ["certs"]

pytestmark = pytest.mark.usefixtures("noUnhandledErrors")

VERSIONS = {"1.2": 0x303, "1.3": 0x304}
EXPECTED_CIPHER = {"1.2": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "1.3": "TLS_AES_128_GCM_SHA256"}


class EchoAfterHandshake:
    """
    The listener and security observer of Gecko's test: in
    C{onSocketAccepted} it sets itself as the observer and opens both
    streams; once told the handshake finished, it echoes what it reads and
    closes after C{size} bytes.
    """

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self.events: list[Any] = []
        self.statuses: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.accepted: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.stopped: defer.Deferred[int] = defer.Deferred()

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        self.events.append("accepted")
        assert ITLSServerConnectionInfo.providedBy(transport.securityInfo)
        assert transport.securityInfo.serverSocket is serv
        transport.securityInfo.setSecurityObserver(self)
        conn = _Echo(transport, self.size)
        transport.securityInfo.conn = conn
        self.accepted.put(transport)

    def onHandshakeDone(self, server: Any, status: Any) -> None:
        self.events.append("handshakeDone")
        self.statuses.put(status)
        for conn in _Echo.live:
            if conn.pending and conn.transport.securityInfo.status is status:
                conn.start()

    def onStopListening(self, serv: Any, status: int) -> None:
        self.stopped.callback(status)


class _Echo:
    live: list[_Echo] = []

    def __init__(self, transport: Any, size: int) -> None:
        self.transport = transport
        self.size = size
        self.pending = True
        self.inp = transport.openInputStream()
        self.out = transport.openOutputStream()
        self.echoed = 0
        _Echo.live.append(self)

    def start(self) -> None:
        self.pending = False
        self.inp.asyncWait(self.ready)

    def ready(self, stream: Any) -> None:
        try:
            data = stream.read(4096)
        except NSError as e:
            if e.result == NS_BASE_STREAM_WOULD_BLOCK:
                stream.asyncWait(self.ready)
            else:
                _Echo.live.remove(self)
            return
        if not data:
            self.transport.close(0)
            _Echo.live.remove(self)
            return
        self.out.write(data)
        self.echoed += len(data)
        if self.echoed >= self.size:
            self.transport.close(0)
            _Echo.live.remove(self)
            return
        stream.asyncWait(self.ready)


def serve(certs: Certs, mode: int = 0, versions: tuple[int, int] | None = None, size: int = 6) -> tuple[TLSServerSocket, EchoAfterHandshake]:
    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    serv.setSessionTickets(False)
    serv.setRequestClientCertificate(mode)
    if versions is not None:
        serv.setVersionRange(*versions)
    listener = EchoAfterHandshake(size)
    serv.asyncListen(listener)
    return serv, listener


MODES = {
    "REQUIRE_ALWAYS": TLSServerSocket.REQUIRE_ALWAYS,
    "REQUEST_ALWAYS": TLSServerSocket.REQUEST_ALWAYS,
    "REQUEST_NEVER": TLSServerSocket.REQUEST_NEVER,
}


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("sendCert", [True, False], ids=["clientCert", "noClientCert"])
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("client", ["python", "s_client"])
@pytest_twisted.ensureDeferred
async def test_tlsServer(certs: Certs, client: str, mode: str, sendCert: bool, version: str) -> None:
    """
    Each client-certificate mode, with and without a client certificate,
    over TLS 1.2 and 1.3: the echo comes back and C{onHandshakeDone}
    (after C{onSocketAccepted}) reports the version, cipher, key and MAC
    lengths, and the client's certificate exactly when it sent one and the
    mode asked for it; a required certificate that is missing fails the
    handshake (the client gets the alert; no C{onHandshakeDone}).
    """
    serv, listener = serve(certs, MODES[mode])
    failing = mode == "REQUIRE_ALWAYS" and not sendCert
    try:
        if client == "python":
            cert = (certs["cert.pem"], certs["key.pem"]) if sendCert else None
            ciphers = GECKO_TLS12_CIPHER if version == "1.2" else None
            result = await pythonClient(serv.port, b"HELLO\n", version=version, cert=cert, ciphers=ciphers)
            ok, error = result.error is None, result.error or ""
            if ok:
                assert result.data == b"HELLO\n"
        else:
            args = ["-tls1_2", "-cipher", GECKO_TLS12_CIPHER] if version == "1.2" else ["-tls1_3", "-ciphersuites", GECKO_TLS13_CIPHER]
            if sendCert:
                args += ["-cert", certs["cert.pem"], "-key", certs["key.pem"]]
            exitCode, out, error = await sClient(serv.port, *args)
            ok = "\nHELLO\n" in out
            if not failing:
                assert ok and exitCode == 0, (out, error)
        if failing:
            assert not ok
            alert = "certificate required" if version == "1.3" else "handshake failure"
            assert alert in error.replace("_", " ").lower(), error
            await eventually(lambda: listener.events == ["accepted"])
            assert listener.statuses.pending == []
            return
        assert ok, error
        status = await timeout(listener.statuses.get())
        assert listener.events == ["accepted", "handshakeDone"]
        assert verifyObject(ITLSClientStatus, status)
        assert status.tlsVersionUsed == VERSIONS[version]
        if client == "s_client" or version == "1.2":
            assert status.cipherName == EXPECTED_CIPHER[version]
            assert status.keyLength == 128
        else:
            # Python's ssl cannot restrict TLS 1.3 suites: what it chose.
            assert status.cipherName == result.cipher[0] and status.keyLength == result.cipher[2]
        assert status.macLength == 128
        if sendCert and mode != "REQUEST_NEVER":
            assert status.peerCert == certs.privateCertificate()
            assert status.peerCert.dump() == certs.privateCertificate().dump()
        else:
            assert status.peerCert is None
    finally:
        serv.close()


@pytest_twisted.ensureDeferred
async def test_multipleClients(certs: Certs) -> None:
    """
    One server, two clients one after the other: both get the echo and
    each connection's observer is told once.
    """
    serv, listener = serve(certs)
    try:
        for _ in range(2):
            result = await pythonClient(serv.port, b"HELLO\n")
            assert result.error is None and result.data == b"HELLO\n"
        await eventually(lambda: listener.events.count("handshakeDone") == 2)
        assert listener.events == ["accepted", "handshakeDone"] * 2
    finally:
        serv.close()


@pytest.mark.parametrize("client", ["python", "s_client"])
@pytest_twisted.ensureDeferred
async def test_versionRange(certs: Certs, client: str) -> None:
    """
    With C{setVersionRange(1.2, 1.3)} a conservative (TLS 1.2 only) client
    is served; with C{(1.3, 1.3)} it fails with a protocol version alert
    and a normal client is served.
    """
    async def run(serv: TLSServerSocket, version: str | None) -> tuple[bool, str]:
        if client == "python":
            result = await pythonClient(serv.port, b"HELLO\n", version=version)
            return result.error is None and result.data == b"HELLO\n", result.error or ""
        exitCode, out, err = await sClient(serv.port, *(["-tls1_2"] if version == "1.2" else []))
        return exitCode == 0 and "\nHELLO\n" in out, err

    serv, listener = serve(certs, versions=(0x303, 0x304))
    try:
        assert (await run(serv, "1.2"))[0]
        assert (await timeout(listener.statuses.get())).tlsVersionUsed == 0x303
    finally:
        serv.close()
    serv, listener = serve(certs, versions=(0x304, 0x304))
    try:
        ok, error = await run(serv, "1.2")
        assert not ok and "protocol version" in error.replace("_", " ").lower(), error
        ok, error = await run(serv, None)
        assert ok, error
        assert (await timeout(listener.statuses.get())).tlsVersionUsed == 0x304
        assert listener.events == ["accepted", "accepted", "handshakeDone"]
    finally:
        serv.close()


# ----------------------------------------------------------------------
# The API's contract.


def test_interfaces(certs: Certs) -> None:
    serv = TLSServerSocket()
    try:
        serv.init(-1, True, -1)
        assert nsITLSServerSocket is ITLSServerSocket
        assert verifyObject(ITLSServerSocket, serv)
        assert (serv.REQUEST_NEVER, serv.REQUEST_FIRST_HANDSHAKE, serv.REQUEST_ALWAYS) == (0, 1, 2)
        assert (serv.REQUIRE_FIRST_HANDSHAKE, serv.REQUIRE_ALWAYS) == (3, 4)
    finally:
        serv.close()


def test_serverCertRequired() -> None:
    """
    C{asyncListen} without C{serverCert}: C{NS_ERROR_NOT_INITIALIZED}, and
    the socket can still be set up and listen.
    """
    serv = TLSServerSocket()
    try:
        serv.init(-1, True, -1)
        with pytest.raises(NSError) as e:
            serv.asyncListen(EchoAfterHandshake())
        assert code(e) == "NS_ERROR_NOT_INITIALIZED"
    finally:
        serv.close()


def test_settersWhileListening(certs: Certs) -> None:
    """
    Every setter raises C{NS_ERROR_IN_PROGRESS} once listening.
    """
    serv, _ = serve(certs)
    try:
        for call in (
            lambda: setattr(serv, "serverCert", certs.privateCertificate()),
            lambda: serv.setSessionTickets(True),
            lambda: serv.setRequestClientCertificate(0),
            lambda: serv.setVersionRange(0x303, 0x304),
        ):
            with pytest.raises(NSError) as e:
                call()
            assert code(e) == "NS_ERROR_IN_PROGRESS"
    finally:
        serv.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.setRequestClientCertificate(5),
        lambda s: s.setRequestClientCertificate("1"),
        lambda s: s.setVersionRange(0x304, 0x303),
        lambda s: s.setVersionRange(0x300, 0x304),
        lambda s: setattr(s, "serverCert", "cert.pem"),
    ],
    ids=["mode5", "modeText", "minAboveMax", "ssl3", "certPath"],
)
def test_badSettings(call: Any) -> None:
    serv = TLSServerSocket()
    with pytest.raises(NSError) as e:
        call(serv)
    assert code(e) == "NS_ERROR_INVALID_ARG"


@pytest_twisted.ensureDeferred
async def test_lateObserver(certs: Certs) -> None:
    """
    An observer set after the handshake finished is told at once (through
    the reactor, not inside C{setSecurityObserver}) if no observer of that
    connection was told yet: at most once per connection.  The listener
    observes the first connection, so a late observer of it is not told;
    the second had none, so its first late observer is told and a second
    one, set in the same turn, is not (the queue runs in order: it would
    have been told right after).
    """
    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    accepted: list[Any] = []
    told: list[Any] = []

    class Observer:
        def __init__(self, name: str) -> None:
            self.name = name

        def onHandshakeDone(self, server: Any, status: Any) -> None:
            told.append((self.name, server, status))

    class Listener:
        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            if not accepted:
                transport.securityInfo.setSecurityObserver(Observer("listener's"))
            accepted.append(transport)
            transport.attachProtocol(_EchoProtocol())

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv.asyncListen(Listener())
    try:
        for _ in range(2):
            result = await pythonClient(serv.port, b"HELLO\n")
            assert result.error is None and result.data == b"HELLO\n"
        first, second = accepted
        await eventually(lambda: len(told) == 1)
        assert told[0][0] == "listener's"
        assert second.securityInfo.status is not None
        first.securityInfo.setSecurityObserver(Observer("first, after the listener's"))
        second.securityInfo.setSecurityObserver(Observer("second, the first late one"))
        second.securityInfo.setSecurityObserver(Observer("second, again"))
        assert len(told) == 1
        await eventually(lambda: len(told) >= 2)
        assert told[1:] == [("second, the first late one", serv, second.securityInfo.status)]
    finally:
        serv.close()


class _EchoProtocol(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@pytest_twisted.ensureDeferred
async def test_attachedProtocolAndStatus(certs: Certs) -> None:
    """
    A listener may attach a Twisted protocol to a TLS connection (as the
    endpoints do): the protocol reads and writes plaintext, and the
    security observer is still told.
    """
    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    statuses: list[Any] = []

    class Listener:
        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            transport.securityInfo.setSecurityObserver(self)
            transport.attachProtocol(_EchoProtocol())

        def onHandshakeDone(self, s: Any, status: Any) -> None:
            statuses.append(status)

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv.asyncListen(Listener())
    try:
        result = await pythonClient(serv.port, b"x" * 100000)
        assert result.error is None and result.data == b"x" * 100000
        await eventually(lambda: len(statuses) == 1)
        assert statuses[0].tlsVersionUsed == 0x304
    finally:
        serv.close()


@pytest_twisted.ensureDeferred
async def test_garbageInsteadOfClientHello(certs: Certs, logged: list[dict[str, Any]]) -> None:
    """
    A client that sends garbage instead of a ClientHello: its connection is
    closed, no observer is told, one line is logged (no traceback), and
    the server keeps serving.
    """
    from .conftest import connect

    serv, listener = serve(certs)
    try:
        client = await connect(serv.port)
        client.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        await client.whenClosed()
        result = await pythonClient(serv.port, b"HELLO\n")
        assert result.error is None and result.data == b"HELLO\n"
        assert listener.events == ["accepted", "accepted", "handshakeDone"]
        lines = [e for e in logged if "TLS handshake with" in e.get("log_format", "")]
        assert len(lines) == 1 and "failed" in lines[0]["log_format"]
        # OpenSSL's reason, without its library and function fields.
        assert lines[0]["error"] in ("wrong version number", "http request"), lines[0]["error"]
        assert lines[0]["peer"].startswith("127.0.0.1:")
    finally:
        serv.close()


@pytest_twisted.ensureDeferred
async def test_protocolAttachedAfterStreamMode(certs: Certs) -> None:
    """
    A listener that keeps the connection (stream mode) and attaches a
    protocol only once told the handshake finished: the protocol gets what
    the client sent meanwhile (plaintext) and its answer is encrypted; the
    socket options still reach the socket.
    """
    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    seen: list[Any] = []

    class Listener:
        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            self.transport = transport
            transport.securityInfo.setSecurityObserver(self)

        def onHandshakeDone(self, s: Any, status: Any) -> None:
            transport = self.transport
            transport.keepaliveEnabled = True
            seen.append((transport.keepaliveEnabled, transport.isAlive(), transport.host))
            transport.attachProtocol(_EchoProtocol())

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv.asyncListen(Listener())
    try:
        result = await pythonClient(serv.port, b"HELLO\n")
        assert result.error is None and result.data == b"HELLO\n"
        assert seen == [(True, True, "127.0.0.1")]
    finally:
        serv.close()


@pytest_twisted.ensureDeferred
async def test_overUNIXSocket(certs: Certs) -> None:
    """
    A TLS server socket initialised on a UNIX socket file serves TLS there.
    """
    import os
    import shutil
    import socket
    import tempfile

    d = tempfile.mkdtemp(prefix="/tmp/tlsx")
    serv = TLSServerSocket()
    try:
        path = os.path.join(d, "s.sock")
        serv.initWithFilename(path, 0o600, -1)
        serv.serverCert = certs.privateCertificate()

        class Listener:
            def onSocketAccepted(self, s: Any, transport: Any) -> None:
                transport.attachProtocol(_EchoProtocol())

            def onStopListening(self, s: Any, status: int) -> None:
                pass

        serv.asyncListen(Listener())
        result = await pythonClient(0, b"HELLO\n", host=path, family=socket.AF_UNIX)
        assert result.error is None and result.data == b"HELLO\n"
    finally:
        serv.close()
        shutil.rmtree(d, ignore_errors=True)


def _finishedWithData(port: int, data: bytes) -> bytes:
    """
    A TLS 1.3 client whose last handshake message and first bytes of data
    leave in one write (as a browser's often do); what it reads back.
    """
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        tls.write(data)
        raw.sendall(outgoing.read())  # Finished and the data, together
        got = b""
        while len(got) < len(data):
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                chunk = raw.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
        return got


@pytest_twisted.ensureDeferred
async def test_handshakeDoneWithDataInTheSameRead(certs: Certs) -> None:
    """
    A client whose last handshake message and first data arrive in one
    read: the observer is told once and the data is read.  (The input
    stream, which notifies from the read itself, reports the data first;
    the observer's call is queued - a documented difference from Gecko.)
    """
    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    events: list[str] = []

    class Listener:
        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            transport.securityInfo.setSecurityObserver(self)
            self.out = transport.openOutputStream()
            transport.openInputStream().asyncWait(self.ready)

        def onHandshakeDone(self, s: Any, status: Any) -> None:
            events.append("handshakeDone")

        def ready(self, stream: Any) -> None:
            events.append("inputReady")
            self.out.write(stream.read(100))

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv.asyncListen(Listener())
    try:
        from twisted.internet import threads

        for _ in range(3):
            events.clear()
            got = await timeout(threads.deferToThread(_finishedWithData, serv.port, b"HELLO"))
            assert got == b"HELLO"
            await eventually(lambda: len(events) == 2)
            assert sorted(events) == ["handshakeDone", "inputReady"]
    finally:
        serv.close()


def _halfClosingClient(port: int, version: str) -> tuple[bytes, str | None, bytes]:
    """
    Send C{hello}; read until the server ends its sending side, which must
    be a TLS C{close_notify} (a bare FIN raises here: ragged EOFs are not
    suppressed); then send C{after} and close with a C{close_notify}.

    @return: what was read, why the end was not clean (or C{None}), and
        what was read after the client's own close.
    """
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, "TLSv" + version.replace(".", "_"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        t = ctx.wrap_socket(raw, suppress_ragged_eofs=False)
        t.sendall(b"hello")
        got = b""
        try:
            while True:
                chunk = t.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (OSError, ssl.SSLError) as e:
            return got, f"{type(e).__name__}: {e}", b""
        t.sendall(b"after")
        plain = t.unwrap()  # our close_notify, the server's already read
        rest = b""
        while chunk := plain.recv(4096):
            rest += chunk
        return got, None, rest


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("when", ["inReadCallback", "laterTurn"])
@pytest_twisted.ensureDeferred
async def test_closingOutputSendsCloseNotify(certs: Certs, version: str, when: str) -> None:
    """
    Closing the output stream while the input stays open ends the sending
    side with a TLS C{close_notify} (not a bare TCP FIN), logs no error,
    and the input stream goes on reading until the client closes.
    """
    from twisted.internet import reactor, threads

    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    received: list[bytes] = []
    inputEnded: defer.Deferred[int] = defer.Deferred()

    class Listener:
        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            self.out = transport.openOutputStream()
            self.answered = False
            transport.openInputStream().asyncWait(self.ready)

        def ready(self, stream: Any) -> None:
            try:
                data = stream.read(100)
            except NSError as e:
                if e.result == NS_BASE_STREAM_WOULD_BLOCK:
                    stream.asyncWait(self.ready)
                else:
                    inputEnded.callback(e.result)
                return
            if not data:
                inputEnded.callback(0)
                return
            received.append(data)
            if not self.answered:
                self.answered = True
                self.out.write(b"RESPONSE:" + data)
                if when == "inReadCallback":
                    self.out.close()
                else:
                    reactor.callLater(0, self.out.close)  # type: ignore[attr-defined]
            stream.asyncWait(self.ready)

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv.asyncListen(Listener())
    try:
        got, unclean, rest = await timeout(threads.deferToThread(_halfClosingClient, serv.port, version))
        assert (got, unclean, rest) == (b"RESPONSE:hello", None, b"")
        await timeout(inputEnded)
        assert b"".join(received) == b"helloafter"
    finally:
        serv.close()


def _readAll(port: int) -> bytes:
    """
    Connect with TLS and read until the server closes.
    """
    import socket
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as t:
        got = b""
        while chunk := t.recv(65536):
            got += chunk
        return got


@pytest_twisted.ensureDeferred
async def test_outputFullBeforeHandshake(certs: Certs) -> None:
    """
    Writing in C{onSocketAccepted}, before the handshake, until
    C{NS_BASE_STREAM_WOULD_BLOCK} stops at the output stream's limit (the
    plaintext waiting in TLS counts, as the socket's buffer does); once the
    handshake is done and it is sent, the stream is ready again and the
    client gets everything.
    """
    from twisted.internet import threads

    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    written: list[int] = []
    chunk = b"x" * 65536

    class Listener:
        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            out = transport.openOutputStream()
            total = 0
            for _ in range(50):
                try:
                    total += out.write(chunk)
                except NSError as e:
                    assert e.result == NS_BASE_STREAM_WOULD_BLOCK
                    break
            written.append(total)
            out.asyncWait(self.ready)

        def ready(self, out: Any) -> None:
            out.write(b"END")
            out.close()

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv.asyncListen(Listener())
    try:
        got = await timeout(threads.deferToThread(_readAll, serv.port))
        limit = bufferLimit(0, 0)  # the default, as on a plain connection
        assert written == [limit]
        assert got == b"x" * limit + b"END"
    finally:
        serv.close()


def test_rawListenerRefused(certs: Certs) -> None:
    """
    A listener that takes sockets raw (C{IRawAcceptor}) would get them
    without TLS: C{asyncListen} refuses it with C{NS_ERROR_INVALID_ARG},
    and the server socket can listen with another listener after.
    """
    from zope.interface import implementer

    from twisted_serversock.interfaces import IRawAcceptor

    @implementer(IRawAcceptor)
    class Raw:
        def socketAccepted(self, skt: Any, addr: Any) -> None:
            skt.close()

        def onSocketAccepted(self, s: Any, transport: Any) -> None:
            pass

        def onStopListening(self, s: Any, status: int) -> None:
            pass

    serv = TLSServerSocket()
    serv.init(-1, True, -1)
    serv.serverCert = certs.privateCertificate()
    try:
        with pytest.raises(NSError) as raised:
            serv.asyncListen(Raw())
        assert code(raised) == "NS_ERROR_INVALID_ARG"
        assert "IRawAcceptor" in str(raised.value)
        serv.asyncListen(EchoAfterHandshake())
    finally:
        serv.close()


@pytest_twisted.ensureDeferred
async def test_reloadCertificates(certs: Certs, logged: list[dict[str, Any]]) -> None:
    """
    C{reloadCertificates} while listening: clients that connect afterwards
    get the new certificate; a certificate whose key does not match is
    logged in one line and the one served before stays.
    """
    from twisted.internet.ssl import KeyPair, PrivateCertificate

    serv, listener = serve(certs, size=12)
    try:
        port = serv.port
        before = await pythonClient(port, b"HELLO\n")
        assert before.error is None and before.data == b"HELLO\n"
        with open(certs["other.pem"]) as c, open(certs["otherkey.pem"]) as k:
            other = PrivateCertificate.loadPEM(c.read() + k.read())
        assert serv.reloadCertificates(other) is True
        after = await pythonClient(port, b"HELLO\n")
        assert after.error is None and after.data == b"HELLO\n"
        assert after.peerCert == other.dump(2) != before.peerCert  # (FILETYPE_ASN1)
        # (Twisted's constructors refuse such a pair; a renewal gone wrong
        # makes one.)
        mismatched = PrivateCertificate(certs.privateCertificate().original)
        mismatched.privateKey = KeyPair.generate(size=2048)
        assert serv.reloadCertificates(mismatched) is False
        errors = [e for e in logged if "certificates not reloaded" in e.get("log_format", "")]
        assert len(errors) == 1
        still = await pythonClient(port, b"HELLO\n")
        assert still.error is None and still.peerCert == after.peerCert
        assert serv.serverCert is other
    finally:
        serv.close()
        await timeout(listener.stopped)
