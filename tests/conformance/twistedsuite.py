"""
Twisted's own connection tests, run against the C{gecko:} and
C{geckounix:} endpoints, with Twisted's own endpoints as the baseline.

Twisted tests its ports with builder classes (C{twisted.internet.test}:
C{ReactorBuilder} and the mixins of C{connectionmixins}, C{test_tcp},
C{test_unix}, C{test_tls}) whose server side goes through a few hooks: the
C{endpoints} attribute (an C{EndpointCreator}), C{listen()},
C{getListeningPort()} and C{getConnectedClientAndServer()}.  For each
I{kind} of listener (L{KINDS}) and each of the two implementations
(C{gecko}: this project's endpoint, from its endpoint string, as users
write it; C{twisted}: Twisted's equivalent), this module subclasses every
builder that applies, points those hooks at that listener, and expands the
result over every reactor C{ReactorBuilder} offers, exactly as Twisted's
own modules do.  The clients are always Twisted's.

Test methods that never reach a hook (client-only tests, and tests that call
C{listenTCP}/C{listenUNIX} themselves) would only run Twisted against
itself: they are left out by name, with the reason, in L{EXCLUDED}.

Run it with trial (pytest does not collect it: its reactor would fight
C{ReactorBuilder}'s), or through C{python3 -m tests.conformance}, which
also compares gecko's failures with the baseline's and prints the counts.
"""

from __future__ import annotations

import gc
import os
import socket
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
    TCP6ServerEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.internet.test import test_tcp, test_tls, test_unix
from twisted.internet.test.connectionmixins import EndpointCreator
from twisted.trial.unittest import SkipTest, TestSuite
from twisted.python.reflect import prefixedMethodNames

#: Set by the hooks: the test being run reached a listener of the
#: implementation under test (checked by C{python3 -m tests.conformance}).
HOOKED: set[str] = set()


def _linkLocal() -> str | None:
    try:
        return str(test_tcp.getLinkLocalIPv6Address())
    except SkipTest:
        return None


def _escape(host: str) -> str:
    return host.replace(":", "\\:")


def _shortDir() -> str:
    # UNIX socket paths must stay under 108 bytes: not under trial's
    # _trial_temp/<long test id>.
    return tempfile.mkdtemp(prefix="gk", dir="/tmp")


class Kind:
    """
    One kind of listener: how each implementation listens, and how a
    Twisted client reaches it.

    @ivar name: the kind's short name (part of the generated class names).
    @ivar interface: the IP literal the TCP kinds listen on and connect to.
    """

    name = ""
    interface = "127.0.0.1"
    family = socket.AF_INET
    #: The endpoints themselves speak TLS (C{geckotls:} and C{ssl:}): the
    #: TLS tests use them as they are.
    speaksTLS = False

    def gecko(self, reactor: Any) -> Any:
        raise NotImplementedError

    def twisted(self, reactor: Any) -> Any:
        raise NotImplementedError

    def client(self, reactor: Any, address: Any) -> Any:
        if isinstance(address, UNIXAddress):
            return UNIXClientEndpoint(reactor, address.name)
        if self.family == socket.AF_INET6:
            return TCP6ClientEndpoint(reactor, self.interface, address.port)
        return TCP4ClientEndpoint(reactor, self.interface, address.port)


class TCP4Loopback(Kind):
    name = "tcp4"

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, "gecko:port=0:loopback=1")

    def twisted(self, reactor: Any) -> Any:
        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")


class TCP4Interface(TCP4Loopback):
    name = "tcp4if"

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, "gecko:port=0:interface=127.0.0.1")


class TCP6Loopback(Kind):
    name = "tcp6"
    interface = "::1"
    family = socket.AF_INET6

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, "gecko:port=0:ipv6=1:loopback=1")

    def twisted(self, reactor: Any) -> Any:
        return TCP6ServerEndpoint(reactor, 0, interface="::1")


class TCP6LinkLocal(TCP6Loopback):
    name = "tcp6ll"

    def __init__(self, address: str) -> None:
        self.interface = address

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, "gecko:port=0:interface=" + _escape(self.interface))

    def twisted(self, reactor: Any) -> Any:
        return TCP6ServerEndpoint(reactor, 0, interface=self.interface)


class UNIXPath(Kind):
    name = "unix"
    family = socket.AF_UNIX

    def _path(self) -> str:
        return os.path.join(_shortDir(), "s")

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, "geckounix:" + self._path())

    def twisted(self, reactor: Any) -> Any:
        return UNIXServerEndpoint(reactor, self._path())


class UNIXAbstract(UNIXPath):
    name = "unixabs"

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, "geckounix:@" + os.urandom(8).hex())

    def twisted(self, reactor: Any) -> Any:
        return UNIXServerEndpoint(reactor, "\0" + os.urandom(8).hex())


class TCPAny(Kind):
    """
    The port tests: the test names the interface (C{""}: all of them).
    """

    name = "tcpport"

    def at(self, impl: str, reactor: Any, port: int, interface: str) -> Any:
        if impl == "gecko":
            if not interface:
                return serverFromString(reactor, f"gecko:port={port}")
            return serverFromString(reactor, f"gecko:port={port}:interface=" + _escape(interface))
        if ":" in interface:
            return TCP6ServerEndpoint(reactor, port, interface=interface)
        return TCP4ServerEndpoint(reactor, port, interface=interface)


def _pem() -> str:
    """
    The certificate and key Twisted's TLS tests serve (as a file).
    """
    return test_tls.ContextGeneratingMixin._pem.path.decode()


class TLS4Loopback(TCP4Loopback):
    """
    C{geckotls:} against Twisted's C{ssl:}, with the same options.
    """

    name = "geckotls"
    speaksTLS = True

    def gecko(self, reactor: Any) -> Any:
        return serverFromString(reactor, f"geckotls:port=0:loopback=1:privateKey={_escape(_pem())}")

    def twisted(self, reactor: Any) -> Any:
        return serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={_escape(_pem())}")


class TLSAny(TCPAny):
    """
    The TLS port tests, on C{geckotls:} and C{ssl:} at the port and
    interface each test asks for.
    """

    name = "tlsport"
    speaksTLS = True

    def at(self, impl: str, reactor: Any, port: int, interface: str) -> Any:
        key = "privateKey=" + _escape(_pem())
        if impl == "gecko":
            where = f":interface={_escape(interface)}" if interface else ""
            return serverFromString(reactor, f"geckotls:port={port}{where}:{key}")
        return serverFromString(reactor, f"ssl:{port}:interface={_escape(interface)}:{key}")


def _listenNow(endpoint: Any, factory: Any) -> Any:
    """
    The port from C{endpoint.listen(factory)}, which binds synchronously (a
    gecko endpoint and Twisted's alike): raise what it failed with.
    """
    results: list[Any] = []
    endpoint.listen(factory).addBoth(results.append)
    if not results:
        raise AssertionError(f"{endpoint!r}.listen() did not fire synchronously")
    result = results[0]
    if isinstance(result, defer.Failure):
        result.raiseException()
    return result


def _tlsFactory(builder: Any, factory: Any) -> Any:
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return TLSMemoryBIOFactory(test_tls.ContextGeneratingMixin().getServerContext(), False, factory)


class _Creator(EndpointCreator):
    """
    The C{endpoints} hook: the kind's server for the implementation under
    test, Twisted's client.
    """

    def __init__(self, builder: Any, kind: Kind, impl: str, tls: bool = False) -> None:
        self._builder = builder
        self._kind = kind
        self._impl = impl
        self._tls = tls
        self.interface = kind.interface

    def server(self, reactor: Any) -> Any:
        self._builder._hooked()
        endpoint = getattr(self._kind, self._impl)(reactor)
        if self._tls and not self._kind.speaksTLS:
            return _TLSServer(endpoint)
        return endpoint

    def client(self, reactor: Any, serverAddress: Any) -> Any:
        if self._tls:
            # connectSSL, or connectTCP then startTLS: the builder's own.
            return self._builder._originalEndpoints.client(reactor, serverAddress)
        return self._kind.client(reactor, serverAddress)


class _TLSServer:
    """
    A TLS server over any stream server endpoint: what C{ssl:} is to
    C{tcp:}, for the TLS tests.
    """

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def listen(self, factory: Any) -> Any:
        return self._wrapped.listen(_tlsFactory(self, factory))


class _Hooks:
    """
    Mixed in front of a Twisted builder: every hook listens with the kind
    and implementation of the generated class.
    """

    kind: Kind
    impl: str
    tls = False
    #: Seconds a test's reactor may run (Twisted's default is 120): a hang
    #: must not stall the whole run.
    timeout = 20

    def _hooked(self) -> None:
        HOOKED.add(self.id())  # type: ignore[attr-defined]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        # A Deferred a failed test leaves behind logs its error when it is
        # collected: collect it now, so the error is this test's and does
        # not fail whichever test runs next.
        self.addCleanup(gc.collect)  # type: ignore[attr-defined]
        self.endpoints = _Creator(self, self.kind, self.impl, self.tls)
        if hasattr(self, "fakeDomainName") and self.kind.family == socket.AF_INET6:
            self.fakeDomainName = self.kind.interface

    def _server(self, reactor: Any) -> Any:
        return self.endpoints.server(reactor)

    def listen(self, reactor: Any, factory: Any) -> Any:
        self._port = _listenNow(self._server(reactor), factory)
        return self._port

    def connect(self, reactor: Any, factory: Any) -> Any:
        port = getattr(self, "_port", None)
        if self.kind.family == socket.AF_UNIX and port is not None:
            # UnixClientTestsBuilder connects to its own path: ours instead.
            return reactor.connectUNIX(port.getHost().name, factory)
        return super().connect(reactor, factory)  # type: ignore[misc]

    def getListeningPort(self, reactor: Any, factory: Any, port: int = 0, interface: str = "") -> Any:
        if isinstance(self.kind, TCPAny):
            self._hooked()
            if self.tls and not self.kind.speaksTLS:
                factory = _tlsFactory(self, factory)
            return _listenNow(self.kind.at(self.impl, reactor, port, interface), factory)
        return _listenNow(self._server(reactor), factory)

    def getConnectedClientAndServer(self, reactor: Any, interface: Any, addressFamily: Any) -> Any:
        # Twisted's own helper, with its one listenTCP/listenUNIX call
        # answered by the listener under test.
        def listenHere(*args: Any, **kwargs: Any) -> Any:
            delattr(reactor, name)  # once: Twisted's endpoint calls the real one
            if isinstance(self.kind, TCPAny):
                return self.getListeningPort(reactor, args[1], 0, kwargs.get("interface", ""))
            return self.getListeningPort(reactor, args[1])

        name = "listenUNIX" if self.kind.family == socket.AF_UNIX else "listenTCP"
        setattr(reactor, name, listenHere)
        try:
            return super().getConnectedClientAndServer(reactor, interface, addressFamily)  # type: ignore[misc]
        finally:
            if name in vars(reactor):
                delattr(reactor, name)


_LISTENS = "calls listenTCP/listenUNIX/listenSSL itself: no hook, it would test Twisted's port only"
_CLIENT = "tests the client side only (connectTCP/connectUNIX, name resolution, bind addresses)"

#: (builder name, test method) -> why it is not run against the listeners.
EXCLUDED: dict[tuple[str, str], str] = {}
for _builder, _names, _why in [
    ("TCPClientTestsBase", ["addresses", "badContext"], _LISTENS),
    (
        "TCPClientTestsBase",
        [
            "clientConnectionFailedStopsReactor",
            "connectPortNotNumeric",
            "connectPortOverflow",
            "connectPortUnderflow",
            "connectPortZero",
            "getaddrinfo_negative_port",
            "getaddrinfo_overflow_port",
            "interface",
        ],
        _CLIENT,
    ),
    ("UnixClientTestsBuilder", ["clientConnectionFailedStopsReactor", "interface"], _CLIENT),
    (
        "UNIXTestsBuilder",
        ["mode", "listenOnLinuxAbstractNamespace", "listenFailure"],
        _LISTENS + " (the mode and abstract-name cases have this project's own tests)",
    ),
    ("UNIXTestsBuilder", ["connectToLinuxAbstractNamespace"], _CLIENT),
    (
        "UNIXTestsBuilder",
        [
            "multiFileDescriptorReceivedPerRecvmsgBadCMSG",
            "multiFileDescriptorReceivedPerRecvmsgOneCMSG",
            "multiFileDescriptorReceivedPerRecvmsgTwoCMSGs",
        ],
        "tests unix.Server's recvmsg parsing on a socketpair: no listener involved",
    ),
    (
        "UNIXAdoptStreamConnectionTestsBuilder",
        ["buildProtocolReturnsNone"],
        "tests adoptStreamConnection on a socketpair: no listener involved",
    ),
    ("SSLClientTestsMixin", ["badContext"], "tests connectSSL with a broken client context: client only"),
    ("SSLClientTestsMixin", ["disconnectAfterWriteAfterStartTLS"], _LISTENS),
    ("TLSPortTestsBuilder", ["badContext"], "tests listenSSL's context check: " + _LISTENS),
]:
    for _name in _names:
        EXCLUDED[(_builder, "test_" + _name)] = _why

#: (builder, test method) -> why gecko differs from Twisted there, on
#: purpose (docs/deviations.md).  These run and are reported, but do not
#: fail the run.
DEVIATIONS: dict[tuple[str, str], str] = {
    ("UNIXAdoptStreamConnectionTestsBuilder", "test_ServerAddressUNIX"): (
        "adoptStreamConnection names the server end by getsockname(); a geckounix: socket file is bound "
        "in a private directory and linked into place (so it never exists with looser permissions than asked), so the kernel's "
        "name for it is the private path"
    ),
}

#: Whole builders left out, with the reason.
EXCLUDED_BUILDERS: dict[str, str] = {
    "TCPConnectionTestsBuilder": "every test builds its server with listenTCP or Twisted's TCPCreator() directly",
    "TCPConnectorTestsBuilder": _CLIENT,
    "TestBindAddressBuilder": _CLIENT,
    "TCPFDPortTestsBuilder": "tests adoptStreamPort (a reactor API, not an endpoint)",
    "UNIXFDPortTestsBuilder": "tests adoptStreamPort (a reactor API, not an endpoint)",
    "AdoptStreamConnectionTestsBuilder": "tests adoptStreamConnection of a listenTCP connection (a reactor API)",
    "UNIXDatagramTestsBuilder": "datagram sockets: no stream endpoint",
}


def _kinds() -> list[tuple[Kind, list[Any]]]:
    tcp4 = [test_tcp.TCP4ClientTestsBuilder, test_tcp.AbortConnectionTests]
    tcp6 = [test_tcp.TCP6ClientTestsBuilder, test_tcp.AbortConnectionTests]
    unix = [
        test_unix.UNIXTestsBuilder,
        test_unix.UNIXPortTestsBuilder,
        test_unix.UNIXAdoptStreamConnectionTestsBuilder,
        test_unix.UnixClientTestsBuilder,
    ]
    kinds: list[tuple[Kind, list[Any]]] = [
        (TCP4Loopback(), tcp4),
        (TCP4Interface(), tcp4),
        (TCP6Loopback(), tcp6),
        (
            TCPAny(),
            [
                test_tcp.TCPPortTestsBuilder,
                test_tcp.TCPTransportTestsBuilder,
            ],
        ),
        (UNIXPath(), unix),
        (UNIXAbstract(), unix),
    ]
    linkLocal = _linkLocal()
    if linkLocal is not None:
        kinds.insert(3, (TCP6LinkLocal(linkLocal), tcp6))
    return kinds


#: TLS over a gecko TCP listener (TLSMemoryBIOFactory, as listenSSL uses).
_TLS_BUILDERS = [
    (TCP4Loopback(), test_tls.SSLClientTestsMixin),
    (TCP4Loopback(), test_tls.StartTLSClientTestsMixin),
    (TCP4Loopback(), test_tls.AbortSSLConnectionTests),
    (TCPAny(), test_tls.TLSPortTestsBuilder),
    # geckotls: itself, against ssl:.
    (TLS4Loopback(), test_tls.SSLClientTestsMixin),
    (TLS4Loopback(), test_tls.StartTLSClientTestsMixin),
    (TLS4Loopback(), test_tls.AbortSSLConnectionTests),
    (TLSAny(), test_tls.TLSPortTestsBuilder),
]


def _excluded(builder: Any, method: str) -> str | None:
    for klass in builder.__mro__:
        why = EXCLUDED.get((klass.__name__, method))
        if why is not None:
            return why
    return None


def _generate() -> dict[str, Any]:
    classes: dict[str, Any] = {}
    plan: list[tuple[Kind, Any, bool]] = []
    for kind, builders in _kinds():
        plan.extend((kind, builder, False) for builder in builders)
    plan.extend((kind, builder, True) for kind, builder in _TLS_BUILDERS)
    for kind, builder, tls in plan:
        for impl in ("gecko", "twisted"):
            tag = "tls" if tls and not isinstance(kind, TCPAny) and not kind.speaksTLS else kind.name
            body = {
                "kind": kind,
                "impl": impl,
                "tls": tls,
                "_originalEndpoints": getattr(builder, "endpoints", None),
                "__module__": __name__,
            }
            sub = type(f"{impl}_{tag}_{builder.__name__}", (_Hooks, builder), body)
            for generated in sub.makeTestCaseClasses().values():
                classes[generated.__name__] = generated
    return classes


_CLASSES = _generate()
globals().update(_CLASSES)


def testSuite() -> TestSuite:
    """
    Every generated test except those in L{EXCLUDED} (trial calls this).
    """
    suite = TestSuite()
    for name in sorted(_CLASSES):
        klass = _CLASSES[name]
        for method in sorted(prefixedMethodNames(klass, "test_")):
            if _excluded(klass, "test_" + method) is None:
                suite.addTest(klass("test_" + method))
    return suite


def excludedRows() -> list[tuple[str, str, str]]:
    """
    (builder, test, reason) for each exclusion, for the report.
    """
    rows = [(builder, method, why) for (builder, method), why in sorted(EXCLUDED.items())]
    rows += [(builder, "*", why) for builder, why in sorted(EXCLUDED_BUILDERS.items())]
    return rows


__all__ = ["testSuite", "EXCLUDED", "EXCLUDED_BUILDERS", "HOOKED", "excludedRows"]
