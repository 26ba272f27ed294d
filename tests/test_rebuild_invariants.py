"""
Behaviour the rebuild of the core along its seams (binding as functions,
the accept pipeline, the listening port given callables) had to keep,
found by reviewing it: each test here failed on an intermediate state of
the rebuild and passes on the code before it.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest_twisted
from twisted.internet import protocol

from twisted_serversock import IOService, ServerSocket

from .conftest import Recorder, connect, eventually, needsIPv6


async def _acceptOne(servers: Any) -> tuple[Any, Recorder, Any, Any]:
    """
    A loopback server socket with a L{Recorder} listening, one client
    connected and its transport accepted.
    """
    srv = servers()
    srv.init(-1, True, -1)
    rec = Recorder()
    srv.asyncListen(rec)
    client = await connect(srv.port)
    return srv, rec, client, await rec.nextAccepted()


@needsIPv6
def test_survivalDecidedOnTheBoundAddress(servers: Any, io: IOService) -> None:
    """
    Whether a listener survives going offline is decided on the address it
    is bound to: C{0:0:0:0:0:0:0:1} is C{::1}, which is local.
    """
    srv = servers()
    srv.initWithAddress(("0:0:0:0:0:0:0:1", 0), -1)
    assert srv.getAddress().host == "::1"
    io.offline = True
    assert repr(srv).startswith("<ServerSocket bound")


def test_boundSocketKeptUntilClosed(io: IOService) -> None:
    """
    A bound server socket stays alive (and bound) until C{close()}, even
    when the program keeps no reference to it - survivor of going offline
    or not - as the socket service holds it.
    """
    srv = ServerSocket(ioService=io)
    srv.init(-1, True, -1)
    ref = weakref.ref(srv)
    del srv
    gc.collect()
    alive = ref()
    assert alive is not None
    alive.close()


@pytest_twisted.ensureDeferred
async def test_closedListenerNotKeptByItsConnections(servers: Any) -> None:
    """
    After C{close()}, a connection the server socket accepted (and that is
    still open) does not keep the listener alive.
    """
    srv, rec, client, transport = await _acceptOne(servers)
    transport.attachProtocol(protocol.Protocol())
    ref = weakref.ref(rec)
    srv.close()
    await rec.stopped
    del rec
    await eventually(lambda: (gc.collect(), ref() is None)[1])
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_streamModeLogPrefix(servers: Any) -> None:
    """
    A connection used through its streams logs as C{SocketTransport}, as
    before the rebuild (Twisted takes the prefix from the protocol's
    C{logPrefix()} only when it provides C{ILoggingContext}).
    """
    srv, rec, client, transport = await _acceptOne(servers)
    transport.openInputStream()
    assert transport.builtTransport().logstr.startswith("SocketTransport,")
    client.transport.loseConnection()
