"""
Cross-process server sockets on real sockets: the worker channel's wire
format (hostile input included), the parent's dispatcher, and
TCPServerSocketChild (nsITCPServerSocketInternal) with its listener in the
parent - in one process over a real channel, and with a real child process
that is killed.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
import textwrap
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, protocol

from twisted_serversock.interfaces import ITCPServerSocket, ITCPServerSocketInternal
from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import Channel, channelPair
from twisted_serversock.ipc.child import ParentLink, TCPServerSocketChild
from twisted_serversock.ipc.parent import Dispatcher, WorkerLink
from twisted_serversock.results import NSError
from zope.interface.verify import verifyObject

from ._helpers import Collect, Events, openFds, rawSend
from ._procs import listenQueue
from .conftest import connect, eventually, theReactor, timeout

# ----------------------------------------------------------------------
# The wire format.


def test_roundTrip() -> None:
    """
    Each kind of message decodes to what was encoded.
    """
    conn = wire.decode(wire.encodeConn(2**64 - 1, 7), [42])
    assert isinstance(conn, wire.Conn) and (conn.connId, conn.route, conn.fd) == (2**64 - 1, 7, 42)
    ack = wire.decode(wire.encodeAck([1, 2, 3]), [])
    assert isinstance(ack, wire.Ack) and ack.connIds == (1, 2, 3)
    control = wire.decode(wire.encodeControl("listen", id=1, port=80), [])
    assert isinstance(control, wire.Control)
    assert control.type == "listen" and control.fields == {"id": 1, "port": 80}


@pytest.mark.parametrize(
    "data, fds, why",
    [
        (b"", [], "empty"),
        (b"X123", [], "unknown message kind"),
        (b"C" + b"\0" * 11, [3], "bytes of body"),
        (wire.encodeConn(1, 1), [], "0 descriptors"),
        (wire.encodeConn(1, 1), [3, 4], "2 descriptors"),
        (wire.encodeAck([1]), [3], "unexpected 1 descriptor"),
        (b"A", [], "ack message"),
        (b"A" + b"\0" * 9, [], "ack message"),
        (b"J{not json", [], "not UTF-8 JSON"),
        (b"J\xff\xfe", [], "not UTF-8 JSON"),
        (b'J["type"]', [], "JSON object"),
        (b'J{"type": 3}', [], "string 'type'"),
        (b"J" + b" " * wire.MAX_MESSAGE, [], "limit"),
    ],
)
def test_malformed(data: bytes, fds: list[int], why: str) -> None:
    """
    Every malformed message is a ProtocolError that says what is wrong.
    """
    with pytest.raises(wire.ProtocolError, match=why):
        wire.decode(data, fds)


def test_controlTooLarge() -> None:
    with pytest.raises(wire.ProtocolError, match="limit"):
        wire.encodeControl("error", message="x" * wire.MAX_MESSAGE)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=5))
def test_decoderOnlyRaisesProtocolError(data: bytes, fds: list[int]) -> None:
    """
    Hostile input: whatever bytes and descriptors arrive, the decoder
    returns a well-formed message or raises ProtocolError - nothing else.
    """
    try:
        message = wire.decode(data, fds)
    except wire.ProtocolError as e:
        assert str(e)
        return
    if isinstance(message, wire.Conn):
        assert fds == [message.fd]
    else:
        assert fds == []


@pytest_twisted.ensureDeferred
async def test_channelRejectsHostileMessages(logged: list[dict[str, Any]]) -> None:
    """
    Over a real channel: malformed, oversized and truncated messages and
    unexpected descriptors are dropped, logged, and their descriptors
    closed; the channel keeps delivering the good messages around them.
    """
    ours, theirs = channelPair()
    collect = Collect()
    channel = Channel(ours, collect, theReactor(), "test channel")
    channel.startReading()
    before = openFds()
    spare = [os.open("/dev/null", os.O_RDONLY) for _ in range(6)]
    try:
        rawSend(theirs, wire.encodeAck([1]))
        rawSend(theirs, b"garbage")
        rawSend(theirs, wire.encodeAck([2]), spare[:1])  # a descriptor where none belongs
        rawSend(theirs, b"J" + b"x" * (wire.MAX_MESSAGE + 10))  # oversized: truncated
        rawSend(theirs, wire.encodeConn(5, 1), spare[:6])  # too many descriptors
        rawSend(theirs, wire.encodeConn(6, 1), spare[1:3])  # two for one connection
        rawSend(theirs, wire.encodeControl("ok"))
        await eventually(lambda: len(collect.messages) == 2)
        assert [type(m).__name__ for m in collect.messages] == ["Ack", "Control"]
        assert channel.rejected == 5
        rejected = [e for e in logged if "rejected a malformed message" in (e.get("log_format") or "")]
        assert len(rejected) == 5
    finally:
        for fd in spare:
            os.close(fd)
    # Every descriptor that arrived with a rejected message was closed.
    assert openFds() <= before
    theirs.close()
    await timeout(collect.lost)
    assert not channel.connected


@pytest_twisted.ensureDeferred
async def test_channelNeverBlocks() -> None:
    """
    Sending more than the kernel buffer holds queues in order and never
    blocks; everything arrives once the other end reads.
    """
    ours, theirs = channelPair()
    sender = Channel(ours, Collect(), theReactor(), "sender")
    sent = []
    for i in range(3000):
        sender.send(wire.encodeControl("n", i=i, pad="p" * 200), then=lambda i=i: sent.append(i))
    assert len(sent) < 3000  # the kernel could not take it all at once
    collect = Collect()
    receiver = Channel(theirs, collect, theReactor(), "receiver")
    receiver.startReading()
    await eventually(lambda: len(collect.messages) == 3000)
    assert [m.fields["i"] for m in collect.messages] == list(range(3000))
    assert sent == list(range(3000))
    sender.loseConnection()
    await timeout(collect.lost)


@pytest_twisted.ensureDeferred
async def test_receivedDescriptorsAreCloseOnExec() -> None:
    """
    A descriptor that arrives over a channel is close-on-exec from the
    moment it is received: a process the receiver starts (C{os.system},
    C{subprocess} with C{close_fds=False}) never inherits a connection.
    """
    ours, theirs = channelPair()
    collect = Collect()
    receiver = Channel(ours, collect, theReactor(), "receiver")
    receiver.startReading()
    sent = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(sent, True)
    try:
        rawSend(theirs, wire.encodeConn(1, 1), [sent])
        await eventually(lambda: len(collect.messages) == 1)
    finally:
        os.close(sent)
    received = collect.messages[0].fd
    try:
        assert not os.get_inheritable(received)
    finally:
        os.close(received)
    theirs.close()
    await timeout(collect.lost)


# ----------------------------------------------------------------------
# TCPServerSocketChild with the parent in this process.


#: Every port, 0 (any free one) included: what these tests let a child ask
#: for.
ANY_PORT = range(65536)


class InProcess:
    """
    A parent dispatcher and a child link joined by a real channel.
    """

    def __init__(self) -> None:
        parentEnd, childEnd = channelPair()
        self.dispatcher = Dispatcher(theReactor().seconds)
        self.workerLink = WorkerLink(self.dispatcher, parentEnd, theReactor(), "child 1", listenPorts=ANY_PORT)
        self.parentLink = ParentLink(childEnd, theReactor())

    def server(self) -> TCPServerSocketChild:
        server = TCPServerSocketChild(self.parentLink, reactor=theReactor())
        server.init(None)
        return server

    def close(self) -> None:
        self.parentLink.channel.loseConnection()


@pytest.fixture
def inProcess() -> Any:
    pair = InProcess()
    yield pair
    pair.close()


@pytest_twisted.ensureDeferred
async def test_childServerSocket(inProcess: InProcess) -> None:
    """
    A child asks the parent to listen; connections accepted in the parent
    reach the child's onconnect as open sockets, and bytes flow directly
    (the parent holds nothing once the child acknowledged).
    """
    server = inProcess.server()
    verifyObject(ITCPServerSocketInternal, server)
    verifyObject(ITCPServerSocket, server)
    events = Events(server)
    server.listen(0, {"binaryType": "arraybuffer"}, -1)
    await eventually(lambda: server.localPort > 0)
    with pytest.raises(NSError, match="already listening"):
        server.listen(0, None, -1)
    client = await connect(server.localPort)
    accepted = (await events.next("connect")).socket
    assert accepted.readyState == "open" and accepted.host == "127.0.0.1"
    acceptedEvents = Events(accepted)
    client.transport.write(b"ping")
    assert await acceptedEvents.received(4) == b"ping"
    assert accepted.send(b"pong")
    assert await client.waitFor(4) == b"pong"
    assert inProcess.dispatcher.held == {}
    assert inProcess.workerLink.adopted == 1
    # The listener's close leaves the connection working.
    server.close()
    # The parent has closed the listener once its route is gone.
    await eventually(lambda: not inProcess.dispatcher.routes)
    assert accepted.send(b"still")
    assert await client.waitFor(9) == b"pongstill"
    with pytest.raises(Exception):
        await connect(server.localPort)
    client.transport.loseConnection()
    await acceptedEvents.next("close")


@pytest.mark.parametrize("allowed", [None, (1,)])
@pytest_twisted.ensureDeferred
async def test_childMayListenOnlyWhereTheParentLetsIt(allowed: tuple[int, ...] | None) -> None:
    """
    A child's request for a listener is refused - nothing is bound, the
    child's onerror says why - unless the parent's link names the port:
    by default (the workers of C{twistd serversock} and cluster mode) a
    child may not listen at all.
    """
    parentEnd, childEnd = channelPair()
    dispatcher = Dispatcher(theReactor().seconds)
    if allowed is None:
        link = WorkerLink(dispatcher, parentEnd, theReactor(), "child 1")
    else:
        link = WorkerLink(dispatcher, parentEnd, theReactor(), "child 1", listenPorts=allowed)
    parentLink = ParentLink(childEnd, theReactor())
    try:
        server = TCPServerSocketChild(parentLink, reactor=theReactor())
        server.init(None)
        events = Events(server)
        server.listen(0, None, -1)
        error = await events.next("error")
        assert error.name == "NS_ERROR_CONNECTION_REFUSED"
        assert "does not let its children listen on port 0" in error.message
        assert not dispatcher.routes and not link.listeners
    finally:
        parentLink.channel.loseConnection()
    await eventually(lambda: link.lost)


@pytest_twisted.ensureDeferred
async def test_parentErrorsReachOnerror(inProcess: InProcess) -> None:
    """
    A listen that fails in the parent reaches the child's onerror with
    message, filename, lineNumber and columnNumber.
    """
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    try:
        server = inProcess.server()
        events = Events(server)
        server.listen(busy.getsockname()[1], None, -1)
        error = await events.next("error")
    finally:
        busy.close()
    assert "NS_ERROR_SOCKET_ADDRESS_IN_USE" in error.message
    assert error.name == "NS_ERROR_SOCKET_ADDRESS_IN_USE"
    assert error.filename.endswith("parent.py")
    assert error.lineNumber > 0 and error.columnNumber == 0


@pytest_twisted.ensureDeferred
async def test_unexpectedStopReachesOnerror(inProcess: InProcess) -> None:
    """
    A parent-side listener that stops for another reason than close()
    (here: a fatal accept error) is reported to the child's onerror.
    """
    server = inProcess.server()
    events = Events(server)
    server.listen(0, None, -1)
    await eventually(lambda: server.localPort > 0)
    serv, _route = next(iter(inProcess.workerLink.listeners.values()))
    serv._acceptFailed(OSError("injected"))
    error = await events.next("error")
    assert "Server socket was closed by unexpected reason." in error.message
    assert error.name == "NS_ERROR_UNEXPECTED"


@pytest_twisted.ensureDeferred
async def test_childGoneClosesItsListener(inProcess: InProcess) -> None:
    """
    When the last child of a listener goes away, the parent closes it.
    """
    server = inProcess.server()
    server.listen(0, None, -1)
    await eventually(lambda: server.localPort > 0)
    port = server.localPort
    (await connect(port)).transport.loseConnection()
    inProcess.close()
    await eventually(lambda: inProcess.workerLink.lost)
    with pytest.raises(Exception):
        await connect(port)


# ----------------------------------------------------------------------
# A real child process.

CHILD = textwrap.dedent(
    """
    import socket, sys
    from twisted.internet import reactor
    from twisted_serversock.ipc.child import ParentLink, TCPServerSocketChild

    link = ParentLink(socket.socket(fileno=3), reactor)
    link.onLost = lambda reason: reactor.stop()
    server = TCPServerSocketChild(link, reactor)
    server.init(None)

    def connected(event):
        sock = event.socket
        sock.ondata = lambda e: sock.send(e.data)

    server.onconnect = connected
    server.listen(0, {"binaryType": "arraybuffer"}, -1)
    print("child ready", flush=True)
    reactor.run()
    """
)


class ChildProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[Any] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


@pytest_twisted.ensureDeferred
async def test_childProcessServesAndItsDeathClosesTheListener() -> None:
    """
    A real child process's TCPServerSocketChild serves echo through a
    listener in this (parent) process; SIGKILLing the child is noticed at
    once and closes that listener.
    """
    parentEnd, childEnd = channelPair()
    dispatcher = Dispatcher(theReactor().seconds)
    link = WorkerLink(dispatcher, parentEnd, theReactor(), "child process", listenPorts=ANY_PORT)
    child = ChildProcess()
    process = theReactor().spawnProcess(
        child, sys.executable, [sys.executable, "-c", CHILD], env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", 3: childEnd.fileno()}
    )
    childEnd.close()
    try:
        await eventually(lambda: link.listeners, seconds=20)
        serv, _route = next(iter(link.listeners.values()))
        port = serv.port
        for i in range(5):
            client = await connect(port)
            client.transport.write(b"echo %d" % i)
            assert await client.waitFor(6) == b"echo %d" % i
            client.transport.loseConnection()
        # The child acknowledges before it serves: the last ack may reach
        # this process after the echo does.
        await eventually(lambda: link.adopted == 5)
    finally:
        process.signalProcess(signal.SIGKILL)
    await timeout(child.ended)
    await eventually(lambda: link.lost, seconds=2)
    assert not link.listeners
    with pytest.raises(Exception):
        await connect(port)


async def echoOnce(port: int) -> bytes:
    client = await connect(port)
    client.transport.write(b"x")
    try:
        # Not waitFor(1): its 10 s may pass while the child is stopped.
        await eventually(lambda: len(client.received) >= 1, 60, 0.1)
        return bytes(client.received)
    finally:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_stoppedChildLeavesTheExcessInTheKernelBacklog(tmp_path: Any) -> None:
    """
    A child process's listener in the parent pauses accepting while the
    child (SIGSTOPped) acknowledges nothing: the parent holds a bounded
    number of connections, the rest wait in the kernel's backlog; woken,
    the child serves all of them.
    """
    from twisted_serversock.ipc.dispatch import INITIAL_WINDOW, MAX_WAITING

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    parentEnd, childEnd = channelPair()
    dispatcher = Dispatcher(theReactor().seconds)
    link = WorkerLink(dispatcher, parentEnd, theReactor(), "child process", listenPorts=ANY_PORT)
    child = ChildProcess()
    process = theReactor().spawnProcess(
        child, sys.executable, [sys.executable, str(script)], env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r", 3: childEnd.fileno()}
    )
    childEnd.close()
    try:
        await eventually(lambda: link.listeners, seconds=20)
        serv, _route = next(iter(link.listeners.values()))
        port = serv.port
        assert await echoOnce(port) == b"x"
        process.signalProcess(signal.SIGSTOP)
        pending = [defer.ensureDeferred(echoOnce(port)) for _ in range(200)]
        await eventually(lambda: dispatcher.pauses >= 1, seconds=20)
        # Every connection is either held by the parent (at most
        # MAX_WAITING plus the child's window plus what one accept run had
        # taken) or waits in the kernel's backlog: most of them.
        await eventually(lambda: listenQueue(port) + len(dispatcher.held) >= 200, seconds=20)
        assert listenQueue(port) >= 200 - 2 * (MAX_WAITING + INITIAL_WINDOW)
        process.signalProcess(signal.SIGCONT)
        replies = await timeout(defer.gatherResults(pending, consumeErrors=True), 90)
        assert replies == [b"x"] * 200
        assert listenQueue(port) == 0
    finally:
        if process.pid is not None:
            process.signalProcess(signal.SIGCONT)
            process.signalProcess(signal.SIGKILL)
    await timeout(child.ended)


@pytest_twisted.ensureDeferred
async def test_parentKeepsServingAHostileChild(logged: list[dict[str, Any]]) -> None:
    """
    Hostile input from a child - garbage, descriptors, a connection message,
    acks for connections it never got, unknown and malformed control
    messages - is rejected and logged; the parent keeps its connections and
    serves on.
    """
    from twisted.internet.endpoints import serverFromString

    from twisted_serversock.ipc.parent import HandOffFactory

    parentEnd, childEnd = channelPair()
    dispatcher = Dispatcher(theReactor().seconds)
    link = WorkerLink(dispatcher, parentEnd, theReactor(), "hostile child")
    route = dispatcher.addRoute("test")
    port = await timeout(serverFromString(theReactor(), "gecko:port=0:loopback=1").listen(HandOffFactory(dispatcher, route, None)))
    try:
        link.markReady()
        dispatcher.join(route, link)
        client = await connect(port.getHost().port)
        childEnd.setblocking(False)
        received: list[Any] = []

        def receive() -> bool:
            try:
                data, anc, _flags, _addr = childEnd.recvmsg(100, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return False
            fds = array.array("i")
            for _level, _type, cdata in anc:
                fds.frombytes(cdata)
            received.append(wire.decode(data, list(fds)))
            return True

        await eventually(receive)
        conn = received[0]
        assert isinstance(conn, wire.Conn)
        spare = os.open("/dev/null", os.O_RDONLY)
        try:
            rawSend(childEnd, b"\x00garbage")
            rawSend(childEnd, wire.encodeControl("ready"), [spare])
            rawSend(childEnd, wire.encodeConn(1, route.id), [spare])
            rawSend(childEnd, wire.encodeAck([conn.connId + 1000]))
            rawSend(childEnd, wire.encodeControl("nonsense"))
            rawSend(childEnd, wire.encodeControl("listen", id="x", port=0))
            rawSend(childEnd, wire.encodeControl("close", wrong=1))
        finally:
            os.close(spare)
        # The last message sent is rejected: once six are, all were read.
        await eventually(lambda: link.channel.rejected >= 6)
        assert link.channel.connected and not link.lost
        assert link.channel.rejected == 6
        assert dispatcher.held  # still holding the real connection
        rawSend(childEnd, wire.encodeAck([conn.connId]))
        await eventually(lambda: not dispatcher.held)
        served = socket.socket(fileno=conn.fd)
        try:
            served.setblocking(False)
            client.transport.write(b"still served")
            got = bytearray()

            def readServed() -> bool:
                try:
                    got.extend(served.recv(100))
                except BlockingIOError:
                    pass
                return bytes(got) == b"still served"

            await eventually(readServed)
            served.send(b"yes")
        finally:
            served.close()
        assert await client.waitFor(3) == b"yes"
        assert any("acknowledged connection" in (e.get("log_format") or "") for e in logged)
    finally:
        childEnd.close()
        await timeout(port.stopListening())
