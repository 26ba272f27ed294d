"""
The protocol factories of the worker benchmarks (L{bench.workers},
L{bench.dispatch}), for C{twistd serversock --factory bench.handlers.NAME}
and for the reference servers in L{bench._refservers}:

  - L{cpu}: a minimal HTTP/1.1 server that burns about a millisecond of
    pure Python per request (L{work}) before it answers.  It honours the
    request: C{Connection: close} gets a response with C{Connection: close}
    and the connection closed after it; any other request gets a
    keep-alive response, and the connection stays open for the next one.
  - L{closeAtOnce}: zero work - closes each connection as soon as it is
    made (what the parent's dispatch cost is measured with).
  - L{skewed}: as L{cpu}, but one request in twenty (at random) does
    C{SLOW_FACTOR} times the work - about 50 ms instead of 1 ms (what
    L{bench.skewed} measures tail latency with).

L{work} runs C{BENCH_WORK_ITERS} iterations (environment; default 25,000,
what C{shared/research/perf.md} used).  The benchmark sets it once for every
server of a run, so A and B do the same work whatever this VM's speed.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

from twisted.internet.protocol import Factory, Protocol

__all__ = ["cpu", "closeAtOnce", "skewed", "work", "WORK_ITERS", "SLOW_SHARE", "SLOW_FACTOR"]

WORK_ITERS = int(os.environ.get("BENCH_WORK_ITERS", "25000"))
#: L{skewed}: the share of slow requests, and how much more work they do.
SLOW_SHARE = 0.05
SLOW_FACTOR = 50

KEEPALIVE_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
CLOSE_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close[ \t]*(\r\n|$)")


def work(iterations: int = WORK_ITERS) -> int:
    """
    The handler's CPU-bound part: a pure-Python loop (it holds the GIL the
    whole time, like real request handling in Python).
    """
    x = 0
    for i in range(iterations):
        x += i
    return x


class CPUBoundHTTP(Protocol):
    """
    One L{work} per request (a request ends at its blank line; bodies are
    not expected), then a fixed 2-byte response.
    """

    transport: Any
    _buffer = b""
    _closing = False

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        buffer = self._buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()  # request line and headers
            buffer = buffer[end + 4 :]
            self.handle()
            if _CLOSE.search(head):
                self._closing = True
                self._buffer = b""
                self.transport.write(CLOSE_RESPONSE)
                self.transport.loseConnection()
                return
            self.transport.write(KEEPALIVE_RESPONSE)
        self._buffer = buffer

    def handle(self) -> None:
        work()


class SkewedHTTP(CPUBoundHTTP):
    """
    L{CPUBoundHTTP} where a random L{SLOW_SHARE} of the requests do
    L{SLOW_FACTOR} times the work.
    """

    def handle(self) -> None:
        work(WORK_ITERS * SLOW_FACTOR if random.random() < SLOW_SHARE else WORK_ITERS)


class CloseAtOnce(Protocol):
    transport: Any

    def connectionMade(self) -> None:
        self.transport.loseConnection()


cpu = Factory.forProtocol(CPUBoundHTTP)
cpu.noisy = False
skewed = Factory.forProtocol(SkewedHTTP)
skewed.noisy = False
closeAtOnce = Factory.forProtocol(CloseAtOnce)
closeAtOnce.noisy = False
