"""
The private Twisted attributes this project relies on
(L{twisted_serversock._twistedcompat}) still exist and still work, on the
installed Twisted, with real sockets.  When this fails after a Twisted
upgrade, the message names the attribute that changed.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import protocol, tcp
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from twisted_serversock import _twistedcompat as compat

from .conftest import theReactor


def test_noProblems() -> None:
    assert compat.problems() == []


class _Port:
    _realPortNumber = 4321


def _server(proto: Any) -> tuple[tcp.Server, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    server = tcp.Server(ours, proto, ("127.0.0.1", 1), _Port(), 7, theReactor())
    return server, peer


def test_realTransport() -> None:
    """
    On a real tcp.Server: the buffered byte count, the relabelling, the
    abort flag and the no-shutdown close behave as the wrappers assume.
    """
    server, peer = _server(protocol.Protocol())
    try:
        assert repr(server) == "<Protocol #7 on 4321>"  # reads the port's _realPortNumber
        server.stopWriting()
        server.write(b"x" * 10)
        server.write(b"y" * 5)
        assert compat.bufferedOutput(server) == 15

        class Other(protocol.Protocol):
            pass

        compat.relabel(server, Other())
        assert repr(server) == "<Other #7 on 4321>"
        assert server.logstr == "Other,7,127.0.0.1"

        assert compat.isReadable(server)
        server.abortConnection()
        assert not compat.isReadable(server)
    finally:
        peer.close()
        theReactor().removeReader(server)
        theReactor().removeWriter(server)
        server.socket.close()


def test_closeWithoutShutdown() -> None:
    server, peer = _server(protocol.Protocol())
    copy = server.socket.dup()
    try:
        compat.closeWithoutShutdown(server)
        # What the reactor does once the (empty) buffer is written.
        server.connectionLost(Failure(ConnectionDone()))
        # The copy still works both ways: no shutdown(2) happened.
        copy.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        peer.sendall(b"pong")
        copy.setblocking(True)
        assert copy.recv(4) == b"pong"
    finally:
        copy.close()
        peer.close()


def test_proxyWrapper() -> None:
    """
    L{compat.proxyWrapped} puts a factory behind Twisted's PROXY parser;
    L{compat.unwrapProxied} finds the raw transport under that parser's
    protocol, and nothing under a plain one.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    wrapped = compat.proxyWrapped(protocol.Factory.forProtocol(protocol.Protocol))
    proxy = wrapped.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    raw = StringTransport()
    proxy.makeConnection(raw)
    assert compat.unwrapProxied(proxy) is raw
    assert compat.unwrapProxied(raw) is None


def test_innerProtocol() -> None:
    """
    L{compat.innerProtocol} finds the HTTP/1.1 channel inside the protocol
    C{twisted.web}'s C{Site} builds, and nothing inside a plain protocol.
    """
    from twisted.internet.address import IPv4Address
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    built = Site(Resource()).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert isinstance(compat.innerProtocol(built), HTTPChannel)
    assert compat.innerProtocol(protocol.Protocol()) is None
