"""
A worker's log events reach its parent's log observers as they were
logged - level, namespace, format, fields, traceback - with the worker's
number and pid as their system: through the wire format (L{logObserver} to
L{LogRelay}), the pool's batched reads, and the installed C{twistd} whose
C{--logger} is a JSON observer.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure

from twisted_serversock.ipc import logs
from twisted_serversock.ipc.logs import LogRelay, logObserver
from twisted_serversock.ipc.slots import ENDED, LOG_BATCH, LOG_PIPE, Slot, Worker

from ._procs import PRIMARY_LISTENING, TWISTD, spawn, stopCleanly
from .conftest import connect, eventually, timeout


class Holder:
    """An object a format reads an attribute of (JSON cannot carry it)."""

    name = "the holder"

    def __repr__(self) -> str:
        return "<Holder>"


def sent(monkeypatch: pytest.MonkeyPatch, log: Any) -> bytes:
    """What a worker's L{logObserver} writes for what C{log(logger)} logs."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stream)
    log(Logger(namespace="myapp.orders", observer=logObserver))
    return stream.getvalue().encode("utf-8")


def relayed(data: bytes, childFD: int = 2, reads: int = 1) -> list[dict[str, Any]]:
    """The events a parent's L{LogRelay} publishes for C{data}, read in C{reads} pieces."""
    events: list[dict[str, Any]] = []
    relay = LogRelay("worker 1 pid 4242", events.append)
    size = -(-len(data) // reads)
    for start in range(0, len(data), size):
        relay.dataReceived(childFD, data[start : start + size])
    relay.flush()
    return events


def test_anErrorArrivesAsAnErrorWithItsFields(monkeypatch: pytest.MonkeyPatch) -> None:
    """Level, namespace, format and fields arrive; the worker is the system."""
    data = sent(monkeypatch, lambda log: log.error("order {order} failed for {who}", order=42, who="ann"))
    [event] = relayed(data, reads=7)
    assert event["log_level"] is LogLevel.error
    assert event["log_namespace"] == "myapp.orders"
    assert (event["log_format"], event["order"], event["who"]) == ("order {order} failed for {who}", 42, "ann")
    assert event["log_system"] == "worker 1 pid 4242"
    assert formatEvent(event) == "order 42 failed for ann"
    assert isinstance(event["log_time"], float)


def test_aFailureKeepsItsTraceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(log: Logger) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("dividing in {where}", where="render")

    [event] = relayed(sent(monkeypatch, fail))
    assert event["log_level"] is LogLevel.critical
    assert formatEvent(event) == "dividing in render"
    traceback = event["log_failure"].getTraceback()
    assert "ZeroDivisionError" in traceback and "1 / 0" in traceback, traceback


def test_objectsAreFormattedInTheWorker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field JSON cannot carry is formatted as the worker would have."""
    data = sent(monkeypatch, lambda log: log.warn("{holder.name} is {holder!r} ({raw})", holder=Holder(), raw=b"x"))
    [event] = relayed(data)
    assert (event["log_level"], formatEvent(event)) == (LogLevel.warn, "the holder is <Holder> (b'x')")


def test_theWorkersOwnSystemFollowsItsNumber(monkeypatch: pytest.MonkeyPatch) -> None:
    data = sent(monkeypatch, lambda log: log.info("GET /", log_system="HTTPChannel,0,127.0.0.1"))
    [event] = relayed(data)
    assert event["log_system"] == "worker 1 pid 4242 HTTPChannel,0,127.0.0.1"


def test_theWorkersLinesArriveInOrder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many events in reads cut anywhere: each once, in order."""
    data = sent(monkeypatch, lambda log: [log.info("line {n}", n=n) for n in range(500)])
    for reads in (1, 3, 1000):
        assert [event["n"] for event in relayed(data, reads=reads)] == list(range(500))


def test_textIsRelayedToo() -> None:
    """
    What the program writes itself arrives as text: at info from its
    standard output, at warn from its standard error; a line without its
    end when the worker ends, and a broken event, are not lost.
    """
    [out] = relayed(b"hello\n", childFD=1)
    assert (out["log_level"], formatEvent(out), out["log_system"]) == (LogLevel.info, "hello", "worker 1 pid 4242")
    events = relayed(b'Traceback (most recent call last):\n\x1e{"log_time": \n\x1e[1]\n\x1e{"log_time": 1, "log_failure": 5}\nlast words', reads=5)
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (LogLevel.warn, "Traceback (most recent call last):"),
        (LogLevel.warn, '\x1e{"log_time":'),
        (LogLevel.warn, "\x1e[1]"),
        (LogLevel.warn, '\x1e{"log_time": 1, "log_failure": 5}'),
        (LogLevel.warn, "last words"),
    ]


def test_outputAndErrorAreJoinedApart() -> None:
    """Half lines of standard output and error do not mix."""
    events: list[dict[str, Any]] = []
    relay = LogRelay("w", events.append)
    relay.dataReceived(1, b"out ")
    relay.dataReceived(2, b"err ")
    relay.dataReceived(1, b"line\n")
    relay.dataReceived(2, b"line\n")
    assert [formatEvent(e) for e in events] == ["out line", "err line"]


def test_anEventNotFromALoggerGetsItsTime(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stream)
    logObserver({"log_format": "{e}", "e": ValueError("bad start-up message"), "log_level": LogLevel.critical})
    [event] = relayed(stream.getvalue().encode())
    assert (event["log_level"], formatEvent(event)) == (LogLevel.critical, "bad start-up message")


def test_theUsualEventIsSmall(monkeypatch: pytest.MonkeyPatch) -> None:
    """The objects that logged an event are not sent; its level by name."""
    data = sent(monkeypatch, lambda log: log.info("{a}", a=1))
    sentEvent = json.loads(data[1:])
    assert "log_logger" not in sentEvent and "log_flattened" not in sentEvent
    assert sentEvent["log_level"] == {"name": "info"}
    assert logs._decode(data[1:].rstrip()) is not None


class PausableTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pipes: dict[int, Any] = {}

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


def test_aWorkersErrorPipeHoldsABatch() -> None:
    """The pipe of a worker's standard error is widened for L{LOG_BATCH}'s waits."""
    reader, writer = os.pipe()
    try:
        transport = PausableTransport()
        transport.pipes[2] = io.FileIO(reader, closefd=False)
        Worker(Slot(1), None, 0.0, 0, lambda worker, reason: None).makeConnection(transport)  # type: ignore[arg-type]
        assert fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ) == LOG_PIPE
    finally:
        os.close(reader)
        os.close(writer)


def test_thePoolReadsAWorkersOutputInBatches() -> None:
    """
    After a read the parent reads the worker's output again only
    L{LOG_BATCH} later: what it logs meanwhile comes in one read.
    """
    clock = Clock()
    events: list[dict[str, Any]] = []
    worker = Worker(Slot(1), None, 0.0, 0, lambda worker, reason: None, clock)  # type: ignore[arg-type]
    worker._logs = LogRelay("w", events.append)
    transport = PausableTransport()
    worker.makeConnection(transport)  # type: ignore[arg-type]
    worker.childDataReceived(1, b"one\n")
    worker.childDataReceived(1, b"two\n")  # (already paused: no second pause)
    assert transport.calls == ["pause"] and [formatEvent(e) for e in events] == ["one", "two"]
    clock.advance(LOG_BATCH)
    assert transport.calls == ["pause", "resume"]
    worker.childDataReceived(1, b"three")
    worker.state = ENDED
    clock.advance(LOG_BATCH)
    assert transport.calls == ["pause", "resume", "pause"]
    worker.processEnded(Failure(Exception("ended")))
    assert [formatEvent(e) for e in events] == ["one", "two", "three"]


OBSERVER = """\
import json
import os
import sys

from twisted.logger import eventAsJSON, formatEventAsClassicLogText


def observer():
    # Called by twistd in the primary only (a worker imports this module
    # with the command line, and sends its events to the primary).
    out = open("events.json", "a")

    def observe(event):
        out.write(json.dumps({"observer_pid": os.getpid(), "event": json.loads(eventAsJSON(event))}) + "\\n")
        out.flush()
        sys.__stdout__.write(formatEventAsClassicLogText(event) or "")
        sys.__stdout__.flush()

    return observe
"""

ORDER_RPY = """\
from twisted.logger import Logger
from twisted.web.resource import Resource

log = Logger(namespace="myapp.orders")


class Order(Resource):
    isLeaf = True

    def render_GET(self, request):
        log.error("order {order} failed", order=42)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("while rendering {path}", path="/order.rpy")
        return b"logged"


resource = Order()
"""


def readEvents(site: str) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(site, "events.json")) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []


@pytest_twisted.ensureDeferred
async def test_twistdsJSONLoggerGetsTheWorkersEvents(workdir: str) -> None:
    """
    C{twistd --logger} pointing at a JSON observer, C{twistd web} with
    C{workers=2}: the observer runs in the primary only and gets the
    workers' events with their level, namespace, fields and traceback,
    the worker as their system; the access log's lines arrive too.
    """
    site = workdir
    with open(os.path.join(site, "jsonlog.py"), "w") as f:
        f.write(OBSERVER)
    os.makedirs(os.path.join(site, "www"))
    with open(os.path.join(site, "www", "order.rpy"), "w") as f:
        f.write(ORDER_RPY)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, os.environ.get("PYTHONPATH", "")]))
    argv = [*TWISTD, "-n", "--pidfile=", "--logger=jsonlog.observer", "web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", "www"]
    proc = spawn(argv, site, env)
    primary = proc.transport.pid
    try:
        port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
        await proc.waitFor(r"Worker 2 \(pid \d+\) is ready")
        client = await connect(port)
        client.transport.write(b"GET /order.rpy HTTP/1.0\r\n\r\n")
        assert (await timeout(client.closed)).endswith(b"logged")
        await eventually(lambda: any("GET /order.rpy" in json.dumps(e) for e in readEvents(site)))
    finally:
        status = await stopCleanly(proc)
    assert status == 0, proc.output
    records = readEvents(site)
    assert {r["observer_pid"] for r in records} == {primary}
    events = [r["event"] for r in records]
    [error] = [e for e in events if e.get("log_format") == "order {order} failed"]
    assert error["log_level"]["name"] == "error" and error["log_namespace"] == "myapp.orders" and error["order"] == 42
    system = re.fullmatch(r"worker [12] pid (\d+)", error["log_system"])
    assert system and int(system.group(1)) != primary, error
    [failure] = [e for e in events if e.get("log_format") == "while rendering {path}"]
    assert failure["log_level"]["name"] == "critical" and failure["log_system"] == error["log_system"]
    assert "ZeroDivisionError" in str(failure["log_failure"]), failure
    [access] = [e for e in events if "GET /order.rpy" in json.dumps(e)]
    assert access["log_system"].startswith(error["log_system"]), access
    # The observer's text, on the primary's standard output: one prefix.
    line = next(line for line in proc.output.splitlines() if "order 42 failed" in line)
    assert re.fullmatch(r"\S+ \[worker [12] pid \d+\] order 42 failed", line), line
    assert "Traceback" in proc.output and "ZeroDivisionError" in proc.output


