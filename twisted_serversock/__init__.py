"""
twisted-serversock: Gecko's server-socket API (C{nsIServerSocket} and
friends) over Twisted's reactor, and C{gecko:} / C{geckounix:} endpoints for
C{twistd}.

The names most programs need are importable from here::

    from twisted_serversock import ServerSocket, NSError, results

Importing this package never imports (and so never installs) the global
reactor.
"""

from . import results
from .interfaces import (
    IAsyncInputStream,
    IAsyncOutputStream,
    IInputStreamCallback,
    IIOService,
    INetAddr,
    IOutputStreamCallback,
    IRawAcceptor,
    IServerSocket,
    IServerSocketListener,
    ISocketTransport,
    ITCPServerSocket,
    ITCPServerSocketInternal,
    ITCPSocket,
    ITLSClientStatus,
    ITLSServerConnectionInfo,
    ITLSServerSecurityObserver,
    ITLSServerSocket,
    nsIAsyncInputStream,
    nsIAsyncOutputStream,
    nsIInputStreamCallback,
    nsINetAddr,
    nsIOutputStreamCallback,
    nsIServerSocket,
    nsIServerSocketListener,
    nsISocketTransport,
    nsITCPServerSocketInternal,
    nsITLSClientStatus,
    nsITLSServerConnectionInfo,
    nsITLSServerSecurityObserver,
    nsITLSServerSocket,
)
from .ioservice import IOService, ioService
from .netaddr import NetAddr
from .results import NSError
from .serversocket import KeepWhenOffline, LoopbackOnly, ServerSocket
from .tcpsocket import TCPServerSocket, TCPSocket
from .tls import TLSServerSocket
from .transport import SocketTransport

__version__ = "0.1.0.dev0"

__all__ = [
    "results",
    "NSError",
    "ServerSocket",
    "LoopbackOnly",
    "KeepWhenOffline",
    "IOService",
    "ioService",
    "NetAddr",
    "SocketTransport",
    "TCPServerSocket",
    "TCPSocket",
    "TLSServerSocket",
    "IServerSocket",
    "IServerSocketListener",
    "ISocketTransport",
    "IAsyncInputStream",
    "IAsyncOutputStream",
    "IInputStreamCallback",
    "IOutputStreamCallback",
    "INetAddr",
    "IIOService",
    "ITCPServerSocket",
    "ITCPServerSocketInternal",
    "ITCPSocket",
    "nsIServerSocket",
    "nsIServerSocketListener",
    "nsISocketTransport",
    "nsINetAddr",
    "nsITCPServerSocketInternal",
    "nsIAsyncInputStream",
    "nsIAsyncOutputStream",
    "nsIInputStreamCallback",
    "nsIOutputStreamCallback",
    "ITLSServerSocket",
    "ITLSServerConnectionInfo",
    "ITLSServerSecurityObserver",
    "ITLSClientStatus",
    "nsITLSServerSocket",
    "nsITLSServerConnectionInfo",
    "nsITLSServerSecurityObserver",
    "nsITLSClientStatus",
    "IRawAcceptor",
]
