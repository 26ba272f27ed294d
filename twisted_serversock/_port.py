"""
The reactor side of a listening socket: a small subclass of Twisted's TCP
port that adopts a socket L{ServerSocket<twisted_serversock.serversocket.ServerSocket>}
already bound and listened on, and hands each accepted socket to it.

Why not C{reactor.adoptStreamPort}: Twisted's adopted port re-listens with
backlog 50 (undoing the backlog we were asked for), and for UNIX sockets it
chmods and unlinks the path.  Why not Twisted's own C{doRead}: it catches
every exception with C{log.deferr()} and keeps accepting after
C{stopReading()}, so a fatal error would never stop the listener and a
C{close()} from inside a listener callback would not stop the current batch.
This class keeps Twisted's accept loop (C{_accept}: EAGAIN, EPERM from
netfilter, EMFILE recovery through the reserved descriptor, and the other
transient errors logged) and replaces only the loop body.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet import base, tcp
from twisted.internet.tcp import _accept, _BuffersLogs, _reservedFD
from twisted.logger import Logger

if TYPE_CHECKING:
    from .serversocket import ServerSocket

_NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


class ListeningPort(tcp.Port):
    """
    Accepts connections on a socket that is already bound and listening.

    @ivar _owner: the server socket to which accepted sockets go.
    """

    _logger = Logger()

    def __init__(
        self,
        skt: socket.socket,
        owner: ServerSocket,
        reactor: Any,
    ) -> None:
        # Deliberately not tcp.Port.__init__: there is nothing to bind.
        base.BasePort.__init__(self, reactor=reactor)
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]
        self.addressFamily = skt.family
        self._owner = owner
        if skt.family == socket.AF_UNIX:
            self._realPortNumber = 0
        else:
            self._realPortNumber = skt.getsockname()[1]
        self.numberAccepts = 100

    def __repr__(self) -> str:
        return f"<ListeningPort of {self._owner!r}>"

    def logPrefix(self) -> str:
        return "ServerSocket"

    def startListening(self) -> None:
        """
        Start accepting (the socket is already listening).
        """
        _reservedFD.reserve()
        self.connected = True
        self.startReading()

    def doRead(self) -> None:
        """
        Accept what the kernel has queued and hand each socket to the owner.
        """
        owner = self._owner
        accepted = 0
        try:
            with _BuffersLogs(self._logger.namespace, self._logger.observer) as logger:
                clients = _accept(logger, range(self.numberAccepts), self.socket, _reservedFD)
                for accepted, (skt, addr) in enumerate(clients, 1):
                    if len(addr) == 4:
                        # IPv6: keep the scope id in the host, as Twisted does.
                        host = socket.getnameinfo(addr, _NUMERIC)[0]
                        addr = (host,) + tuple(addr[1:])
                    owner._accepted(skt, addr)
                    if self.disconnecting or not self.connected:
                        # close() was called from a listener callback: the
                        # rest of the kernel queue is not ours any more.
                        return
        except OSError as e:
            owner._acceptFailed(e)
            return
        if accepted == self.numberAccepts:
            self.numberAccepts += 20
        else:
            self.numberAccepts = max(1, accepted)

    def stop(self) -> None:
        """
        Stop accepting and close the listening socket now.

        Closing synchronously (Twisted's C{loseConnection} closes a turn
        later) frees the port for an immediate re-listen and makes new
        connection attempts fail at once instead of being queued and reset.
        """
        if not self.connected:
            return
        self.stopReading()
        self.connected = False
        self.disconnecting = True
        self._realPortNumber = None
        try:
            self.socket.close()
        except OSError:
            pass

    def connectionLost(self, reason: object) -> None:
        # The reactor calls this when doRead returns a failure or the
        # descriptor is removed; treat it as a fatal error.
        wasConnected = self.connected
        self.stop()
        if wasConnected:
            self._owner._acceptFailed(reason)
