"""
A static-file HTTP/1.0 server written against the Gecko API, the way
Gecko's C{httpd.js} is: a L{ServerSocket}, a listener, and per connection an
input stream read with C{asyncWait} and an output stream written with
back-pressure.

Run it::

    python -m twisted_serversock.examples.httpd --port 8080 --root .

It serves C{GET} and C{HEAD} for files under C{--root} (a directory gets its
C{index.html}), answers everything else with an error status, and closes each
connection after one response (C{Connection: close}).
"""

from __future__ import annotations

import argparse
import re
import mimetypes
import os
import signal
import sys
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from twisted_serversock import NSError, ServerSocket, results

_log = Logger()

_MAX_REQUEST_HEAD = 16 * 1024
_CHUNK = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


class Connection:
    """
    One client: read the request head, then send one response.
    """

    def __init__(self, server: HTTPServer, transport: Any) -> None:
        self.server = server
        self.transport = transport
        self.input = transport.openInputStream(0, 8192, 4)
        self.output = transport.openOutputStream(0, 0, 0)
        self.head = b""
        self.pending = b""
        self.file: IO[bytes] | None = None
        transport.setTimeout(transport.TIMEOUT_READ_WRITE, 30)
        self.input.asyncWait(self)

    def onInputStreamReady(self, stream: Any) -> None:
        try:
            data = stream.read(8192)
        except NSError as e:
            if e.result == results.NS_BASE_STREAM_WOULD_BLOCK:
                stream.asyncWait(self)
            else:
                self.transport.close(e.result)
            return
        if not data:  # the client went away before finishing its request
            self.transport.close(results.NS_OK)
            return
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.respond(self.head.split(b"\r\n", 1)[0])
        elif len(self.head) > _MAX_REQUEST_HEAD:
            self.error(431)
        else:
            stream.asyncWait(self)

    def respond(self, requestLine: bytes) -> None:
        parts = requestLine.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return self.error(400)
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return self.error(405)
        path = self.server.resolve(urlsplit(target).path)
        if path is None:
            return self.error(403)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        try:
            f = open(path, "rb")
        except OSError:
            return self.error(404)
        size = os.fstat(f.fileno()).st_size
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        _log.info("{peer} {method} {target} 200 {size}", peer=self.transport.host,
                  method=method, target=target, size=size)
        self.send(
            f"HTTP/1.0 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        if method == "GET":
            self.file = f
        else:
            f.close()
        self.onOutputStreamReady(self.output)

    def error(self, status: int) -> None:
        reason = _REASONS[status]
        body = f"{status} {reason}\n".encode()
        _log.info("{peer} error {status}", peer=self.transport.host, status=status)
        self.send(
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        self.onOutputStreamReady(self.output)

    def send(self, data: bytes) -> None:
        self.pending += data

    def onOutputStreamReady(self, stream: Any) -> None:
        # Write until the stream would block; then wait for it to drain.
        try:
            while True:
                if not self.pending and self.file is not None:
                    self.pending = self.file.read(_CHUNK)
                    if not self.pending:
                        self.file.close()
                        self.file = None
                if not self.pending:
                    self.transport.close(results.NS_OK)
                    return
                written = stream.write(self.pending)
                self.pending = self.pending[written:]
        except NSError as e:
            if e.result == results.NS_BASE_STREAM_WOULD_BLOCK:
                stream.asyncWait(self)
                return
            if self.file is not None:
                self.file.close()
                self.file = None
            self.transport.close(e.result)


class HTTPServer:
    """
    The listener: one L{Connection} per accepted transport.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, urlPath: str) -> str | None:
        """
        The file for C{urlPath}, or C{None} if it would leave the root.
        """
        path = os.path.realpath(os.path.join(self.root, unquote(urlPath).lstrip("/")))
        if path != self.root and not path.startswith(self.root + os.sep):
            return None
        return path

    def onSocketAccepted(self, serv: ServerSocket, transport: Any) -> None:
        Connection(self, transport)

    def onStopListening(self, serv: ServerSocket, status: int) -> None:
        _log.info("stopped listening: {status}", status=results.nameOf(status))
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()


def _summary() -> str:
    """
    The module docstring's first paragraph, as plain text, for C{--help}.
    """
    first = (__doc__ or "").strip().split("\n\n")[0]
    return re.sub(r"[CL]\{([^}]*)\}", r"\1", " ".join(first.split()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m twisted_serversock.examples.httpd", description=_summary())
    parser.add_argument("--port", type=int, default=8080, help="TCP port; 0 or -1 picks a free one")
    parser.add_argument("--any", action="store_true", help="listen on all interfaces, not only 127.0.0.1")
    parser.add_argument("--root", default=".", help="the directory to serve (default: .)")
    args = parser.parse_args(argv)

    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    server = ServerSocket(reactor)
    try:
        server.init(args.port, not args.any, -1)
    except NSError as e:
        _log.error("cannot listen: {error}", error=str(e))
        return 1
    address = server.getAddress()
    assert isinstance(address, (IPv4Address, IPv6Address))  # init() listens on TCP
    _log.info("serving {root} on http://{host}:{port}/", root=os.path.realpath(args.root),
              host=address.host, port=server.port)
    server.asyncListen(HTTPServer(args.root))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: reactor.callFromThread(server.close))
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
