# -*- test-case-name: tests.test_serversocket,tests.test_unix -*-
"""
The accept pipeline: what happens to each socket a server socket's
listening port accepts, decided once when the server socket starts
listening (not per connection):

  1. the uid filter, if the server socket has allowed uids: a peer whose
     credentials are not allowed is closed (and logged, at a bounded rate);
  2. then either the raw hand-off, for a listener that provides
     L{IRawAcceptor} (it takes the socket as it is), or the transport stage:
     a L{SocketTransport} handed to the listener's C{onSocketAccepted}, and
     put in stream mode afterwards if the listener built nothing for it.

No stage ever raises into the listening port, and no accepted socket ever
vanishes without a trace: what cannot be handed on is closed and logged.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from . import _args, _unix
from ._accepted import AcceptedSocket
from ._refusals import RefusalLog
from ._streammode import goOffline
from .interfaces import IRawAcceptor
from .netaddr import LOOPBACK_PEER_PREFIXES
from .transport import SocketTransport

if TYPE_CHECKING:
    from ._callqueue import CallQueue
    from ._port import ListeningPort
    from ._types import Accept, Address, IServerReactor, Peer
    from .ioservice import IOService
    from .interfaces import IServerSocket

__all__ = ["AcceptPipeline"]

_log = Logger()

class AcceptPipeline:
    """
    The stages accepted sockets go through for one listening period of a
    server socket.

    @ivar accept: the callable the listening port gives each accepted
        socket and its peer address to: the first stage.
    @ivar port: the listening port (for the session numbers of the
        connections built); set once the port exists.
    """

    __slots__ = (
        "accept",
        "port",
        "_serv",
        "_listener",
        "_queue",
        "_reactor",
        "_transportClass",
        "_ioService",
        "_rawAccept",
        "_deliver",
        "_allowedUids",
        "_address",
        "_deciding",
        "_refusals",
        "_acceptedClass",
        "_connectionClass",
    )

    # Set by the server socket once the port exists (before it listens).
    port: ListeningPort

    def __init__(
        self,
        serv: IServerSocket,
        listener: Any,
        queue: CallQueue,
        reactor: IServerReactor,
        transportClass: object,
        ioService: IOService,
        allowedUids: frozenset[int | str] | None,
        address: Address,
        acceptedClass: Any = AcceptedSocket,
        connectionClass: Any = SocketTransport,
    ) -> None:
        """
        @param serv: the server socket (what the listener is told accepted
            the connection).
        @param listener: the listener given to C{asyncListen}.
        @param queue: the server socket's L{CallQueue}, shared with its
            connections.
        @param transportClass: the Twisted server transport class (or what
            C{acceptedClass} takes in its place), passed on as is.
        @param ioService: the I/O service that watches connections from
            peers that are not local.
        @param allowedUids: the uids allowed to connect, or C{None} for
            no filter.
        @param address: the bound address (for the refusal log).
        @param acceptedClass: what each accepted socket becomes, called like
            L{AcceptedSocket} (with C{transportClass} as its first argument).
        @param connectionClass: the connection the listener is given,
            called like L{SocketTransport}.  (A TLS server socket's put TLS
            on each connection; the same work per connection either way.)
        """
        self._serv: IServerSocket | None = serv
        self._listener = listener
        self._queue = queue
        self._reactor = reactor
        self._transportClass = transportClass
        self._ioService = ioService
        self._allowedUids = allowedUids
        self._address = address
        self._refusals: RefusalLog | None = None
        self._acceptedClass = acceptedClass
        self._connectionClass = connectionClass
        #: A connection from a peer that is not local while the listener's
        #: onSocketAccepted runs: see L{goOffline}.
        self._deciding: SocketTransport | None = None
        deliver: Accept
        if IRawAcceptor.providedBy(listener):
            self._rawAccept: Accept | None = listener.socketAccepted
            deliver = self._handOff
        else:
            self._rawAccept = None
            deliver = self._toListener
        self._deliver = deliver
        self.accept: Accept = self._filtered if allowedUids is not None else deliver

    def stop(self) -> None:
        """
        The listening period is over: stop the refusal log's timer.
        """
        refusals, self._refusals = self._refusals, None
        if refusals is not None:
            refusals.stop()
        # Connections still open hold the listening port, and so this
        # pipeline: it must not keep the listener and the server socket
        # alive for them.  (Nothing is accepted after this.)
        self._listener = self._serv = self._rawAccept = None

    def goOffline(self) -> None:
        """
        The I/O service is going offline: a connection from a peer that is
        not local, which the listener is still deciding about (the switch
        was thrown from its C{onSocketAccepted}), goes offline at once, as
        the watched ones do.  (The server socket calls this; it is
        registered with the I/O service whether it survives or not.)
        """
        conn = self._deciding
        if conn is not None:
            conn.goOffline()

    # ------------------------------------------------------------------
    # Stage 1: the uid filter.

    def _filtered(self, skt: socket.socket, addr: Peer) -> None:
        if self._peerAllowed(skt):
            self._deliver(skt, addr)

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
            refusals = self._refusals = RefusalLog(self._reactor, self._address)
        refusals.refused(pid, uid)
        skt.close()
        return False

    # ------------------------------------------------------------------
    # Stage 2: the raw hand-off, or the transport and the listener.

    def _handOff(self, skt: socket.socket, addr: Peer) -> None:
        raw = self._rawAccept
        assert raw is not None
        try:
            raw(skt, addr)
        except Exception:
            _log.failure("Could not hand over the connection accepted from {addr!r}; closing it", addr=addr)
            skt.close()

    def _toListener(self, skt: socket.socket, addr: Peer) -> None:
        try:
            # The Twisted transport is built when first needed: for the
            # listener's protocol if it attaches one; the session number is
            # taken then, so that a refused connection takes none.
            accepted = self._acceptedClass(self._transportClass, skt, addr, self.port, self._reactor)
            conn = self._connectionClass(self._queue, accepted)
        except Exception:
            _log.failure("Could not set up the connection accepted from {addr!r}; closing it", addr=addr)
            skt.close()
            return
        # A connection from a peer that is not local is closed when the I/O
        # service goes offline, from the moment anyone can see it: while the
        # listener decides, through this pipeline (L{goOffline}); then
        # watched by its Twisted transport, which lives as long as the
        # connection does.  Its transport is built exactly as for a local
        # peer: for the listener's protocol, or in stream mode afterwards.
        remote = type(addr) is tuple and not addr[0].startswith(LOOPBACK_PEER_PREFIXES) and addr[0] != "::1"
        if remote:
            self._deciding = conn
        listener = self._listener
        try:
            listener.onSocketAccepted(self._serv, conn)
        except Exception:
            _log.failure("Unhandled error in {listener!r}.onSocketAccepted", listener=listener)
        self._deciding = None
        if accepted.pending:
            try:
                # Neither attached nor used: stream mode (the listener may
                # keep the connection and use it later).
                conn.startStreaming()
            except Exception:
                _log.failure("Could not set up the connection accepted from {addr!r}; closing it", addr=addr)
                return
        if remote:
            tcp = conn.builtTransport()
            if tcp is not None:
                self._ioService.watch(tcp, goOffline)
