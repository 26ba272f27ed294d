"""
Small servers that show the API and serve as defaults.

C{echo} is the protocol factory C{twistd serversock} runs when given no
C{--factory}: every byte received is sent back.
"""

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Send back every byte received, also to a peer that half-closes
    (C{echo hi | socat - TCP:...} sends, then shuts down its sending side):
    without C{IHalfCloseableProtocol} Twisted takes the peer's end of
    stream as the end of the connection, and what is still buffered for the
    peer would be dropped.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        """
        The peer sent everything: close once all of it has gone back.
        """
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Nothing to do: the connection closes once the peer has closed too.
        """


#: The default factory of C{twistd serversock}.
echo = Factory.forProtocol(Echo)

__all__ = ["Echo", "echo"]
