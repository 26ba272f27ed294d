# -*- test-case-name: tests.test_streams -*-
"""
Stream mode: the Twisted protocol of a connection the listener uses
Gecko's way, through its input and output streams.

Like Gecko's C{nsSocketTransport}, the socket thread's handler for its
socket, L{StreamMode} receives the bytes and feeds the input stream, sees
the peer's half-close and the connection's end, and backs both streams
(L{StreamBackend<twisted_serversock._streamapi.StreamBackend>}).  It also
runs the read/write idle timer.  When the listener attaches a protocol
instead, L{StreamMode.handOver} takes it out of the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, ILoggingContext
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._twistedcompat import bufferedOutput
from .results import (
    NS_BASE_STREAM_CLOSED,
    NS_ERROR_IN_PROGRESS,
    NS_ERROR_INVALID_ARG,
    NS_ERROR_NET_RESET,
    NS_ERROR_NET_TIMEOUT,
    NS_ERROR_OFFLINE,
    NS_OK,
    NSError,
    nameOf,
)
from .streams import InputStream, OutputStream

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ._callqueue import CallQueue
    from ._types import ServerTransport

__all__ = ["StreamMode", "goOffline", "checkTimeoutType", "TIMEOUT_CONNECT", "TIMEOUT_READ_WRITE", "NO_TIMEOUT"]

TIMEOUT_CONNECT = 0
TIMEOUT_READ_WRITE = 1
#: A timeout of this many seconds or more means "no timeout".
NO_TIMEOUT = 0xFFFF

_log = Logger()


# ILoggingContext: Twisted asks only a provider for its logPrefix(); the
# connection's log lines keep saying "SocketTransport".
@implementer(IHalfCloseableProtocol, ILoggingContext)
class StreamMode:
    """
    The Twisted protocol of a connection in stream mode, and the backend of
    its streams.

    @ivar tcp: the Twisted transport once built (see L{connection}), else
        C{None}.
    @ivar status: C{NS_OK} while open; once the connection is closing or
        closed, the status its streams report.
    @ivar peerClosed: whether the peer shut down its sending side.
    @ivar _start: builds the Twisted transport with this object as its
        protocol (the connection's C{startStreaming}).
    @ivar _queue: the server socket's FIFO for deferred notifications.
    @ivar _input: the input stream, created at the first byte or when
        opened.
    @ivar _output: the output stream, once opened.
    @ivar _inputDone: whether no more input is wanted (end of stream, or the
        input stream was closed).
    @ivar _outputDone: whether the output stream was closed.
    @ivar _handedOver: whether a protocol took the connection over.
    @ivar _timeouts: C{[connect, readWrite]} seconds, or C{None} for both
        unset.
    @ivar _timer: the pending idle check, or C{None}.
    @ivar _lastActivity: when something was last read or written (only
        kept up to date while a timer runs).
    """

    __slots__ = (
        "tcp",
        "status",
        "peerClosed",
        "_start",
        "_queue",
        "_input",
        "_output",
        "_inputDone",
        "_outputDone",
        "_handedOver",
        "_timeouts",
        "_timer",
        "_lastActivity",
    )

    def __init__(self, queue: CallQueue, start: Callable[[], ServerTransport]) -> None:
        """
        @param queue: the server socket's FIFO (a C{CallQueue}).
        @param start: builds the Twisted transport with this object as its
            protocol, calls L{makeConnection} and returns the transport.
        """
        self.tcp: ServerTransport | None = None
        self.status = NS_OK
        self.peerClosed = False
        self._start = start
        self._queue = queue
        self._input: InputStream | None = None
        self._output: OutputStream | None = None
        self._inputDone = False
        self._outputDone = False
        self._handedOver = False
        self._timeouts: list[float] | None = None
        self._timer: IDelayedCall | None = None
        self._lastActivity = 0.0

    def __repr__(self) -> str:
        return f"<StreamMode {self.tcp!r} {nameOf(self.status)}>"

    def connection(self) -> ServerTransport:
        """
        @return: the Twisted transport, built now if it was not yet.
        @raise NSError: C{NS_ERROR_FAILURE} if building it failed before.
        """
        tcp = self.tcp
        if tcp is None:
            tcp = self._start()
        return tcp

    # ------------------------------------------------------------------
    # Twisted protocol: the reactor calls these while in stream mode.

    def makeConnection(self, transport: ServerTransport) -> None:
        self.tcp = transport

    def logPrefix(self) -> str:
        return "SocketTransport"

    def dataReceived(self, data: bytes) -> None:
        inp = self._input
        if inp is None:
            inp = self._input = InputStream(self)
        if self._timer is not None:
            self._lastActivity = self.connection().reactor.seconds()
        inp.feed(data)

    def readConnectionLost(self) -> None:
        self.peerClosed = True
        self._inputDone = True
        if self._input is not None:
            self._input.ended(NS_BASE_STREAM_CLOSED, keepData=True, direct=True)
        self._maybeFinish()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        status = self.status
        peerCaused = status == NS_OK
        if peerCaused:
            status = NS_BASE_STREAM_CLOSED if reason.check(ConnectionDone) else NS_ERROR_NET_RESET
            self.status = status
        self._cancelTimer()
        # Both streams are closed before either callback runs, so that a
        # callback never sees the other stream still open on a dead
        # connection.
        inp, out = self._input, self._output
        wake: list[InputStream | OutputStream] = []
        if inp is not None and inp.ended(status, keepData=peerCaused, direct=None):
            wake.append(inp)
        if out is not None and out.ended(status, direct=None):
            wake.append(out)
        for stream in wake:
            stream.wake(direct=True)

    # ------------------------------------------------------------------
    # StreamBackend: what the streams ask of the connection.

    def schedule(self, function: Callable[..., object], *args: object) -> None:
        self._queue.call(function, *args)

    def pauseReading(self) -> None:
        self.connection().pauseProducing()

    def resumeReading(self) -> None:
        if self.status == NS_OK and not self._inputDone:
            self.connection().resumeProducing()

    def bufferedOutput(self) -> int:
        return bufferedOutput(self.connection())

    def write(self, data: bytes) -> None:
        tcp = self.connection()
        if self._timer is not None:
            self._lastActivity = tcp.reactor.seconds()
        tcp.write(data)

    def registerProducer(self, producer: object) -> None:
        self.connection().registerProducer(producer, False)

    def unregisterProducer(self, producer: object) -> None:
        tcp = self.connection()
        if tcp.producer is producer:
            tcp.unregisterProducer()

    def inputClosed(self, status: int) -> None:
        if status != NS_BASE_STREAM_CLOSED:
            # As in Gecko (nsSocketTransport::OnMsgInputClosed), closing a
            # stream with an error fails the whole connection with it.
            self.closeWithStatus(status, abort=False)
            return
        self._inputDone = True
        # Nothing more is wanted from the peer: stop reading for good.
        self.connection().pauseProducing()
        self._maybeFinish()

    def outputClosed(self, status: int) -> None:
        if status != NS_BASE_STREAM_CLOSED:
            self.closeWithStatus(status, abort=False)
            return
        self._outputDone = True
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        # Gecko keeps the socket while either stream is open.  Both closed:
        # close the connection once written data is flushed.  Only the
        # output closed: shut down our sending side so the peer sees the end.
        if self.status != NS_OK or not self._outputDone:
            return
        if self._inputDone:
            self.status = NS_BASE_STREAM_CLOSED
            self._cancelTimer()
            self.connection().loseConnection()
        else:
            self.connection().loseWriteConnection()

    # ------------------------------------------------------------------
    # What the facade (SocketTransport) asks.

    def openInput(self, limit: int) -> InputStream:
        """
        Hand out the input stream, bounded to C{limit} buffered bytes.

        @raise NSError: C{NS_ERROR_IN_PROGRESS} if it was handed out before.
        """
        inp = self._input
        if inp is None:
            inp = self._input = InputStream(self)
            if self.status != NS_OK:
                inp.ended(self.status, keepData=False, direct=False)
            elif self.peerClosed:
                inp.ended(NS_BASE_STREAM_CLOSED, keepData=True, direct=False)
        elif inp.opened:
            raise NSError(NS_ERROR_IN_PROGRESS, "the input stream is already open")
        inp.openWithLimit(limit)
        return inp

    def openOutput(self, limit: int) -> OutputStream:
        """
        Hand out the output stream, bounded to C{limit} buffered bytes.

        @raise NSError: C{NS_ERROR_IN_PROGRESS} if it was handed out before.
        """
        if self._output is not None:
            raise NSError(NS_ERROR_IN_PROGRESS, "the output stream is already open")
        out = self._output = OutputStream(self, limit)
        if self.status != NS_OK:
            out.ended(self.status, direct=False)
        elif self._outputDone:
            out.ended(NS_BASE_STREAM_CLOSED, direct=False)
        return out

    def streamsInUse(self) -> bool:
        """
        @return: whether a stream was handed out.
        """
        inp = self._input
        return self._output is not None or (inp is not None and inp.opened)

    def handOver(self) -> tuple[list[bytes], bool] | None:
        """
        A protocol takes the connection over: stop the timer and give up
        the input stream.

        @return: C{None} if no input stream existed; else the byte strings
            received before and whether reading was paused for them.
        """
        self._handedOver = True
        self._cancelTimer()
        inp, self._input = self._input, None
        return None if inp is None else inp.detach()

    def close(self, reason: int) -> None:
        """
        Close both streams with C{reason}, then the connection once written
        bytes are flushed.
        """
        if self._output is not None:
            self._output.unregister()
        self.closeWithStatus(reason, abort=False)

    def abandon(self, status: int) -> None:
        """
        The connection was closed without a transport: remember C{status}
        for whatever asks later.
        """
        if self.status == NS_OK:
            self.status = status

    def closeWithStatus(self, status: int, abort: bool) -> None:
        """
        Close both streams with C{status} and then the connection: after a
        flush, or at once (C{abort}) for errors that make flushing pointless.
        """
        if self.status != NS_OK:
            if abort:
                tcp = self.connection()
                if tcp.connected:
                    tcp.abortConnection()
            return
        self.status = status
        self._cancelTimer()
        if self._input is not None:
            self._input.ended(status, keepData=False, direct=False)
        if self._output is not None:
            self._output.ended(status, direct=False)
        if abort:
            self.connection().abortConnection()
        else:
            self.connection().loseConnection()

    def goOffline(self) -> None:
        """
        The I/O service went offline: close with C{NS_ERROR_OFFLINE} at once.
        """
        self.closeWithStatus(NS_ERROR_OFFLINE, abort=True)

    # ------------------------------------------------------------------
    # Timeouts.

    def getTimeout(self, type: int) -> float:
        """
        See L{ISocketTransport.getTimeout<twisted_serversock.interfaces.ISocketTransport.getTimeout>}.
        """
        checkTimeoutType(type)
        if self._timeouts is None:
            return NO_TIMEOUT
        return self._timeouts[type]

    def setTimeout(self, type: int, seconds: float) -> None:
        """
        See L{ISocketTransport.setTimeout<twisted_serversock.interfaces.ISocketTransport.setTimeout>}.
        """
        checkTimeoutType(type)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise NSError(NS_ERROR_INVALID_ARG, f"timeout must be a number >= 0, not {seconds!r}")
        if self._timeouts is None:
            self._timeouts = [NO_TIMEOUT, NO_TIMEOUT]
        self._timeouts[type] = min(seconds, NO_TIMEOUT)
        if type == TIMEOUT_READ_WRITE:
            self._armTimer()

    def _cancelTimer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()

    def _armTimer(self) -> None:
        self._cancelTimer()
        if self._timeouts is None or self._handedOver or self.status != NS_OK:
            return
        seconds = self._timeouts[TIMEOUT_READ_WRITE]
        if seconds >= NO_TIMEOUT:
            return
        reactor = self.connection().reactor
        self._lastActivity = reactor.seconds()
        self._timer = reactor.callLater(seconds, self._checkIdle)

    def _checkIdle(self) -> None:
        self._timer = None
        assert self._timeouts is not None
        seconds = self._timeouts[TIMEOUT_READ_WRITE]
        reactor = self.connection().reactor
        idle = reactor.seconds() - self._lastActivity
        if idle >= seconds:
            _log.info(
                "Closing {transport}: idle for {idle:.3f}s (read/write timeout {timeout}s)",
                transport=self.tcp,
                idle=idle,
                timeout=seconds,
            )
            self.closeWithStatus(NS_ERROR_NET_TIMEOUT, abort=True)
        else:
            self._timer = reactor.callLater(seconds - idle, self._checkIdle)


def checkTimeoutType(type: int) -> None:
    """
    @raise NSError: C{NS_ERROR_INVALID_ARG} unless C{type} is C{TIMEOUT_CONNECT} or
        C{TIMEOUT_READ_WRITE}.
    """
    if isinstance(type, bool) or not isinstance(type, int) or not 0 <= type <= TIMEOUT_READ_WRITE:
        raise NSError(NS_ERROR_INVALID_ARG, f"timeout type must be 0 or 1, not {type!r}")


def goOffline(twistedTransport: ServerTransport) -> None:
    """
    Take a connection offline: a connection in stream mode closes its
    streams with C{NS_ERROR_OFFLINE} and aborts; one handed to a protocol
    simply aborts.  A connection still flushing after a close is aborted
    too: nothing more may reach a non-local peer.  Nothing if it is no
    longer connected.

    @param twistedTransport: the connection's Twisted transport.
    """
    if not twistedTransport.connected:
        return
    protocol = twistedTransport.protocol
    if isinstance(protocol, StreamMode):
        protocol.goOffline()
    else:
        twistedTransport.abortConnection()
