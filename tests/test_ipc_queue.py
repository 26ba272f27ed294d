"""
A connection whose hand-off message waits in a L{Channel}'s queue (the
child does not read: stopped, stuck, busy) stays that connection: the
message keeps its own copy of the descriptor, so the parent may close its
own (a shutdown's grace period ends) and the child still gets the original
connection, never whatever reused the number; and the end of a grace period
leaves such connections to the child they were sent to.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest_twisted

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import Channel, channelPair
from twisted_serversock.ipc.child import ParentLink
from twisted_serversock.ipc.parent import Dispatcher, WorkerLink

from .conftest import eventually, theReactor, timeout
from ._helpers import Collect, openFds


def tcpConnection() -> tuple[socket.socket, socket.socket]:
    """
    A real loopback TCP connection: the client's end and the accepted one.
    """
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    client.settimeout(10)
    return client, accepted


def queued(channel: Any) -> bool:
    """
    Whether messages of C{channel} wait for the kernel (it then waits to be
    writable).
    """
    return channel in theReactor().getWriters()


def fill(channel: Any) -> None:
    """
    Send until the kernel takes no more (the other end does not read): what
    is sent next waits in C{channel}'s queue.
    """
    while not queued(channel):
        channel.send(wire.encodeControl("pad", pad="p" * 60000))


def sameConnection(client: socket.socket, adopted: socket.socket) -> None:
    """
    C{adopted} is the accepted end of C{client}'s connection: bytes go both
    ways.
    """
    client.sendall(b"ping")
    adopted.settimeout(10)
    assert adopted.recv(4) == b"ping"
    adopted.sendall(b"pong")
    assert client.recv(4) == b"pong"


@pytest_twisted.ensureDeferred
async def test_queuedConnectionOutlivesTheSendersCopy() -> None:
    """
    The parent closes its copy of a connection whose message is queued, and
    something else gets that descriptor number: the child still receives
    the original connection, and the message's own copy is closed once the
    kernel has taken it.
    """
    parentEnd, childEnd = channelPair()
    sender = Channel(parentEnd, Collect(), theReactor(), "parent")
    fill(sender)
    before = openFds()
    client, accepted = tcpConnection()
    number, inode = accepted.fileno(), os.fstat(accepted.fileno()).st_ino
    sender.send(wire.encodeConn(1, 7), (number,))
    assert queued(sender)
    # Another socket gets that number: a plain number in the queue would now
    # send it instead.
    impostor = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    accepted.close()
    os.dup2(impostor.fileno(), number)
    collect = Collect()
    receiver = Channel(childEnd, collect, theReactor(), "child")
    receiver.startReading()
    try:
        await eventually(lambda: any(isinstance(m, wire.Conn) for m in collect.messages))
        assert sender.connected and not queued(sender)
        (conn,) = [m for m in collect.messages if isinstance(m, wire.Conn)]
        assert (conn.connId, conn.route) == (1, 7)
        with socket.socket(fileno=conn.fd) as adopted:
            assert os.fstat(adopted.fileno()).st_ino == inode
            sameConnection(client, adopted)
        impostor.close()
        os.close(number)
        client.close()
        # Nothing of the connection is left open here: the queued copy was
        # closed when the kernel took the message.
        assert openFds() <= before
    finally:
        impostor.close()
        if number not in before and number in openFds():
            os.close(number)
        client.close()
        sender.loseConnection()
        receiver.loseConnection()


@pytest_twisted.ensureDeferred
async def test_lostChannelClosesItsQueuedCopies() -> None:
    """
    A channel lost with connections still queued closes its copies of
    them: once the parent's own copy is closed too, the client sees the
    connection end.
    """
    parentEnd, childEnd = channelPair()
    collect = Collect()
    sender = Channel(parentEnd, collect, theReactor(), "parent")
    fill(sender)
    before = openFds()
    client, accepted = tcpConnection()
    try:
        sender.send(wire.encodeConn(1, 7), (accepted.fileno(),))
        accepted.close()
        sender.loseConnection()
        await timeout(collect.lost)
        assert client.recv(1) == b""
        client.close()
        assert openFds() <= before
    finally:
        client.close()
        childEnd.close()


@pytest_twisted.ensureDeferred
async def test_gracePeriodEndLeavesConnectionsInFlight(logged: list[dict[str, Any]]) -> None:
    """
    At the end of a shutdown's grace period, L{Dispatcher.dropAll} closes
    only what no child has: a connection sent to a stuck child (its message
    still queued in the channel) stays that child's, and when the child
    wakes up it adopts the original connection and its ack is welcome.
    """
    dispatcher = Dispatcher(theReactor().seconds)
    parentEnd, childEnd = channelPair()
    link = WorkerLink(dispatcher, parentEnd, theReactor(), "stuck child")
    served = dispatcher.addRoute("served")
    dispatcher.join(served, link)
    unserved = dispatcher.addRoute("unserved")  # no child: its connection waits
    fill(link.channel)
    inFlight, sent = tcpConnection()
    waiting, held = tcpConnection()
    child = None
    try:
        dispatcher.submit(served, sent)
        dispatcher.submit(unserved, held)
        assert len(link.inflight) == 1 and dispatcher.waiting == 1
        assert dispatcher.dropAll("the grace period ended") == 1
        assert dispatcher.dropped == 1
        assert waiting.recv(1) == b""  # the waiting one is closed
        assert len(link.inflight) == 1 and not link.lost
        # The child reads at last.
        adopted: list[tuple[int, socket.socket]] = []
        child = ParentLink(childEnd, theReactor())
        child.onConnection = lambda route, skt: adopted.append((route, skt))
        child.onControl = lambda message: None
        await eventually(lambda: dispatcher.adopted == 1)
        assert not dispatcher.held and not link.inflight and link.adopted == 1
        ((route, skt),) = adopted
        assert route == served.id
        with skt:
            sameConnection(inFlight, skt)
        assert not [e for e in logged if "which it was not given" in (e.get("log_format") or "")]
    finally:
        inFlight.close()
        waiting.close()
        if child is not None:
            child.channel.loseConnection()
        else:
            childEnd.close()
        link.close()


@pytest_twisted.ensureDeferred
async def test_stuckChildGoneAfterTheGracePeriod() -> None:
    """
    A child that goes away without reading, after the grace period ended,
    leaves nobody to take its connection: the parent closes its copy (the
    client sees the end) and counts it as closed unserved.
    """
    dispatcher = Dispatcher(theReactor().seconds)
    parentEnd, childEnd = channelPair()
    link = WorkerLink(dispatcher, parentEnd, theReactor(), "stuck child")
    served = dispatcher.addRoute("served")
    dispatcher.join(served, link)
    fill(link.channel)
    client, sent = tcpConnection()
    try:
        dispatcher.submit(served, sent)
        assert dispatcher.dropAll("the grace period ended") == 0
        childEnd.close()  # the stuck child is killed
        await eventually(lambda: link.lost)
        assert dispatcher.dropped == 1 and not dispatcher.held and not served.waiting
        assert client.recv(1) == b""
    finally:
        client.close()
        childEnd.close()
        link.close()
