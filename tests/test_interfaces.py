"""
The zope interfaces of the Gecko API, their Gecko-named aliases, and that the
implementations provide what they declare.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from zope.interface import Interface
from zope.interface.verify import verifyClass, verifyObject

import twisted_serversock
from twisted_serversock import interfaces
from twisted_serversock import IOService, NSError, ServerSocket, results

NAMES = [
    "IServerSocket",
    "IServerSocketListener",
    "ISocketTransport",
    "IAsyncInputStream",
    "IAsyncOutputStream",
    "INetAddr",
    "ITCPServerSocket",
    "ITCPServerSocketInternal",
    "ITCPSocket",
    "IIOService",
]

ALIASES = {
    "nsIServerSocket": "IServerSocket",
    "nsIServerSocketListener": "IServerSocketListener",
    "nsISocketTransport": "ISocketTransport",
    "nsINetAddr": "INetAddr",
    "nsITCPServerSocketInternal": "ITCPServerSocketInternal",
}


@pytest.mark.parametrize("name", NAMES)
def test_interfaceExported(name: str) -> None:
    iface = getattr(interfaces, name)
    assert issubclass(iface, Interface)
    assert getattr(twisted_serversock, name) is iface
    assert iface.__doc__ and len(iface.__doc__.strip()) > 20
    for member in iface.names():
        doc = iface[member].__doc__ or ""
        assert doc.strip(), f"{name}.{member} has no docstring"


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_geckoAlias(alias: str, name: str) -> None:
    assert getattr(interfaces, alias) is getattr(interfaces, name)
    assert getattr(twisted_serversock, alias) is getattr(interfaces, name)


def test_serverSocketProvides() -> None:
    srv = ServerSocket(ioService=IOService())
    try:
        srv.init(-1, True, -1)
        assert verifyObject(interfaces.IServerSocket, srv)
        assert verifyClass(interfaces.IServerSocket, ServerSocket)
    finally:
        srv.close()


def test_uninitialisedPortRaises() -> None:
    """
    As in Gecko, C{port} on an uninitialised server socket raises, so
    C{verifyObject} only applies once initialised.
    """
    with pytest.raises(NSError) as e:
        ServerSocket().port
    assert e.value.result == results.NS_ERROR_FAILURE


def test_ioServiceProvides() -> None:
    assert verifyObject(interfaces.IIOService, IOService())
    assert verifyObject(interfaces.IIOService, twisted_serversock.ioService)


def test_constants() -> None:
    assert ServerSocket.LoopbackOnly == twisted_serversock.LoopbackOnly == 1
    assert ServerSocket.KeepWhenOffline == twisted_serversock.KeepWhenOffline == 2


def test_importDoesNotInstallReactor() -> None:
    """
    Importing the package leaves the choice of reactor to the application.
    """
    code = (
        "import sys, twisted_serversock, twisted_serversock.serversocket, "
        "twisted_serversock.transport, twisted_serversock.streams; "
        "sys.exit('twisted.internet.reactor' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
