# -*- test-case-name: tests.test_interfaces -*-
"""
The contract of twisted-serversock: Gecko's server-socket interfaces as
C{zope.interface} definitions.

Names and semantics follow Gecko's IDL (C{nsIServerSocket.idl},
C{nsISocketTransport.idl}, C{nsIAsyncInputStream.idl},
C{nsIAsyncOutputStream.idl}, C{nsINetAddr.idl}, C{nsIDOMTCPServerSocket.idl})
so that Gecko code ports line by line.  Where Twisted has its own idea of a
thing (addresses, protocols, the reactor), the Twisted object is used and the
docstring says so.

Every failure is reported by raising
L{twisted_serversock.results.NSError} with the result code named in the
method's docstring.  Every callback into user code is made by the reactor,
never synchronously from inside the call that caused it.

The Gecko-named aliases at the bottom of this module (C{nsIServerSocket} and
friends) are the very same objects as the Python-named interfaces.
"""

from __future__ import annotations

import socket
from typing import Any

from zope.interface import Attribute, Interface

# The stream interfaces live in their own module (this one would pass the
# size limit); they are part of this contract all the same.
from ._streaminterfaces import (
    IAsyncInputStream,
    IAsyncOutputStream,
    IInputStreamCallback,
    IOutputStreamCallback,
)

__all__ = [
    "IServerSocket", "IServerSocketListener", "ISocketTransport", "IAsyncInputStream",
    "IAsyncOutputStream", "IInputStreamCallback", "IOutputStreamCallback", "INetAddr",
    "IIOService", "ITCPServerSocket", "ITCPServerSocketInternal", "ITCPSocket",
    # Gecko's names for the same objects:
    "nsIServerSocket", "nsIServerSocketListener", "nsISocketTransport", "nsINetAddr",
    "nsITCPServerSocketInternal", "nsIAsyncInputStream", "nsIAsyncOutputStream",
    "nsIInputStreamCallback", "nsIOutputStreamCallback",
    # TLS server sockets (Gecko's nsITLSServerSocket.idl), and their Gecko names:
    "ITLSServerSocket", "ITLSServerConnectionInfo", "ITLSServerSecurityObserver", "ITLSClientStatus",
    "nsITLSServerSocket", "nsITLSServerConnectionInfo", "nsITLSServerSecurityObserver",
    "nsITLSClientStatus",
    # A listener or endpoint factory that takes accepted sockets raw:
    "IRawAcceptor",
]  # fmt: skip


class IRawAcceptor(Interface):
    """
    Takes accepted sockets raw, without a Twisted transport: the process
    that hands connections to workers must not build one (its orderly close
    would C{shutdown()} the worker's copy too).  Provided by a protocol
    factory given to a gecko endpoint, or by a listener given to
    C{ServerSocket.asyncListen}.
    """

    def socketAccepted(skt: socket.socket, addr: Any) -> None:
        """Take ownership of C{skt}, accepted from C{addr} (the raw C{accept()} address; an IPv6 host keeps its scope)."""


class IServerSocketListener(Interface):
    """
    Receives the events of an L{IServerSocket} (Gecko's
    C{nsIServerSocketListener}).

    Any object with these two methods may be passed to
    L{IServerSocket.asyncListen}; declaring the interface is optional.
    Both methods are called by the reactor.  An exception raised by either is
    logged and does not stop the server socket.
    """

    def onSocketAccepted(serv: IServerSocket, transport: ISocketTransport) -> None:
        """
        A client connection was accepted.

        Called once per accepted connection, in the order the kernel handed
        them out, and never after L{onStopListening}.

        @param serv: the server socket that accepted it.
        @param transport: the connection, already connected; the listener
            owns it from now on (close it, open its streams, or hand it to a
            Twisted protocol with L{ISocketTransport.attachProtocol}).
        """

    def onStopListening(serv: IServerSocket, status: int) -> None:
        """
        The server socket stopped listening; it is dead after this call.

        Called exactly once per L{IServerSocket.asyncListen}, after the last
        L{onSocketAccepted}.

        @param serv: the server socket.
        @param status: why: C{NS_BINDING_ABORTED} after
            L{IServerSocket.close}, C{NS_ERROR_ABORT} when the I/O service
            went offline, C{NS_ERROR_UNEXPECTED} after a fatal error on the
            listening socket.
        """


class IServerSocket(Interface):
    """
    A listening stream socket (Gecko's C{nsIServerSocket}).

    One of the C{init*} methods creates the socket, binds it and calls
    C{listen()} I{synchronously}: as soon as it returns, clients can connect
    and wait in the kernel's queue.  L{asyncListen} then starts accepting
    them.

    Common rules of the C{init*} methods:
      - a port below 0 or equal to 0 means "pick a free port"; a port above
        65535 raises C{NS_ERROR_INVALID_ARG};
      - a negative backlog means the default, C{socket.SOMAXCONN}; other
        values are passed to C{listen()} unchanged (the OS may cap them);
      - a second C{init*} on a live socket raises
        C{NS_ERROR_ALREADY_INITIALIZED};
      - a failed C{init*} leaves nothing open and the object can be
        initialised again; bind errors are mapped with
        L{twisted_serversock.results.fromErrno};
      - while the I/O service is offline, an C{init*} whose socket would not
        survive going offline raises C{NS_ERROR_OFFLINE}.
    """

    LoopbackOnly = Attribute(
        "Flag for initSpecialConnection (1): bind to the loopback interface only."
    )
    KeepWhenOffline = Attribute(
        "Flag for initSpecialConnection (2): stay open when the I/O service "
        "goes offline."
    )

    port = Attribute(
        """
        The bound TCP port (the kernel's choice when 0 or -1 was asked).
        Reading it on a UNIX, abstract or never-initialised socket raises
        C{NS_ERROR_FAILURE}.
        """
    )

    def init(port: int, loopbackOnly: bool, backLog: int) -> None:
        """
        Listen on IPv4: C{127.0.0.1} if C{loopbackOnly}, else C{0.0.0.0}.
        """

    def initIPv6(port: int, loopbackOnly: bool, backLog: int) -> None:
        """
        Listen on IPv6 only (C{IPV6_V6ONLY=1}, set explicitly): C{::1} if
        C{loopbackOnly}, else C{::}.
        """

    def initDualStack(port: int, backLog: int) -> None:
        """
        Listen on C{::} with C{IPV6_V6ONLY=0} set explicitly: one socket
        serves IPv4 (as v4-mapped addresses) and IPv6 clients.
        """

    def initSpecialConnection(port: int, flags: int, backLog: int) -> None:
        """
        Like L{init}, with C{flags} a bit set of C{LoopbackOnly} and
        C{KeepWhenOffline}; unknown bits are ignored.
        """

    def initWithAddress(addr: object, backLog: int) -> None:
        """
        Listen on a given address: a Twisted C{IPv4Address}/C{IPv6Address}
        (type C{"TCP"}) or C{UNIXAddress}, an L{INetAddr}, or a
        C{(host, port)} tuple whose host is an IP literal.  Anything else
        raises C{NS_ERROR_INVALID_ARG}.
        """

    def initWithFilename(path: object, permissions: int, backlog: int) -> None:
        """
        Listen on a UNIX-domain socket created at C{path} (C{str}, C{bytes}
        or C{os.PathLike}) with exactly the mode C{permissions}.

        Errors: C{NS_ERROR_FILE_NAME_TOO_LONG} (checked before any system
        call), C{NS_ERROR_FILE_NOT_FOUND} (missing parent directory),
        C{NS_ERROR_FILE_NOT_DIRECTORY} (a file as parent),
        C{NS_ERROR_CONNECTION_REFUSED} (no permission),
        C{NS_ERROR_SOCKET_ADDRESS_IN_USE} (anything already at C{path}, which
        is left untouched).
        """

    def initWithAbstractAddress(name: str, backlog: int) -> None:
        """
        Listen on the Linux abstract-namespace UNIX address C{"\\0" + name}.
        Elsewhere: C{NS_ERROR_SOCKET_ADDRESS_NOT_SUPPORTED}.
        """

    def asyncListen(listener: IServerSocketListener) -> None:
        """
        Start accepting connections and reporting them to C{listener}.

        Raises C{NS_ERROR_NOT_INITIALIZED} before a successful C{init*} (or
        after L{close}), C{NS_ERROR_IN_PROGRESS} on a second call, and
        C{NS_ERROR_INVALID_ARG} when C{listener} lacks C{onSocketAccepted} or
        C{onStopListening}.  No callback is made from inside this call.
        """

    def close() -> None:
        """
        Stop listening; the listening socket is closed before this returns.

        Before L{asyncListen}: no callback ever follows and the object can be
        initialised again.  After it: C{onStopListening(serv,
        NS_BINDING_ABORTED)} follows through the reactor, exactly once.
        Idempotent.  Connections already accepted are not affected.
        """

    def getAddress() -> object:
        """
        The bound address as a Twisted C{IPv4Address} or C{IPv6Address}
        (host C{0.0.0.0} or C{::} when bound to all interfaces), or a
        C{UNIXAddress} (the path, or C{"\\0" + name} for an abstract socket).
        Raises C{NS_ERROR_NOT_INITIALIZED} on a never-initialised socket.
        """


class INetAddr(Interface):
    """
    A scriptable network address (Gecko's C{nsINetAddr}).

    Gecko's IPv6-only fields (C{flow}, C{scope}, C{isV4Mapped}), which raise
    C{NS_ERROR_NOT_AVAILABLE} for other families, are provided by
    L{twisted_serversock.netaddr.NetAddr} but are not part of this
    interface: an attribute that raises by design cannot pass
    C{verifyObject}.
    """

    FAMILY_INET = Attribute("1: an IPv4 address.")
    FAMILY_INET6 = Attribute("2: an IPv6 address.")
    FAMILY_LOCAL = Attribute("3: a UNIX-domain address.")

    family = Attribute("One of FAMILY_INET, FAMILY_INET6, FAMILY_LOCAL.")
    address = Attribute(
        "The IP literal (IPv6 without brackets), or the UNIX path; C{''} for "
        "an unnamed or abstract UNIX peer."
    )
    port = Attribute(
        "The port; raises NSError(NS_ERROR_NOT_AVAILABLE) for FAMILY_LOCAL "
        "(so, as with an uninitialised server socket's port, verifyObject "
        "applies to IP addresses only)."
    )


class ISocketTransport(Interface):
    """
    An accepted connection (Gecko's C{nsISocketTransport}), handed to
    L{IServerSocketListener.onSocketAccepted}.

    Use it Gecko's way, through L{openInputStream} and L{openOutputStream},
    or Twisted's way, by handing it to a protocol with L{attachProtocol}.
    """

    OPEN_BLOCKING = Attribute(
        "Stream flag (1): not supported, raises NS_ERROR_NOT_IMPLEMENTED."
    )
    OPEN_UNBUFFERED = Attribute(
        "Stream flag (2): accepted; the reactor always reads into a bounded "
        "buffer."
    )
    TIMEOUT_CONNECT = Attribute("Timeout type 0 (meaningless once accepted).")
    TIMEOUT_READ_WRITE = Attribute(
        "Timeout type 1: close a connection idle for that long."
    )

    host = Attribute(
        "The peer's IP literal (IPv6 without brackets); for UNIX, the peer's "
        "path or C{''} for an unnamed or abstract peer."
    )
    port = Attribute("The peer's port; 0 for UNIX.")
    keepaliveEnabled = Attribute("Whether SO_KEEPALIVE is on (settable).")

    def getPeerAddr() -> object:
        """
        The peer's address as a Twisted address object.
        """

    def getSelfAddr() -> object:
        """
        The local address as a Twisted address object.
        """

    def getScriptablePeerAddr() -> INetAddr:
        """
        The peer's address as an L{INetAddr}.
        """

    def getScriptableSelfAddr() -> INetAddr:
        """
        The local address as an L{INetAddr}.
        """

    def openInputStream(flags: int = 0, segsize: int = 0, segcount: int = 0) -> IAsyncInputStream:
        """
        Open the input stream (once).  C{segsize * segcount} bounds the
        buffer (0 means the default, 4096 and 24).  C{OPEN_BLOCKING} raises
        C{NS_ERROR_NOT_IMPLEMENTED}; a second call, or a call after
        L{attachProtocol}, raises C{NS_ERROR_IN_PROGRESS}.
        """

    def openOutputStream(flags: int = 0, segsize: int = 0, segcount: int = 0) -> IAsyncOutputStream:
        """
        Open the output stream (once).  Same rules as L{openInputStream}.
        """

    def close(reason: int) -> None:
        """
        Close the connection.  A success C{reason} becomes
        C{NS_BASE_STREAM_CLOSED}; both streams close with it; bytes already
        written are flushed before the connection closes.
        """

    def isAlive() -> bool:
        """
        C{False} once the connection is closed or the peer has shut down
        its sending side.
        """

    def getTimeout(type: int) -> float:
        """
        The timeout of C{type} in seconds; C{0xFFFF} means none.  C{type} > 1
        raises C{NS_ERROR_INVALID_ARG}.
        """

    def setTimeout(type: int, seconds: float) -> None:
        """
        Set the timeout of C{type}; C{0xFFFF} or more means none (the
        default).  With a C{TIMEOUT_READ_WRITE}, a connection on which
        nothing is read or written for that long is closed with
        C{NS_ERROR_NET_TIMEOUT}.
        """

    def setKeepaliveVals(idleTime: int, retryInterval: int) -> None:
        """
        Set TCP_KEEPIDLE and TCP_KEEPINTVL (seconds, 1 to 32767, else
        C{NS_ERROR_INVALID_ARG}).
        """

    def getPeerCredentials() -> tuple[int, int, int]:
        """
        C{(pid, uid, gid)} of a UNIX-domain peer (SO_PEERCRED);
        C{NS_ERROR_NOT_AVAILABLE} for TCP.  (Extension beyond Gecko.)
        """

    def attachProtocol(protocol: object) -> None:
        """
        Hand the connection to a Twisted C{IProtocol}, which gets
        C{makeConnection} with the real Twisted transport; bytes that arrived
        before are delivered to it first.  Streams can no longer be opened
        afterwards.  (Extension beyond Gecko.)
        """


class IIOService(Interface):
    """
    The part of Gecko's C{nsIIOService} that server sockets obey: the
    offline switch.
    """

    offline = Attribute(
        """
        Whether the service is offline (settable).  Going offline closes every
        listening socket of this service that is neither local (UNIX,
        abstract, or bound to exactly 127.0.0.1, ::1 or ::ffff:127.0.0.1) nor
        KeepWhenOffline, with C{onStopListening(serv, NS_ERROR_ABORT)}, and
        every accepted connection whose peer is not local, whose streams then
        report C{NS_ERROR_OFFLINE}.  Going back online reopens nothing.
        """
    )


class ITCPSocket(Interface):
    """
    A connection of the web-facing TCP socket API (Gecko's C{TCPSocket}).
    """

    host = Attribute("The peer's host.")
    port = Attribute("The peer's port.")
    ssl = Attribute("Always False.")
    binaryType = Attribute('"string" (one character per byte) or "arraybuffer" (bytes).')
    readyState = Attribute('"connecting", "open", "closing" or "closed".')
    bufferedAmount = Attribute("Bytes sent but not yet written to the socket.")
    ondata = Attribute("Called with an event whose .data is the received data.")
    ondrain = Attribute("Called when the send buffer has drained after send() returned False.")
    onerror = Attribute("Called with an error event.")
    onclose = Attribute("Called once the connection is closed.")

    def send(data: object) -> bool:
        """
        Queue C{data}; returns C{False} once more than 64 KiB are buffered
        (C{ondrain} follows when it drains).
        """

    def suspend() -> None:
        """
        Stop delivering C{ondata} events (and reading from the socket).
        """

    def resume() -> None:
        """
        Resume after L{suspend}.
        """

    def close() -> None:
        """
        Close after the buffered data is sent.
        """

    def closeImmediately() -> None:
        """
        Close now, dropping buffered data.
        """


class ITCPServerSocket(Interface):
    """
    A web-facing listening socket (Gecko's C{TCPServerSocket}).
    """

    localPort = Attribute("The bound port.")
    onconnect = Attribute("Called with an event whose .socket is an ITCPSocket.")
    onerror = Attribute(
        "Called with an event carrying message, filename, lineNumber, columnNumber."
    )

    def close() -> None:
        """
        Stop listening; accepted sockets are not affected.
        """


class ITCPServerSocketInternal(Interface):
    """
    The child-process side of a cross-process server socket (Gecko's
    C{nsITCPServerSocketInternal}): the parent process owns the listening
    socket and hands each accepted connection over.
    """

    def init(windowVal: object) -> None:
        """
        Store the per-consumer context object (may be C{None}).
        """

    def listen(localPort: int, options: object, backlog: int) -> None:
        """
        Ask the parent to listen on C{localPort} with C{options}
        (C{binaryType}) and C{backlog}.
        """

    def callListenerAccept(socketChild: object) -> None:
        """
        A connection accepted in the parent arrived in this process.
        """

    def callListenerError(
        message: str, filename: str, lineNumber: int, columnNumber: int
    ) -> None:
        """
        An error happened in the parent; report it to C{onerror}.
        """


# ----------------------------------------------------------------------
# TLS server sockets (Gecko's nsITLSServerSocket.idl).


class ITLSServerSocket(IServerSocket):
    """
    A server socket whose connections speak TLS (Gecko's
    C{nsITLSServerSocket}): initialised and closed like any
    L{IServerSocket}; the TLS settings below are made between C{init*} and
    C{asyncListen}.  Each accepted transport's C{securityInfo} provides
    L{ITLSServerConnectionInfo}.  The handshake runs as the peer sends it;
    the listener learns that it finished from its security observer.
    """

    REQUEST_NEVER = Attribute("0: never ask the client for a certificate (the default).")
    REQUEST_FIRST_HANDSHAKE = Attribute("1: ask on the first handshake; the client may send none.")
    REQUEST_ALWAYS = Attribute("2: ask on every handshake; the client may send none.")
    REQUIRE_FIRST_HANDSHAKE = Attribute("3: ask on the first handshake; without one it fails.")
    REQUIRE_ALWAYS = Attribute("4: ask on every handshake; without one it fails.")

    serverCert = Attribute(
        "The server's certificate with its private key (a Twisted "
        "C{twisted.internet.ssl.PrivateCertificate}, which stands for Gecko's "
        "C{nsIX509Cert}).  Required before C{asyncListen}, which otherwise "
        "raises NSError(NS_ERROR_NOT_INITIALIZED).  Setting it while "
        "listening raises NS_ERROR_IN_PROGRESS; anything but a "
        "PrivateCertificate, NS_ERROR_INVALID_ARG."
    )

    def setSessionTickets(enabled: bool) -> None:
        """
        Whether the server issues session tickets (resumption); the default
        is C{True}, as in Gecko.

        @raise NSError: C{NS_ERROR_IN_PROGRESS} once listening.
        """

    def setRequestClientCertificate(mode: int) -> None:
        """
        Whether to ask the client for a certificate: one of the C{REQUEST_*}
        and C{REQUIRE_*} modes.  A certificate the client sends is not
        verified: the consumer judges C{status.peerCert}.  A required one
        that is missing fails the handshake.

        @raise NSError: C{NS_ERROR_INVALID_ARG} for an unknown mode;
            C{NS_ERROR_IN_PROGRESS} once listening.
        """

    def setVersionRange(minVersion: int, maxVersion: int) -> None:
        """
        The TLS versions to accept, as L{ITLSClientStatus} constants
        (C{TLS_VERSION_1_2 = 0x303}, C{TLS_VERSION_1_3 = 0x304}); a client
        that offers none of them fails its handshake.  The default is TLS
        1.2 to 1.3.

        @raise NSError: C{NS_ERROR_INVALID_ARG} for an unknown version or
            C{minVersion > maxVersion}; C{NS_ERROR_IN_PROGRESS} once
            listening.
        """


class ITLSClientStatus(Interface):
    """
    What a finished handshake established (Gecko's C{nsITLSClientStatus}).
    """

    SSL_VERSION_3 = Attribute("0x300")
    TLS_VERSION_1 = Attribute("0x301")
    TLS_VERSION_1_1 = Attribute("0x302")
    TLS_VERSION_1_2 = Attribute("0x303")
    TLS_VERSION_1_3 = Attribute("0x304")
    TLS_VERSION_UNKNOWN = Attribute("-1: no handshake finished yet.")

    peerCert = Attribute(
        "The client's certificate (a C{twisted.internet.ssl.Certificate}), "
        "or None if it sent none.  Not verified."
    )
    tlsVersionUsed = Attribute("The version negotiated: one of the TLS_VERSION_* constants.")
    cipherName = Attribute("The cipher suite's IANA name, e.g. C{TLS_AES_128_GCM_SHA256}.")
    keyLength = Attribute("The cipher's effective key length, in bits.")
    macLength = Attribute("The MAC's length in bits (128 for an AEAD cipher's tag).")


class ITLSServerSecurityObserver(Interface):
    """
    Told that a connection's handshake finished (Gecko's
    C{nsITLSServerSecurityObserver}).
    """

    def onHandshakeDone(server: ITLSServerSocket, status: ITLSClientStatus) -> None:
        """
        The handshake finished.  Called through the reactor, at most once
        per connection, after the listener's C{onSocketAccepted} for it;
        never if the handshake fails.
        """


class ITLSServerConnectionInfo(Interface):
    """
    The TLS side of one accepted connection (Gecko's
    C{nsITLSServerConnectionInfo}): an accepted transport's
    C{securityInfo}.
    """

    serverSocket = Attribute("The L{ITLSServerSocket} that accepted the connection.")
    status = Attribute("The connection's L{ITLSClientStatus} (TLS_VERSION_UNKNOWN until the handshake finishes).")

    def setSecurityObserver(observer: ITLSServerSecurityObserver | None) -> None:
        """
        Set (or, with C{None}, clear) the observer told when the handshake
        finishes; set after it finished, the observer is told at once (still
        through the reactor) unless an observer of this connection was told
        already: at most one C{onHandshakeDone} per connection.
        """


# Gecko-named aliases: the same objects.
nsIServerSocket = IServerSocket
nsIServerSocketListener = IServerSocketListener
nsISocketTransport = ISocketTransport
nsINetAddr = INetAddr
nsITCPServerSocketInternal = ITCPServerSocketInternal
nsIAsyncInputStream = IAsyncInputStream
nsIAsyncOutputStream = IAsyncOutputStream
nsIInputStreamCallback = IInputStreamCallback
nsIOutputStreamCallback = IOutputStreamCallback
nsITLSServerSocket = ITLSServerSocket
nsITLSServerConnectionInfo = ITLSServerConnectionInfo
nsITLSServerSecurityObserver = ITLSServerSecurityObserver
nsITLSClientStatus = ITLSClientStatus
