# -*- test-case-name: tests.test_streams -*-
"""
The stream interfaces of an accepted connection (Gecko's
C{nsIAsyncInputStream}, C{nsIAsyncOutputStream} and their callbacks).
Part of the contract: import them from L{twisted_serversock.interfaces},
which re-exports them (and their Gecko names).
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IAsyncInputStream", "IAsyncOutputStream", "IInputStreamCallback", "IOutputStreamCallback"]

class IInputStreamCallback(Interface):
    """
    Notified by L{IAsyncInputStream.asyncWait} (Gecko's
    C{nsIInputStreamCallback}).  A plain callable taking the stream may be
    used instead.
    """

    def onInputStreamReady(stream: IAsyncInputStream) -> None:
        """
        The stream has data to read, or it is closed.
        """


class IOutputStreamCallback(Interface):
    """
    Notified by L{IAsyncOutputStream.asyncWait} (Gecko's
    C{nsIOutputStreamCallback}).  A plain callable taking the stream may be
    used instead.
    """

    def onOutputStreamReady(stream: IAsyncOutputStream) -> None:
        """
        The stream can accept data again, or it is closed.
        """


class IAsyncInputStream(Interface):
    """
    The non-blocking input stream of an accepted connection (Gecko's
    C{nsIAsyncInputStream}).

    Bytes read from the socket are buffered up to C{segsize * segcount}; past
    that, reading from the socket pauses until the consumer drains the
    buffer, so a slow consumer bounds the memory a fast peer can use.
    """

    WAIT_CLOSURE_ONLY = Attribute(
        "asyncWait flag (1): notify only when the stream is closed."
    )

    def available() -> int:
        """
        The number of bytes that can be read without blocking.  Once the
        stream is closed and drained this raises L{NSError} with the close
        status (C{NS_BASE_STREAM_CLOSED} after a clean end of stream).
        """

    def read(count: int) -> bytes:
        """
        Read up to C{count} bytes.  Returns C{b""} at a clean end of stream;
        raises C{NS_BASE_STREAM_WOULD_BLOCK} while the stream is open and
        empty, and the close status after an error.
        """

    def asyncWait(
        callback: object,
        flags: int = 0,
        requestedCount: int = 0,
        eventTarget: object = None,
    ) -> None:
        """
        Ask for one notification when data is readable or the stream is
        closed.  C{callback} is an L{IInputStreamCallback} or a callable
        taking the stream; C{None} cancels a pending wait.  The notification
        is made by the reactor, never from inside this call.
        C{requestedCount} and C{eventTarget} are accepted for Gecko
        compatibility and ignored (every callback runs in the reactor
        thread).
        """

    def close() -> None:
        """
        Close the stream (C{NS_BASE_STREAM_CLOSED}); unread data is dropped.
        """

    def closeWithStatus(status: int) -> None:
        """
        Close the stream with C{status}; readers then see that status.  A
        success status closes only this stream; an error status fails the
        whole connection, as in Gecko: the output stream reports it too, and
        bytes already written are flushed before the connection closes.
        """

    def isNonBlocking() -> bool:
        """
        Always C{True}: nothing may block the reactor.
        """


class IAsyncOutputStream(Interface):
    """
    The non-blocking output stream of an accepted connection (Gecko's
    C{nsIAsyncOutputStream}), backed by the Twisted transport's write buffer.
    """

    WAIT_CLOSURE_ONLY = Attribute(
        "asyncWait flag (1): notify only when the stream is closed."
    )

    def write(data: bytes) -> int:
        """
        Write as much of C{data} as the buffer accepts and return the number
        of bytes taken; raises C{NS_BASE_STREAM_WOULD_BLOCK} when none can be
        taken, and the close status once the stream is closed.
        """

    def asyncWait(
        callback: object,
        flags: int = 0,
        requestedCount: int = 0,
        eventTarget: object = None,
    ) -> None:
        """
        Ask for one notification when the stream can accept data again or is
        closed.  Same rules as L{IAsyncInputStream.asyncWait}.  When the
        buffer is full, "again" means once Twisted's write buffer has fully
        drained (Twisted tells its producers no sooner).
        """

    def flush() -> None:
        """
        Nothing to do: written data is already queued on the transport,
        which sends it as fast as the peer reads.
        """

    def close() -> None:
        """
        Close the stream; data already written is still delivered.  If the
        input side is closed too, the connection is closed once flushed;
        otherwise our side of the connection is shut down for writing
        (the peer reads end of stream).
        """

    def closeWithStatus(status: int) -> None:
        """
        Close the stream with C{status}; writers then see that status.  An
        error status fails the whole connection (see
        L{IAsyncInputStream.closeWithStatus}).
        """

    def isNonBlocking() -> bool:
        """
        Always C{True}.
        """
