"""
One server-socket lifecycle contract, run against both the real
L{ServerSocket} (real loopback sockets, the real reactor) and the test
double L{twisted_serversock.testing.MemoryServerSocket} (a C{Clock}), so the
double cannot drift from what it stands in for.

The contract is Gecko's C{nsServerSocket}: C{init*} binds (twice is
C{NS_ERROR_ALREADY_INITIALIZED}); C{asyncListen} needs a bound socket
(C{NS_ERROR_NOT_INITIALIZED}, also after C{close}) and a listener, once
(C{NS_ERROR_IN_PROGRESS}); C{close} before C{asyncListen} calls nothing,
after it the listener gets exactly one C{onStopListening(NS_BINDING_ABORTED)},
never inside the call; a closed socket can be initialised again and keeps
reporting the address it had.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater

from twisted_serversock import IOService, NSError, ServerSocket, results
from twisted_serversock.testing import MemoryServerSocket, RecordingListener, flush

from .conftest import eventually, theReactor, timeout


def raised(call: Any, *args: Any) -> int:
    """
    The result code of the L{NSError} that C{call(*args)} raises.
    """
    with pytest.raises(NSError) as e:
        call(*args)
    return e.value.result


class RealSide:
    """
    Real server sockets on a private I/O service; clients are real TCP
    connections to them.
    """

    def __init__(self) -> None:
        self.made: list[ServerSocket] = []
        self.clients: list[socket.socket] = []
        self.io = IOService()
        self.listeners: list[RecordingListener] = []

    def make(self) -> Any:
        serv = ServerSocket(ioService=self.io)
        self.made.append(serv)
        return serv

    def connect(self, serv: Any) -> None:
        client = socket.create_connection(("127.0.0.1", serv.port), timeout=5)
        self.clients.append(client)

    async def settle(self) -> None:
        # Enough reactor turns for whatever was due (an accept, the queued
        # callbacks) to have happened.
        for _ in range(5):
            await timeout(deferLater(theReactor(), 0, lambda: None))

    async def until(self, predicate: Any) -> None:
        await eventually(predicate)

    def cleanup(self, listeners: list[RecordingListener]) -> None:
        for listener in listeners:
            for transport in listener.accepted:
                transport.close(0)
        for client in self.clients:
            client.close()
        for serv in self.made:
            serv.close()


class MemorySide:
    """
    Memory server sockets on one C{Clock}; clients are
    L{MemoryServerSocket.connect}.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.listeners: list[RecordingListener] = []

    def make(self) -> Any:
        return MemoryServerSocket(self.clock)

    def connect(self, serv: Any) -> None:
        serv.connect()

    async def settle(self) -> None:
        flush(self.clock)

    async def until(self, predicate: Any) -> None:
        flush(self.clock)
        assert predicate()

    def cleanup(self, listeners: list[RecordingListener]) -> None:
        pass


@pytest.fixture(params=["real", "memory"])
def side(request: Any) -> Any:
    made = RealSide() if request.param == "real" else MemorySide()
    yield made
    made.cleanup(made.listeners)


def listener(side: Any) -> RecordingListener:
    recording = RecordingListener()
    side.listeners.append(recording)
    return recording


def test_beforeInit(side: Any) -> None:
    serv = side.make()
    assert raised(serv.asyncListen, listener(side)) == results.NS_ERROR_NOT_INITIALIZED
    assert raised(serv.getAddress) == results.NS_ERROR_NOT_INITIALIZED
    assert raised(lambda: serv.port) == results.NS_ERROR_FAILURE
    serv.close()  # nothing to close: no error


def test_initTwiceIsAlreadyInitialized(side: Any) -> None:
    serv = side.make()
    serv.init(0, True, -1)
    assert raised(serv.init, 0, True, -1) == results.NS_ERROR_ALREADY_INITIALIZED
    assert serv.getAddress() == IPv4Address("TCP", "127.0.0.1", serv.port)


def test_asyncListenChecksTheListenerAndListensOnce(side: Any) -> None:
    serv = side.make()
    serv.init(0, True, -1)
    assert raised(serv.asyncListen, object()) == results.NS_ERROR_INVALID_ARG
    recording = listener(side)
    serv.asyncListen(recording)
    assert raised(serv.asyncListen, recording) == results.NS_ERROR_IN_PROGRESS
    assert raised(serv.asyncListen, listener(side)) == results.NS_ERROR_IN_PROGRESS


@pytest_twisted.ensureDeferred
async def test_closeBeforeAsyncListenCallsNothingAndAllowsInitAgain(side: Any) -> None:
    serv = side.make()
    serv.init(0, True, -1)
    address = serv.getAddress()
    serv.close()
    serv.close()
    assert serv.getAddress() == address  # kept after close, as Gecko keeps it
    assert raised(serv.asyncListen, listener(side)) == results.NS_ERROR_NOT_INITIALIZED
    serv.init(0, True, -1)
    recording = listener(side)
    serv.asyncListen(recording)
    await side.settle()
    assert recording.events == []


@pytest_twisted.ensureDeferred
async def test_closeAfterAsyncListenStopsExactlyOnceThroughTheQueue(side: Any) -> None:
    serv = side.make()
    serv.init(0, True, -1)
    recording = listener(side)
    serv.asyncListen(recording)
    serv.close()
    serv.close()
    assert recording.events == []  # never inside close()
    await side.until(lambda: recording.stopped)
    await side.settle()
    assert recording.events == [("stopped", results.NS_BINDING_ABORTED)]


@pytest_twisted.ensureDeferred
async def test_asyncListenAfterCloseIsNotInitialized(side: Any) -> None:
    serv = side.make()
    serv.init(0, True, -1)
    address = serv.getAddress()
    recording = listener(side)
    serv.asyncListen(recording)
    serv.close()
    await side.until(lambda: recording.stopped)
    assert raised(serv.asyncListen, listener(side)) == results.NS_ERROR_NOT_INITIALIZED
    assert serv.getAddress() == address and serv.port == address.port


@pytest_twisted.ensureDeferred
async def test_initAgainAfterClose(side: Any) -> None:
    serv = side.make()
    serv.init(0, True, -1)
    first = listener(side)
    serv.asyncListen(first)
    serv.close()
    await side.until(lambda: first.stopped)
    serv.init(0, True, -1)
    second = listener(side)
    serv.asyncListen(second)
    side.connect(serv)
    await side.until(lambda: second.accepted)
    assert first.events == [("stopped", results.NS_BINDING_ABORTED)]
    assert [kind for kind, _ in second.events] == ["accepted"]


@pytest_twisted.ensureDeferred
async def test_listenerCallbacksInOrder(side: Any) -> None:
    seen: list[Any] = []
    serv = side.make()
    serv.init(0, True, -1)
    side.connect(serv)  # waits (in the kernel's queue) until asyncListen
    recording = RecordingListener(lambda s, t: seen.append(s))
    side.listeners.append(recording)
    serv.asyncListen(recording)
    assert recording.events == []  # asyncListen calls nothing inline
    await side.until(lambda: recording.accepted)
    side.connect(serv)
    await side.until(lambda: len(recording.accepted) == 2)
    assert seen == [serv, serv]
    serv.close()
    await side.until(lambda: recording.stopped)
    await side.settle()
    assert [kind for kind, _ in recording.events] == ["accepted", "accepted", "stopped"]
    assert recording.stopped == [results.NS_BINDING_ABORTED]
