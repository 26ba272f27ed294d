# -*- test-case-name: tests.test_twistedcompat -*-
"""
Every use of a private Twisted attribute, in one place (HTTP/2's, which
also reaches into h2, in its neighbour L{_h2compat}).

The project builds Twisted's own server transports (C{tcp.Server},
C{unix.Server}) on sockets it accepted itself, and a few things it needs
from them have no public API.  Each is wrapped here, and L{problems} checks,
against the installed Twisted, that each private name still exists and
still plays its part; C{tests/test_twistedcompat.py} fails loudly (naming
the attribute) when a Twisted release changes one.

What we rely on, and why:

  - C{FileDescriptor.dataBuffer}, C{.offset} and C{._tempDataLen}: how
    many bytes wait to be written (L{bufferedOutput}), for Gecko's output
    stream back-pressure.
  - C{tcp.Server.logstr}, C{.repstr} and C{._getLogPrefix()}: the log
    prefix and repr a server transport computes from its protocol at
    construction; redone when a protocol is attached later (L{relabel}).
  - C{tcp.Connection._aborting}: set by C{abortConnection()}; no input may
    be delivered after it (L{isReadable}).
  - C{tcp.Connection._shouldShutdown}: Twisted's own switch for sockets it
    does not own alone - close without C{shutdown(2)}
    (L{closeWithoutShutdown}), so a worker's copy is not ended too.
  - C{tcp.Server} reads its port's C{_realPortNumber} for its repr: our
    listening port sets it (L{PORT_NUMBER_ATTRIBUTE}).
  - TLS (imported only when used: pyOpenSSL is optional):
    C{TLSMemoryBIOProtocol(..., _connectWrapped=False)}, a TLS protocol
    that does not connect the protocol it wraps (L{tlsProtocolWithoutConnecting});
    its C{_reason}, why TLS failed, before C{connectionLost} hands it on
    (L{tlsFailure}); its C{_appSendBuffer}, plaintext written before the
    handshake finished (L{tlsPendingPlaintext}); C{BufferingTLSTransport}'s
    C{_aggregator}, which holds small writes for a reactor turn, flushed as
    its own C{loseConnection} does (L{flushTLSWrites}), and its
    C{_buffer}, counted with C{_appSendBuffer} and the socket's buffer as a
    TLS connection's buffered output (L{tlsBufferedOutput});
    C{twisted.internet.endpoints._parseSSL}, how C{ssl:} reads its options
    (L{sslServerOptions}): the reading C{_tlsfiles.certificateOptions}
    does again from bytes (it cannot take them) and is tested against.
  - C{twisted.protocols.haproxy._wrapper}: the PROXY protocol wrapper and
    its factory (the package's public API is only C{proxyEndpoint}).  The
    worker parent hands a C{haproxy:} connection over before the header is
    read (L{unwrapProxied}) and the worker parses it (L{proxyWrapped}); a
    C{geckotls:} listener reads the header before TLS, so it takes the
    application's factory out of the wrapper C{haproxy:} put it in
    (L{unwrapHAProxy}).
  - C{twisted.web.http._GenericHTTPChannelProtocol._channel}: the
    HTTP/1.1 channel inside the protocol C{twisted.web}'s C{Site} builds,
    which a draining worker asks to close after its current response
    (L{innerProtocol}).
  - C{twisted.web._http2.H2Connection}, the HTTP/2 connection of
    C{twisted.web}: its C{conn} (h2's state machine), C{streams},
    C{_streamCleanupCallbacks} (a Deferred per stream, fired once the
    stream is done), C{_tryToWriteControlData()} (writes what h2 has to
    send, respecting back-pressure) and C{_bufferedControlFrames} (what
    that held back while the transport was paused); it hands what it reads to
    C{conn.receive_data} and acts on the events returned
    (L{goAwayHTTP2<twisted_serversock._h2compat.goAwayHTTP2>}, in L{_h2compat<twisted_serversock._h2compat>}).
  - C{twisted.scripts._twistd_unix.UnixApplicationRunner} and
    C{twisted.application.twist._options.TwistOptions}: C{twistd} and
    C{twist} fitted to a cluster worker, which must not daemonize, write a
    pidfile or switch user again (L{fitRunnersToWorker}).
  - The reactor installs the C{sigTerm}/C{sigInt} it has when C{run()}
    starts: the worker parents make those theirs, so that no SIGTERM
    during start-up stops the process the reactor's way
    (L{stopSignalsHandledBy}).
"""

from __future__ import annotations

import inspect
import sys
import weakref
from typing import Any, Collection

from twisted.internet import abstract, tcp
from twisted.logger import ILogObserver

from ._sourcetext import mroSource as _mroSource
from ._sourcetext import source as _source

__all__ = [
    "bufferedOutput",
    "relabel",
    "isReadable",
    "closeWithoutShutdown",
    "PORT_NUMBER_ATTRIBUTE",
    "tlsProtocolWithoutConnecting",
    "sslServerOptions",
    "unwrapHAProxy",
    "tlsFailure",
    "tlsPendingPlaintext",
    "flushTLSWrites",
    "tlsBufferedOutput",
    "unwrapProxied",
    "proxyWrapped",
    "innerProtocol",
    "betweenRequests",
    "fitRunnersToWorker",
    "textLogFile",
    "stopSignalsHandledBy",
    "problems",
    "twistedsChildren",
]

#: The attribute of a listening port that C{tcp.Server} shows in its repr.
PORT_NUMBER_ATTRIBUTE = "_realPortNumber"


def bufferedOutput(transport: Any) -> int:
    """
    How many bytes wait in a Twisted transport's write buffer
    (C{abstract.FileDescriptor} keeps them as C{dataBuffer[offset:]} plus
    the C{_tempDataBuffer} list, C{_tempDataLen} bytes long).
    """
    buffered: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return buffered


def relabel(transport: Any, protocol: Any) -> None:
    """
    Make a server transport built for one protocol log and print itself as
    one built for C{protocol} (Twisted formats both at construction).  The
    repr keeps what follows the class name (C{" #N on PORT>"}).
    """
    transport.logstr = f"{transport._getLogPrefix(protocol)},{transport.sessionno},{transport.hostname}"
    repstr = transport.repstr
    transport.repstr = f"<{type(protocol).__name__}{repstr[repstr.find(' #'):]}"


def isReadable(transport: Any) -> bool:
    """
    Whether Twisted would still deliver input on C{transport}: not after
    C{loseConnection} or C{abortConnection}.
    """
    return bool(transport.connected and not transport.disconnecting and not getattr(transport, "_aborting", False))


def closeWithoutShutdown(transport: Any) -> None:
    """
    Close C{transport} (after its buffer is written) without C{shutdown(2)}:
    another process holds a copy of the socket and must keep it working.
    """
    transport._shouldShutdown = False
    transport.loseConnection()


def tlsProtocolWithoutConnecting(protocolClass: Any, factory: Any, wrapped: Any) -> Any:
    """
    A C{TLSMemoryBIOProtocol} (of C{protocolClass}) for C{wrapped} whose
    C{makeConnection} does not connect C{wrapped}: the caller connects it
    to the TLS protocol afterwards (as Twisted's own C{startTLS} does).
    """
    return protocolClass(factory, wrapped, _connectWrapped=False)


def tlsFailure(tlsProtocol: Any) -> Any:
    """
    The failure that ended C{tlsProtocol}'s TLS (a bad handshake), or
    C{None}; read before its C{connectionLost} passes it on.
    """
    return getattr(tlsProtocol, "_reason", None)


def tlsPendingPlaintext(tlsProtocol: Any) -> int:
    """
    How many plaintext bytes C{tlsProtocol} (a C{TLSMemoryBIOProtocol})
    holds that TLS has not taken yet: written before the handshake
    finished, they wait in its C{_appSendBuffer}.
    """
    return sum(map(len, tlsProtocol._appSendBuffer))


def flushTLSWrites(tlsProtocol: Any) -> None:
    """
    Hand the small writes a C{BufferingTLSTransport} holds for the next
    reactor turn to TLS now (as its own C{loseConnection} does).
    """
    tlsProtocol._aggregator.flush()


def tlsBufferedOutput(tlsProtocol: Any) -> int:
    """
    How many bytes written to C{tlsProtocol} (a C{BufferingTLSTransport})
    wait to be sent: the plaintext its write aggregator holds for the next
    reactor turn, the plaintext waiting for the handshake
    (L{tlsPendingPlaintext}), and what waits in the socket's buffer
    (L{bufferedOutput} of the transport under it).  (After the connection
    is lost the aggregator is a null one, without a buffer.)
    """
    held: int = sum(map(len, getattr(tlsProtocol._aggregator, "_buffer", ())))
    return held + sum(map(len, tlsProtocol._appSendBuffer)) + bufferedOutput(tlsProtocol.transport)


def sslServerOptions(**options: Any) -> Any:
    """
    The C{CertificateOptions} an C{ssl:} endpoint string with these
    options (C{privateKey}, C{certKey}, C{sslmethod}, C{extraCertChain},
    C{dhParameters}) would use: Twisted's own reading of them.
    """
    from twisted.internet import endpoints

    args, _ = endpoints._parseSSL(None, "0", **options)
    return args[2]


def unwrapHAProxy(factory: Any) -> Any:
    """
    If C{factory} is the factory C{haproxy:} wrapped around an
    application's (a C{HAProxyWrappingFactory}), a function that wraps
    another factory the same way, and the application's factory; else
    C{None}.
    """
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

    if isinstance(factory, HAProxyWrappingFactory):
        return HAProxyWrappingFactory, factory.wrappedFactory
    return None


#: OpenSSL contexts that choose their ALPN protocol themselves (see
#: L{KeepContextALPN}).
OWN_ALPN: "weakref.WeakSet[Any]" = weakref.WeakSet()


class KeepContextALPN:
    """
    Mixed into a C{TLSMemoryBIOFactory}: Twisted before 25 sets its own
    ALPN callback, per connection, on the context the connection starts
    with (C{TLSMemoryBIOFactory._applyProtocolNegotiation}), replacing the
    one the context has; its callback answers C{b""} when the client offers
    nothing the factory has, and the handshake fails.  A context in
    L{OWN_ALPN} keeps its own callback.  (Later Twisted releases set ALPN
    on the context factory, and never call this.)
    """

    def _applyProtocolNegotiation(self, connection: Any) -> None:
        if connection.get_context() in OWN_ALPN:
            return
        super()._applyProtocolNegotiation(connection)  # type: ignore[misc]


def _tlsProblems() -> list[str]:
    found: list[str] = []
    try:
        from twisted.internet import endpoints
        from twisted.protocols.haproxy import _wrapper
        from twisted.protocols.tls import TLSMemoryBIOProtocol
    except ImportError as e:  # no pyOpenSSL: TLS is not available anyway
        return [] if "OpenSSL" in str(e) else [f"cannot import Twisted's TLS or HAProxy support: {e}"]
    if "_connectWrapped" not in inspect.signature(TLSMemoryBIOProtocol.__init__).parameters:
        found.append("TLSMemoryBIOProtocol no longer takes _connectWrapped (tlsProtocolWithoutConnecting)")
    if "self._reason = reason" not in _source(TLSMemoryBIOProtocol._tlsShutdownFinished):
        found.append("TLSMemoryBIOProtocol no longer keeps why TLS failed in _reason (tlsFailure)")
    if "self._appSendBuffer = []" not in _source(TLSMemoryBIOProtocol.makeConnection) or (
        "self._appSendBuffer.append(" not in _source(TLSMemoryBIOProtocol._bufferedWrite)
    ):
        found.append("TLSMemoryBIOProtocol no longer buffers early plaintext in _appSendBuffer (tlsPendingPlaintext)")
    from twisted.protocols.tls import BufferingTLSTransport

    if "self._aggregator.flush()" not in _source(BufferingTLSTransport.loseConnection):
        found.append("BufferingTLSTransport no longer holds small writes in _aggregator (flushTLSWrites)")
    from twisted.protocols.tls import _AggregateSmallWrites

    if "self._buffer.append(" not in _source(_AggregateSmallWrites.write):
        found.append("BufferingTLSTransport's write aggregator no longer keeps its writes in _buffer (tlsBufferedOutput)")
    parseSSL = getattr(endpoints, "_parseSSL", None)
    wanted = {"privateKey", "certKey", "sslmethod", "extraCertChain", "dhParameters"}
    if parseSSL is None or not wanted <= set(inspect.signature(parseSSL).parameters):
        found.append("twisted.internet.endpoints._parseSSL is gone or takes other options (sslServerOptions)")
    if not hasattr(_wrapper, "HAProxyWrappingFactory"):
        found.append("twisted.protocols.haproxy._wrapper.HAProxyWrappingFactory is gone (unwrapHAProxy)")
    return found


def unwrapProxied(transport: Any) -> Any | None:
    """
    The raw transport under Twisted's PROXY protocol wrapper (C{haproxy:}
    endpoints), whose header is still unread; C{None} if C{transport} is
    not such a wrapper.
    """
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper

    if isinstance(transport, HAProxyProtocolWrapper):
        return transport.transport
    return None


def proxyWrapped(factory: Any) -> Any:
    """
    C{factory} behind Twisted's PROXY protocol parser: its protocols see
    the address the header names.
    """
    from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

    return HAProxyWrappingFactory(factory)


def innerProtocol(protocol: Any) -> Any | None:
    """
    The protocol one wrapper inside C{protocol}: a C{WrappingFactory}'s
    C{wrappedProtocol}, or the HTTP/1.1 channel of C{twisted.web}'s
    HTTP/1-or-2 protocol; C{None} if there is none.
    """
    return getattr(protocol, "wrappedProtocol", None) or getattr(protocol, "_channel", None)


def betweenRequests(channel: Any) -> bool:
    """
    Whether a C{twisted.web} HTTP/1.x channel is idle between requests: it
    has received a request (C{allContentReceived} set its private
    C{__first_line} on the instance), has none in progress, and no byte of
    the next one waits in its line buffer.  A new connection whose first
    request has not arrived yet is not between requests.
    """
    return "_HTTPChannel__first_line" in vars(channel) and not channel.requests and not getattr(channel, "_buffer", b"")


def fitRunnersToWorker(observer: ILogObserver) -> None:
    """
    Make C{twistd} and C{twist} in this process run as a cluster worker:
    in the foreground, with no pidfile, syslog, chroot, umask or user
    switch (the primary did all that once and the worker inherits it),
    logging to C{observer} (the worker's events go to the primary).  The
    user's C{--logfile}, C{--logger} or C{--syslog} thus takes effect in
    the primary only, whose observer receives every worker's events.
    Imports neither the reactor nor the program.
    """
    from twisted.application.twist._options import TwistOptions
    from twisted.scripts._twistd_unix import UnixApplicationRunner

    runnerInit = UnixApplicationRunner.__init__

    def workerRunnerInit(self: Any, config: Any) -> None:
        config.update(nodaemon=True, pidfile="", syslog=False, logfile="-", chroot=None, umask=None, euid=False)
        config["logger"] = lambda: observer
        config["uid"] = config["gid"] = None
        runnerInit(self, config)

    def keepPrivileges(self: Any, euid: Any, uid: Any, gid: Any) -> None:
        pass  # the primary's user and group, inherited

    UnixApplicationRunner.__init__ = workerRunnerInit  # type: ignore[method-assign]
    UnixApplicationRunner.shedPrivileges = keepPrivileges  # type: ignore[method-assign]
    postOptions = TwistOptions.postOptions

    def workerPostOptions(self: Any) -> None:
        postOptions(self)
        self["logFile"] = sys.stderr
        self["fileLogObserverFactory"] = lambda f: observer

    TwistOptions.postOptions = workerPostOptions  # type: ignore[method-assign]


def textLogFile(publisher: Any, filtered: bool = True) -> tuple[Any, Any] | None:
    """
    The file and formatter (C{formatEvent}) of C{publisher}'s one observer
    if it is a C{FileLogObserver}, alone or behind a C{FilteringLogObserver}
    by level only (C{twist}'s): the private C{_observers} of a
    C{LogPublisher}, C{_outFile} of a C{FileLogObserver}, C{_observer} and
    C{_shouldLogEvent} (a C{partial} of the predicates) of a
    C{FilteringLogObserver}.  Otherwise C{None}; and for a filtered one
    unless C{filtered} (whoever writes to the file applies the same filter).
    """
    from twisted.logger import FileLogObserver, FilteringLogObserver, LogLevelFilterPredicate

    observers = list(getattr(publisher, "_observers", ()))
    observer = observers[0] if len(observers) == 1 else None
    if isinstance(observer, FilteringLogObserver) and filtered:
        predicates = getattr(getattr(observer, "_shouldLogEvent", None), "args", ([None],))[0]
        levelsOnly = all(isinstance(p, LogLevelFilterPredicate) for p in predicates)
        observer = getattr(observer, "_observer", None) if levelsOnly else None
    if not isinstance(observer, FileLogObserver) or not hasattr(observer, "_outFile"):
        return None
    return observer._outFile, observer.formatEvent


def _logProblems() -> list[str]:
    from twisted.logger import FileLogObserver, FilteringLogObserver, LogPublisher

    found = [f"{cls.__name__} has no {name} any more (textLogFile)" for cls, name in
             ((LogPublisher, "self._observers"), (FileLogObserver, "self._outFile"), (FilteringLogObserver, "self._observer"),
              (FilteringLogObserver, "self._shouldLogEvent = partial(shouldLogEvent, list(predicates))")) if name not in _source(cls.__init__)]  # fmt: skip
    return found


def stopSignalsHandledBy(reactor: Any, handler: Any) -> None:
    """
    Make C{handler} what C{reactor} installs for SIGTERM (and SIGINT, when
    that is still Python's default) when it starts running, in place of its
    own handlers, which stop the reactor.  Re-installing ours once the
    reactor runs leaves a window between the two in which a signal would
    stop the process the reactor's way; with this there is none.  The
    reactor takes its C{sigTerm} and C{sigInt} when C{run()} starts, so
    setting them on the instance beforehand chooses what it installs.
    """
    reactor.sigTerm = handler
    reactor.sigInt = handler


def _signalProblems() -> list[str]:
    from twisted.internet import base

    factory = getattr(base.ReactorBase, "_signalsFactory", None)
    if factory is None or "self.sigTerm" not in _source(factory) or "self.sigInt" not in _source(factory):
        return ["the reactor no longer installs its sigTerm/sigInt as they are when it starts (stopSignalsHandledBy)"]
    return []


def twistedsChildren() -> Collection[int]:
    """
    The PIDs of the processes Twisted spawned and reaps itself (its
    C{process.reapProcessHandlers}, not documented): what the orphan reaper
    of a primary that is PID 1 must leave to Twisted.
    """
    from twisted.internet import process

    children: Collection[int] = process.reapProcessHandlers.keys()
    return children


def problems() -> list[str]:
    """
    Check the installed Twisted for every private name this module uses.

    @return: one line per expectation that no longer holds (empty when all
        do).
    """
    found: list[str] = []
    for name in ("dataBuffer", "offset"):
        if not hasattr(abstract.FileDescriptor, name):
            found.append(f"abstract.FileDescriptor has no {name} any more (bufferedOutput)")
    if "self._tempDataLen" not in _source(abstract.FileDescriptor.__init__):
        found.append("abstract.FileDescriptor.__init__ no longer sets _tempDataLen (bufferedOutput)")
    serverInit = _source(tcp.Server.__init__)
    for name in ("self.logstr", "self.repstr", "self.sessionno", "self.hostname", "_getLogPrefix"):
        if name not in serverInit:
            found.append(f"tcp.Server.__init__ no longer uses {name} (relabel)")
    if "server." + PORT_NUMBER_ATTRIBUTE not in serverInit:
        found.append(f"tcp.Server.__init__ no longer reads its port's {PORT_NUMBER_ATTRIBUTE}")
    connection = _mroSource(tcp.Connection)
    if "self._aborting = True" not in connection:
        found.append("tcp.Connection.abortConnection() no longer sets _aborting (isReadable)")
    if getattr(tcp.Connection, "_shouldShutdown", None) is not True or "if self._shouldShutdown" not in connection:
        found.append("tcp.Connection no longer honours _shouldShutdown (closeWithoutShutdown)")
    found.extend(_proxyProblems())
    found.extend(_webProblems())
    from ._h2compat import http2Problems

    found.extend(http2Problems())
    found.extend(_runnerProblems())
    found.extend(_tlsProblems())
    found.extend(_signalProblems())
    found.extend(_logProblems())
    from twisted.internet import process

    if not isinstance(getattr(process, "reapProcessHandlers", None), dict) or "reapProcessHandlers" not in _source(process.reapAllProcesses):
        found.append("twisted.internet.process.reapProcessHandlers is gone or unused by reapAllProcesses (twistedsChildren)")
    return found


def _proxyProblems() -> list[str]:
    try:
        from twisted.protocols.haproxy import _wrapper
    except ImportError as e:
        return [f"twisted.protocols.haproxy._wrapper cannot be imported ({e}) (unwrapProxied, proxyWrapped)"]
    found = []
    wrapper = getattr(_wrapper, "HAProxyProtocolWrapper", None)
    if wrapper is None or "self.transport" not in _mroSource(wrapper):
        found.append("haproxy._wrapper.HAProxyProtocolWrapper is gone or keeps no transport (unwrapProxied)")
    if not callable(getattr(_wrapper, "HAProxyWrappingFactory", None)):
        found.append("haproxy._wrapper.HAProxyWrappingFactory is gone (proxyWrapped)")
    return found


def _webProblems() -> list[str]:
    try:
        from twisted.web import http
    except ImportError:
        return []  # twisted.web is optional: nothing to drain then
    from twisted.protocols import basic

    found = []
    generic = getattr(http, "_GenericHTTPChannelProtocol", None)
    if generic is None or "_channel" not in _mroSource(generic):
        found.append("twisted.web.http._GenericHTTPChannelProtocol no longer wraps its HTTP channel as _channel (innerProtocol)")
    if "self.__first_line = 1" not in _source(http.HTTPChannel.allContentReceived) or "_buffer" not in _source(basic.LineReceiver.dataReceived):
        found.append("HTTPChannel.allContentReceived or LineReceiver's _buffer changed (betweenRequests)")
    return found


def _runnerProblems() -> list[str]:
    try:
        from twisted.application import app
        from twisted.application.twist._options import TwistOptions
        from twisted.scripts import _twistd_unix
        from twisted.scripts._twistd_unix import UnixApplicationRunner
    except ImportError as e:
        return [f"twistd's or twist's runner cannot be imported ({e}) (fitRunnersToWorker)"]
    found = []
    # The runner and the loggers it makes read the configuration.
    runner = _source(_twistd_unix) + _source(app)
    for key in ("nodaemon", "pidfile", "syslog", "logfile", "logger", "chroot", "umask", "uid", "gid", "euid"):
        if f'config["{key}"]' not in runner and f"config['{key}']" not in runner and f'"{key}"' not in runner:
            found.append(f"twistd's UnixApplicationRunner no longer reads config[{key!r}] (fitRunnersToWorker)")
    if "def shedPrivileges" not in _mroSource(UnixApplicationRunner):
        found.append("twistd's UnixApplicationRunner has no shedPrivileges any more (fitRunnersToWorker)")
    options = _mroSource(TwistOptions)
    for key in ("logFile", "fileLogObserverFactory"):
        if f'"{key}"' not in options:
            found.append(f"twist's TwistOptions no longer uses {key!r} (fitRunnersToWorker)")
    if "def postOptions" not in options:
        found.append("twist's TwistOptions has no postOptions any more (fitRunnersToWorker)")
    return found
