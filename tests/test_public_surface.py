"""
The public surface, pinned (as klein pins its own): each public module's
C{__all__}, and that every name in it exists.  A change here is a change
of public API: make it on purpose, with a CHANGELOG entry.
"""

from __future__ import annotations

import importlib

import pytest

_INTERFACES = [
    "IServerSocket", "IServerSocketListener", "ISocketTransport", "IAsyncInputStream",
    "IAsyncOutputStream", "IInputStreamCallback", "IOutputStreamCallback", "INetAddr",
    "IIOService", "ITCPServerSocket", "ITCPServerSocketInternal", "ITCPSocket",
    "nsIServerSocket", "nsIServerSocketListener", "nsISocketTransport", "nsINetAddr",
    "nsITCPServerSocketInternal", "nsIAsyncInputStream", "nsIAsyncOutputStream",
    "nsIInputStreamCallback", "nsIOutputStreamCallback",
    "ITLSServerSocket", "ITLSServerConnectionInfo", "ITLSServerSecurityObserver", "ITLSClientStatus",
    "nsITLSServerSocket", "nsITLSServerConnectionInfo", "nsITLSServerSecurityObserver",
    "nsITLSClientStatus",
    "IRawAcceptor",
]  # fmt: skip

PUBLIC: dict[str, list[str]] = {
    "twisted_serversock": [
        "results", "NSError", "ServerSocket", "LoopbackOnly", "KeepWhenOffline", "IOService",
        "ioService", "NetAddr", "SocketTransport", "TCPServerSocket", "TCPSocket",
        "TLSServerSocket",
    ] + _INTERFACES,
    "twisted_serversock.interfaces": _INTERFACES,
    "twisted_serversock.results": [
        "NSError", "nameOf", "fromErrno", "succeeded", "failed", "NS_OK", "NS_BINDING_ABORTED",
        "NS_ERROR_NOT_INITIALIZED", "NS_ERROR_ALREADY_INITIALIZED", "NS_ERROR_NOT_IMPLEMENTED",
        "NS_ERROR_ABORT", "NS_ERROR_FAILURE", "NS_ERROR_UNEXPECTED", "NS_ERROR_OUT_OF_MEMORY",
        "NS_ERROR_INVALID_ARG", "NS_ERROR_NOT_AVAILABLE", "NS_ERROR_CONNECTION_REFUSED",
        "NS_ERROR_NET_TIMEOUT", "NS_ERROR_IN_PROGRESS", "NS_ERROR_OFFLINE", "NS_ERROR_NET_RESET",
        "NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED", "NS_ERROR_SOCKET_ADDRESS_IN_USE",
        "NS_BASE_STREAM_CLOSED", "NS_BASE_STREAM_WOULD_BLOCK",
        "NS_ERROR_FILE_UNRESOLVABLE_SYMLINK", "NS_ERROR_FILE_NOT_DIRECTORY",
        "NS_ERROR_FILE_IS_DIRECTORY", "NS_ERROR_FILE_NO_DEVICE_SPACE",
        "NS_ERROR_FILE_NAME_TOO_LONG", "NS_ERROR_FILE_NOT_FOUND", "NS_ERROR_FILE_READ_ONLY",
        "NS_ERROR_FILE_ACCESS_DENIED",
    ],
    "twisted_serversock.serversocket": ["ServerSocket", "LoopbackOnly", "KeepWhenOffline"],
    "twisted_serversock.transport": ["SocketTransport", "bufferedOutput"],
    "twisted_serversock.streams": [
        "InputStream", "OutputStream", "DEFAULT_SEGMENT_SIZE", "DEFAULT_SEGMENT_COUNT",
        "WAIT_CLOSURE_ONLY",
    ],
    "twisted_serversock.ioservice": ["IOService", "ioService"],
    "twisted_serversock.netaddr": ["NetAddr", "FAMILY_INET", "FAMILY_INET6", "FAMILY_LOCAL"],
    "twisted_serversock.endpoints": [
        "GeckoServerEndpoint", "GeckoUNIXServerEndpoint", "GeckoListeningPort", "parseGecko",
        "parseGeckoUNIX",
    ],
    "twisted_serversock.tls": [
        "TLSServerSocket", "TLSServerConnectionInfo", "TLSSocketTransport", "REQUEST_NEVER",
        "REQUEST_FIRST_HANDSHAKE", "REQUEST_ALWAYS", "REQUIRE_FIRST_HANDSHAKE", "REQUIRE_ALWAYS",
        "TLS_VERSION_1", "TLS_VERSION_1_1", "TLS_VERSION_1_2", "TLS_VERSION_1_3", "TLS_VERSION_UNKNOWN",
    ],
    "twisted_serversock.tlsendpoints": [
        "GeckoTLSServerEndpoint", "TLSListeningPort", "parseGeckoTLS", "parseGeckoUNIXTLS", "contextFactoryFromOptions",
        "DEFAULT_HANDSHAKE_TIMEOUT",
    ],
    "twisted_serversock.tcpsocket": [
        "TCPServerSocket", "TCPSocket", "TCPSocketEvent", "TCPServerSocketEvent",
        "TCPSocketErrorEvent", "BUFFER_SIZE",
    ],
    "twisted_serversock.ipc.child": ["ParentLink", "TCPServerSocketChild", "REPORT_DELAY"],
    "twisted_serversock.cluster": ["isWorker", "workerIndex", "listen"],
    "twisted_serversock.tap": ["Options", "makeService", "ServerSockService"],
    "twisted_serversock.examples": ["Echo", "echo"],
    "twisted_serversock.testing": ["MemoryServerSocket", "MemoryConnection", "RecordingListener", "flush"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_allIsPinned(name: str) -> None:
    """
    A public module's C{__all__} is exactly the pinned list, and each name
    in it can be imported from the module.
    """
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(PUBLIC[name])
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []
