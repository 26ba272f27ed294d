"""
The multi-process reference servers of the worker benchmarks, in plain
Twisted (no twisted-serversock code)::

    python -m bench._refservers reuseport tcp:127.0.0.1:PORT FACTORY WORKERS
    python -m bench._refservers fdpass tcp:127.0.0.1:PORT FACTORY WORKERS

C{FACTORY} is a dotted name such as C{bench.handlers.cpu}.  Each prints
C{READY tcp:127.0.0.1:PORT} once it serves, and runs until SIGTERM (which
it passes on to its workers).  The workers are separate processes started
with C{python -m bench._refservers ...-worker}; nothing is forked, so no
process holds a socket it does not serve.

  - C{reuseport}: C{WORKERS} processes, each with its own C{SO_REUSEPORT}
    listening socket on 127.0.0.1:PORT adopted with
    C{reactor.adoptStreamPort}; the kernel spreads connections by hash.
    The launcher itself holds no socket of the group (a socket in the group
    that nobody accepts on would keep its share of the connections waiting
    forever; C{shared/research/perf.md} 5.3, item 4).
  - C{fdpass}: the raw C{socket.send_fds} parent that
    C{shared/research/perf.md} measured at 25 µs of parent CPU per
    connection: a non-blocking listening socket read by the parent's
    reactor, C{accept()}, C{send_fds} round robin over a blocking UNIX
    socket pair, and the parent's copy closed at once (no hold, no ack).
    Workers receive with C{recv_fds}, C{reactor.adoptStreamConnection} and
    close their copy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Any

from twisted.internet.interfaces import IReadDescriptor
from twisted.python.reflect import namedAny
from zope.interface import implementer

_BATCH = 64


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _serveForever(children: list[subprocess.Popen[bytes]]) -> None:
    def stop(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _spawn(args: list[str], fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench._refservers", *args], stdout=subprocess.PIPE, pass_fds=fds)


def _waitReady(child: subprocess.Popen[bytes]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line.startswith(b"READY"):
        raise SystemExit(f"a worker did not start: {line!r}")


# ----------------------------------------------------------------------
# SO_REUSEPORT


def reuseport(port: int, factory: str, workers: int) -> None:
    children = [_spawn(["reuseport-worker", str(port), factory]) for _ in range(workers)]
    _serveForever(children)
    for child in children:
        _waitReady(child)
    print(f"READY tcp:127.0.0.1:{port}", flush=True)
    while True:
        signal.pause()


def _listening(port: int, reuse: int) -> socket.socket:
    """
    A non-blocking TCP socket listening on 127.0.0.1:C{port} with the
    socket option C{reuse} (C{SO_REUSEPORT} or C{SO_REUSEADDR}) set.
    """
    skt = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    skt.setsockopt(socket.SOL_SOCKET, reuse, 1)
    skt.bind(("127.0.0.1", port))
    skt.listen(socket.SOMAXCONN)
    skt.setblocking(False)
    return skt


def reuseportWorker(port: int, factory: str) -> None:
    reactor = _reactor()

    skt = _listening(port, socket.SO_REUSEPORT)
    reactor.adoptStreamPort(skt.fileno(), socket.AF_INET, namedAny(factory))
    skt.close()  # the reactor holds its own duplicate
    print("READY", flush=True)
    reactor.run()


# ----------------------------------------------------------------------
# Raw send_fds


@implementer(IReadDescriptor)
class _Acceptor:
    """
    The fdpass parent's listening socket, read by the reactor.
    """

    def __init__(self, listener: socket.socket, channels: list[socket.socket]) -> None:
        self.listener = listener
        self.channels = channels
        self.next = 0

    def fileno(self) -> int:
        return self.listener.fileno()

    def logPrefix(self) -> str:
        return "fdpass"

    def doRead(self) -> None:
        channels = self.channels
        for _ in range(_BATCH):
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.next = (self.next + 1) % len(channels)
            try:
                socket.send_fds(channels[self.next], [b"F"], [conn.fileno()])
            finally:
                conn.close()

    def connectionLost(self, reason: Any) -> None:
        pass


def fdpass(port: int, factory: str, workers: int) -> None:
    reactor = _reactor()

    listener = _listening(port, socket.SO_REUSEADDR)
    channels: list[socket.socket] = []
    children = []
    for _ in range(workers):
        ours, theirs = socket.socketpair()
        children.append(_spawn(["fdpass-worker", str(theirs.fileno()), factory], fds=(theirs.fileno(),)))
        theirs.close()
        channels.append(ours)  # blocking: send_fds waits if a worker lags
    _serveForever(children)
    for child in children:
        _waitReady(child)
    reactor.addReader(_Acceptor(listener, channels))
    print(f"READY tcp:127.0.0.1:{port}", flush=True)
    reactor.run(installSignalHandlers=False)


@implementer(IReadDescriptor)
class _Receiver:
    """
    An fdpass worker's end of its channel: adopts every descriptor that
    arrives.
    """

    def __init__(self, channel: socket.socket, factory: Any, reactor: Any) -> None:
        channel.setblocking(False)
        self.channel = channel
        self.factory = factory
        self.reactor = reactor

    def fileno(self) -> int:
        return self.channel.fileno()

    def logPrefix(self) -> str:
        return "fdpass-worker"

    def doRead(self) -> None:
        for _ in range(_BATCH):
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.channel, _BATCH, _BATCH)
            except (BlockingIOError, InterruptedError):
                return
            if not data and not fds:
                self.reactor.stop()
                return
            for fd in fds:
                try:
                    self.reactor.adoptStreamConnection(fd, socket.AF_INET, self.factory)
                finally:
                    os.close(fd)  # the reactor adopted a duplicate

    def connectionLost(self, reason: Any) -> None:
        pass


def fdpassWorker(fd: int, factory: str) -> None:
    reactor = _reactor()

    reactor.addReader(_Receiver(socket.socket(fileno=fd), namedAny(factory), reactor))
    print("READY", flush=True)
    reactor.run()


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] in ("reuseport", "fdpass") and argv[1].startswith("tcp:127.0.0.1:"):
        serve = reuseport if argv[0] == "reuseport" else fdpass
        serve(int(argv[1].rsplit(":", 1)[1]), argv[2], int(argv[3]))
    elif len(argv) == 3 and argv[0] == "reuseport-worker":
        reuseportWorker(int(argv[1]), argv[2])
    elif len(argv) == 3 and argv[0] == "fdpass-worker":
        fdpassWorker(int(argv[1]), argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
