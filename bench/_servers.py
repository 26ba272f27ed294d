"""
The server side of the benchmarks: one minimal server, run as its own
process by the harness::

    python -m bench._servers MODE DESCRIPTION

C{MODE} picks the protocol, which is the same whichever endpoint serves it,
so that the endpoint is the only difference between an A and a B run:

  - C{close}: closes the connection as soon as it is made (accept+close);
  - C{http}: reads up to the end of one request's headers, writes a fixed
    90-byte C{HTTP/1.1 200} response with C{Connection: close}, closes;
  - C{keepalive}: one fixed response for each request, connection kept;
  - C{echo}: writes back what it reads (a plain Twisted echo protocol);
  - C{idle}: does nothing (for memory per idle connection);
  - C{streams-echo}: echo written against the Gecko API - a L{ServerSocket}
    whose listener opens the connection's input and output streams and
    pumps one into the other with C{asyncWait}.  C{DESCRIPTION} must be a
    C{gecko:} TCP description; only its port and loopback options are used.

C{DESCRIPTION} is any server endpoint string (C{tcp:0:interface=127.0.0.1},
C{gecko:port=0:loopback=1}, C{unix:/tmp/x.sock}, C{geckounix:/tmp/x.sock},
...).  Once listening the process prints C{READY ADDRESS} (C{tcp:HOST:PORT}
or C{unix:PATH}, the form the C load generator takes) and runs until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.protocol import Factory, Protocol

# Each protocol below runs only while connected, when its transport is set.

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n"
    b"Connection: close\r\n\r\nhello\r\n"
)
assert len(RESPONSE) == 90, len(RESPONSE)
KEEPALIVE_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class Close(Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class HTTPClose(Protocol):
    _buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        if b"\r\n\r\n" in buffer:
            self.transport.write(RESPONSE)  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            self._buffer = b""
        else:
            self._buffer = buffer


class KeepAlive(Protocol):
    _buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        count = buffer.count(b"\r\n\r\n")
        if count:
            self.transport.write(KEEPALIVE_RESPONSE * count)  # type: ignore[union-attr]
            buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4 :]
        self._buffer = buffer


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Idle(Protocol):
    pass


PROTOCOLS: dict[str, type[Protocol]] = {
    "close": Close,
    "http": HTTPClose,
    "keepalive": KeepAlive,
    "echo": Echo,
    "idle": Idle,
}


class _StreamPump:
    """
    Gecko-style echo of one connection: wait for input, read what is
    there, write it; when the output stream is full, wait for it instead.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.inp = transport.openInputStream(0, 0, 0)
        self.out = transport.openOutputStream(0, 0, 0)
        self.pending = b""
        self.inp.asyncWait(self)

    def onInputStreamReady(self, stream: Any) -> None:
        from twisted_serversock import NSError, results

        try:
            data = stream.read(1 << 20)
        except NSError as e:
            if e.result == results.NS_BASE_STREAM_WOULD_BLOCK:
                stream.asyncWait(self)
            else:
                self.transport.close(results.NS_OK)
            return
        if not data:
            self.transport.close(results.NS_OK)
            return
        self.pending = data
        self.onOutputStreamReady(self.out)

    def onOutputStreamReady(self, stream: Any) -> None:
        from twisted_serversock import NSError, results

        data = self.pending
        try:
            written = stream.write(data)
        except NSError as e:
            if e.result != results.NS_BASE_STREAM_WOULD_BLOCK:
                self.transport.close(e.result)
                return
            written = 0
        if written < len(data):
            self.pending = data[written:]
            stream.asyncWait(self)
        else:
            self.pending = b""
            self.inp.asyncWait(self)


class _StreamEchoListener:
    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        _StreamPump(transport)

    def onStopListening(self, serv: Any, status: int) -> None:
        pass


def _address(host: Any) -> str:
    name = getattr(host, "name", None)
    if name is not None:
        if isinstance(name, bytes):
            name = name.decode()
        return f"unix:{name}"
    return f"tcp:{host.host}:{host.port}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    mode, description = argv
    from twisted.internet import reactor

    if mode == "streams-echo":
        from twisted_serversock import ServerSocket

        if not description.startswith("gecko:"):
            raise SystemExit("streams-echo takes a gecko: TCP description")
        serv = ServerSocket(reactor)
        serv.init(-1, True, -1)
        serv.asyncListen(_StreamEchoListener())
        address = _address(serv.getAddress())
    else:
        from twisted.internet.endpoints import serverFromString

        factory = Factory.forProtocol(PROTOCOLS[mode])
        factory.noisy = False
        ports: list[Any] = []
        serverFromString(reactor, description).listen(factory).addCallback(ports.append)
        if not ports:
            raise SystemExit(f"could not listen on {description}")
        address = _address(ports[0].getHost())
    print(f"READY {address}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
