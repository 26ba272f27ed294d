# -*- test-case-name: tests.test_testing -*-
"""
The Twisted side of L{twisted_serversock.testing}'s memory connections:
what stands in for an accepted socket, for Twisted's C{tcp.Server} built on
it, and for the listening port it was accepted on.  The accepted-connection
code (L{AcceptedSocket<twisted_serversock._accepted.AcceptedSocket>}, the
real L{SocketTransport<twisted_serversock.transport.SocketTransport>} and
streams) runs over these unchanged.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ._types import Address, Peer

__all__ = ["FakeSocket", "MemoryTwistedTransport", "MemoryPort"]


class FakeSocket:
    """
    The handle of a L{MemoryConnection}'s Twisted transport: what
    L{SocketTransport} asks of a socket (its family, socket options, a
    C{MSG_PEEK} for C{isAlive()}), without a socket.
    """

    def __init__(self, family: int) -> None:
        self.family = family
        self.closed = False
        self.options: dict[tuple[int, int], int] = {}

    def close(self) -> None:
        self.closed = True

    def fileno(self) -> int:
        return -1

    def recv(self, size: int, flags: int = 0) -> bytes:
        raise BlockingIOError("nothing to read from a memory connection")

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[level, option] = int(value)

    def getsockopt(self, level: int, option: int, size: int = 0) -> int | bytes:
        if (level, option) == (socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", -1)):
            if self.family != socket.AF_UNIX:
                raise OSError("SO_PEERCRED on a TCP connection")
            return struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        return self.options.get((level, option), 0)


class MemoryTwistedTransport(StringTransport):
    """
    A C{StringTransport} standing in for Twisted's C{tcp.Server}: it keeps
    the attributes the accepted-connection code reads, delivers the
    connection's loss through the clock as the reactor would, and holds
    bytes fed while reading is paused.
    """

    def __init__(
        self, skt: FakeSocket, protocol: Any, peer: Peer, port: MemoryPort, sessionno: int, reactor: IReactorTime
    ) -> None:
        super().__init__(hostAddress=port.getHost(), peerAddress=port.peerAddress(peer))
        self.socket = skt
        self.protocol = protocol
        self.reactor = reactor
        self.sessionno = sessionno
        self.client: tuple[Any, ...] = peer if type(peer) is tuple else (peer, None)
        self.hostname: str | bytes | None = peer[0] if isinstance(peer, tuple) else peer
        # What bufferedOutput() reads: everything written is sent at once.
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self._aborting = False
        self.aborted = False
        self.held: list[bytes] = []
        self.lost = False
        self.logstr = self._getLogPrefix(protocol)
        self.repstr = f"<{type(protocol).__name__} #{sessionno} on memory>"

    def __repr__(self) -> str:
        return self.repstr

    def _getLogPrefix(self, protocol: Any) -> str:
        logPrefix = getattr(protocol, "logPrefix", None)
        return logPrefix() if callable(logPrefix) else type(protocol).__name__

    def getHandle(self) -> socket.socket:
        return cast("socket.socket", self.socket)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        held, self.held = self.held, []
        for data in held:
            self.deliver(data)

    def deliver(self, data: bytes) -> None:
        if not self.connected or self.disconnecting:
            return
        if self.producerState != "producing" or self.held:
            self.held.append(data)
        else:
            self.protocol.dataReceived(data)

    def readConnectionLost(self, reason: Failure) -> None:
        # tcp.Connection's: a half-closeable protocol hears of it, any
        # other loses the connection.
        protocol = self.protocol
        if IHalfCloseableProtocol.providedBy(protocol):
            protocol.readConnectionLost()
        else:
            self.loseConnection()

    def loseWriteConnection(self) -> None:
        # Our side's half-close: the bytes written so far are all the peer
        # gets; the connection stays up for reading.
        pass

    def loseConnection(self) -> None:
        if self.lost:
            return
        super().loseConnection()
        self.reactor.callLater(0, self.connectionLost, Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        if self.lost:
            return
        self._aborting = self.aborted = True
        super().loseConnection()
        self.reactor.callLater(0, self.connectionLost, Failure(ConnectionLost()))

    def connectionLost(self, reason: Failure) -> None:
        if self.lost:
            return
        self.lost = True
        self.connected = False
        self.disconnected = True
        self.socket.close()
        producer = self.producer
        if producer is not None:
            self.producer = None
            producer.stopProducing()
        self.protocol.connectionLost(reason)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.disconnected:
            producer.stopProducing()
            return
        super().registerProducer(producer, streaming)
        if not streaming:
            # As Twisted's FileDescriptor: a pull producer is asked at once.
            producer.resumeProducing()


class MemoryPort:
    """
    The listening port a L{MemoryConnection} says it was accepted on: it
    numbers connections and knows the addresses.
    """

    def __init__(self, host: Address) -> None:
        self.sessionno = 0
        self.host = host

    def getHost(self) -> Address:
        return self.host

    def peerAddress(self, peer: Peer) -> Address:
        if isinstance(peer, tuple):
            return (IPv4Address if len(peer) == 2 else IPv6Address)("TCP", *peer[:2])
        return UNIXAddress(peer or None)
