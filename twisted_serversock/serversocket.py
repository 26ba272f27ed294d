# -*- test-case-name: tests.test_serversocket -*-
"""
L{ServerSocket}: Gecko's C{nsIServerSocket} over Twisted's reactor.

Life cycle, as in Gecko::

    ServerSocket() --init*()--> bound+listening --asyncListen()--> accepting
         ^   ^                        |                                |
         |   '-------close()----------'                              close()
         |                                                             |
         '----- (onStopListening queued, exactly once) <---------------'

Binding and C{listen()} happen inside the C{init*} call, so errors are
raised there and clients can connect (into the kernel's queue) before
L{ServerSocket.asyncListen}.  Accepted connections are reported by the
reactor's accept event; the one C{onStopListening} goes through the socket's
FIFO (L{CallQueue}), which no accept can follow because the listening socket
is closed first.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from zope.interface import implementer

from . import _args, _bind, _unix
from . import ioservice as _ioservice
from ._acceptpipe import AcceptPipeline
from ._callqueue import CallQueue
from ._port import ListeningPort
from .interfaces import INetAddr, IServerSocket
from .interfaces import IRawAcceptor
from .netaddr import FAMILY_INET, FAMILY_INET6, FAMILY_LOCAL, ipFamily, isLocalListenAddress
from .results import (
    NS_BINDING_ABORTED,
    NS_ERROR_ABORT,
    NS_ERROR_ALREADY_INITIALIZED,
    NS_ERROR_FAILURE,
    NS_ERROR_IN_PROGRESS,
    NS_ERROR_INVALID_ARG,
    NS_ERROR_NOT_INITIALIZED,
    NS_ERROR_OFFLINE,
    NS_ERROR_UNEXPECTED,
    NSError,
    nameOf,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFDSet

    from ._types import Address, IServerReactor

__all__ = ["ServerSocket", "LoopbackOnly", "KeepWhenOffline"]

LoopbackOnly = 1
KeepWhenOffline = 2

_log = Logger()


def _logPrefixOf(listener: object) -> str:
    """
    The log prefix of the listening port: the listener's C{logPrefix()} if
    it has one (an endpoint's is its factory's), else C{"ServerSocket"}.
    """
    logPrefix = getattr(listener, "logPrefix", None)
    if callable(logPrefix):
        try:
            return str(logPrefix())
        except Exception:
            _log.failure("{listener!r}.logPrefix() failed", listener=listener)
    return "ServerSocket"


def _integer(value: object, what: str) -> int:
    return _args.asNSError(_args.integer, value, what)


def _boolean(value: object, what: str) -> bool:
    return _args.asNSError(_args.boolean, value, what)


def _checkPort(value: object) -> int:
    port = _integer(value, "port")
    if port > _args.MAX_PORT:
        raise NSError(NS_ERROR_INVALID_ARG, f"port {port} is above {_args.MAX_PORT}")
    return max(port, 0)


def _checkBacklog(value: object) -> int:
    backlog = _integer(value, "backlog")
    if backlog < 0:
        return socket.SOMAXCONN
    if backlog > _args.MAX_BACKLOG:
        raise NSError(NS_ERROR_INVALID_ARG, f"backlog {backlog} is too large")
    return backlog


def _ipFamily(host: str) -> int:
    """
    The address family of IP literal C{host}.

    @raise NSError: C{NS_ERROR_INVALID_ARG} if C{host} is not an IP literal
        (host names are refused: resolving them would block the reactor).
    """
    family = ipFamily(host)
    if family is None:
        raise NSError(NS_ERROR_INVALID_ARG, f"host must be an IP address literal (names are not resolved), not {host!r}")
    return family


@implementer(IServerSocket)
class ServerSocket:
    """
    A listening socket with Gecko's C{nsIServerSocket} API.  See
    L{IServerSocket} for the contract.

    @ivar _reactor: the reactor (the global one unless given).
    @ivar _ioService: the L{IOService<twisted_serversock.ioservice.IOService>}
        whose offline switch this socket obeys.
    @ivar _bound: the bound, listening socket (a L{_bind.BoundSocket}) from
        a successful C{init*} until L{close}.
    @ivar _port: the reactor's L{ListeningPort} after L{asyncListen}.
    @ivar _pipeline: the stages accepted sockets go through, from
        L{asyncListen} until stopped.
    @ivar _listener: the listener, from L{asyncListen} until stopped.
    @ivar _address: the Twisted address actually bound (kept after close,
        as Gecko keeps it).
    @ivar _allowedUids: the uids allowed to connect to a UNIX socket, or
        C{None}.
    @ivar _unregister: the handle that takes this socket off the I/O
        service's offline list, while it is on it.
    @ivar _queue: the FIFO of deferred callbacks, shared with the
        connections this socket accepts.
    """

    LoopbackOnly = LoopbackOnly
    KeepWhenOffline = KeepWhenOffline

    def __init__(self, reactor: IReactorFDSet | None = None, ioService: _ioservice.IOService | None = None) -> None:
        # Every Twisted reactor watches descriptors and has a clock; see
        # IServerReactor for why the type needs saying.
        self._reactor = cast("IServerReactor | None", reactor)
        self._ioService = ioService if ioService is not None else _ioservice.ioService
        self._bound: _bind.BoundSocket | None = None
        self._port: ListeningPort | None = None
        self._pipeline: AcceptPipeline | None = None
        self._listener: Any = None
        self._address: Address | None = None
        self._queue: CallQueue | None = None
        self._allowedUids: frozenset[int | str] | None = None
        self._unregister: Callable[[], None] | None = None
        self._survivesOffline = True
        self._backlog = socket.SOMAXCONN

    def __repr__(self) -> str:
        state = "listening" if self._port else "bound" if self._bound else "closed"
        return f"<ServerSocket {state} on {self._address}>"

    def _getReactor(self) -> IServerReactor:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = cast("IServerReactor", reactor)
        return self._reactor

    # ------------------------------------------------------------------
    # The init family.

    def init(self, port: int, loopbackOnly: bool, backLog: int) -> None:
        loopbackOnly = _boolean(loopbackOnly, "loopbackOnly")
        self.initSpecialConnection(port, LoopbackOnly if loopbackOnly else 0, backLog)

    def initSpecialConnection(self, port: int, flags: int, backLog: int) -> None:
        flags = _integer(flags, "flags")
        host = "127.0.0.1" if flags & LoopbackOnly else "0.0.0.0"
        self._listenIP(host, port, backLog, keepWhenOffline=bool(flags & KeepWhenOffline))

    def initIPv6(self, port: int, loopbackOnly: bool, backLog: int) -> None:
        loopbackOnly = _boolean(loopbackOnly, "loopbackOnly")
        self._listenIP("::1" if loopbackOnly else "::", port, backLog)

    def initDualStack(self, port: int, backLog: int) -> None:
        self._listenIP("::", port, backLog, v6only=False)

    def initWithAddress(self, addr: Any, backLog: int) -> None:
        if isinstance(addr, (IPv4Address, IPv6Address)):
            if addr.type != "TCP":
                raise NSError(NS_ERROR_INVALID_ARG, f"not a TCP address: {addr!r}")
            host, port = addr.host, addr.port
        elif isinstance(addr, UNIXAddress):
            name = addr.name
            if isinstance(name, (str, bytes)) and name[:1] in ("\0", b"\0"):
                self.initWithAbstractAddress(name[1:], backLog)
            else:
                self.initWithFilename(name, 0o600, backLog)
            return
        elif INetAddr.providedBy(addr):
            family = addr.family
            if family == FAMILY_LOCAL:
                self.initWithFilename(addr.address, 0o600, backLog)
                return
            if family not in (FAMILY_INET, FAMILY_INET6):
                raise NSError(NS_ERROR_INVALID_ARG, f"unknown address family {family!r}")
            host, port = addr.address, addr.port
        elif isinstance(addr, tuple) and len(addr) == 2:
            host, port = addr
        else:
            raise NSError(
                NS_ERROR_INVALID_ARG,
                f"cannot listen on {addr!r}: expected a Twisted address, an INetAddr "
                "or a (host, port) tuple",
            )
        self._listenIP(host, port, backLog)

    def initWithFilename(
        self,
        path: Any,
        permissions: int,
        backlog: int,
        *,
        reclaimStale: bool = False,
        allowedUids: Iterable[int | str] | None = None,
        group: int | str | None = None,
    ) -> None:
        """
        See L{IServerSocket.initWithFilename}; the safety rules are those of
        L{twisted_serversock._unix}.

        @param reclaimStale: (extension) remove a stale socket file at
            C{path} - a socket nobody listens on - instead of failing.
        @param allowedUids: (extension) if not C{None}, the uids whose
            connections are accepted; others are closed before the listener
            sees them.  A member C{"self"} stands for this process's
            effective uid when the peer connects (after C{twistd --uid}
            dropped root, that uid).
        @param group: (extension) the socket file's group, a name or a gid,
            set before the file appears at C{path} (like systemd's
            C{SocketGroup=}).  Without it the file gets the group the
            directory gives new entries: a set-group-ID directory's group,
            else the process's.
        @raise NSError: C{NS_ERROR_INVALID_ARG}, naming the argument, for a
            bad argument or an unknown group.
        """
        raw = _unix.fsPath(path)  # the length check comes before any system call
        mode = _unix.checkMode(permissions)
        backlog = _checkBacklog(backlog)
        reclaim = _boolean(reclaimStale, "reclaimStale")
        uids = _args.asNSError(_args.uids, allowedUids)
        gid = _args.asNSError(_args.groupId, group)
        self._checkUninitialized()
        self._adopt(_bind.bindFilename(path, raw, mode, backlog, reclaimStale=reclaim, gid=gid), uids, backlog=backlog)

    def initWithAbstractAddress(
        self, name: str | bytes, backlog: int, *, allowedUids: Iterable[int | str] | None = None
    ) -> None:
        """
        See L{IServerSocket.initWithAbstractAddress}.

        @param allowedUids: (extension) as for L{initWithFilename}: the only
            access control an abstract socket can have.
        """
        address = _unix.abstractName(name)
        backlog = _checkBacklog(backlog)
        uids = _args.asNSError(_args.uids, allowedUids)
        self._checkUninitialized()
        self._adopt(_bind.bindAbstract(name, address, backlog), uids, backlog=backlog)

    def _checkUninitialized(self) -> None:
        if self._bound is not None:
            raise NSError(NS_ERROR_ALREADY_INITIALIZED, f"{self!r} is already initialised")

    def _listenIP(
        self,
        host: str,
        port: object,
        backLog: object,
        v6only: bool = True,
        keepWhenOffline: bool = False,
    ) -> None:
        port = _checkPort(port)
        backlog = _checkBacklog(backLog)
        self._checkUninitialized()
        family = _ipFamily(host)
        if self._ioService.offline and not (keepWhenOffline or isLocalListenAddress(host)):
            raise NSError(
                NS_ERROR_OFFLINE,
                f"the I/O service is offline; a listener on {host} would not survive it",
            )
        bound = _bind.bindIP(family, host, port, backlog, v6only)
        address = bound.address
        assert not isinstance(address, UNIXAddress)
        # Decided on the address bound, not the spelling asked for
        # ("0:0:0:0:0:0:0:1" is ::1).
        self._adopt(bound, None, keepWhenOffline or isLocalListenAddress(address.host), backlog=backlog)

    def _adopt(
        self,
        bound: _bind.BoundSocket,
        allowedUids: frozenset[int | str] | None,
        survivesOffline: bool = True,
        backlog: int = socket.SOMAXCONN,
    ) -> None:
        """
        Take a freshly bound and listening socket as this object's; unless
        it survives going offline (a UNIX socket, a loopback one, or one
        asked to keep), the I/O service closes it on going offline.
        """
        self._bound = bound
        self._backlog = backlog
        self._address = bound.address
        self._allowedUids = allowedUids
        self._survivesOffline = survivesOffline
        # Every bound server socket registers, survivor or not: the
        # registration also keeps it (and its socket file) alive until
        # close(), as Gecko's socket service holds its sockets.
        self._unregister = self._ioService.register(self._goOffline)

    def _goOffline(self) -> None:
        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.goOffline()
        if not self._survivesOffline:
            self._stop(NS_ERROR_ABORT)

    # ------------------------------------------------------------------
    # Listening.

    def asyncListen(self, listener: Any) -> None:
        bound = self._bound
        if bound is None:
            raise NSError(NS_ERROR_NOT_INITIALIZED, "asyncListen needs a successful init first")
        if self._port is not None:
            raise NSError(NS_ERROR_IN_PROGRESS, f"{self!r} is already listening")
        # A listener that takes sockets raw (IRawAcceptor: the process that
        # hands connections to workers) needs no onSocketAccepted.
        raw = IRawAcceptor.providedBy(listener)
        for method in ("socketAccepted" if raw else "onSocketAccepted", "onStopListening"):
            if not callable(getattr(listener, method, None)):
                raise NSError(NS_ERROR_INVALID_ARG, f"the listener {listener!r} has no {method}()")
        reactor = self._getReactor()
        if self._queue is None:
            self._queue = CallQueue(reactor)
        self._listener = listener
        pipeline = self._pipeline = self._newPipeline(listener, self._queue, reactor, bound)
        port = self._port = ListeningPort(
            bound.socket,
            bound.address,
            reactor,
            accept=pipeline.accept,
            failed=self._acceptFailed,
            removed=self._removedByReactor,
            close=self.close,
            prefix=_logPrefixOf(listener),
            backlog=self._backlog,
        )
        pipeline.port = port
        port.startListening()

    def _newPipeline(self, listener: Any, queue: CallQueue, reactor: Any, bound: _bind.BoundSocket) -> AcceptPipeline:
        """
        The accept pipeline of one listening period (a TLS server socket's
        puts TLS on each connection).
        """
        return AcceptPipeline(
            self, listener, queue, reactor, bound.transportClass, self._ioService, self._allowedUids, bound.address
        )

    def pauseAccepting(self) -> None:
        """
        (Not Gecko's.)  Accept nothing until L{resumeAccepting}: queued
        connections wait in the kernel's backlog.  For back-pressure (the
        worker pool pauses while every worker is saturated).
        """
        if self._port is not None:
            self._port.pauseAccepting()

    def resumeAccepting(self) -> None:
        """
        (Not Gecko's.)  Accept again after L{pauseAccepting}.
        """
        if self._port is not None:
            self._port.resumeAccepting()

    def _removedByReactor(self) -> None:
        """
        The reactor dropped the listening port (it is shutting down): stop
        as L{close} does, and deliver what is queued - the one
        C{onStopListening(NS_BINDING_ABORTED)} last - now, since a reactor
        that is going away will not run the queue again (nor may anything
        be scheduled on it: a threadedselect reactor's waker is gone).
        """
        self._stop(NS_BINDING_ABORTED, now=True)

    def _acceptFailed(self, error: object) -> None:
        _log.error(
            "Fatal error on the listening socket of {serv!r}: {error}; it stops listening",
            serv=self,
            error=error,
        )
        self._stop(NS_ERROR_UNEXPECTED)

    def _stop(self, status: int, now: bool = False) -> None:
        """
        Close the listening socket now and, if a listener was listening,
        queue its one C{onStopListening(self, status)}; or, C{now}, deliver
        what is queued and then it at once.

        A C{close()} after C{asyncListen} first accepts the connections the
        kernel has queued (closing would reset them) and queues their
        delivery, through the same stages as any accepted connection,
        before the C{onStopListening}.  Not at the reactor's shutdown (no
        turn is left to serve them), nor going offline, nor after a fatal
        error.
        """
        port, bound, listener, pipeline = self._port, self._bound, self._listener, self._pipeline
        self._port = self._bound = self._listener = self._pipeline = None
        taken: list[tuple[socket.socket, Any]] = []
        unregister, self._unregister = self._unregister, None
        if unregister is not None:
            unregister()
        if bound is not None:
            # Unlink a socket file first: once the socket is closed, the
            # path would still be there but refuse connections.
            bound.unlink()
            if port is not None:
                taken = port.stop(takeQueued=status == NS_BINDING_ABORTED and not now)
            else:
                bound.socket.close()
        if pipeline is not None:
            if taken:
                assert self._queue is not None
                for skt, addr in taken:
                    self._queue.call(pipeline.accept, skt, addr)
                self._queue.call(pipeline.stop)
            else:
                pipeline.stop()
        if listener is not None:
            if status == NS_ERROR_ABORT:
                _log.info("{serv!r} closed: the I/O service went offline", serv=self)
            assert self._queue is not None
            if now:
                self._queue.flush()
                self._notifyStop(listener, status)
            else:
                self._queue.call(self._notifyStop, listener, status)

    def _notifyStop(self, listener: Any, status: int) -> None:
        try:
            listener.onStopListening(self, status)
        except Exception:
            _log.failure(
                "Unhandled error in {listener!r}.onStopListening({status})",
                listener=listener,
                status=nameOf(status),
            )

    def close(self) -> None:
        """
        See L{IServerSocket.close}.  After L{asyncListen}, the connections
        already in the kernel's accept queue are accepted before the socket
        closes (not reset), and each is delivered as any accepted
        connection, through the reactor, before the C{onStopListening}
        (see L{_stop}).
        """
        self._stop(NS_BINDING_ABORTED)

    # ------------------------------------------------------------------
    # Addresses.

    @property
    def port(self) -> int:
        address = self._address
        if isinstance(address, (IPv4Address, IPv6Address)):
            return int(address.port)
        raise NSError(
            NS_ERROR_FAILURE,
            "only an initialised TCP server socket has a port"
            if address is not None
            else "the server socket is not initialised",
        )

    def getAddress(self) -> Address:
        if self._address is None:
            raise NSError(NS_ERROR_NOT_INITIALIZED, "the server socket is not initialised")
        return self._address

