"""
The examples, run for real: the httpd-style server in its own process, and
the echo factory.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol, reactor

from twisted_serversock import IOService, ServerSocket
from twisted_serversock.examples import echo

from .conftest import Recorder, connect, timeout


class ServerProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.port: defer.Deferred[int] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        m = re.search(rb"http://127\.0\.0\.1:(\d+)/", self.output)
        if m and not self.port.called:
            self.port.callback(int(m.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


async def fetch(port: int, request: bytes) -> bytes:
    client = await connect(port)
    client.transport.write(request)
    return await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_httpd(tmp_path: Any) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "big.bin").write_bytes(big)
    (tmp_path / "index.html").write_bytes(b"<h1>hello</h1>")
    proc = ServerProcess()
    reactor.spawnProcess(
        proc,
        sys.executable,
        [sys.executable, "-m", "twisted_serversock.examples.httpd", "--port", "0", "--root", str(tmp_path)],
        env=dict(os.environ),
    )
    try:
        port = await timeout(proc.port)
        reply = await fetch(port, b"GET /big.bin HTTP/1.0\r\n\r\n")
        head, body = reply.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200 OK")
        assert f"Content-Length: {len(big)}".encode() in head
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(big).hexdigest()

        reply = await fetch(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.endswith(b"<h1>hello</h1>")
        reply = await fetch(port, b"HEAD /big.bin HTTP/1.0\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"\r\n\r\n")
        assert (await fetch(port, b"GET /missing HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404")
        assert (await fetch(port, b"GET /../../etc/passwd HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 403")
        assert (await fetch(port, b"POST / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 405")
        assert (await fetch(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.0 400")
    finally:
        if not proc.ended.called:
            proc.transport.signalProcess(signal.SIGTERM)
    assert await timeout(proc.ended) == 0
    assert b"stopped listening: NS_BINDING_ABORTED" in proc.output
    assert b"Traceback" not in proc.output


@pytest_twisted.ensureDeferred
async def test_echoFactoryOverAttachProtocol() -> None:
    srv = ServerSocket(ioService=IOService())
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    try:
        client = await connect(srv.port)
        transport = await rec.nextAccepted()
        transport.attachProtocol(echo.buildProtocol(transport.getPeerAddr()))
        client.transport.write(b"ping")
        assert await client.waitFor(4) == b"ping"
        client.transport.loseConnection()
    finally:
        srv.close()


def test_httpdHelpIsComplete() -> None:
    """
    C{python3 -m twisted_serversock.examples.httpd --help} (as docs/api.md
    runs it) names the command and gives the whole first paragraph of the
    module's description, not its first line cut mid-sentence.
    """
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "twisted_serversock.examples.httpd", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python3 -m twisted_serversock.examples.httpd ")
    description = " ".join(out.stdout.split("\n\n")[1].split())
    assert description == (
        "A static-file HTTP/1.0 server written against the Gecko API, the way Gecko's httpd.js is: a ServerSocket, "
        "a listener, and per connection an input stream read with asyncWait and an output stream written with "
        "back-pressure."
    )
