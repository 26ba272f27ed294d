"""
Many concurrent connections: 10,000 idle connections held open at once
on one listener, then every one of them echoes correctly.

The listener (a C{ServerSocket} with Gecko-stream echo, in this process)
needs a descriptor a connection, so this process's C{RLIMIT_NOFILE} is
raised for the test and restored after it.  The clients live in a child
process (which inherits the raised limit): it opens every connection, holds
them all idle, and on a word from the test sends a distinct line on each
and checks each answer.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol

from twisted_serversock import ServerSocket

from ._hardening import LONG, fdCount, nofile, openFiles
from .conftest import eventually, sleep, theReactor, timeout
from .soak.echoserver import StreamEchoListener

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

#: Short mode: 10,000 connections idle for a second.  Long mode
#: (C{SERVERSOCK_SOAK=long}): as many as the descriptor limit allows, up to
#: 25,000, idle for 30 seconds.
CONNECTIONS = 10_000
IDLE = 30.0 if LONG else 1.0

_CLIENTS = r"""
import json, selectors, socket, sys, time

port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
socks = []
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks.append(s)
    sel.register(s, selectors.EVENT_WRITE, i)
pending, failed = n, 0
deadline = time.monotonic() + 120
while pending and time.monotonic() < deadline:
    for key, _ in sel.select(1):
        sel.unregister(key.fileobj)
        pending -= 1
        if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            failed += 1
print(json.dumps({"connected": n - pending - failed}), flush=True)
sys.stdin.readline()

got = {}
for i, s in enumerate(socks):
    s.send(b"%06d\n" % i)
    sel.register(s, selectors.EVENT_READ, i)
    got[i] = b""
left = n
deadline = time.monotonic() + 120
while left and time.monotonic() < deadline:
    for key, _ in sel.select(1):
        i = key.data
        data = key.fileobj.recv(64)
        got[i] += data
        if not data or len(got[i]) >= 7:
            sel.unregister(key.fileobj)
            left -= 1
good = sum(1 for i, data in got.items() if data == b"%06d\n" % i)
print(json.dumps({"echoed": good, "unanswered": left}), flush=True)
sys.stdin.readline()
for s in socks:
    s.close()
"""


class _Clients(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.lines: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.err = b""
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self.lines.put(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)

    async def next(self) -> dict[str, Any]:
        return await timeout(self.lines.get(), 150)  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_tenThousandIdleConnectionsThenEcho(io: Any) -> None:
    with nofile(25_000 + 1000 if LONG else CONNECTIONS + 1000) as limit:
        n = min(25_000, limit - 1000) if LONG else CONNECTIONS
        if limit < n + 500:
            pytest.skip(f"RLIMIT_NOFILE cannot be raised to {n + 500} here")
        srv = ServerSocket(ioService=io)
        srv.init(-1, True, -1)
        listener = StreamEchoListener()
        srv.asyncListen(listener)
        baseline, before = fdCount(), openFiles()
        clients = _Clients()
        try:
            theReactor().spawnProcess(
                clients, sys.executable, [sys.executable, "-c", _CLIENTS, str(srv.port), str(n)], env=None
            )
            assert (await clients.next()) == {"connected": n}
            await eventually(lambda: len(listener.echoes) == n, 60)
            # All of them at once, idle for a while, none dropped.
            await sleep(IDLE)
            alive = [e.transport.isAlive() for e in listener.echoes]
            assert alive.count(True) == n
            # A descriptor each (counted as new ones: a descriptor of an
            # earlier test's that closes meanwhile does not hide one).
            assert len(openFiles() - before) >= n
            clients.transport.write(b"go\n")
            assert (await clients.next()) == {"echoed": n, "unanswered": 0}
            clients.transport.write(b"close\n")
            assert await timeout(clients.ended, 60) == 0, clients.err.decode()
            await eventually(lambda: not any(e.transport.isAlive() for e in listener.echoes), 60)
            # Every accepted descriptor was closed.
            await eventually(lambda: fdCount() <= baseline, 30)
        finally:
            if not clients.ended.called and clients.transport is not None:
                clients.transport.signalProcess("KILL")
                await timeout(clients.ended, 30)
            srv.close()
            await eventually(lambda: listener.stopped != [])
