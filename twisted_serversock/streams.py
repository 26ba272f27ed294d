# -*- test-case-name: tests.test_streams -*-
"""
Gecko-style asynchronous input and output streams of an accepted
connection, built on Twisted's producer/consumer machinery.

The input stream is a bounded buffer that the reactor fills: past its
bound it pauses the Twisted transport (C{pauseProducing}), and reading below
the bound resumes it, so a slow consumer holds a fast peer back through TCP
flow control instead of growing memory.

The output stream writes into the Twisted transport's own write buffer and
derives writability from that buffer's size: it accepts bytes while fewer
than C{segsize * segcount} are waiting to be sent.  To learn when a full
buffer has drained it registers itself, only while someone waits, as a pull
producer, which Twisted resumes when its buffer empties.  (A streaming
producer would only be resumed after being paused, which Twisted does only
past its own C{bufferSize}: a limit at or below that would never wake up.)

Notifications from C{asyncWait} are one-shot.  When the awaited condition
already holds, the notification is queued on the server socket's FIFO; when
a reactor event (data, end of stream, drained buffer) brings it about, it is
made from that event.  Either way it is the reactor that calls it, and a
wait can be cancelled (C{asyncWait(None)}) or replaced until then.

Closing a stream with C{NS_BASE_STREAM_CLOSED} (C{close()}, or any success
status) closes that direction only.  Closing it with an error status fails
the whole connection with that status, as in Gecko
(C{nsSocketTransport::OnMsgInputClosed}/C{OnMsgOutputClosed}): the other
stream reports it too, and the connection closes once written bytes are
flushed.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Callable, cast

from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import IAsyncInputStream, IAsyncOutputStream
from .results import (
    NS_BASE_STREAM_CLOSED,
    NS_BASE_STREAM_WOULD_BLOCK,
    NS_ERROR_INVALID_ARG,
    NS_OK,
    NSError,
    succeeded,
)

if TYPE_CHECKING:
    from ._streamapi import StreamBackend

__all__ = [
    "InputStream",
    "OutputStream",
    "DEFAULT_SEGMENT_SIZE",
    "DEFAULT_SEGMENT_COUNT",
    "WAIT_CLOSURE_ONLY",
]

#: Gecko's default segment size and count: 24 segments of 4 KiB.
DEFAULT_SEGMENT_SIZE = 4096
DEFAULT_SEGMENT_COUNT = 24

#: asyncWait flag: notify only when the stream is closed.
WAIT_CLOSURE_ONLY = 1

_log = Logger()


def bufferLimit(segsize: int, segcount: int) -> int:
    """
    The byte bound of a stream opened with C{segsize} and C{segcount}
    (0 means the default of each).

    @raise NSError: C{NS_ERROR_INVALID_ARG} for a negative or non-integer
        value.
    """
    for name, value in (("segsize", segsize), ("segcount", segcount)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise NSError(NS_ERROR_INVALID_ARG, f"{name} must be an integer >= 0, not {value!r}")
    return (segsize or DEFAULT_SEGMENT_SIZE) * (segcount or DEFAULT_SEGMENT_COUNT)


def _checkStatus(status: object) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 0xFFFFFFFF:
        raise NSError(NS_ERROR_INVALID_ARG, f"status must be a result code, not {status!r}")


def _notify(callback: object, method: str, stream: object) -> None:
    # An nsIInputStreamCallback/nsIOutputStreamCallback, or a callable.
    cast("Callable[[object], object]", getattr(callback, method, callback))(stream)


class _AsyncStream:
    """
    What both streams share: the close status and the one-shot waiter.

    @ivar _status: C{NS_OK} while open, else the close status.
    @ivar _waiter: the pending C{asyncWait} callback, or C{None}.
    @ivar _closureOnly: whether the waiter wants closure only.
    @ivar _generation: counts C{asyncWait} calls, so that a notification
        queued for an earlier wait is dropped once that wait was cancelled
        or replaced.
    """

    __slots__ = ("_backend", "_status", "_waiter", "_closureOnly", "_generation")

    WAIT_CLOSURE_ONLY = WAIT_CLOSURE_ONLY
    _callbackMethod = ""

    def __init__(self, backend: StreamBackend) -> None:
        self._backend = backend
        self._status = NS_OK
        self._waiter: object = None
        self._closureOnly = False
        self._generation = 0

    def _ready(self) -> bool:
        raise NotImplementedError

    def _whenNotReady(self) -> None:
        """
        Called by L{asyncWait} when the condition does not hold yet.
        """

    def asyncWait(
        self,
        callback: object,
        flags: int = 0,
        requestedCount: int = 0,
        eventTarget: object = None,
    ) -> None:
        if callback is None:
            self._generation += 1
            self._waiter = None
            return
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise NSError(NS_ERROR_INVALID_ARG, f"flags must be an integer, not {flags!r}")
        if not (callable(callback) or callable(getattr(callback, self._callbackMethod, None))):
            raise NSError(
                NS_ERROR_INVALID_ARG,
                f"callback must be callable or have {self._callbackMethod}(), not {callback!r}",
            )
        self._generation += 1
        self._waiter = callback
        self._closureOnly = bool(flags & WAIT_CLOSURE_ONLY)
        if self._ready():
            self._fire(direct=False)
        else:
            self._whenNotReady()

    def _fire(self, direct: bool) -> None:
        """
        Notify the waiter now (C{direct}, from a reactor event) or from the
        FIFO.  A queued notification stays cancellable: the waiter is kept
        until it is delivered, so C{asyncWait(None)} or a new C{asyncWait}
        before then drops it (as in Gecko, where the callback is only taken
        when the socket thread delivers it).
        """
        if not direct:
            self._backend.schedule(self._deliver, self._generation)
            return
        callback = self._waiter
        self._waiter = None
        try:
            _notify(callback, self._callbackMethod, self)
        except Exception:
            _log.failure("Unhandled error in {method} callback", method=self._callbackMethod)

    def wake(self, direct: bool) -> None:
        """
        Package-internal: notify a waiter, if any, now (C{direct}) or from
        the FIFO; the backend calls it after closing both streams.
        """
        if self._waiter is not None:
            self._fire(direct)

    def _deliver(self, generation: int) -> None:
        # A queued notification: only if its wait is still the current one
        # and was not notified directly in the meantime.
        if generation == self._generation and self._waiter is not None:
            self._fire(direct=True)

    def isNonBlocking(self) -> bool:
        return True

    def close(self) -> None:
        self.closeWithStatus(NS_BASE_STREAM_CLOSED)

    def closeWithStatus(self, status: int) -> None:
        raise NotImplementedError


@implementer(IAsyncInputStream)
class InputStream(_AsyncStream):
    """
    The bounded, non-blocking input stream of a L{SocketTransport<twisted_serversock.transport.SocketTransport>}.

    It exists from the first byte received (so nothing that arrives before
    the listener opens it is lost); L{twisted_serversock.transport.SocketTransport.openInputStream} sets
    its bound and hands it out.

    @ivar _chunks: the received, unread byte strings.
    @ivar _size: their total length.
    @ivar _limit: past this many buffered bytes, reading pauses.
    @ivar _paused: whether this stream paused the transport.
    @ivar _opened: whether the stream was handed out.
    """

    __slots__ = ("_chunks", "_size", "_limit", "_paused", "_opened")

    _callbackMethod = "onInputStreamReady"

    def __init__(self, backend: StreamBackend) -> None:
        super().__init__(backend)
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = DEFAULT_SEGMENT_SIZE * DEFAULT_SEGMENT_COUNT
        self._paused = False
        self._opened = False

    # --- the backend's side (package-internal)

    @property
    def opened(self) -> bool:
        """
        Package-internal: whether the stream was handed out
        (L{twisted_serversock.transport.SocketTransport.openInputStream}).
        """
        return self._opened

    def openWithLimit(self, limit: int) -> None:
        """
        Package-internal: the stream is handed out, bounded to C{limit}
        buffered bytes.
        """
        self._opened = True
        self._limit = limit
        self._checkLimit()

    def _checkLimit(self) -> None:
        if self._size > self._limit:
            if not self._paused:
                self._paused = True
                self._backend.pauseReading()
        elif self._paused:
            self._paused = False
            self._backend.resumeReading()

    def feed(self, data: bytes) -> None:
        """
        Package-internal: C{data} arrived from the peer.
        """
        if self._status != NS_OK:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._limit and not self._paused:
            self._paused = True
            self._backend.pauseReading()
        if self._waiter is not None and not self._closureOnly:
            self._fire(direct=True)

    def ended(self, status: int, keepData: bool, direct: bool | None) -> bool:
        """
        Package-internal: the connection ended (or our side closed it) with C{status}.

        @param keepData: whether bytes already received stay readable (the
            peer ended the stream) or are dropped (we closed it).
        @param direct: how to notify a waiter (see L{_fire}); C{None}: not
            now, the caller calls L{wake}.
        @return: whether the stream was open until now.
        """
        if self._status != NS_OK:
            return False
        self._status = status
        if not keepData:
            self._chunks.clear()
            self._size = 0
        if direct is not None:
            self.wake(direct)
        return True

    def detach(self) -> tuple[list[bytes], bool]:
        """
        Package-internal: the connection is handed to a protocol.  Take
        every buffered byte string, and whether this stream had paused
        reading (the caller resumes it; the stream no longer does).
        """
        chunks = list(self._chunks)
        self._chunks.clear()
        self._size = 0
        paused, self._paused = self._paused, False
        return chunks, paused

    def _ready(self) -> bool:
        if self._closureOnly:
            return self._status != NS_OK
        return self._size > 0 or self._status != NS_OK

    # --- IAsyncInputStream

    def available(self) -> int:
        if self._size:
            return self._size
        if self._status != NS_OK:
            raise NSError(self._status, "the input stream is closed")
        return 0

    def read(self, count: int) -> bytes:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise NSError(NS_ERROR_INVALID_ARG, f"count must be an integer >= 0, not {count!r}")
        if not self._size:
            if self._status == NS_OK:
                raise NSError(NS_BASE_STREAM_WOULD_BLOCK, "no data buffered yet")
            if self._status == NS_BASE_STREAM_CLOSED:
                return b""
            raise NSError(self._status, "the input stream is closed")
        if not count:
            return b""
        chunks = self._chunks
        if count >= self._size:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._size = 0
        else:
            parts = []
            need = count
            while need:
                chunk = chunks[0]
                if len(chunk) <= need:
                    parts.append(chunks.popleft())
                    need -= len(chunk)
                else:
                    parts.append(chunk[:need])
                    chunks[0] = chunk[need:]
                    need = 0
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            self._size -= count
        if self._paused and self._size <= self._limit:
            self._paused = False
            self._backend.resumeReading()
        return data

    def closeWithStatus(self, status: int) -> None:
        _checkStatus(status)
        if self._status != NS_OK:
            return
        if succeeded(status):
            status = NS_BASE_STREAM_CLOSED
        self.ended(status, keepData=False, direct=False)
        self._backend.inputClosed(status)


@implementer(IAsyncOutputStream)
class OutputStream(_AsyncStream):
    """
    The non-blocking output stream of a L{SocketTransport<twisted_serversock.transport.SocketTransport>}.

    @ivar _limit: the most bytes that may wait in the transport's buffer.
    @ivar _registered: whether this stream is registered as the transport's
        pull producer (only while a waiter waits for room).
    """

    __slots__ = ("_limit", "_registered")

    _callbackMethod = "onOutputStreamReady"

    def __init__(self, backend: StreamBackend, limit: int) -> None:
        super().__init__(backend)
        self._limit = limit
        self._registered = False

    def _ready(self) -> bool:
        if self._status != NS_OK:
            return True
        return not self._closureOnly and self._backend.bufferedOutput() < self._limit

    def _whenNotReady(self) -> None:
        if not self._registered and not self._closureOnly:
            self._registered = True
            self._backend.registerProducer(self)

    def unregister(self) -> None:
        """
        Package-internal: stop being the transport's producer, if it is.
        """
        if self._registered:
            self._registered = False
            self._backend.unregisterProducer(self)

    def ended(self, status: int, direct: bool | None) -> bool:
        """
        Package-internal: like L{InputStream.ended}.
        """
        if self._status != NS_OK:
            return False
        self._status = status
        self.unregister()
        if direct is not None:
            self.wake(direct)
        return True

    # --- IPullProducer, while registered

    def resumeProducing(self) -> None:
        """
        Twisted's write buffer drained: wake the waiter.
        """
        if self._waiter is None:
            self.unregister()
        elif self._ready():
            self.unregister()
            self._fire(direct=True)

    def stopProducing(self) -> None:
        """
        The connection is gone; Twisted already dropped us as its producer.
        """
        self._registered = False

    # --- IAsyncOutputStream

    def write(self, data: bytes) -> int:
        if self._status != NS_OK:
            raise NSError(self._status, "the output stream is closed")
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise NSError(
                    NS_ERROR_INVALID_ARG,
                    f"data must be bytes-like, not {type(data).__name__}",
                )
            data = bytes(data)
        size = len(data)
        if not size:
            return 0
        room = self._limit - self._backend.bufferedOutput()
        if room <= 0:
            raise NSError(NS_BASE_STREAM_WOULD_BLOCK, "the output buffer is full")
        if size > room:
            data = data[:room]
            size = room
        self._backend.write(data)
        return size

    def flush(self) -> None:
        if self._status not in (NS_OK, NS_BASE_STREAM_CLOSED):
            raise NSError(self._status, "the output stream is closed")

    def closeWithStatus(self, status: int) -> None:
        _checkStatus(status)
        if self._status != NS_OK:
            return
        if succeeded(status):
            status = NS_BASE_STREAM_CLOSED
        self.ended(status, direct=False)
        self._backend.outputClosed(status)
