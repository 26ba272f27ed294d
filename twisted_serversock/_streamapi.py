"""
What the streams of an accepted connection need from the connection.

L{InputStream<twisted_serversock.streams.InputStream>} and
L{OutputStream<twisted_serversock.streams.OutputStream>} talk to their
connection only through L{StreamBackend}, so that C{streams.py} does not
import the transport (and the transport can change without the streams).
The stream-mode protocol (C{_streammode.StreamMode}) implements it.
"""

from __future__ import annotations

from typing import Callable, Protocol

__all__ = ["StreamBackend"]


class StreamBackend(Protocol):
    """
    The connection behind a pair of streams.
    """

    def schedule(self, function: Callable[..., object], *args: object) -> None:
        """
        Call C{function(*args)} later from the reactor, in order with every
        other notification of the same server socket.
        """

    def pauseReading(self) -> None:
        """
        Stop reading from the peer: the input stream's buffer is full.
        """

    def resumeReading(self) -> None:
        """
        Read from the peer again (unless the connection no longer reads).
        """

    def bufferedOutput(self) -> int:
        """
        @return: how many written bytes wait to be sent.
        """

    def write(self, data: bytes) -> None:
        """
        Send C{data} (after what is already buffered).
        """

    def registerProducer(self, producer: object) -> None:
        """
        Register C{producer} as a pull producer, resumed when the write
        buffer drains.
        """

    def unregisterProducer(self, producer: object) -> None:
        """
        Unregister C{producer} if it is still the registered one.
        """

    def inputClosed(self, status: int) -> None:
        """
        The input stream was closed with C{status} by its user.
        """

    def outputClosed(self, status: int) -> None:
        """
        The output stream was closed with C{status} by its user.
        """
