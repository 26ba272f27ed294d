"""
Small servers that show the API and serve as defaults.

C{echo} is the protocol factory C{twistd serversock} runs when given no
C{--factory}: every byte received is sent back.
"""

from twisted.internet.protocol import Factory, Protocol


class Echo(Protocol):
    """
    Send back every byte received.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


#: The default factory of C{twistd serversock}.
echo = Factory.forProtocol(Echo)

__all__ = ["Echo", "echo"]
