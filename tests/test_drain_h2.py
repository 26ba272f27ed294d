"""
HTTP/2 connections drain with a GOAWAY when a cluster worker stops: the
streams in progress finish, then the connection closes (an idle one at
once), and a stream the client opened as the GOAWAY crossed it is refused
(C{REFUSED_STREAM}), never served.  On a memory transport with a real
C{twisted.web} site, then with the installed C{twistd web} on
C{geckotls:...:workers=2}, SIGTERM, and two real HTTP/2 clients: the C{h2}
library over Twisted's TLS client, and C{curl --http2}.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, DataReceived, RemoteSettingsChanged, StreamEnded, StreamReset
from twisted.internet import defer, protocol, utils
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from twisted_serversock.ipc.worker import finishGracefully

from ._procs import PRIMARY_LISTENING, READY, TWISTD, Proc, spawn
from ._tlshelp import Certs, certs  # noqa: F401 (certs: a fixture)
from .conftest import eventually, theReactor, timeout

CURL = shutil.which("curl")


class H2Client(protocol.Protocol):
    """
    An HTTP/2 client on the C{h2} library: it records every event, each
    stream's body, and says when the server's GOAWAY came and when the
    connection closed.  C{h2} ends its own state machine on a GOAWAY
    (U{https://github.com/python-hyper/h2/issues/1181}); this client keeps
    it open, as nghttp2 (curl) does, to receive the streams the GOAWAY
    lets finish.
    """

    def __init__(self) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        machine: Any = self.conn.state_machine
        keepOpen = {(ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY): (None, ConnectionState.CLIENT_OPEN)}
        machine._transitions = {**machine._transitions, **keepOpen}
        self.events: list[Any] = []
        self.bodies: dict[int, bytes] = {}
        self.settled: defer.Deferred[None] = defer.Deferred()  # the server's SETTINGS came
        self.goAway: defer.Deferred[ConnectionTerminated] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        if data := self.conn.data_to_send():
            self.transport.write(data)  # type: ignore[union-attr]

    def request(self, path: str, method: str = "GET", body: bytes | None = None) -> int:
        """Open a stream for C{METHOD PATH} (with the first part of C{body}, if any): its id."""
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "https"), (":authority", "localhost")]
        self.conn.send_headers(stream, headers, end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream, body)
        self.flush()
        return stream

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.events.append(event)
            if isinstance(event, DataReceived):
                self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, RemoteSettingsChanged) and not self.settled.called:
                self.settled.callback(None)
            elif isinstance(event, ConnectionTerminated) and not self.goAway.called:
                self.goAway.callback(event)
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def ended(self, stream: int) -> bool:
        return any(isinstance(e, StreamEnded) and e.stream_id == stream for e in self.events)

    def index(self, kind: type, stream: int | None = None) -> int:
        """Where the first event of C{kind} (on C{stream}) is in L{events}."""
        found = [i for i, e in enumerate(self.events) if isinstance(e, kind) and stream in (None, getattr(e, "stream_id", None))]
        assert found, f"no {kind.__name__} (stream {stream}) in {self.events}"
        return found[0]


# ----------------------------------------------------------------------
# A twisted.web site on a memory transport (its HTTP/2 connection sends
# data a reactor turn a frame, on the running reactor).


class Held(Resource):
    """Answers each request when the test says (L{finish}), with its body."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET

    def finish(self, request: Any) -> None:
        request.write(b"answered after reading " + request.content.read())
        request.finish()


class H2Transport(StringTransport):
    """A memory transport on which ALPN chose h2."""

    negotiatedProtocol = b"h2"


def _site() -> tuple[Held, Any, H2Transport, H2Client, StringTransport]:
    """A site's protocol on a memory transport, an HTTP/2 client on another, preface and settings exchanged."""
    held = Held()
    server, transport = Site(held, timeout=None).buildProtocol(None), H2Transport()
    client, clientTransport = H2Client(), StringTransport()
    server.makeConnection(transport)
    client.makeConnection(clientTransport)
    _pump(server, transport, client, clientTransport)
    return held, server, transport, client, clientTransport


def _pump(server: Any, transport: StringTransport, client: H2Client, clientTransport: StringTransport) -> None:
    """Deliver what each side wrote to the other until neither writes more."""
    while transport.value() or clientTransport.value():
        toServer, toClient = clientTransport.value(), transport.value()
        clientTransport.clear()
        transport.clear()
        if toServer:
            server.dataReceived(toServer)
        if toClient:
            client.dataReceived(toClient)


async def _pumpUntil(predicate: Any, *parts: Any) -> None:
    """Pump as the site's HTTP/2 sending loop (a reactor turn a frame) writes, until C{predicate()}."""

    def pumped() -> bool:
        _pump(*parts)
        return bool(predicate())

    await eventually(pumped)


@pytest_twisted.ensureDeferred
async def test_idleHTTP2ConnectionGetsGoAwayAndCloses() -> None:
    """
    An HTTP/2 connection with no stream in progress gets a GOAWAY
    (C{NO_ERROR}, last stream 0) and is closed at once.
    """
    held, server, transport, client, clientTransport = _site()
    finishGracefully(server)
    assert transport.disconnecting
    _pump(server, transport, client, clientTransport)
    goAway = client.events[client.index(ConnectionTerminated)]
    assert (goAway.error_code, goAway.last_stream_id) == (ErrorCodes.NO_ERROR, 0)
    server.connectionLost(None)


@pytest_twisted.ensureDeferred
async def test_streamsFinishAfterGoAwayAndNewOnesAreRefused() -> None:
    """
    A GOAWAY names the last stream received; that stream goes on (the rest
    of its request body is read, its response is sent whole) and the
    connection closes after it.  A stream the client opened as the GOAWAY
    crossed it is reset with C{REFUSED_STREAM}, never reaching the site.
    """
    held, server, transport, client, clientTransport = _site()
    parts = (server, transport, client, clientTransport)
    upload = client.request("/upload", "POST", b"first half, ")
    _pump(*parts)
    finishGracefully(server)
    crossing = client.request("/crossing")  # sent before the GOAWAY reaches the client
    _pump(*parts)
    goAway = client.events[client.index(ConnectionTerminated)]
    assert (goAway.error_code, goAway.last_stream_id) == (ErrorCodes.NO_ERROR, upload)
    reset = client.events[client.index(StreamReset, crossing)]
    assert reset.error_code == ErrorCodes.REFUSED_STREAM
    assert not transport.disconnecting
    client.conn.send_data(upload, b"second half", end_stream=True)
    client.flush()
    _pump(*parts)
    assert [request.path for request in held.requests] == [b"/upload"]
    held.finish(held.requests[0])
    await _pumpUntil(lambda: transport.disconnecting, *parts)
    assert client.bodies[upload] == b"answered after reading first half, second half"
    assert client.index(ConnectionTerminated) < client.index(StreamEnded, upload)
    assert transport.disconnecting
    server.connectionLost(None)


# ----------------------------------------------------------------------
# The installed twistd web, workers=2, real clients.

#: C{/held.rpy}: logs that it started, answers once the file its C{?until=}
#: names exists ("done by PID").
HELD_RPY = """\
import os

from twisted.internet import task
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

log = Logger()


class Held(Resource):
    isLeaf = True

    def render_GET(self, request):
        until = request.args[b"until"][0].decode()
        log.info("held request started")

        def check():
            if os.path.exists(until):
                poll.stop()
                request.write(b"done by %d" % os.getpid())
                request.finish()

        poll = task.LoopingCall(check)
        poll.start(0.05)
        request.notifyFinish().addErrback(lambda _: poll.running and poll.stop())
        return NOT_DONE_YET


resource = Held()
"""


@pytest.fixture
def site() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="/tmp/drh2")
    os.chmod(d, 0o755)
    with open(os.path.join(d, "held.rpy"), "w") as f:
        f.write(HELD_RPY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _web(site: str, certs: Certs) -> tuple[Proc, int]:
    """C{twistd web} on C{geckotls:...:workers=2:grace=60}, once both workers serve; it and its port."""
    key = certs["server.pem"].replace(":", "\\:")
    listen = f"geckotls:port=0:loopback=1:workers=2:grace=60:privateKey={key}"
    proc = spawn([*TWISTD, "-n", "--pidfile=", "--logfile=-", "web", "--listen", listen, "--path", site], site)
    port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
    await proc.waitFor(READY + r"[\s\S]*" + READY)
    return proc, port


async def _h2(port: int, certs: Certs) -> H2Client:
    """An HTTP/2 connection (ALPN h2, the server's settings received)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    with open(certs["cert.pem"]) as f:
        options = optionsForClientTLS("localhost", Certificate.loadPEM(f.read()), acceptableProtocols=[b"h2"])
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(theReactor(), "127.0.0.1", port))
    client: H2Client = await timeout(endpoint.connect(protocol.Factory.forProtocol(H2Client)))
    await timeout(client.settled)
    assert client.transport.negotiatedProtocol == b"h2"  # type: ignore[union-attr]
    return client


async def _ended(proc: Proc) -> None:
    """The cluster exits 0 long before its 60 s grace period would end, aborting nothing."""
    code = await timeout(proc.ended, 25)
    assert code == 0 and proc.signal is None, proc.output
    assert "aborting" not in proc.output and "Traceback" not in proc.output, proc.output


@pytest.mark.skipif(CURL is None, reason="curl is not installed (.ci/run installs it)")
@pytest_twisted.ensureDeferred
async def test_streamInProgressFinishesAfterGoAway(site: str, certs: Certs) -> None:
    """
    SIGTERM while an HTTP/2 stream waits for its response: the client gets
    a GOAWAY (C{NO_ERROR}, that stream the last), then the whole response,
    then the connection closes; curl's stream on another connection gets
    its whole body too; the cluster exits 0 without aborting a connection.
    """
    proc, port = await _web(site, certs)
    until = os.path.join(site, "answer")
    client = await _h2(port, certs)
    stream = client.request(f"/held.rpy?until={until}")
    url = f"https://127.0.0.1:{port}/held.rpy?until={until}"
    curl = utils.getProcessOutputAndValue(CURL or "curl", ["-sk", "--http2", "--max-time", "30", "-w", " %{http_version}", url])
    await proc.waitFor(r"held request started[\s\S]*held request started")
    proc.transport.signalProcess(signal.SIGTERM)
    goAway = await timeout(client.goAway, 20)
    assert (goAway.error_code, goAway.last_stream_id) == (ErrorCodes.NO_ERROR, stream)
    assert not client.ended(stream) and not client.closed.called
    open(until, "w").close()
    await timeout(client.closed, 20)
    assert client.bodies[stream].startswith(b"done by ") and client.ended(stream), client.events
    assert client.index(ConnectionTerminated) < client.index(DataReceived, stream)
    out, err, code = await timeout(curl, 30)
    assert code == 0 and out.startswith(b"done by ") and out.endswith(b" 2"), (out, err)
    await _ended(proc)


@pytest_twisted.ensureDeferred
async def test_idleHTTP2ConnectionsCloseAtOnce(site: str, certs: Certs) -> None:
    """
    SIGTERM with two idle HTTP/2 connections, one that never sent a
    request and one whose request was answered: each gets a GOAWAY naming
    the last stream it opened and is closed by the server, and the cluster
    exits 0 without waiting for its 60 s grace period to abort them.
    """
    proc, port = await _web(site, certs)
    until = os.path.join(site, "answer")
    open(until, "w").close()
    fresh, used = await _h2(port, certs), await _h2(port, certs)
    stream = used.request(f"/held.rpy?until={until}")
    await eventually(lambda: used.ended(stream))
    proc.transport.signalProcess(signal.SIGTERM)
    for client, last in ((fresh, 0), (used, stream)):
        goAway = await timeout(client.goAway, 20)
        assert (goAway.error_code, goAway.last_stream_id) == (ErrorCodes.NO_ERROR, last)
        await timeout(client.closed, 20)
        assert isinstance(client.events[-1], ConnectionTerminated), client.events
    await _ended(proc)
