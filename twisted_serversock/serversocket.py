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

import os
import socket
from typing import Any, Callable, Iterable

from twisted.internet import tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from zope.interface import implementer

from . import _advice, _args, _unix
from . import ioservice as _ioservice
from ._callqueue import CallQueue
from ._port import ListeningPort
from ._refusals import RefusalLog
from .interfaces import INetAddr, IServerSocket
from .ipc.interfaces import IRawAcceptor
from .netaddr import FAMILY_INET, FAMILY_INET6, FAMILY_LOCAL, ipFamily, isLocalListenAddress, isLoopbackPeer
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
from ._accepted import AcceptedSocket
from .transport import SocketTransport

__all__ = ["ServerSocket", "LoopbackOnly", "KeepWhenOffline"]

LoopbackOnly = 1
KeepWhenOffline = 2

_MAX_PORT = 65535
_MAX_BACKLOG = 2**31 - 1

_log = Logger()

_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def _logPrefixOf(listener: Any) -> str:
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


class _UNIXServer(unix.Server):
    """
    An accepted UNIX connection whose C{getHost()} is the path the server
    socket was created at.  (The kernel's name for the listening socket is
    the temporary one it was bound to before being linked into place; see
    L{twisted_serversock._unix}.)
    """

    def getHost(self) -> UNIXAddress:
        port: Any = self.server
        return port.getHost()


def _integer(value: Any, what: str) -> int:
    return _args.asNSError(_args.integer, value, what)


def _boolean(value: Any, what: str) -> bool:
    return _args.asNSError(_args.boolean, value, what)


def _checkPort(port: Any) -> int:
    port = _integer(port, "port")
    if port > _MAX_PORT:
        raise NSError(NS_ERROR_INVALID_ARG, f"port {port} is above {_MAX_PORT}")
    return max(port, 0)


def _checkBacklog(backlog: Any) -> int:
    backlog = _integer(backlog, "backlog")
    if backlog < 0:
        return socket.SOMAXCONN
    if backlog > _MAX_BACKLOG:
        raise NSError(NS_ERROR_INVALID_ARG, f"backlog {backlog} is too large")
    return backlog


def _ipFamily(host: Any) -> int:
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
    @ivar _socket: the bound, listening socket from a successful C{init*}
        until L{close}.
    @ivar _port: the reactor's L{ListeningPort} after L{asyncListen}.
    @ivar _listener: the listener, from L{asyncListen} until stopped.
    @ivar _address: the Twisted address actually bound (kept after close,
        as Gecko keeps it).
    @ivar _keepWhenOffline: whether C{KeepWhenOffline} was asked.
    @ivar _queue: the FIFO of deferred callbacks, shared with the
        connections this socket accepts.
    """

    LoopbackOnly = LoopbackOnly
    KeepWhenOffline = KeepWhenOffline

    def __init__(self, reactor: Any = None, ioService: Any = None) -> None:
        self._reactor = reactor
        self._ioService = ioService if ioService is not None else _ioservice.ioService
        self._socket: socket.socket | None = None
        self._port: ListeningPort | None = None
        self._listener: Any = None
        self._address: Any = None
        self._keepWhenOffline = False
        self._queue: CallQueue | None = None
        self._transportClass: Any = tcp.Server
        self._fileIdentity: tuple[int, int] | None = None
        self._filePath = b""
        self._allowedUids: frozenset[int | str] | None = None
        self._refusals: RefusalLog | None = None
        #: The listener's C{socketAccepted} if it provides L{IRawAcceptor}:
        #: accepted sockets go there, raw, instead of becoming a
        #: L{SocketTransport}.
        self._rawAccept: Callable[[socket.socket, Any], None] | None = None

    def __repr__(self) -> str:
        state = "listening" if self._port else "bound" if self._socket else "closed"
        return f"<ServerSocket {state} on {self._address}>"

    def _getReactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
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
        skt, identity = _unix.listenFilename(raw, mode, backlog, reclaimStale=reclaim, gid=gid)
        name: Any = path if isinstance(path, (str, bytes)) else os.fspath(path)
        self._adopt(skt, UNIXAddress(name), _UNIXServer, False)
        self._fileIdentity = (identity[0], identity[1])
        self._filePath = os.path.abspath(raw)
        self._allowedUids = uids

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
        skt = _unix.listenAbstract(address, backlog)
        shown: Any = "\0" + name if isinstance(name, str) else address
        self._adopt(skt, UNIXAddress(shown), _UNIXServer, False)
        self._allowedUids = uids

    def _checkUninitialized(self) -> None:
        if self._socket is not None:
            raise NSError(NS_ERROR_ALREADY_INITIALIZED, f"{self!r} is already initialised")

    def _listenIP(
        self,
        host: str,
        port: Any,
        backLog: Any,
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
        if family == socket.AF_INET6:
            try:
                sockaddr = socket.getaddrinfo(
                    host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
                )[0][4]
            except socket.gaierror as e:
                raise NSError(NS_ERROR_INVALID_ARG, f"bad IPv6 address {host!r}: {e}") from None
        else:
            sockaddr = (host, port)
        what = f"listen on {_describe(family, host, port)} (backlog {backlog})"
        skt = None
        try:
            skt = socket.socket(family, socket.SOCK_STREAM)
            skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Always explicit: the result must not depend on the host's
                # net.ipv6.bindv6only.  Only initDualStack turns it off.
                skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
            skt.bind(sockaddr)
            skt.listen(backlog)
            skt.setblocking(False)
            name = skt.getsockname()
        except OSError as e:
            if skt is not None:
                skt.close()
            raise NSError.fromOSError(e, what, _advice.forTCP(e, port)) from None
        if family == socket.AF_INET6:
            # The numeric host keeps a scope ("fe80::1%eth0"), as Twisted's
            # own port reports it: without it the address cannot be reached.
            host = socket.getnameinfo(name, _NUMERIC)[0] if name[3] else name[0]
            address: Any = IPv6Address("TCP", host, name[1], name[2], name[3])
        else:
            address = IPv4Address("TCP", name[0], name[1])
        self._adopt(skt, address, tcp.Server, keepWhenOffline)

    def _adopt(self, skt: socket.socket, address: Any, transportClass: Any, keepWhenOffline: bool) -> None:
        """
        Take a freshly bound and listening socket as this object's.
        """
        self._socket = skt
        self._address = address
        self._transportClass = transportClass
        self._keepWhenOffline = keepWhenOffline
        self._fileIdentity = None
        self._allowedUids = None
        self._ioService._addServerSocket(self)

    # ------------------------------------------------------------------
    # Listening.

    def asyncListen(self, listener: Any) -> None:
        if self._socket is None:
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
        self._rawAccept = listener.socketAccepted if raw else None
        self._port = ListeningPort(self._socket, self, reactor, _logPrefixOf(listener))
        self._port.startListening()

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

    def _accepted(self, skt: socket.socket, addr: Any) -> None:
        """
        The listening port accepted C{skt} from C{addr}: wrap it and hand it
        to the listener.  Never raises: an accepted socket must never vanish
        without a trace.
        """
        port = self._port
        if self._allowedUids is not None and not self._peerAllowed(skt):
            return
        raw = self._rawAccept
        if raw is not None:
            try:
                raw(skt, addr)
            except Exception:
                _log.failure("Could not hand over the connection accepted from {addr!r}; closing it", addr=addr)
                skt.close()
            return
        try:
            # Built when first needed: for the listener's protocol if it
            # attaches one (see SocketTransport.startStreaming); the session number
            # is taken then, so that a refused connection takes none.
            accepted = AcceptedSocket(self._transportClass, skt, addr, port, self._reactor)
            conn = SocketTransport(self._queue, accepted)
            if type(addr) is tuple and not isLoopbackPeer(addr[0]):
                # The I/O service must know a connection from a peer that is
                # not local before anyone sees it (it is closed on going
                # offline): build its Twisted transport now, in stream mode.
                self._ioService._addConnection(conn.startStreaming())
        except Exception:
            _log.failure("Could not set up the connection accepted from {addr!r}; closing it", addr=addr)
            skt.close()
            return
        listener = self._listener
        try:
            listener.onSocketAccepted(self, conn)
        except Exception:
            _log.failure("Unhandled error in {listener!r}.onSocketAccepted", listener=listener)
        if accepted.pending:
            try:
                # Neither attached nor used: stream mode (the listener may
                # keep the connection and use it later).
                conn.startStreaming()
            except Exception:
                _log.failure("Could not set up the connection accepted from {addr!r}; closing it", addr=addr)

    def _peerAllowed(self, skt: socket.socket) -> bool:
        """
        Whether the peer of UNIX connection C{skt} may connect; closes it
        (and logs it, at a bounded rate: see L{RefusalLog}) if not.
        """
        try:
            pid, uid, _gid = _unix.peerCredentials(skt)
        except OSError as e:
            pid = uid = -1
            _log.warn("Cannot read the peer credentials of a connection ({error}); refusing it", error=e)
        else:
            allowed = self._allowedUids
            assert allowed is not None
            if uid in allowed or (_args.SELF_UID in allowed and uid == os.geteuid()):
                return True
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = RefusalLog(self._getReactor(), self._address)
        refusals.refused(pid, uid)
        skt.close()
        return False

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

    def _survivesOffline(self) -> bool:
        if self._keepWhenOffline:
            return True
        address = self._address
        if isinstance(address, (IPv4Address, IPv6Address)):
            return isLocalListenAddress(address.host)
        return True

    def _stop(self, status: int, now: bool = False) -> None:
        """
        Close the listening socket now and, if a listener was listening,
        queue its one C{onStopListening(self, status)}; or, C{now}, deliver
        what is queued and then it at once.
        """
        port, skt, listener = self._port, self._socket, self._listener
        self._port = self._socket = self._listener = None
        refusals, self._refusals = self._refusals, None
        if refusals is not None:
            refusals.stop()
        self._ioService._removeServerSocket(self)
        # Unlink a socket file first: once the socket is closed, the path
        # would still be there but refuse connections.
        identity, self._fileIdentity = self._fileIdentity, None
        if identity is not None and (port is not None or skt is not None):
            _unix.unlinkIfOurs(self._filePath, identity)
        if port is not None:
            port.stop()
        elif skt is not None:
            skt.close()
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

    def getAddress(self) -> Any:
        if self._address is None:
            raise NSError(NS_ERROR_NOT_INITIALIZED, "the server socket is not initialised")
        return self._address


def _describe(family: int, host: str, port: int) -> str:
    if family == socket.AF_INET6:
        return f"[{host}]:{port}"
    return f"{host}:{port}"

