# -*- test-case-name: tests.test_transport -*-
"""
L{SocketTransport}: an accepted connection (Gecko's C{nsISocketTransport}).

Like Gecko's C{nsSocketTransport}, which is the socket thread's handler for
its socket, a L{SocketTransport} is the Twisted protocol of its connection
while the listener uses it Gecko's way: it receives the bytes, feeds the
input stream, sees the peer's half-close and the connection's end.
L{SocketTransport.attachProtocol} takes it out of the way: the user's
protocol becomes the Twisted transport's protocol, with no layer (and no
per-byte work) in between.

The Twisted transport of a connection from a local peer is built lazily:
when the listener attaches a protocol from C{onSocketAccepted} (as the
endpoints do), it is built for that protocol directly, exactly as Twisted's
own port would build it; otherwise it is built with the L{SocketTransport}
as its protocol (stream mode) as soon as anything needs it, and at the
latest when C{onSocketAccepted} returns (the server socket sees to that).  Building it once instead of
building it for the L{SocketTransport} and re-labelling it for the attached
protocol saves about 6,500 instructions per accepted connection.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _args
from ._accepted import AcceptedSocket
from ._twistedcompat import bufferedOutput, isReadable, relabel
from .interfaces import ISocketTransport
from ._unix import peerCredentials
from .netaddr import NetAddr, unixName
from .results import (
    NS_BASE_STREAM_CLOSED,
    NS_BINDING_ABORTED,
    NS_ERROR_FAILURE,
    NS_ERROR_IN_PROGRESS,
    NS_ERROR_INVALID_ARG,
    NS_ERROR_NET_RESET,
    NS_ERROR_NET_TIMEOUT,
    NS_ERROR_NOT_AVAILABLE,
    NS_ERROR_NOT_IMPLEMENTED,
    NS_ERROR_OFFLINE,
    NS_OK,
    NSError,
    nameOf,
    succeeded,
)
from .streams import InputStream, OutputStream, bufferLimit

__all__ = ["SocketTransport", "bufferedOutput"]

OPEN_BLOCKING = 1
OPEN_UNBUFFERED = 2
TIMEOUT_CONNECT = 0
TIMEOUT_READ_WRITE = 1
#: A timeout of this many seconds or more means "no timeout".
NO_TIMEOUT = 0xFFFF
_MAX_KEEPALIVE = 32767


@implementer(ISocketTransport, IHalfCloseableProtocol)
class SocketTransport:
    """
    An accepted connection.  See L{ISocketTransport}.

    @ivar _twisted: the Twisted transport (a C{tcp.Server} or
        C{unix.Server}) once built, else C{None} (see L{_tcp}).
    @ivar _pending: until the Twisted transport is built, what building it
        takes: C{(transportClass, socket, peer address, listening port,
        reactor)}; then C{None}.
    @ivar _queue: the server socket's FIFO for deferred notifications.
    @ivar _input: the input stream, created at the first byte or when
        opened.
    @ivar _output: the output stream, once opened.
    @ivar _status: C{NS_OK} while open; once the connection is closing or
        closed, the status its streams report.
    @ivar _peerClosed: whether the peer shut down its sending side.
    @ivar _inputDone: whether no more input is wanted (end of stream, or the
        input stream was closed).
    @ivar _outputDone: whether the output stream was closed.
    @ivar _attached: whether L{attachProtocol} handed the connection over.
    @ivar _timeouts: C{[connect, readWrite]} seconds, or C{None} for both
        unset.
    @ivar _timer: the pending idle check, or C{None}.
    @ivar _lastActivity: when something was last read or written (only
        kept up to date while a timer runs).
    """

    __slots__ = (
        "_twisted",
        "_pending",
        "_queue",
        "_input",
        "_output",
        "_status",
        "_peerClosed",
        "_inputDone",
        "_outputDone",
        "_attached",
        "_timeouts",
        "_timer",
        "_lastActivity",
        "__weakref__",
    )

    OPEN_BLOCKING = OPEN_BLOCKING
    OPEN_UNBUFFERED = OPEN_UNBUFFERED
    TIMEOUT_CONNECT = TIMEOUT_CONNECT
    TIMEOUT_READ_WRITE = TIMEOUT_READ_WRITE

    _log = Logger()

    def __init__(self, queue: Any, pending: AcceptedSocket | None = None) -> None:
        """
        @param queue: the server socket's FIFO for deferred notifications.
        @param pending: what building the Twisted transport takes, if it is
            to be built later (see L{_tcp}); without it, the caller sets
            L{_twisted} at once.
        """
        self._twisted: Any = None
        self._pending = pending
        self._queue = queue
        self._input: InputStream | None = None
        self._output: OutputStream | None = None
        self._status = NS_OK
        self._peerClosed = False
        self._inputDone = False
        self._outputDone = False
        self._attached = False
        self._timeouts: list[float] | None = None
        self._timer: Any = None
        self._lastActivity = 0.0

    def __repr__(self) -> str:
        tcp = self._twisted
        if tcp is None and self._pending is not None:
            return f"<SocketTransport accepted from {self._pending.peer!r} {nameOf(self._status)}>"
        return f"<SocketTransport {tcp!r} {nameOf(self._status)}>"

    @property
    def _tcp(self) -> Any:
        """
        The Twisted transport, built on first use with this object as its
        protocol (stream mode) if it was not built yet.

        @raise NSError: C{NS_ERROR_FAILURE} if building it failed before.
        """
        tcp = self._twisted
        if tcp is None:
            tcp = self._build(self)
        return tcp

    def _build(self, protocol: Any) -> Any:
        """
        Build the Twisted transport of the accepted socket, with C{protocol}
        as its protocol (it starts reading at once); the caller calls
        C{makeConnection} if C{protocol} is not this object.  If building
        fails, the socket is closed.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            raise NSError(NS_ERROR_FAILURE, "the accepted connection could not be set up")
        tcp = self._twisted = pending.build(protocol)
        return tcp

    def startStreaming(self) -> Any:
        """
        Package-internal: the Twisted transport, built now with this object
        as its protocol (stream mode) if nothing built it yet.
        """
        return self._tcp

    def refuse(self) -> None:
        """
        Close a connection no protocol was built for, at once: without
        building its Twisted transport (nor taking a session number) if it
        was not built yet.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            self._closeWithStatus(NS_BINDING_ABORTED, abort=True)
            return
        self._status = NS_BINDING_ABORTED
        pending.close()

    # ------------------------------------------------------------------
    # Twisted protocol side (private): the reactor calls these while the
    # connection is in stream mode.

    def makeConnection(self, transport: Any) -> None:
        self._twisted = transport

    def logPrefix(self) -> str:
        return "SocketTransport"

    def dataReceived(self, data: bytes) -> None:
        inp = self._input
        if inp is None:
            inp = self._input = InputStream(self)
        if self._timer is not None:
            self._lastActivity = self._twisted.reactor.seconds()
        inp._dataReceived(data)

    def readConnectionLost(self) -> None:
        self._peerClosed = True
        self._inputDone = True
        if self._input is not None:
            self._input._closed(NS_BASE_STREAM_CLOSED, keepData=True, direct=True)
        self._maybeFinish()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        status = self._status
        peerCaused = status == NS_OK
        if peerCaused:
            status = NS_BASE_STREAM_CLOSED if reason.check(ConnectionDone) else NS_ERROR_NET_RESET
            self._status = status
        self._cancelTimer()
        # Both streams are closed before either callback runs, so that a
        # callback never sees the other stream still open on a dead
        # connection.
        inp, out = self._input, self._output
        wake: list[InputStream | OutputStream] = []
        if inp is not None and inp._closed(status, keepData=peerCaused, direct=None):
            wake.append(inp)
        if out is not None and out._closed(status, direct=None):
            wake.append(out)
        for stream in wake:
            stream._wake(direct=True)

    # ------------------------------------------------------------------
    # Helpers for the streams.

    def _pauseReading(self) -> None:
        self._tcp.pauseProducing()

    def _resumeReading(self) -> None:
        if self._status == NS_OK and not self._inputDone:
            self._tcp.resumeProducing()

    def _bufferedOutput(self) -> int:
        return bufferedOutput(self._tcp)

    def _write(self, data: bytes) -> None:
        if self._timer is not None:
            self._lastActivity = self._tcp.reactor.seconds()
        self._tcp.write(data)

    def _registerProducer(self, producer: OutputStream) -> None:
        self._tcp.registerProducer(producer, False)

    def _unregisterProducer(self, producer: OutputStream) -> None:
        if self._tcp.producer is producer:
            self._tcp.unregisterProducer()

    def _inputClosed(self, status: int) -> None:
        if status != NS_BASE_STREAM_CLOSED:
            # As in Gecko (nsSocketTransport::OnMsgInputClosed), closing a
            # stream with an error fails the whole connection with it.
            self._closeWithStatus(status, abort=False)
            return
        self._inputDone = True
        # Nothing more is wanted from the peer: stop reading for good.
        self._tcp.pauseProducing()
        self._maybeFinish()

    def _outputClosed(self, status: int) -> None:
        if status != NS_BASE_STREAM_CLOSED:
            self._closeWithStatus(status, abort=False)
            return
        self._outputDone = True
        self._maybeFinish()

    def _maybeFinish(self) -> None:
        # Gecko keeps the socket while either stream is open.  Both closed:
        # close the connection once written data is flushed.  Only the
        # output closed: shut down our sending side so the peer sees the end.
        if self._status != NS_OK or not self._outputDone:
            return
        if self._inputDone:
            self._status = NS_BASE_STREAM_CLOSED
            self._cancelTimer()
            self._tcp.loseConnection()
        else:
            self._tcp.loseWriteConnection()

    def _newInput(self) -> InputStream:
        inp = self._input = InputStream(self)
        if self._status != NS_OK:
            inp._closed(self._status, keepData=False, direct=False)
        elif self._peerClosed:
            inp._closed(NS_BASE_STREAM_CLOSED, keepData=True, direct=False)
        return inp

    def _closeWithStatus(self, status: int, abort: bool) -> None:
        """
        Close both streams with C{status} and then the connection: after a
        flush, or at once (C{abort}) for errors that make flushing pointless.
        """
        if self._status != NS_OK:
            if abort and self._tcp.connected:
                self._tcp.abortConnection()
            return
        self._status = status
        self._cancelTimer()
        if self._input is not None:
            self._input._closed(status, keepData=False, direct=False)
        if self._output is not None:
            self._output._closed(status, direct=False)
        if abort:
            self._tcp.abortConnection()
        else:
            self._tcp.loseConnection()

    def _goOffline(self) -> None:
        self._closeWithStatus(NS_ERROR_OFFLINE, abort=True)

    def _isUnix(self) -> bool:
        return bool(self._tcp.getHandle().family == socket.AF_UNIX)

    # ------------------------------------------------------------------
    # Timeouts.

    def _cancelTimer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()

    def _armTimer(self) -> None:
        self._cancelTimer()
        if self._timeouts is None or self._attached or self._status != NS_OK:
            return
        seconds = self._timeouts[TIMEOUT_READ_WRITE]
        if seconds >= NO_TIMEOUT:
            return
        reactor = self._tcp.reactor
        self._lastActivity = reactor.seconds()
        self._timer = reactor.callLater(seconds, self._checkIdle)

    def _checkIdle(self) -> None:
        self._timer = None
        assert self._timeouts is not None
        seconds = self._timeouts[TIMEOUT_READ_WRITE]
        reactor = self._tcp.reactor
        idle = reactor.seconds() - self._lastActivity
        if idle >= seconds:
            self._log.info(
                "Closing {transport}: idle for {idle:.3f}s (read/write timeout {timeout}s)",
                transport=self,
                idle=idle,
                timeout=seconds,
            )
            self._closeWithStatus(NS_ERROR_NET_TIMEOUT, abort=True)
        else:
            self._timer = reactor.callLater(seconds - idle, self._checkIdle)

    def getTimeout(self, type: int) -> float:
        _checkTimeoutType(type)
        if self._timeouts is None:
            return NO_TIMEOUT
        return self._timeouts[type]

    def setTimeout(self, type: int, seconds: float) -> None:
        _checkTimeoutType(type)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise NSError(NS_ERROR_INVALID_ARG, f"timeout must be a number >= 0, not {seconds!r}")
        if self._timeouts is None:
            self._timeouts = [NO_TIMEOUT, NO_TIMEOUT]
        self._timeouts[type] = min(seconds, NO_TIMEOUT)
        if type == TIMEOUT_READ_WRITE:
            self._armTimer()

    # ------------------------------------------------------------------
    # ISocketTransport: addresses.

    @property
    def host(self) -> str:
        # A peer IP literal, or a UNIX peer's path ("" if unnamed/abstract).
        return unixName(self._tcp.hostname)

    @property
    def port(self) -> int:
        return int(self._tcp.client[1] or 0)

    def getPeerAddr(self) -> Any:
        tcp = self._twisted
        if tcp is None and self._pending is not None:
            # What the Twisted transport's getPeer() will say, without
            # building it: a listener that attaches a protocol asks first.
            return self._pending.peerAddress()
        return self._tcp.getPeer()

    def getSelfAddr(self) -> Any:
        return self._tcp.getHost()

    def getScriptablePeerAddr(self) -> NetAddr:
        return NetAddr.fromTwisted(self._tcp.getPeer())

    def getScriptableSelfAddr(self) -> NetAddr:
        return NetAddr.fromTwisted(self._tcp.getHost())

    # ------------------------------------------------------------------
    # ISocketTransport: streams and protocols.

    def _checkOpen(self, flags: int) -> None:
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise NSError(NS_ERROR_INVALID_ARG, f"flags must be an integer, not {flags!r}")
        if flags & OPEN_BLOCKING:
            raise NSError(
                NS_ERROR_NOT_IMPLEMENTED,
                "OPEN_BLOCKING streams would block the reactor; use asyncWait",
            )
        if self._attached:
            raise NSError(NS_ERROR_IN_PROGRESS, "the connection was handed to a protocol")

    def openInputStream(self, flags: int = 0, segsize: int = 0, segcount: int = 0) -> InputStream:
        self._checkOpen(flags)
        limit = bufferLimit(segsize, segcount)
        inp = self._input
        if inp is None:
            inp = self._newInput()
        elif inp._opened:
            raise NSError(NS_ERROR_IN_PROGRESS, "the input stream is already open")
        inp._open(limit)
        return inp

    def openOutputStream(self, flags: int = 0, segsize: int = 0, segcount: int = 0) -> OutputStream:
        self._checkOpen(flags)
        limit = bufferLimit(segsize, segcount)
        if self._output is not None:
            raise NSError(NS_ERROR_IN_PROGRESS, "the output stream is already open")
        out = self._output = OutputStream(self, limit)
        if self._status != NS_OK:
            out._closed(self._status, direct=False)
        elif self._outputDone:
            out._closed(NS_BASE_STREAM_CLOSED, direct=False)
        return out

    def attachProtocol(self, protocol: Any) -> None:
        """
        See L{ISocketTransport.attachProtocol}.

        @raise NSError: C{NS_ERROR_IN_PROGRESS} if a stream was opened or a
            protocol attached already; C{NS_ERROR_INVALID_ARG} if
            C{protocol} is not a protocol instance (it needs
            C{makeConnection}, C{dataReceived} and C{connectionLost}); the
            close status if the
            connection is already closed.
        """
        if self._attached:
            raise NSError(NS_ERROR_IN_PROGRESS, "a protocol is already attached")
        inp = self._input
        if self._output is not None or (inp is not None and inp._opened):
            raise NSError(NS_ERROR_IN_PROGRESS, "the connection's streams are in use")
        # (A class has these as unbound functions: calling them would raise
        # TypeError half-way through the hand-over.  This runs for every
        # connection an endpoint accepts, so an instance of Twisted's
        # Protocol, which has all three, skips the duck-typing checks.)
        if not isinstance(protocol, Protocol) and (
            isinstance(protocol, type)
            or not callable(getattr(protocol, "makeConnection", None))
            or not callable(getattr(protocol, "dataReceived", None))
            or not callable(getattr(protocol, "connectionLost", None))
        ):
            raise NSError(NS_ERROR_INVALID_ARG, f"not a Twisted protocol instance: {protocol!r}")
        if self._status != NS_OK:
            raise NSError(self._status, "the connection is already closed")
        self._attached = True
        if self._twisted is None and self._pending is not None:
            # Nothing has used the connection yet (no stream, no timer, no
            # byte read): build the Twisted transport for the protocol
            # itself, as Twisted's own port does.
            protocol.makeConnection(self._build(protocol))
            return
        if self._timer is not None:
            self._cancelTimer()
        tcp = self._tcp
        tcp.protocol = protocol
        # Twisted formats the log prefix and the repr of a connection from
        # its protocol at construction: redo both for the new protocol.
        relabel(tcp, protocol)
        if inp is not None:
            self._input = None
            if inp._paused:
                # The unopened input stream held reading back.  Resume before
                # the protocol runs, so that a pauseProducing() it does in
                # connectionMade or dataReceived is not undone.  (Nothing is
                # read before this call returns: the reactor is ours.)
                inp._paused = False
                tcp.resumeProducing()
        protocol.makeConnection(tcp)
        if inp is not None:
            self._replay(inp, protocol)

    def _replay(self, inp: InputStream, protocol: Any) -> None:
        # Bytes (and an end of stream) that arrived before the protocol,
        # unless the protocol already closed the connection.
        tcp = self._tcp
        for chunk in inp._takeAll():
            if not isReadable(tcp):
                return
            protocol.dataReceived(chunk)
        if self._peerClosed and isReadable(tcp):
            tcp.readConnectionLost(Failure(ConnectionDone()))

    def close(self, reason: int = NS_OK) -> None:
        if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= 0xFFFFFFFF:
            raise NSError(NS_ERROR_INVALID_ARG, f"reason must be a result code, not {reason!r}")
        if succeeded(reason):
            reason = NS_BASE_STREAM_CLOSED
        if self._attached:
            self._tcp.loseConnection()
            return
        if self._output is not None:
            self._output._unregister()
        self._closeWithStatus(reason, abort=False)

    def isAlive(self) -> bool:
        tcp = self._tcp
        if self._status != NS_OK or self._peerClosed or not tcp.connected or tcp.disconnecting:
            return False
        try:
            return bool(tcp.getHandle().recv(1, socket.MSG_PEEK))
        except BlockingIOError:
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------
    # ISocketTransport: socket options.

    def _tcpSocket(self, what: str) -> socket.socket:
        if self._isUnix():
            raise NSError(NS_ERROR_NOT_AVAILABLE, f"{what} applies to TCP connections only")
        return self._tcp.getHandle()

    @property
    def keepaliveEnabled(self) -> bool:
        if self._isUnix():
            return False
        try:
            return bool(self._tcp.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        except OSError as e:
            raise NSError.fromOSError(e, "getsockopt(SO_KEEPALIVE)") from None

    @keepaliveEnabled.setter
    def keepaliveEnabled(self, enabled: bool) -> None:
        # A string such as "false" is refused, not taken as true.
        enabled = _args.asNSError(_args.boolean, enabled, "keepaliveEnabled")
        skt = self._tcpSocket("keepalive")
        try:
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1 if enabled else 0)
        except OSError as e:
            raise NSError.fromOSError(e, "setsockopt(SO_KEEPALIVE)") from None

    def setKeepaliveVals(self, idleTime: int, retryInterval: int) -> None:
        for name, value in (("idleTime", idleTime), ("retryInterval", retryInterval)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= _MAX_KEEPALIVE
            ):
                raise NSError(
                    NS_ERROR_INVALID_ARG,
                    f"{name} must be an integer from 1 to {_MAX_KEEPALIVE}, not {value!r}",
                )
        skt = self._tcpSocket("keepalive")
        try:
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idleTime)
            skt.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, retryInterval)
        except OSError as e:
            raise NSError.fromOSError(e, "setsockopt(TCP_KEEPIDLE/TCP_KEEPINTVL)") from None

    def getPeerCredentials(self) -> tuple[int, int, int]:
        if not self._isUnix():
            raise NSError(NS_ERROR_NOT_AVAILABLE, "peer credentials exist for UNIX connections only")
        try:
            return peerCredentials(self._tcp.getHandle())
        except OSError as e:
            raise NSError.fromOSError(e, "getsockopt(SO_PEERCRED)") from None


def _checkTimeoutType(type: int) -> None:
    if isinstance(type, bool) or not isinstance(type, int) or not 0 <= type <= TIMEOUT_READ_WRITE:
        raise NSError(NS_ERROR_INVALID_ARG, f"timeout type must be 0 or 1, not {type!r}")
