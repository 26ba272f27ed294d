"""
The protocol factory of the worker-chaos test: tells each client which
process serves it, then echoes.
"""

import os

from twisted.internet.protocol import Factory, Protocol


class TaggedEcho(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"pid %d\n" % os.getpid())

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


factory = Factory.forProtocol(TaggedEcho)
