"""
Types the core's annotations share: the addresses of server sockets and
connections, a peer as C{accept()} gives it, and what the core uses of a
Twisted server transport and of the port under it.

For annotations only: nothing here is called, and no module needs it at
run time (import it under C{TYPE_CHECKING}).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, Callable, Protocol, Union

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.python.failure import Failure

__all__ = [
    "StrOrBytesPath",
    "Address",
    "Peer",
    "Accept",
    "PortLike",
    "ServerTransport",
    "TransportClass",
    "IServerReactor",
]

if TYPE_CHECKING:

    class IServerReactor(IReactorFDSet, IReactorTime):
        """
        What a server socket runs on: a reactor that watches file
        descriptors and has a clock.  Every Twisted reactor is both, but
        Python's types cannot say "provides both" of two interfaces; so,
        as Twisted declares its own global reactor, this make-believe
        interface names the pair, and
        L{ServerSocket<twisted_serversock.serversocket.ServerSocket>} casts
        the reactor it is given (an C{IReactorFDSet}) to it once.
        """

#: A file system path, as C{os.fspath} takes it.
StrOrBytesPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: An address a server socket binds, or either end of a connection has.
Address = Union[IPv4Address, IPv6Address, UNIXAddress]

#: A peer as C{accept()} returns it: C{(host, port)} for IPv4,
#: C{(host, port, flowinfo, scope)} for IPv6 (the scope already in the
#: host), a path (C{""} or C{b""} if unnamed) for UNIX.
Peer = Union["tuple[str, int]", "tuple[str, int, int, int]", str, bytes]

#: What a listening port hands each accepted socket and its peer to.
Accept = Callable[[socket.socket, Peer], None]


class PortLike(Protocol):
    """
    The listening port an accepted connection was accepted on, as Twisted's
    server transports use it: it numbers the connections, and names the
    local address.
    """

    sessionno: int

    def getHost(self) -> Address:
        """
        @return: the address the port listens on.
        """


class ServerTransport(Protocol):
    """
    What the core uses of a connection's Twisted server transport: a
    C{tcp.Server}, a C{unix.Server}, or the test double's
    (L{twisted_serversock.testing}).  Twisted's transports are not
    annotated, so this lists what is used, not all they have.
    """

    #: The protocol it delivers to (C{Any}: an attached protocol is
    #: duck-typed, checked by its methods when attached).
    protocol: Any

    @property
    def reactor(self) -> Any:
        """
        The reactor it runs on.  (C{Any}: Twisted types it as an
        C{IReactorFDSet}, the stream-mode timers use it as a clock, and the
        test double's is a C{Clock}; no one interface says all three.)
        """

    @property
    def connected(self) -> int:
        """
        Whether it is connected.
        """

    @property
    def disconnecting(self) -> int:
        """
        Whether it is closing.
        """

    @property
    def client(self) -> tuple[Any, ...]:
        """
        The peer as C{accept()} gave it (for UNIX, C{(path, None)}).
        """

    @property
    def hostname(self) -> object:
        """
        The peer's host (IP) or path (UNIX).
        """

    @property
    def producer(self) -> object:
        """
        The registered producer, or C{None}.
        """

    def getHandle(self) -> socket.socket:
        """
        @return: the connection's socket.
        """

    def getHost(self) -> Address:
        """
        @return: the local address.
        """

    def getPeer(self) -> Address:
        """
        @return: the peer's address.
        """

    def write(self, data: bytes) -> None:
        """
        Send C{data}.
        """

    def loseConnection(self) -> None:
        """
        Close after what is written is sent.
        """

    def loseWriteConnection(self) -> None:
        """
        Shut down the sending side after what is written is sent.
        """

    def abortConnection(self) -> None:
        """
        Close at once, dropping what is not sent.
        """

    def readConnectionLost(self, reason: Failure) -> None:
        """
        The peer shut down its sending side.
        """

    def pauseProducing(self) -> None:
        """
        Stop reading.
        """

    def resumeProducing(self) -> None:
        """
        Read again.
        """

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """
        Register C{producer} for the write buffer's flow control.
        """

    def unregisterProducer(self) -> None:
        """
        Unregister the producer.
        """


#: How a connection's Twisted transport is built: called as
#: C{transportClass(skt, protocol, peer, port, sessionno, reactor)}, like
#: Twisted's C{tcp.Server}.  (Its arguments are not spelled out: Twisted
#: annotates C{tcp.Server} as taking an C{IProtocol} and a C{tcp.Port},
#: narrower than what it uses - the stream-mode protocol and
#: L{ListeningPort<twisted_serversock._port.ListeningPort>} work.)
TransportClass = Callable[..., ServerTransport]
