"""
The streams of an accepted connection (C{IAsyncInputStream},
C{IAsyncOutputStream}), with Gecko's semantics: reading, writing, asyncWait, back-pressure in both
directions and big transfers, on real loopback sockets with the real
reactor.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from twisted_serversock import NSError, results

from .conftest import Client, Served, code, eventually, failures, sleep, timeout

#: The most bytes Twisted reads from a TCP socket in one go.
TWISTED_READ = 65536


pytestmark = pytest.mark.usefixtures("noUnhandledErrors")


async def assertNotifiedAfterReturn(stream: Any) -> None:
    """
    C{stream} is ready already: C{asyncWait} must still notify through the
    reactor, after C{asyncWait} has returned, never from inside it.
    """
    state = {"returned": False}
    seen: list[bool] = []
    d: defer.Deferred[Any] = defer.Deferred()

    def callback(ready: Any) -> None:
        seen.append(state["returned"])
        d.callback(ready)

    stream.asyncWait(callback)
    state["returned"] = True
    assert await timeout(d) is stream
    assert seen == [True]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clientPending(client: Client) -> int:
    """
    Bytes the client's Twisted transport holds that the kernel did not take.
    """
    t = client.transport
    return len(t.dataBuffer) - t.offset + t._tempDataLen  # type: ignore[no-any-return]


async def drained(t: Any) -> None:
    """
    Wait until every notification already queued on C{t}'s server socket
    FIFO was delivered: a marker queued now runs after them (the FIFO keeps
    order), and direct notifications were made from the reactor event that
    a test waited for.  This replaces a fixed sleep before asserting that
    no notification came.
    """
    marker: defer.Deferred[None] = defer.Deferred()
    t._queue.call(marker.callback, None)
    await timeout(marker)


def serverBuffered(t: Any) -> int:
    """
    Bytes read by the server before its input stream was opened (white box).
    """
    inp = None if t._mode is None else t._mode._input
    return 0 if inp is None else inp._size


def shrinkBuffers(client: Client, t: Any, size: int = 16384) -> None:
    """
    Make the kernel's socket buffers small, so that back-pressure shows up
    after a few hundred KiB instead of many MiB.
    """
    t._tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    t._tcp.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class Waiter:
    """
    An asyncWait callback (both kinds) that records its calls and fires a
    Deferred at the first one.
    """

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.fired: defer.Deferred[Any] = defer.Deferred()

    def _called(self, stream: Any) -> None:
        self.calls.append(stream)
        if not self.fired.called:
            self.fired.callback(stream)

    onInputStreamReady = _called
    onOutputStreamReady = _called

    def wait(self) -> defer.Deferred[Any]:
        return timeout(self.fired)


class Reader:
    """
    Reads an input stream to its end with asyncWait, checking the bound on
    what is buffered at every step.

    @ivar done: fires with everything read once the stream ended cleanly.
    """

    def __init__(self, inp: Any, chunk: int = TWISTED_READ, bound: int | None = None) -> None:
        self.inp = inp
        self.chunk = chunk
        self.bound = bound
        self.buf = bytearray()
        self.maxAvailable = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def start(self) -> defer.Deferred[bytes]:
        self.inp.asyncWait(self)
        return timeout(self.done, 30)

    def onInputStreamReady(self, inp: Any) -> None:
        try:
            while True:
                try:
                    available = inp.available()
                except NSError as e:
                    assert e.result == results.NS_BASE_STREAM_CLOSED
                    assert inp.read(self.chunk) == b""
                    self.done.callback(bytes(self.buf))
                    return
                self.maxAvailable = max(self.maxAvailable, available)
                if self.bound is not None:
                    assert available <= self.bound
                try:
                    data = inp.read(self.chunk)
                except NSError as e:
                    assert e.result == results.NS_BASE_STREAM_WOULD_BLOCK
                    inp.asyncWait(self)
                    return
                assert data, "b'' while available() did not raise"
                assert len(data) <= self.chunk
                self.buf += data
        except BaseException:
            self.done.errback()


class Writer:
    """
    Writes C{data} to an output stream, waiting with asyncWait whenever it
    would block.

    @ivar done: fires with the number of bytes written.
    """

    def __init__(self, out: Any, data: bytes, chunk: int = 1 << 20) -> None:
        self.out = out
        self.data = memoryview(data)
        self.chunk = chunk
        self.sent = 0
        self.wouldBlock = 0
        self.waiting = False
        #: the value of C{self.gate} at each onOutputStreamReady
        self.wakeups: list[bool] = []
        self.gate = False
        self.done: defer.Deferred[int] = defer.Deferred()

    def start(self) -> defer.Deferred[int]:
        self.pump()
        return timeout(self.done, 30)

    def onOutputStreamReady(self, out: Any) -> None:
        self.waiting = False
        self.wakeups.append(self.gate)
        self.pump()

    def pump(self) -> None:
        try:
            while self.sent < len(self.data):
                try:
                    n = self.out.write(self.data[self.sent : self.sent + self.chunk])
                except NSError as e:
                    assert e.result == results.NS_BASE_STREAM_WOULD_BLOCK
                    self.wouldBlock += 1
                    self.waiting = True
                    self.out.asyncWait(self)
                    return
                assert 0 < n <= self.chunk
                self.sent += n
            self.done.callback(self.sent)
        except BaseException:
            self.done.errback()


async def stalled(writer: Writer, quiet: float = 0.3) -> None:
    """
    Wait until C{writer} waits for room and makes no progress for C{quiet}
    seconds (there is no event for "the peer's buffers are full").
    """
    for _ in range(int(10 / quiet)):
        before = writer.sent
        await sleep(quiet)
        if writer.waiting and writer.sent == before:
            return
    raise AssertionError(f"the writer never stalled ({writer.sent} bytes sent)")


# ----------------------------------------------------------------------
# Input: reading


@pytest_twisted.ensureDeferred
async def test_openEmpty(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    assert inp.isNonBlocking() is True
    assert inp.available() == 0
    with pytest.raises(NSError) as e:
        inp.read(10)
    assert code(e) == "NS_BASE_STREAM_WOULD_BLOCK"
    assert inp.available() == 0


@pytest_twisted.ensureDeferred
async def test_readUpToCount(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"0123456789")
    await eventually(lambda: inp.available() == 10)
    assert inp.read(3) == b"012"
    assert inp.available() == 7
    assert inp.read(0) == b""
    assert inp.available() == 7
    assert inp.read(4) == b"3456"
    assert inp.read(100) == b"789"
    assert inp.available() == 0
    with pytest.raises(NSError) as e:
        inp.read(1)
    assert code(e) == "NS_BASE_STREAM_WOULD_BLOCK"


@pytest_twisted.ensureDeferred
async def test_readAcrossChunks(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    expected = b""
    for part in (b"abc", b"defgh", b"ij"):
        client.transport.write(part)
        expected += part
        await eventually(lambda: inp.available() == len(expected))
    assert inp.read(4) == b"abcd"
    assert inp.read(5) == b"efghi"
    assert inp.read(5) == b"j"


@pytest.mark.parametrize("bad", [-1, "3", None, 1.5, True])
@pytest_twisted.ensureDeferred
async def test_readBadCount(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"data")
    await eventually(lambda: inp.available() == 4)
    with pytest.raises(NSError) as e:
        inp.read(bad)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert inp.read(4) == b"data"


@pytest_twisted.ensureDeferred
async def test_bytesBeforeOpenNotLost(served: Served) -> None:
    client, t = await served.pair()
    client.transport.write(b"early bird")
    await eventually(lambda: serverBuffered(t) == 10)
    inp = t.openInputStream()
    assert inp.available() == 10
    client.transport.write(b", late")
    await eventually(lambda: inp.available() == 16)
    assert inp.read(100) == b"early bird, late"


@pytest_twisted.ensureDeferred
async def test_manyBytesBeforeOpenBoundedAndNotLost(served: Served) -> None:
    """
    Before the stream is opened the default bound (4096 x 24) applies;
    opening it with a bigger one and reading gets every byte.
    """
    client, t = await served.pair()
    shrinkBuffers(client, t)
    data = os.urandom(2 << 20)
    client.transport.write(data)
    client.transport.loseWriteConnection()
    await eventually(lambda: serverBuffered(t) > 4096 * 24)
    await sleep(0.2)
    assert serverBuffered(t) <= 4096 * 24 + TWISTED_READ
    assert clientPending(client) > 0
    inp = t.openInputStream(0, 65536, 8)
    received = await Reader(inp, bound=65536 * 8 + TWISTED_READ).start()
    assert len(received) == len(data)
    assert sha(received) == sha(data)


@pytest_twisted.ensureDeferred
async def test_cleanEndOfStream(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"last")
    client.transport.loseConnection()
    await client.whenClosed()
    waiter = Waiter()
    inp.asyncWait(waiter, inp.WAIT_CLOSURE_ONLY)
    await waiter.wait()
    assert not t.isAlive()
    # Data before the end is still readable; then b"" and CLOSED.
    assert inp.available() == 4
    assert inp.read(2) == b"la"
    assert inp.available() == 2
    assert inp.read(10) == b"st"
    assert inp.read(10) == b""
    assert inp.read(10) == b""
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_BASE_STREAM_CLOSED"


@pytest_twisted.ensureDeferred
async def test_openAfterEndOfStream(served: Served) -> None:
    client, t = await served.pair()
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())
    inp = t.openInputStream()
    waiter = Waiter()
    inp.asyncWait(waiter)
    assert await waiter.wait() is inp
    assert inp.read(1) == b""
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_BASE_STREAM_CLOSED"


@pytest_twisted.ensureDeferred
async def test_inputCloseDropsData(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"unread")
    await eventually(lambda: inp.available() == 6)
    waiter = Waiter()
    inp.asyncWait(waiter, inp.WAIT_CLOSURE_ONLY)
    inp.close()
    assert await waiter.wait() is inp
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_BASE_STREAM_CLOSED"
    assert inp.read(6) == b""
    # The connection stays up for the output stream.
    out = t.openOutputStream()
    assert out.write(b"still here") == 10
    assert await client.waitFor(10) == b"still here"


@pytest_twisted.ensureDeferred
async def test_inputCloseWithStatus(served: Served) -> None:
    """
    As in Gecko, closing a stream with an error fails the connection with
    it: the other stream reports it too, and written bytes are flushed
    before the connection closes.
    """
    client, t = await served.pair()
    inp = t.openInputStream()
    out = t.openOutputStream()
    waiter = Waiter()
    out.asyncWait(waiter, out.WAIT_CLOSURE_ONLY)
    assert out.write(b"flushed") == 7
    inp.closeWithStatus(results.NS_ERROR_ABORT)
    for call in (inp.available, lambda: inp.read(1), lambda: out.write(b"x")):
        with pytest.raises(NSError) as e:
            call()
        assert code(e) == "NS_ERROR_ABORT"
    assert await waiter.wait() is out
    # A second close does not change the status.
    inp.close()
    out.closeWithStatus(results.NS_ERROR_FAILURE)
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_ERROR_ABORT"
    assert not t.isAlive()
    assert await client.whenClosed() == b"flushed"


@pytest.mark.parametrize("bad", ["x", None, -1, 1 << 32, True])
@pytest_twisted.ensureDeferred
async def test_closeWithBadStatus(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    for stream in (t.openInputStream(), t.openOutputStream()):
        with pytest.raises(NSError) as e:
            stream.closeWithStatus(bad)
        assert code(e) == "NS_ERROR_INVALID_ARG"
    assert t.isAlive()


# ----------------------------------------------------------------------
# Input: asyncWait


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitNeverSynchronous(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"ready")
    await eventually(lambda: inp.available() == 5)
    await assertNotifiedAfterReturn(inp)


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitOnClosedNeverSynchronous(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    inp.close()
    waiter = Waiter()
    inp.asyncWait(waiter)
    assert waiter.calls == []
    assert await waiter.wait() is inp


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitCallable(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    d: defer.Deferred[Any] = defer.Deferred()
    inp.asyncWait(d.callback)
    client.transport.write(b"x")
    assert await timeout(d) is inp
    assert inp.read(1) == b"x"


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitObject(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()

    class Callback:
        def __init__(self) -> None:
            self.d: defer.Deferred[Any] = defer.Deferred()

        def onInputStreamReady(self, stream: Any) -> None:
            self.d.callback(stream)

    cb = Callback()
    inp.asyncWait(cb)
    client.transport.write(b"y")
    assert await timeout(cb.d) is inp


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitOneShot(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    waiter = Waiter()
    inp.asyncWait(waiter)
    client.transport.write(b"a")
    await waiter.wait()
    client.transport.write(b"b")
    await eventually(lambda: inp.available() == 2)
    client.transport.loseWriteConnection()
    await eventually(lambda: not t.isAlive())
    await drained(t)
    assert waiter.calls == [inp]


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitCancelled(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    waiter = Waiter()
    inp.asyncWait(waiter)
    inp.asyncWait(None)
    client.transport.write(b"data")
    await eventually(lambda: inp.available() == 4)
    await drained(t)
    assert waiter.calls == []


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitCancelledBeforeQueuedNotification(served: Served) -> None:
    """
    Even when the data is already there (the notification is on its way),
    asyncWait(None) before the reactor delivers it cancels it.
    """
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"data")
    await eventually(lambda: inp.available() == 4)
    waiter = Waiter()
    inp.asyncWait(waiter)
    inp.asyncWait(None)
    await drained(t)
    assert waiter.calls == []
    # A new wait works.
    again = Waiter()
    inp.asyncWait(again)
    assert await again.wait() is inp


@pytest_twisted.ensureDeferred
async def test_inputAsyncWaitReplaced(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"data")
    await eventually(lambda: inp.available() == 4)
    first, second = Waiter(), Waiter()
    inp.asyncWait(first)
    inp.asyncWait(second)
    assert await second.wait() is inp
    await drained(t)
    assert first.calls == []
    assert second.calls == [inp]


@pytest_twisted.ensureDeferred
async def test_inputWaitClosureOnly(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    assert inp.WAIT_CLOSURE_ONLY == 1
    waiter = Waiter()
    inp.asyncWait(waiter, flags=1)
    client.transport.write(b"not enough")
    await eventually(lambda: inp.available() == 10)
    await drained(t)
    assert waiter.calls == []
    client.transport.loseConnection()
    assert await waiter.wait() is inp
    assert inp.read(100) == b"not enough"
    assert inp.read(100) == b""


@pytest_twisted.ensureDeferred
async def test_inputWaitClosureOnlyWithDataAlreadyThere(served: Served) -> None:
    client, t = await served.pair()
    inp = t.openInputStream()
    client.transport.write(b"here")
    await eventually(lambda: inp.available() == 4)
    waiter = Waiter()
    inp.asyncWait(waiter, inp.WAIT_CLOSURE_ONLY)
    await drained(t)
    assert waiter.calls == []
    t.close(results.NS_ERROR_ABORT)
    assert await waiter.wait() is inp
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_ERROR_ABORT"


@pytest.mark.parametrize("bad", [object(), "callback", 42])
@pytest_twisted.ensureDeferred
async def test_asyncWaitBadCallback(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    for stream in (t.openInputStream(), t.openOutputStream()):
        with pytest.raises(NSError) as e:
            stream.asyncWait(bad)
        assert code(e) == "NS_ERROR_INVALID_ARG"


@pytest.mark.parametrize("bad", [None, "1", 1.0])
@pytest_twisted.ensureDeferred
async def test_asyncWaitBadFlags(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    waiters = []
    for stream in (t.openInputStream(), t.openOutputStream()):
        waiter = Waiter()
        waiters.append(waiter)
        with pytest.raises(NSError) as e:
            stream.asyncWait(waiter, bad)
        assert code(e) == "NS_ERROR_INVALID_ARG"
    # A refused wait registers nothing (the output stream is writable).
    await drained(t)
    assert [w.calls for w in waiters] == [[], []]


@pytest_twisted.ensureDeferred
async def test_inputCallbackErrorLogged(served: Served, logged: list[dict[str, Any]]) -> None:
    """
    An exception from a callback is logged and the stream keeps working.
    """
    client, t = await served.pair()
    inp = t.openInputStream()

    def broken(stream: Any) -> None:
        raise ZeroDivisionError("boom")

    inp.asyncWait(broken)
    client.transport.write(b"one")
    await eventually(lambda: len(failures(logged)) == 1)
    assert failures(logged)[0]["log_failure"].check(ZeroDivisionError)
    del logged[:]
    waiter = Waiter()
    inp.asyncWait(waiter)
    await waiter.wait()
    assert inp.read(10) == b"one"


# ----------------------------------------------------------------------
# Input: back-pressure


@pytest.mark.parametrize(
    "segsize, segcount, limit",
    [(1024, 4, 4096), (0, 0, 4096 * 24), (0, 2, 4096 * 2), (512, 0, 512 * 24)],
)
@pytest_twisted.ensureDeferred
async def test_inputBackPressure(served: Served, segsize: int, segcount: int, limit: int) -> None:
    """
    Past segsize x segcount unread bytes (0 means the default of each),
    reading from the socket pauses until the consumer drains the buffer.
    """
    client, t = await served.pair()
    shrinkBuffers(client, t)
    inp = t.openInputStream(0, segsize, segcount)
    data = os.urandom(4 << 20)
    client.transport.write(data)
    client.transport.loseWriteConnection()
    await eventually(lambda: inp.available() > limit)
    # Time for the rest to flood in, if reading did not pause.
    await sleep(0.3)
    assert limit < inp.available() <= limit + TWISTED_READ
    # The peer is held back by TCP flow control.
    assert clientPending(client) > 0
    assert t.isAlive()
    # A slow consumer (small reads) gets everything, and the buffer stays
    # bounded all along.
    reader = Reader(inp, chunk=1000, bound=limit + TWISTED_READ)
    received = await reader.start()
    assert len(received) == len(data)
    assert sha(received) == sha(data)
    assert reader.maxAvailable <= limit + TWISTED_READ


# ----------------------------------------------------------------------
# Output


@pytest_twisted.ensureDeferred
async def test_writeReturnsBytesAccepted(served: Served) -> None:
    client, t = await served.pair()
    out = t.openOutputStream(0, 1024, 4)
    assert out.isNonBlocking() is True
    data = os.urandom(10000)
    n = out.write(data)
    assert n == 4096
    with pytest.raises(NSError) as e:
        out.write(data[n:])
    assert code(e) == "NS_BASE_STREAM_WOULD_BLOCK"
    assert await client.waitFor(n) == data[:n]
    assert out.write(b"") == 0
    assert out.write(bytearray(b"ab")) == 2
    assert out.write(memoryview(b"cd")) == 2
    assert await client.waitFor(n + 4) == data[:n] + b"abcd"
    out.flush()


@pytest.mark.parametrize("bad", ["text", 42, None, ["b"]])
@pytest_twisted.ensureDeferred
async def test_writeNotBytes(served: Served, bad: Any) -> None:
    client, t = await served.pair()
    out = t.openOutputStream()
    with pytest.raises(NSError) as e:
        out.write(bad)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert out.write(b"ok") == 2
    assert await client.waitFor(2) == b"ok"


@pytest_twisted.ensureDeferred
async def test_writeAfterClose(served: Served) -> None:
    client, t = await served.pair()
    out = t.openOutputStream()
    assert out.write(b"before") == 6
    out.close()
    with pytest.raises(NSError) as e:
        out.write(b"after")
    assert code(e) == "NS_BASE_STREAM_CLOSED"
    out.flush()
    # Closing the output alone shuts down our sending side: the peer gets
    # the bytes and the end of stream.
    await eventually(lambda: client.eof)
    assert bytes(client.received) == b"before"


@pytest_twisted.ensureDeferred
async def test_writeAfterCloseWithStatus(served: Served) -> None:
    client, t = await served.pair()
    out = t.openOutputStream()
    waiter = Waiter()
    out.asyncWait(waiter, out.WAIT_CLOSURE_ONLY)
    out.closeWithStatus(results.NS_ERROR_ABORT)
    assert await waiter.wait() is out
    with pytest.raises(NSError) as e:
        out.write(b"after")
    assert code(e) == "NS_ERROR_ABORT"
    with pytest.raises(NSError) as e:
        out.flush()
    assert code(e) == "NS_ERROR_ABORT"
    # The connection failed with it: the input stream reports it too.
    await client.whenClosed()
    inp = t.openInputStream()
    with pytest.raises(NSError) as e:
        inp.available()
    assert code(e) == "NS_ERROR_ABORT"


@pytest_twisted.ensureDeferred
async def test_outputAsyncWaitNeverSynchronous(served: Served) -> None:
    client, t = await served.pair()
    out = t.openOutputStream()
    await assertNotifiedAfterReturn(out)


@pytest_twisted.ensureDeferred
async def test_outputWaitClosureOnly(served: Served) -> None:
    client, t = await served.pair()
    out = t.openOutputStream()
    waiter = Waiter()
    out.asyncWait(waiter, out.WAIT_CLOSURE_ONLY)
    await drained(t)
    assert waiter.calls == []
    t.close(0)
    assert await waiter.wait() is out
    with pytest.raises(NSError) as e:
        out.write(b"x")
    assert code(e) == "NS_BASE_STREAM_CLOSED"


@pytest_twisted.ensureDeferred
async def test_outputAsyncWaitCancelled(served: Served) -> None:
    client, t = await served.pair()
    out = t.openOutputStream(0, 1024, 1)
    out.write(b"x" * 5000)
    with pytest.raises(NSError):
        out.write(b"y")
    waiter = Waiter()
    out.asyncWait(waiter)
    out.asyncWait(None)
    await client.waitFor(1024)
    await drained(t)
    assert waiter.calls == []
    # Writable again, and a new wait is notified.
    again = Waiter()
    out.asyncWait(again)
    assert await again.wait() is out
    assert out.write(b"z") == 1
    assert await client.waitFor(1025) == b"x" * 1024 + b"z"


@pytest.mark.parametrize("callbackKind", ["object", "callable"])
@pytest_twisted.ensureDeferred
async def test_outputBackPressure(served: Served, callbackKind: str) -> None:
    """
    A peer that does not read: writes end in WOULD_BLOCK, asyncWait fires
    only once the peer reads again, and nothing is lost.
    """
    client, t = await served.pair()
    shrinkBuffers(client, t)
    client.transport.pauseProducing()
    out = t.openOutputStream()
    data = os.urandom(3 << 20)
    writer = Writer(out, data)
    if callbackKind == "callable":
        writer.onOutputStreamReady = lambda stream: Writer.onOutputStreamReady(writer, stream)  # type: ignore[method-assign]
    finished = writer.start()
    await stalled(writer)
    assert writer.wouldBlock >= 1
    assert 0 < writer.sent < len(data)
    # The kernel's buffers are full: Twisted cannot flush its own.
    tcp = t._tcp
    assert len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen > 0
    wakeupsWhilePaused = len(writer.wakeups)
    assert all(w is False for w in writer.wakeups)
    writer.gate = True
    client.transport.resumeProducing()
    assert await finished == len(data)
    # The wait pending while the peer did not read fired after it resumed.
    assert writer.wakeups[wakeupsWhilePaused] is True
    received = await client.waitFor(len(data))
    assert len(received) == len(data)
    assert sha(received) == sha(data)
    t.close(0)
    await client.whenClosed()


@pytest_twisted.ensureDeferred
async def test_outputBoundedByTransportBuffer(served: Served) -> None:
    """
    The output stream never lets more than segsize x segcount pile up in
    Twisted's write buffer.
    """
    client, t = await served.pair()
    shrinkBuffers(client, t)
    client.transport.pauseProducing()
    limit = 8192 * 2
    out = t.openOutputStream(0, 8192, 2)
    data = os.urandom(1 << 20)
    writer = Writer(out, data, chunk=3000)
    finished = writer.start()
    await stalled(writer)
    tcp = t._tcp
    assert len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen <= limit
    client.transport.resumeProducing()
    await finished
    received = await client.waitFor(len(data))
    assert sha(received) == sha(data)


# ----------------------------------------------------------------------
# Both directions


class Echo:
    """
    An echo server written against the streams, with asyncWait on both.
    """

    def __init__(self, inp: Any, out: Any) -> None:
        self.inp = inp
        self.out = out
        self.pending = memoryview(b"")
        self.total = 0
        self.done: defer.Deferred[int] = defer.Deferred()

    def start(self) -> defer.Deferred[int]:
        self.inp.asyncWait(self)
        return timeout(self.done, 30)

    def onInputStreamReady(self, stream: Any) -> None:
        self.pump()

    def onOutputStreamReady(self, stream: Any) -> None:
        self.pump()

    def pump(self) -> None:
        try:
            while True:
                if not self.pending:
                    try:
                        data = self.inp.read(TWISTED_READ)
                    except NSError as e:
                        assert e.result == results.NS_BASE_STREAM_WOULD_BLOCK
                        self.inp.asyncWait(self)
                        return
                    if not data:
                        self.out.close()
                        self.done.callback(self.total)
                        return
                    self.pending = memoryview(data)
                try:
                    n = self.out.write(self.pending)
                except NSError as e:
                    assert e.result == results.NS_BASE_STREAM_WOULD_BLOCK
                    self.out.asyncWait(self)
                    return
                self.total += n
                self.pending = self.pending[n:]
        except BaseException:
            self.done.errback()


@pytest_twisted.ensureDeferred
async def test_echoManyMegabytes(served: Served) -> None:
    client, t = await served.pair()
    echo = Echo(t.openInputStream(), t.openOutputStream())
    finished = echo.start()
    data = os.urandom(8 << 20)
    client.transport.write(data)
    client.transport.loseWriteConnection()
    received = await client.whenClosed()
    assert await finished == len(data)
    assert len(received) == len(data)
    assert sha(received) == sha(data)


@pytest_twisted.ensureDeferred
async def test_echoSmallSegments(served: Served) -> None:
    client, t = await served.pair()
    echo = Echo(t.openInputStream(0, 512, 2), t.openOutputStream(t.OPEN_UNBUFFERED, 512, 2))
    finished = echo.start()
    data = os.urandom(1 << 20)
    client.transport.write(data)
    client.transport.loseWriteConnection()
    received = await client.whenClosed()
    assert await finished == len(data)
    assert sha(received) == sha(data)
