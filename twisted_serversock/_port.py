# -*- test-case-name: tests.test_serversocket,tests.test_hardening_fds -*-
"""
The reactor side of a listening socket: a file descriptor that adopts a
socket already bound and listened on (by a
L{ServerSocket<twisted_serversock.serversocket.ServerSocket>}), and hands
each accepted socket to the callable it was given.

Why not C{reactor.adoptStreamPort}: Twisted's adopted port re-listens with
backlog 50 (undoing the backlog we were asked for), and for UNIX sockets it
chmods and unlinks the path.  Why not Twisted's own C{doRead}: it catches
every exception with C{log.deferr()} and keeps accepting after
C{stopReading()}, so a fatal error would never stop the listener and a
C{close()} from inside a listener callback would not stop the current batch.

Why not Twisted's accept loop (C{tcp._accept}) either: under descriptor
exhaustion it logs once per connection it sheds, and once its reserved
descriptor is gone a level-triggered listener is woken again at once for
the same queued connection, fails the same way and logs again - a busy
loop.  This module's loop (see L{ListeningPort.doRead}):

  - skips the errors that belong to one connection only (C{EPERM} from
    netfilter, C{ECONNABORTED} and the network errors Linux reports for a
    connection that died in the queue) and goes on accepting;
  - on C{EMFILE}, frees the process's reserved descriptor (L{_Reserve}),
    accepts and closes what is queued - the clients see a close at once
    instead of hanging - and re-reserves it;
  - on C{EMFILE} with no reserve, and on C{ENFILE}, C{ENOBUFS} and
    C{ENOMEM} (which a freed descriptor of ours would not cure), stops
    reading for a short, growing delay and then tries again: the queued
    clients wait in the kernel and are served as soon as resources are
    back.  The listener is never stopped for good by these errors;
  - logs such a shortage once per burst: one warning when it starts, one
    summary when an accept succeeds again (L{_Shortage}).

Stopping for good (L{ListeningPort.stop} with C{takeQueued}: the server
socket's C{close()}) first accepts what the kernel has queued, even while
paused, so that closing does not reset it; the caller delivers it.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import abstract
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from ._types import Accept, Address, IServerReactor, Peer

_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV

#: Errors of one queued connection, not of the listener: skip it and go on.
#: (C{EPERM}: netfilter; the rest: accept(2) on Linux passes on a network
#: error already pending on the new connection and asks to retry.)
_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)

#: Out of a resource the next accept needs: try again later.
_SHORTAGE_ERRORS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

#: The first and the longest pause (seconds) before accepting is retried
#: after a shortage that shedding could not clear.
RETRY_FIRST = 0.01
RETRY_MAX = 0.25


class _Reserve:
    """
    One descriptor (on C{/dev/null}) the process keeps open so that, when it
    has run out, it can free one to accept and close what is queued.
    Shared by every listening port of the process, like Twisted's own.
    """

    def __init__(self) -> None:
        self._fd = -1

    def available(self) -> bool:
        return self._fd >= 0

    def reserve(self) -> bool:
        """
        Hold a descriptor if none is held yet.

        @return: whether one is held now.
        """
        if self._fd < 0:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


_reserve = _Reserve()


class _Shortage:
    """
    One burst of accept failures for want of descriptors or memory, from
    the first failure to the next successful accept.

    @ivar error: the C{errno} name of the first failure.
    @ivar started: reactor time of the first failure.
    @ivar shed: connections accepted and closed unserved (C{EMFILE}
        recovery).
    @ivar retries: pauses taken before trying again.
    @ivar delay: the next pause, in seconds.
    """

    def __init__(self, error: str, started: float) -> None:
        self.error = error
        self.started = started
        self.shed = 0
        self.retries = 0
        self.delay = RETRY_FIRST

    def nextDelay(self) -> float:
        delay = self.delay
        self.delay = min(delay * 2, RETRY_MAX)
        self.retries += 1
        return delay


def _shedQueued(listener: socket.socket) -> tuple[int, bool]:
    """
    C{EMFILE} recovery: free the reserved descriptor, accept and close every
    queued connection, and reserve again.

    Nothing in here may open a descriptor (not even logging).

    @return: how many connections were closed, and whether the queue was
        drained (the loop ended on C{EAGAIN}).
    """
    shed = 0
    drained = False
    _reserve.release()
    try:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError as e:
                if e.errno in _CONNECTION_ERRORS:
                    continue
                drained = e.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
                break
            client.close()
            shed += 1
    finally:
        _reserve.reserve()
    return shed, drained


def _peer(addr: Any) -> Peer:
    """The peer address C{accept()} gave; an IPv6 one keeps its scope id in the host, as Twisted's."""
    if len(addr) == 4:
        host = socket.getnameinfo(addr, _NUMERIC)[0]
        return (host,) + tuple(addr[1:])
    return addr  # type: ignore[no-any-return]


@implementer(IListeningPort)
class ListeningPort(abstract.FileDescriptor):
    """
    Accepts connections on a socket that is already bound and listening.

    Not a C{tcp.Port}: its binding, its C{getHost()} (IPv4 only) and its
    C{stopListening()} (which closes behind the server socket's back) would
    all be wrong here.  What Twisted's server transports need from their
    port - C{_realPortNumber} for their repr, C{sessionno} - is here, and
    C{IListeningPort} is implemented with the callables it is given.

    @ivar sessionno: the session number the next connection gets; only a
        connection that gets a protocol takes one, as in Twisted.
    @ivar _accept: called with each accepted socket and its peer address;
        must not raise.
    @ivar _failed: called with the error when accepting fails for good
        (the port is closed by then or is closed by the callee).
    @ivar _removed: called when the reactor drops the port at shutdown.
    @ivar _close: what C{stopListening()} does (the server socket's
        C{close()}).
    @ivar _address: the address bound while this port listens (fixed: a
        connection's C{getHost()} does not follow a later re-init).
    @ivar _prefix: the log prefix: the server socket's listener's (for an
        endpoint, the factory's class, as Twisted's port has it).
    @ivar _shortage: the shortage of descriptors or memory under way, if
        any (see the module docstring).
    @ivar _retry: the delayed call that resumes accepting after a pause.
    @ivar _clock: the reactor (as a clock).
    """

    _logger = Logger()

    def __init__(
        self,
        skt: socket.socket,
        address: Address,
        reactor: IServerReactor,
        *,
        accept: Accept,
        failed: Callable[[object], None],
        removed: Callable[[], None],
        close: Callable[[], None],
        prefix: str = "ServerSocket",
        backlog: int = socket.SOMAXCONN,
    ) -> None:
        """
        @param skt: the bound, listening, non-blocking socket.
        @param address: its Twisted address (what C{getHost()} says).
        @param reactor: the reactor.
        @param accept: see L{_accept}.
        @param failed: see L{_failed}.
        @param removed: see L{_removed}.
        @param close: see L{_close}.
        @param prefix: the log prefix.
        @param backlog: see L{backlog}.
        """
        abstract.FileDescriptor.__init__(self, reactor)
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]
        self.addressFamily = skt.family
        self._accept = accept
        self._failed = failed
        self._removed = removed
        self._close = close
        self._address = address
        self._prefix = prefix
        # The reactor, typed for its clock.
        self._clock: IReactorTime = reactor
        if isinstance(address, UNIXAddress):
            # What Twisted's unix.Port shows in its connections' reprs.
            self._realPortNumber: str | int | None = os.fsdecode(address.name or "")
        else:
            self._realPortNumber = address.port
        self.sessionno = 0
        self.numberAccepts = 100
        self._shortage: _Shortage | None = None
        self._retry: IDelayedCall | None = None
        #: Accepting paused by L{pauseAccepting} (the worker pool's
        #: back-pressure): no accept until L{resumeAccepting}.
        self.paused = False
        #: The backlog the socket listens with (bounds L{_takeQueued}).
        self.backlog = backlog

    def __repr__(self) -> str:
        return f"<ListeningPort on {self._address}>"

    def logPrefix(self) -> str:
        return self._prefix

    def getHost(self) -> Address:
        """
        The address this port listens on (with an IPv6 scope, as bound).
        """
        return self._address

    def stopListening(self) -> None:
        """
        Stop listening, as the server socket's C{close()} does (its
        listener gets its C{onStopListening}).
        """
        self._close()

    loseConnection = stopListening

    def startListening(self) -> None:
        """
        Start accepting (the socket is already listening).
        """
        _reserve.reserve()
        self.connected = True
        self.startReading()

    def doRead(self) -> None:
        """
        Accept what the kernel has queued and hand each socket on.
        """
        accept = self._accept
        accepted = 0
        listener = self.socket
        for _ in range(self.numberAccepts):
            try:
                skt, addr = listener.accept()
            except OSError as e:
                err = e.errno
                if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                if err in _CONNECTION_ERRORS:
                    continue
                if err in _SHORTAGE_ERRORS:
                    self._shortOf(err)
                    return
                self._failed(e)
                return
            accepted += 1
            if self._shortage is not None:
                self._shortageOver()
            accept(skt, _peer(addr))
            if self.disconnecting or not self.connected or self.paused:
                # close() was called from a listener callback: the rest of
                # the kernel queue is not ours any more.
                return
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        else:
            self.numberAccepts = max(1, accepted)

    def _shortOf(self, err: int) -> None:
        """
        C{accept()} failed with C{err}, one of L{_SHORTAGE_ERRORS}: shed
        what is queued if C{EMFILE} recovery can, else pause and retry.
        Logs once per burst.
        """
        shed, drained = 0, False
        if err == errno.EMFILE and _reserve.available():
            shed, drained = _shedQueued(self.socket)
        shortage = self._shortage
        first = shortage is None
        if shortage is None:
            shortage = self._shortage = _Shortage(errno.errorcode.get(err, str(err)), self._clock.seconds())
        shortage.shed += shed
        delay = None
        if not drained:
            # Level-triggered: reading on would wake us at once for the
            # same queued connection.  Pause instead.
            delay = shortage.nextDelay()
            self.stopReading()
            self._retry = self._clock.callLater(delay, self._resume)
        if not first:
            return
        address = self._address
        if drained:
            self._logger.warn(
                "Cannot accept connections on {address}: {error} (out of file descriptors); "
                "EMFILE recovery closed {shed} queued connection(s) unserved and closes further "
                "ones until an accept succeeds again (logged once for this burst)",
                address=address,
                error=shortage.error,
                shed=shed,
            )
        else:
            self._logger.warn(
                "Cannot accept connections on {address}: {error}; pausing accepts and retrying "
                "(every {retryMax}s at most) until an accept succeeds again; queued clients wait "
                "(logged once for this burst)",
                address=address,
                error=shortage.error,
                retryMax=RETRY_MAX,
            )

    def _shortageOver(self) -> None:
        shortage = self._shortage
        assert shortage is not None
        self._shortage = None
        self._logger.info(
            "Accepting connections on {address} again after {seconds:.3f}s short of resources "
            "({error}): {shed} connection(s) closed unserved, {retries} pause(s)",
            address=self._address,
            seconds=self._clock.seconds() - shortage.started,
            error=shortage.error,
            shed=shortage.shed,
            retries=shortage.retries,
        )

    def _resume(self) -> None:
        """
        The pause after a shortage is over: take the reserve back if it was
        lost, and accept again (a queued connection wakes C{doRead} at once).
        """
        self._retry = None
        if self.connected and not self.disconnecting:
            _reserve.reserve()
            if not self.paused:
                self.startReading()

    def pauseAccepting(self) -> None:
        """
        Accept nothing more until L{resumeAccepting}, not even the rest of
        the current accept run: what is queued waits in the kernel's
        backlog.
        """
        self.paused = True
        if self.connected:
            self.stopReading()

    def resumeAccepting(self) -> None:
        """
        Accept again (unless a resource shortage's pause is still on).
        """
        self.paused = False
        if self.connected and not self.disconnecting and self._retry is None:
            self.startReading()

    def _cancelRetry(self) -> None:
        retry, self._retry = self._retry, None
        if retry is not None and retry.active():
            retry.cancel()

    def stop(self, takeQueued: bool = False) -> list[tuple[socket.socket, Peer]]:
        """
        Stop accepting and close the listening socket now.

        Closing synchronously (Twisted's C{loseConnection} closes a turn
        later) frees the port for an immediate re-listen and makes new
        connection attempts fail at once instead of being queued and reset.

        @param takeQueued: first accept what the kernel has queued (even
            while paused), so that closing does not reset it: see
            L{_takeQueued}.
        @return: the connections taken, with their peers, for the caller
            to deliver.
        """
        self._cancelRetry()
        if not self.connected:
            return []
        self.stopReading()
        taken = self._takeQueued() if takeQueued else []
        self.connected = False
        self.disconnecting = True
        if not taken:  # (the transports of those taken name the port)
            self._realPortNumber = None
        try:
            self.socket.close()
        except OSError:
            pass
        return taken

    def _takeQueued(self) -> list[tuple[socket.socket, Peer]]:
        """
        Accept what is queued, until C{EAGAIN} or L{backlog} + 1 connections
        (the most the queue holds: a flood that refills it as fast cannot
        keep this loop going).  A shortage of descriptors or memory ends it:
        the rest are reset when the socket closes, as a handshake that
        completes after the last accept is (logged).
        """
        taken: list[tuple[socket.socket, Peer]] = []
        listener = self.socket
        while len(taken) <= self.backlog:
            try:
                skt, addr = listener.accept()
            except OSError as e:
                if e.errno in _CONNECTION_ERRORS:
                    continue
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self._logger.warn(
                        "Stopping to listen on {address}: cannot accept the connections still queued ({error}); "
                        "closing resets them ({n} taken)",
                        address=self._address,
                        error=errno.errorcode.get(e.errno or 0, str(e)),
                        n=len(taken),
                    )
                break
            taken.append((skt, _peer(addr)))
        if taken:
            self._logger.info(
                "Stopping to listen on {address}: took {n} connection(s) the kernel had queued, to be served",
                address=self._address,
                n=len(taken),
            )
        return taken

    def connectionLost(self, reason: object) -> None:
        """
        The reactor dropped this descriptor: at shutdown (C{disconnectAll},
        with C{ConnectionLost}), which stops the port cleanly as Twisted's
        own port stops; or after C{doRead} raised, a fatal error.
        """
        wasConnected = self.connected
        self.stop()
        if not wasConnected:
            return
        if isinstance(reason, Failure) and reason.check(ConnectionLost, ConnectionDone):
            self._removed()
        else:
            self._failed(reason)
