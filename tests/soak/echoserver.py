"""
An echo server for the hardening tests and the soak, run in its own process:

    python -m tests.soak.echoserver [--kind gecko|streams|geckounix]
        [--nofile N] [--no-reserve] [--timeout SECONDS] [--reactor asyncio]

It prints one JSON object a line on standard output: first
C{{"event": "listening", "port": P, "pid": PID, "fds": N}} (C{"path"}
instead of C{"port"} for C{geckounix}), then every log event as
C{{"event": "log", "level": ..., "format": ..., "text": ..., "failure": bool}}.
It answers C{stats} on standard input with
C{{"event": "stats", "accepted": N, "open": N, "fds": N}}, and exits at the
end of its standard input.

C{--nofile} lowers C{RLIMIT_NOFILE} once everything is imported (so the
limit is on connections, not on imports); C{--no-reserve} takes away the
listener's reserved descriptor, so that descriptor exhaustion takes the
pause-and-retry path instead of shedding.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from typing import Any

from twisted_serversock import results
from twisted_serversock.results import NSError


class Counters:
    accepted = 0
    open = 0


class StreamEcho:
    """
    Echo one accepted connection through its Gecko streams: read what is
    there, write it back (waiting for the output stream when it is full),
    and close when the peer's side ends.
    """

    def __init__(self, transport: Any, timeout: float | None = None) -> None:
        self.transport = transport
        if timeout is not None:
            transport.setTimeout(transport.TIMEOUT_READ_WRITE, timeout)
        self.inp = transport.openInputStream(0, 0, 0)
        self.out = transport.openOutputStream(0, 0, 0)
        self.pending = b""
        self.inp.asyncWait(self.onInputStreamReady)

    def onInputStreamReady(self, stream: Any) -> None:
        try:
            data = stream.read(65536)
        except NSError as e:
            if e.result == results.NS_BASE_STREAM_WOULD_BLOCK:
                stream.asyncWait(self.onInputStreamReady)
            else:
                self.transport.close(e.result)
            return
        if not data:
            self.transport.close(results.NS_OK)
            return
        self.pending += data
        self.onOutputStreamReady(self.out)

    def onOutputStreamReady(self, stream: Any) -> None:
        while self.pending:
            try:
                n = stream.write(self.pending)
            except NSError as e:
                if e.result == results.NS_BASE_STREAM_WOULD_BLOCK:
                    stream.asyncWait(self.onOutputStreamReady)
                else:
                    self.transport.close(e.result)
                return
            self.pending = self.pending[n:]
        self.inp.asyncWait(self.onInputStreamReady)


class StreamEchoListener:
    """
    An C{nsIServerSocketListener} that echoes every connection with
    L{StreamEcho}.

    @ivar echoes: the connections accepted, in order.
    """

    def __init__(self, timeout: float | None = None, counters: Any = None) -> None:
        self.timeout = timeout
        self.echoes: list[StreamEcho] = []
        self.counters = counters
        self.stopped: list[int] = []

    def onSocketAccepted(self, serv: Any, transport: Any) -> None:
        echo = StreamEcho(transport, self.timeout)
        if self.counters is not None:
            self.counters.accepted += 1
        else:
            self.echoes.append(echo)

    def onStopListening(self, serv: Any, status: int) -> None:
        self.stopped.append(status)


def _fdCount() -> int:
    # Less the descriptor listdir itself holds on the directory.
    return len(os.listdir("/proc/self/fd")) - 1


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["gecko", "streams", "geckounix"], default="gecko")
    parser.add_argument("--nofile", type=int, default=0)
    parser.add_argument("--no-reserve", action="store_true")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    args = parser.parse_args(argv)
    if args.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()

    from twisted.internet import protocol, reactor, stdio
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import formatEvent, globalLogBeginner
    from twisted.protocols.basic import LineReceiver

    from twisted_serversock import ServerSocket, _port
    from twisted_serversock.examples import Echo

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        _emit(
            {
                "event": "log",
                "level": level.name if level is not None else None,
                "format": event.get("log_format"),
                "text": formatEvent(event),
                "failure": event.get("log_failure") is not None or bool(event.get("isError")),
            }
        )

    globalLogBeginner.beginLoggingTo([observe], redirectStandardIO=False)
    counters = Counters()

    class CountingEcho(Echo):
        def connectionMade(self) -> None:
            counters.accepted += 1
            counters.open += 1

        def connectionLost(self, reason: Any = None) -> None:
            counters.open -= 1

    tmp = None
    if args.kind == "streams":
        serv = ServerSocket()
        serv.init(-1, True, -1)
        serv.asyncListen(StreamEchoListener(args.timeout, counters))
        where: dict[str, Any] = {"port": serv.port}
    elif args.kind == "gecko":
        port = serverFromString(reactor, "gecko:port=0:loopback=1").listen(protocol.Factory.forProtocol(CountingEcho))
        where = {"port": port.result.getHost().port}  # type: ignore[attr-defined]
    else:
        tmp = tempfile.mkdtemp(prefix="/tmp/tssk")
        path = os.path.join(tmp, "echo.sock")
        serverFromString(reactor, f"geckounix:{path}").listen(protocol.Factory.forProtocol(CountingEcho))
        where = {"path": path}

    if args.no_reserve:
        _port._reserve.release()
        _port._reserve.reserve = lambda: False  # type: ignore[method-assign]

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stats":
                _emit({"event": "stats", "accepted": counters.accepted, "open": counters.open, "fds": _fdCount()})

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    stdio.StandardIO(Control())
    if args.nofile:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    # Once running: the reactor opens its signal pipes in run().
    reactor.callWhenRunning(  # type: ignore[attr-defined]
        lambda: _emit({"event": "listening", "pid": os.getpid(), "fds": _fdCount(), **where})
    )
    reactor.run()  # type: ignore[attr-defined]
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
