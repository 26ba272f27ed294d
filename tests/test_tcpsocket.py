"""
Gecko's web-facing TCPServerSocket/TCPSocket on real sockets: the sequence
of dom/network/tests/unit/test_tcpserversocket.js and the send/drain cases
of test_tcpsocket_client_and_server_basics, for both binary types.
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios
from typing import Any

import pytest
import pytest_twisted

from twisted_serversock import NSError
from twisted_serversock.interfaces import ITCPServerSocket, ITCPSocket
from twisted_serversock.tcpsocket import TCPServerSocket, TCPSocket
from zope.interface.verify import verifyObject

from ._helpers import Events
from .conftest import code, eventually, theReactor

DATA = bytes([0, 255, 254, 0, 1, 2, 3, 0, 255, 255, 254, 0])
BIG = 65539


def pendingBytes(sock: TCPSocket) -> int:
    """
    How many received bytes wait, unread, in C{sock}'s kernel socket.
    """
    buf = array.array("i", [0])
    fcntl.ioctl(sock.transport.getHandle().fileno(), termios.FIONREAD, buf)  # type: ignore[union-attr]
    return buf[0]


def asType(binaryType: str, data: bytes) -> Any:
    return data.decode("latin-1") if binaryType == "string" else data


async def openPair(server: TCPServerSocket, binaryType: str) -> tuple[TCPSocket, Events, TCPSocket, Events]:
    serverEvents = Events(server)
    client = TCPSocket.open("127.0.0.1", server.localPort, {"binaryType": binaryType}, reactor=theReactor())
    clientEvents = Events(client)
    assert client.readyState == "connecting"
    await clientEvents.next("open")
    accepted = (await serverEvents.next("connect")).socket
    return client, clientEvents, accepted, Events(accepted)


@pytest.fixture(params=["arraybuffer", "string"])
def binaryType(request: Any) -> str:
    return str(request.param)


@pytest_twisted.ensureDeferred
async def test_tcpServerSocketSequence(binaryType: str) -> None:
    """
    test_tcpserversocket.js: connect; send both ways; the listener's close
    leaves connections working (and is idempotent); a new connect after
    close fails; the same port can be listened on again at once.
    """
    server = TCPServerSocket(0, {"binaryType": binaryType}, -1, reactor=theReactor())
    verifyObject(ITCPServerSocket, server)
    port = server.localPort
    assert 0 < port < 65536
    client, clientEvents, accepted, acceptedEvents = await openPair(server, binaryType)
    verifyObject(ITCPSocket, accepted)
    assert accepted.host == "127.0.0.1"  # bug 937528
    assert accepted.readyState == "open" and client.readyState == "open"
    payload = asType(binaryType, DATA)

    async def bothWays() -> None:
        assert client.send(payload) is True
        assert await acceptedEvents.received(len(DATA)) == payload
        assert accepted.send(payload) is True
        assert await clientEvents.received(len(DATA)) == payload

    await bothWays()
    server.close()
    # The listener is closed once a new connection is refused.
    refused = TCPSocket.open("127.0.0.1", port, {"binaryType": binaryType}, reactor=theReactor())
    refusedEvents = Events(refused)
    await refusedEvents.next("error")
    await refusedEvents.next("close")
    assert refusedEvents.kinds() == ["error", "close"]
    assert refused.readyState == "closed"
    await bothWays()
    server.close()  # again: no error
    # A round trip after it: whatever the second close set off has run.
    await bothWays()
    assert "close" not in acceptedEvents.kinds() + clientEvents.kinds()
    assert "error" not in acceptedEvents.kinds() + clientEvents.kinds()

    client.close()
    await clientEvents.next("close")
    await acceptedEvents.next("close")

    again = TCPServerSocket(port, {"binaryType": binaryType}, -1, reactor=theReactor())
    try:
        assert again.localPort == port
        client2, clientEvents2, accepted2, acceptedEvents2 = await openPair(again, binaryType)
        assert accepted2.send(payload)
        assert await clientEvents2.received(len(DATA)) == payload
        assert client2.send(payload)
        assert await acceptedEvents2.received(len(DATA)) == payload
        client2.close()
        await acceptedEvents2.next("close")
    finally:
        again.close()


@pytest_twisted.ensureDeferred
async def test_sendAndDrain(binaryType: str) -> None:
    """
    The basics test: 256-byte sends both ways return True and arrive; split
    sends reassemble; a 65539-byte send returns False and "drain" follows,
    twice in a row, in both directions.
    """
    server = TCPServerSocket(0, {"binaryType": binaryType}, -1, reactor=theReactor())
    try:
        client, clientEvents, accepted, acceptedEvents = await openPair(server, binaryType)
        small = asType(binaryType, bytes(range(256)))
        for a, bEvents in ((client, acceptedEvents), (accepted, clientEvents)):
            assert a.send(small) is True
            assert await bEvents.received(256) == small
            assert a.send(small[:7]) is True and a.send(small[7:]) is True
            assert await bEvents.received(256) == small
        big = asType(binaryType, bytes(i % 251 for i in range(BIG)))
        for a, aEvents, bEvents in ((client, clientEvents, acceptedEvents), (accepted, acceptedEvents, clientEvents)):
            for _ in range(2):
                assert a.send(big) is False
                assert a.bufferedAmount > 65536
                received = await bEvents.received(BIG)
                await aEvents.next("drain")
                assert received == big
                assert a.bufferedAmount == 0
        assert "error" not in clientEvents.kinds() + acceptedEvents.kinds()
        # Server-initiated close: "closing" at once, then "close" on both.
        accepted.close()
        assert accepted.readyState == "closing"
        await clientEvents.next("close")
        await acceptedEvents.next("close")
        assert client.readyState == accepted.readyState == "closed"
    finally:
        server.close()


@pytest_twisted.ensureDeferred
async def test_closeAfterBigSend(binaryType: str) -> None:
    """
    close() after queueing a big buffer: "drain" then "close" on the
    sender, and the peer receives everything, then "close".
    """
    server = TCPServerSocket(0, {"binaryType": binaryType}, -1, reactor=theReactor())
    try:
        client, clientEvents, accepted, acceptedEvents = await openPair(server, binaryType)
        big = asType(binaryType, bytes(i % 253 for i in range(BIG * 3)))
        assert client.send(big) is False
        client.close()
        assert client.readyState == "closing"
        received = await acceptedEvents.received(len(big))
        await acceptedEvents.next("close")
        await clientEvents.next("close")
        assert received == big
        assert clientEvents.kinds() == ["open", "drain", "close"]
    finally:
        server.close()


@pytest_twisted.ensureDeferred
async def test_closeImmediatelyDropsBuffered() -> None:
    """
    closeImmediately() after two big sends: the peer gets less than all of
    it, then "close"; the closer gets "close" and no "error".
    """
    server = TCPServerSocket(0, {"binaryType": "arraybuffer"}, -1, reactor=theReactor())
    try:
        client, clientEvents, accepted, acceptedEvents = await openPair(server, "arraybuffer")
        accepted.suspend()  # the peer does not read, so data stays buffered
        big = b"x" * (4 * 1024 * 1024)
        client.send(big)
        client.send(big)
        client.closeImmediately()
        assert client.readyState == "closing"
        await clientEvents.next("close")
        accepted.resume()
        await acceptedEvents.next("close")
        got = sum(len(e.data) for k, e in acceptedEvents.log if k == "data")
        assert got < 2 * len(big)
        assert "error" not in clientEvents.kinds()
    finally:
        server.close()


@pytest_twisted.ensureDeferred
async def test_suspendResume() -> None:
    """
    suspend() stops "data" events until the matching resume().
    """
    server = TCPServerSocket(0, {"binaryType": "arraybuffer"}, -1, reactor=theReactor())
    try:
        client, clientEvents, accepted, acceptedEvents = await openPair(server, "arraybuffer")
        accepted.suspend()
        accepted.suspend()
        client.send(b"held")
        # The bytes are in the accepted socket's receive queue (so a read
        # would get them) and no "data" event came.
        await eventually(lambda: pendingBytes(accepted) == 4)
        accepted.resume()
        # A round trip the other way: had the first resume resumed reading,
        # the waiting bytes would have been delivered before it ends.
        assert accepted.send(b"ping")
        assert await clientEvents.received(4) == b"ping"
        assert "data" not in acceptedEvents.kinds()
        accepted.resume()
        assert await acceptedEvents.received(4) == b"held"
        client.close()
        await acceptedEvents.next("close")
    finally:
        server.close()


@pytest_twisted.ensureDeferred
async def test_noOnconnectClosesTheConnection(logged: list[dict[str, Any]]) -> None:
    """
    A connection to a server socket without onconnect is closed and logged
    (Gecko: "Received unexpected connection!"), not left hanging.
    """
    server = TCPServerSocket(0, None, -1, reactor=theReactor())
    try:
        client = TCPSocket.open("127.0.0.1", server.localPort, reactor=theReactor())
        events = Events(client)
        await events.next("close")
        assert any("has no onconnect" in (e.get("log_format") or "") for e in logged)
    finally:
        server.close()


def test_badInput() -> None:
    """
    Bad options, a busy port and wrong data types are NSErrors that say
    what was wrong.
    """
    with pytest.raises(NSError) as e:
        TCPServerSocket(0, {"binaryType": "blob"}, reactor=theReactor())
    assert code(e) == "NS_ERROR_INVALID_ARG" and "binaryType" in str(e.value)
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    try:
        with pytest.raises(NSError) as e:
            TCPServerSocket(busy.getsockname()[1], reactor=theReactor())
        assert code(e) == "NS_ERROR_SOCKET_ADDRESS_IN_USE"
    finally:
        busy.close()
    sock = TCPSocket("string")
    with pytest.raises(NSError) as e:
        sock.send("x")
    assert code(e) == "NS_ERROR_FAILURE" and "connecting" in str(e.value)
    sock.readyState = "open"
    with pytest.raises(NSError) as e:
        sock.send(b"bytes")
    assert code(e) == "NS_ERROR_INVALID_ARG"
    with pytest.raises(NSError) as e:
        sock.send("\u20ac")
    assert code(e) == "NS_ERROR_INVALID_ARG" and "U+00FF" in str(e.value)
    raw = TCPSocket("arraybuffer")
    raw.readyState = "open"
    with pytest.raises(NSError) as e:
        raw.send("text")
    assert code(e) == "NS_ERROR_INVALID_ARG"

