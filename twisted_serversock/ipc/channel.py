# -*- test-case-name: tests.test_ipc -*-
"""
The worker channel: one C{SOCK_SEQPACKET} UNIX socket pair between the
parent and each child, carrying the messages of L{twisted_serversock.ipc.wire}.
C{SOCK_SEQPACKET} because each message arrives whole, in one C{recvmsg},
with exactly the descriptors sent with it: a byte stream would need framing
and would let descriptors drift away from the message that names them.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections import deque
from typing import Any, Callable, Protocol

from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from .wire import MAX_FDS, MAX_MESSAGE, Message, ProtocolError, channelPair, decode

__all__ = ["Channel", "Receiver", "channelPair", "closeAll"]

_FD = struct.Struct("i")
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * _FD.size)
# Plain ints: the socket module's flags are enum members, and enum
# arithmetic on each message is avoidable work.
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
#: Received descriptors are close-on-exec from the start: a connection must
#: never reach a process the receiver starts (C{os.system}, C{subprocess}
#: with C{close_fds=False}), even one started while it is being adopted.
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
# What Channel._sendNow says.
_SENT, _LATER, _FAILED = 0, 1, 2

_log = Logger()


class Receiver(Protocol):
    """What a L{Channel} delivers to; an optional C{readDone()} is called after each readable event's messages."""

    def messageReceived(self, message: Message) -> None: ...

    def channelLost(self, reason: Failure) -> None: ...


def closeAll(fds: list[int]) -> None:
    """Close descriptors that arrived with a message nobody takes."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Channel:
    """
    One end of a worker channel, driven by the reactor; it never blocks
    (messages the kernel cannot take yet wait, in order, for writability).
    C{rejected} counts the malformed messages dropped.
    """

    def __init__(self, skt: socket.socket, receiver: Receiver, reactor: Any, name: str = "channel", drainOnLoss: bool = False) -> None:
        """
        @param drainOnLoss: before the channel closes, read every message
            the other end sent (the parent's end: a departing child's last
            acks must be seen, or a connection it adopted would be re-sent).
        """
        skt.setblocking(False)
        self._socket, self.receiver, self._reactor, self._name = skt, receiver, reactor, name
        self._drainOnLoss = drainOnLoss
        self._queue: deque[tuple[bytes, list[int], Callable[[], None] | None]] = deque()
        self._losing = self._writing = False
        self.connected = True
        self.rejected = 0

    def __repr__(self) -> str:
        return f"<Channel {self._name}>"

    def fileno(self) -> int:
        return self._socket.fileno() if self.connected else -1

    def logPrefix(self) -> str:
        return self._name

    def startReading(self) -> None:
        self._reactor.addReader(self)

    def send(self, data: bytes, fds: list[int] | tuple[int, ...] = (), then: Callable[[], None] | None = None) -> None:
        """
        Send one message with descriptors C{fds}, which stay the caller's.
        A message the kernel cannot take yet waits with its own duplicates
        of C{fds}: the caller's may be closed meanwhile (a grace period
        ends), and a plain number would then send whatever reused it.
        Duplicating only then keeps the common case free of two system
        calls per connection.

        @param then: called once the kernel has taken the message; never if
            the send fails or the channel is lost first: the child adopts a
            connection only once its ack is certain to reach the parent, so
            a C{then} after a failed ack would let two processes serve one
            connection.
        """
        if not self.connected:
            return
        outcome = _LATER if self._queue else self._sendNow(data, fds)
        if outcome == _SENT and then is not None:
            then()
        elif outcome == _LATER:
            copies: list[int] = []
            try:
                for fd in fds:
                    copies.append(os.dup(fd))
            except OSError as e:
                # Out of descriptors: the channel is lost, as after a failed
                # send (never sent, the connection may go to another child).
                closeAll(copies)
                self._reactor.callLater(0, self._lose, Failure(e))
                return
            self._queue.append((data, copies, then))
            if not self._writing:
                self._writing = True
                self._reactor.addWriter(self)

    def _sendNow(self, data: bytes, fds: list[int] | tuple[int, ...]) -> int:
        if not fds:
            ancillary = []
        elif len(fds) == 1:
            ancillary = [(_SOL_SOCKET, _SCM_RIGHTS, _FD.pack(fds[0]))]
        else:
            ancillary = [(_SOL_SOCKET, _SCM_RIGHTS, array.array("i", fds).tobytes())]
        try:
            self._socket.sendmsg([data], ancillary)
        except (BlockingIOError, InterruptedError):
            return _LATER
        except OSError as e:
            self._reactor.callLater(0, self._lose, Failure(e))
            return _FAILED
        return _SENT

    def doWrite(self) -> None:
        while self._queue:
            data, fds, then = self._queue[0]
            outcome = self._sendNow(data, fds)
            if outcome == _LATER:
                return
            self._queue.popleft()
            closeAll(fds)  # the kernel holds its own references now
            if outcome == _FAILED:
                # Nothing after a failed message is sent (the channel is
                # being lost), and no C{then} runs.
                self._dropQueue()
                break
            if then is not None:
                then()
            if not self.connected:
                return
        self._writing = False
        self._reactor.removeWriter(self)

    def doRead(self) -> None:
        self._readMessages()
        readDone = getattr(self.receiver, "readDone", None)
        if self.connected and readDone is not None:
            try:
                readDone()
            except Exception:
                _log.failure("{channel}: error in readDone", channel=self._name)

    def _readMessages(self) -> bool:
        """Read and deliver up to 64 messages; True if more may be waiting."""
        recvmsg = self._socket.recvmsg
        for _ in range(64):
            if not self.connected:
                return False
            try:
                data, ancdata, flags, _addr = recvmsg(MAX_MESSAGE + 1, _ANCILLARY, _MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as e:
                self._lose(Failure(e))
                return False
            fds: list[int] = []
            for level, type_, cdata in ancdata:
                if level == _SOL_SOCKET and type_ == _SCM_RIGHTS:
                    if len(cdata) == _FD.size:
                        fds.append(_FD.unpack(cdata)[0])
                    else:  # whole ints only (a cut one is no descriptor)
                        fds.extend(array.array("i", cdata[: len(cdata) - len(cdata) % _FD.size]))
            if not data and not fds:
                self._lose(Failure(ConnectionDone("the other end closed the channel")))
                return False
            try:
                if flags & _MSG_CTRUNC and data[:1] == b"C" and not fds:
                    # At its descriptor limit, this process got a
                    # connection's message without its descriptor: a Conn
                    # with fd -1, for the receiver to refuse.
                    fds = [-1]
                elif flags & _MSG_CTRUNC:
                    raise ProtocolError(f"more than {MAX_FDS} descriptors on one message, or no room for them")
                if flags & _MSG_TRUNC:
                    raise ProtocolError(f"message over the {MAX_MESSAGE}-byte limit")
                message = decode(data, fds)
            except ProtocolError as e:
                self.rejected += 1
                closeAll(fds)
                _log.warn("{channel}: rejected a malformed message ({error})", channel=self._name, error=e)
                continue
            try:
                self.receiver.messageReceived(message)
            except Exception:
                _log.failure("{channel}: error handling {message!r}", channel=self._name, message=message)
        return True

    def loseConnection(self) -> None:
        """Close the channel now; messages not yet sent are dropped."""
        self._lose(Failure(ConnectionDone("channel closed")))

    def _lose(self, reason: Failure) -> None:
        if not self.connected or self._losing:
            return
        self._losing = True
        if self._drainOnLoss:
            # Whatever the other end sent is still readable; EOF or an
            # error ends the loop (and calls here again, which returns).
            for _ in range(1024):
                if not self._readMessages():
                    break
        self._reactor.removeReader(self)
        if self._writing:
            self._reactor.removeWriter(self)
        self.connected = self._writing = False
        self._dropQueue()
        self._socket.close()
        try:
            self.receiver.channelLost(reason)
        except Exception:
            _log.failure("{channel}: error in channelLost", channel=self._name)

    def _dropQueue(self) -> None:
        while self._queue:  # closing the duplicates of what was not sent
            closeAll(self._queue.popleft()[1])

    def connectionLost(self, reason: Failure) -> None:
        # The reactor calls this if it drops the descriptor itself.
        self._lose(reason)
