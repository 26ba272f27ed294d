"""
A peer that half-closes: what a server sends in answer to
the last bytes, which can arrive together with the peer's end of stream,
must reach the peer before the connection closes - for L{TCPSocket} (as
Gecko flushes before closing) and for the default echo factory of
C{twistd serversock}, driven by a real C{socat} as in
C{echo hi | socat - TCP:127.0.0.1:7000}.
"""

from __future__ import annotations

import os
import shutil

import pytest
import pytest_twisted

from twisted_serversock import NSError
from twisted_serversock.tcpsocket import TCPServerSocket, TCPSocket

from ._hardening import CollectingProcess
from .conftest import connect, timeout, theReactor
from ._helpers import Events
from ._procs import LISTENING, SERVERSOCK, Proc, spawn


@pytest.mark.parametrize("size", [3, 1024 * 1024 + 7], ids=["small", "1MiB"])
@pytest.mark.parametrize("binaryType", ["arraybuffer", "string"])
@pytest_twisted.ensureDeferred
async def test_replyToHalfClosingPeer(binaryType: str, size: int) -> None:
    """
    The client writes its request and shuts down its sending side in one
    go; the server's C{ondata} answers every chunk with C{send}.  All of
    the answer arrives, then the server closes: C{onclose}, no C{onerror}.
    """
    server = TCPServerSocket(0, {"binaryType": binaryType}, reactor=theReactor())
    serverEvents = Events(server)
    try:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        client = await connect(server.localPort)
        client.transport.write(payload)
        client.transport.loseWriteConnection()
        sock: TCPSocket = (await serverEvents.next("connect")).socket
        events = Events(sock)
        sock.ondata = lambda event: (events.log.append(("data", event)), sock.send(event.data))
        got = await client.whenClosed()
        assert len(got) == len(payload) and got == payload
        await events.next("close")
        assert sock.readyState == "closed"
        assert "error" not in events.kinds()
        received = b"".join(e.data if binaryType == "arraybuffer" else e.data.encode("latin-1") for k, e in events.log if k == "data")
        assert received == payload
    finally:
        server.close()


@pytest_twisted.ensureDeferred
async def test_sendAfterPeerEndIsRefused() -> None:
    """
    Once the peer has ended its side, the socket is C{"closing"}: a late
    C{send} raises instead of being accepted and lost.
    """
    server = TCPServerSocket(0, {"binaryType": "arraybuffer"}, reactor=theReactor())
    serverEvents = Events(server)
    try:
        client = await connect(server.localPort)
        sock: TCPSocket = (await serverEvents.next("connect")).socket
        events = Events(sock)
        client.transport.loseWriteConnection()
        await events.next("close")
        assert await client.whenClosed() == b""
        with pytest.raises(NSError):
            sock.send(b"late")
    finally:
        server.close()


class _Socat(CollectingProcess):
    """
    C{echo DATA | socat - TCP:...}: writes C{DATA}, closes its stdin,
    collects stdout.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)
        self.transport.closeStdin()


async def socatEcho(port: int, data: bytes) -> bytes:
    socat = shutil.which("socat")
    assert socat is not None, "socat is needed (apt-get install socat)"
    proc = _Socat(data)
    # -t: how long socat waits for the server after sending its end of
    # stream (0.5 s by default); generous, for a loaded machine.  The
    # server ends the connection as soon as it has answered.
    theReactor().spawnProcess(proc, socat, [socat, "-t", "30", "-", f"TCP:127.0.0.1:{port}"], env=dict(os.environ))
    code = await timeout(proc.ended, 40)
    assert code == 0, proc.err
    return proc.out


@pytest.mark.skipif(not shutil.which("socat"), reason="needs socat (apt-get install socat; .ci/run installs it)")
@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("listen", ["gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"])
@pytest_twisted.ensureDeferred
async def test_serversockEchoAnswersHalfClose(workdir: str, workers: str, listen: str) -> None:
    """
    C{twistd -n serversock} (the installed script) with its default echo
    factory, in the parent and in a worker: C{echo hi | socat - TCP:...}
    gets C{hi}.
    """
    proc: Proc = spawn(SERVERSOCK + ["--listen", listen, "--workers", workers], workdir)
    try:
        port = int((await proc.waitFor(LISTENING)).group(1))
        if workers != "0":
            await proc.waitFor(r"Worker 1 \(pid \d+\) is ready")
        for i in range(5):
            assert await socatEcho(port, b"hi %d\n" % i) == b"hi %d\n" % i
        big = os.urandom(300_000)
        assert await socatEcho(port, big) == big
    finally:
        assert await proc.stop(), proc.output
