"""
Cluster mode's primary and worker driven directly, on a memory reactor
with its clock, over real channels: no process is started (the primary's
workers are stand-ins whose channel ends this test holds), so every message
and every transition is the test's to make.

 - A worker's program that stops listening and listens again on the same
   description serves the primary's new listener (its route), not the one
   the worker was told of when it started.
 - A worker asking for a listener the primary had and has closed gets a
   closed port; the cluster goes on.
 - A worker gets connections of the listeners it attaches to only once it
   is ready: a reload's successor attaches while its predecessor serves.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from twisted_serversock.cluster.primary import ClusterPrimary, PrimaryPort
from twisted_serversock.cluster.worker import ClusterWorker, encodeAddress
from twisted_serversock.ipc.channel import channelPair

from ._memoryworkers import StandInReactor, controls, primary, pump, send  # noqa: F401 (primary: a fixture)



class _Description:
    """
    What a worker's C{listen} needs of an endpoint.
    """

    def __init__(self, description: str) -> None:
        self._description = description

    def clusterDescription(self) -> str:
        return self._description


# ----------------------------------------------------------------------
# The worker.


@pytest.fixture
def worker() -> Iterator[tuple[ClusterWorker, socket.socket, MemoryReactorClock]]:
    """
    A cluster worker told at start-up that the primary has listener
    C{"D"} on route 1; the test holds the primary's end of its channel.
    """
    reactor = MemoryReactorClock()
    ours, primaryEnd = channelPair()
    listeners = {"D": [1, encodeAddress(IPv4Address("TCP", "127.0.0.1", 8080))]}
    startup = {"worker": "cluster", "index": 1, "heartbeat": 5.0, "argv": ["program"], "listeners": listeners}
    clusterWorker = ClusterWorker(reactor, ours, startup)
    yield clusterWorker, primaryEnd, reactor
    clusterWorker.link.channel.loseConnection()
    primaryEnd.close()


def test_relistenServesThePrimarysNewRoute(worker: tuple[ClusterWorker, socket.socket, MemoryReactorClock]) -> None:
    """
    The program's first listen on a description the primary had at the
    worker's start attaches at once; after it stops listening, a second
    listen waits for the primary, whose new listener has a new route:
    connections of that route get the program's factory.
    """
    clusterWorker, primaryEnd, reactor = worker
    factory = Factory.forProtocol(Protocol)
    first = clusterWorker.listen(_Description("D"), factory)
    port = first.result
    assert port.route == 1 and clusterWorker.factoryFor(1) is factory
    assert [f["description"] for f in controls(primaryEnd, "cluster-attach")] == ["D"]
    port.stopListening()
    assert [f["route"] for f in controls(primaryEnd, "cluster-detach")] == [1]
    again = clusterWorker.listen(_Description("D"), factory)
    assert not again.called  # the primary answers
    [request] = controls(primaryEnd, "cluster-attach")
    send(primaryEnd, "cluster-attached", id=request["id"], route=7, address=encodeAddress(IPv4Address("TCP", "127.0.0.1", 8080)))
    pump(reactor)
    assert again.called and again.result.route == 7
    assert clusterWorker.factoryFor(7) is factory


def test_primaryAnswerCorrectsAStartUpRoute(worker: tuple[ClusterWorker, socket.socket, MemoryReactorClock]) -> None:
    """
    If the primary listened anew between the worker's start and its first
    listen, the primary's answer names the route the worker serves.
    """
    clusterWorker, primaryEnd, reactor = worker
    factory = Factory.forProtocol(Protocol)
    port = clusterWorker.listen(_Description("D"), factory).result
    [request] = controls(primaryEnd, "cluster-attach")
    send(primaryEnd, "cluster-attached", id=request["id"], route=9, address=encodeAddress(port.getHost()))
    pump(reactor)
    assert port.route == 9 and clusterWorker.factoryFor(9) is factory and clusterWorker.factoryFor(1) is None


def test_closedListenerIsAClosedPort(worker: tuple[ClusterWorker, socket.socket, MemoryReactorClock]) -> None:
    """
    A listener the primary has closed: the program's C{listen} succeeds
    with a port that gets no connection.
    """
    clusterWorker, primaryEnd, reactor = worker
    factory = Factory.forProtocol(Protocol)
    d = clusterWorker.listen(_Description("E"), factory)
    [request] = controls(primaryEnd, "cluster-attach")
    send(primaryEnd, "cluster-closed", id=request["id"])
    pump(reactor)
    port = d.result
    assert not port.listening and port.route is None
    port.stopListening()
    assert controls(primaryEnd, "cluster-detach") == []


# ----------------------------------------------------------------------
# The primary.


def test_workerGetsConnectionsOnlyOnceReady(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A worker that attaches before it is ready (its program listens before
    its reactor runs) joins the listener's route when it says it is ready.
    """
    clusterPrimary, reactor, port = primary
    [child] = reactor.children
    send(child, "cluster-attach", id=1, description=port.description)
    pump(reactor)
    assert [f["route"] for f in controls(child, "cluster-attached")] == [port.route.id]
    assert port.route.links == []
    send(child, "ready", pid=1001)
    pump(reactor)
    assert len(port.route.links) == 1


def test_reloadSuccessorJoinsOnceReady(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A reload's successor that has attached but is not ready gets no
    connection: its predecessor alone serves until the successor is ready,
    then the successor alone.
    """
    clusterPrimary, reactor, port = primary
    [old] = reactor.children
    send(old, "cluster-attach", id=1, description=port.description)
    send(old, "ready", pid=1001)
    pump(reactor)
    [oldLink] = port.route.links
    assert clusterPrimary.pool is not None
    clusterPrimary.pool.reload()
    [_, new] = reactor.children
    send(new, "cluster-attach", id=1, description=port.description)
    pump(reactor)
    assert port.route.links == [oldLink]
    send(new, "ready", pid=1002)
    pump(reactor)
    assert len(port.route.links) == 1 and port.route.links[0] is not oldLink
    assert [f["grace"] for f in controls(old, "stop")] == [10.0]


def test_closedListenerDoesNotEndTheCluster(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A worker (restarted, or late) asking for a listener the primary had and
    has closed gets C{cluster-closed}; the cluster goes on.  A description
    the primary never had is still a program error.
    """
    clusterPrimary, reactor, port = primary
    [child] = reactor.children
    port.stopListening()
    send(child, "cluster-attach", id=1, description=port.description)
    pump(reactor)
    assert [f["id"] for f in controls(child, "cluster-closed")] == [1]
    assert not clusterPrimary.failed
    send(child, "cluster-attach", id=2, description="never")
    pump(reactor)
    assert [f["id"] for f in controls(child, "cluster-refused")] == [2]
    assert clusterPrimary.failed


def test_workerStartsAsEveryWorkerDoes(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A cluster worker is started like a C{twistd serversock} worker: the
    same worker module, told by its start-up message (the first on its
    channel) its heartbeat, derived from the pool's timeout (the default:
    every 5 s), and the primary's listeners; its one C{ready} message is
    what tells the primary that a worker's program could start.
    """
    from twisted_serversock.ipc.spawn import TIMEOUT, heartbeatFor
    from twisted_serversock.ipc.spawn import readStartup

    clusterPrimary, reactor, port = primary
    [(argv, env)] = reactor.commands
    assert argv[-2:] == ["-m", "twisted_serversock.ipc"]
    started = readStartup(reactor.children[0], timeout=1)
    assert started["worker"] == "cluster" and started["heartbeat"] == heartbeatFor(TIMEOUT) == 5.0
    assert started["listeners"] == {port.description: [port.route.id, encodeAddress(port.getHost())]}
    assert clusterPrimary.pool is not None and not clusterPrimary.pool.everReady
    [child] = reactor.children
    send(child, "ready", pid=1001)
    pump(reactor)
    assert clusterPrimary.pool.everReady


class _HandOver:
    """A TLS listener's files as the primary holds them (see C{twisted_serversock._tlsfiles.HandOver})."""

    def __init__(self) -> None:
        self.held = {"/k.pem": b"key 1"}
        self.refreshes = 0

    def files(self) -> dict[str, bytes]:
        return dict(self.held)

    def refresh(self) -> bool:
        self.refreshes += 1
        self.held = {"/k.pem": b"key %d" % (self.refreshes + 1)}
        return True


def test_primaryHandsTLSFilesToItsWorkers(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    Each worker's start-up message carries the files its primary read for
    each TLS listener (in base64, by description): the bytes it holds, for
    every worker it starts; a reload (SIGHUP) reads them again, once, for
    the workers it starts.
    """
    import base64

    from twisted_serversock.ipc.spawn import readStartup

    clusterPrimary, reactor, port = primary
    assert readStartup(reactor.children[0], timeout=1)["files"] == {}
    handOver = _HandOver()
    clusterPrimary.handOvers[port.description] = handOver
    assert clusterPrimary.pool is not None
    clusterPrimary.pool.addWorker()

    def encoded(data: bytes) -> dict[str, dict[str, str]]:
        return {port.description: {"/k.pem": base64.b64encode(data).decode()}}

    assert readStartup(reactor.children[-1], timeout=1)["files"] == encoded(b"key 1")
    assert handOver.refreshes == 0
    clusterPrimary.pool.reload()
    assert handOver.refreshes == 1
    for child in reactor.children[-2:]:
        assert readStartup(child, timeout=1)["files"] == encoded(b"key 2")


def test_tlsFilesTooLargeForTheStartupMessage(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A listener whose TLS files would not fit in a worker's start-up
    message is refused when it listens, in one line saying so and what to
    do; nothing is bound for it.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.error import CannotListenError

    from twisted_serversock.ipc.spawn import FILES_ROOM

    clusterPrimary, reactor, port = primary
    endpoint = serverFromString(reactor, "gecko:port=0:interface=127.0.0.1:workers=1")
    endpoint.handOver = _HandOver()
    endpoint.handOver.held = {"/sni/a.pem": b"x" * FILES_ROOM}
    failure = clusterPrimary.listen(endpoint, Factory.forProtocol(Protocol), 1).result
    assert isinstance(failure.value, CannotListenError), failure
    assert "the TLS files of the listeners take" in str(failure.value) and "fewer sniDir hosts" in str(failure.value)
    assert list(clusterPrimary.dispatcher.routes.values()) == [port.route]


def test_listenersNotServedKeepNoRouteNorFiles(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A listener whose bind fails (its port is taken) is refused with the
    bind's own C{CannotListenError}, and keeps neither a route nor TLS files
    for the workers; a listener that stops listening gives its files up too.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.error import CannotListenError

    clusterPrimary, reactor, port = primary
    endpoint = serverFromString(reactor, f"gecko:port={port.getHost().port}:loopback=1:workers=1")
    endpoint.handOver = _HandOver()
    failure = clusterPrimary.listen(endpoint, Factory.forProtocol(Protocol), 1).result
    assert isinstance(failure.value, CannotListenError) and "ADDRESS_IN_USE" in str(failure.value), failure
    assert list(clusterPrimary.dispatcher.routes.values()) == [port.route] and clusterPrimary.handOvers == {}
    clusterPrimary.handOvers[port.description] = _HandOver()
    port.stopListening()
    assert clusterPrimary.handOvers == {} and clusterPrimary.dispatcher.routes == {}


def test_listenerWhoseBindRaisesAnythingKeepsNoFiles(
    primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Whatever binding raises (not only C{CannotListenError}), the listener's
    TLS files are not kept: no later worker's start-up message carries keys
    for a listener that does not exist.
    """
    from twisted.internet.endpoints import serverFromString

    from twisted_serversock._listeningport import GeckoListeningPort

    clusterPrimary, reactor, port = primary

    def broken(self: object) -> None:
        raise OSError("a bind that fails some other way")

    monkeypatch.setattr(GeckoListeningPort, "startListening", broken)
    endpoint = serverFromString(reactor, "gecko:port=0:interface=127.0.0.1:workers=1")
    endpoint.handOver = _HandOver()
    failure = clusterPrimary.listen(endpoint, Factory.forProtocol(Protocol), 1).result
    assert isinstance(failure.value, OSError) and "fails some other way" in str(failure.value), failure
    assert clusterPrimary.handOvers == {} and list(clusterPrimary.dispatcher.routes.values()) == [port.route]


def test_reloadCertificatesInThePrimarySaysTheWorkersServeTLS(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    C{reloadCertificates()} on what a C{geckotls:...:workers=N} listen
    returns in the primary reloads nothing there (the primary serves no
    TLS: its workers do): it says so in one line, naming SIGHUP, and
    returns C{False} instead of reporting a reload no worker sees.
    """
    from twisted.logger import globalLogPublisher

    from twisted_serversock.tlsendpoints import TLSListeningPort

    _, _, port = primary
    replaced: list[object] = []

    class Creator:
        def replace(self, contextFactory: object) -> None:
            replaced.append(contextFactory)

    def reader() -> object:
        raise AssertionError("the primary read the files for nothing")

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert TLSListeningPort(port, Creator(), reader, "geckotls:0:workers=1").reloadCertificates() is False
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert replaced == []
    [event] = [e for e in events if e.get("log_namespace") == "twisted_serversock.tlsendpoints"]
    assert event["description"] == "geckotls:0:workers=1" and "SIGHUP" in event["log_format"]


def test_workerFindsTheFilesHandedOver() -> None:
    """
    In a worker, the TLS endpoints find the bytes its parent handed over
    for their description; elsewhere, none (they read the disk).
    """
    import base64

    from twisted_serversock import _tlsfiles

    assert _tlsfiles.handedOver("D") is None
    try:
        _tlsfiles.receive({"D": {"/k.pem": base64.b64encode(b"\x00key").decode()}})
        assert _tlsfiles.handedOver("D") == {"/k.pem": b"\x00key"}
        assert _tlsfiles.handedOver("E") is None
    finally:
        _tlsfiles.receive({})


# ----------------------------------------------------------------------
# The registry the endpoints ask.


def test_registryGivesEachReactorOneEnd() -> None:
    """
    The endpoints of one reactor reach one primary (made on first use, its
    exit status registered once); a process told it is a cluster worker
    reaches its worker instead, whose number the program can ask.
    """
    from twisted_serversock.cluster import Registry

    registered: list[object] = []
    registry = Registry(atExit=registered.append)
    first, second = MemoryReactorClock(), MemoryReactorClock()
    primaryEnd = registry.endFor(first)
    assert isinstance(primaryEnd, ClusterPrimary) and registry.endFor(first) is primaryEnd
    assert registry.endFor(second) is not primaryEnd and len(registered) == 2
    assert registry.workerIndex() == 0
    ours, theirs = channelPair()
    startup = {"worker": "cluster", "index": 3, "heartbeat": 5.0, "argv": ["program"], "listeners": {}}
    registry.becomeWorker(ours, startup)
    third = MemoryReactorClock()
    workerEnd = registry.endFor(third)
    try:
        assert isinstance(workerEnd, ClusterWorker) and workerEnd.index == registry.workerIndex() == 3
        assert registry.endFor(third) is workerEnd and registry.endFor(first) is primaryEnd
    finally:
        workerEnd.link.channel.loseConnection()
        theirs.close()


def test_failedClusterAsksForExitStatusOne(primary: tuple[ClusterPrimary, StandInReactor, PrimaryPort]) -> None:
    """
    A cluster that stops on a program error asks for exit status 1; one
    that did not leaves the program's own.
    """
    clusterPrimary, reactor, port = primary
    assert clusterPrimary.exitStatus() is None
    clusterPrimary.fail("the test's reason")
    assert clusterPrimary.exitStatus() == 1
