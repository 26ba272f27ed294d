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
import select
import signal
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import (
    FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, LogPublisher, formatEvent, jsonFileLogObserver, textFileLogObserver,
)  # fmt: skip
from twisted.python.logfile import LogFile
from twisted.python.failure import Failure

from twisted_serversock.ipc import logs
from twisted_serversock.ipc.logs import LogRelay, logObserver
from twisted_serversock.ipc.slots import ENDED, LOG_BATCH, LOG_PIPE, Slot, Worker

from ._memoryworkers import send
from ._procs import PRIMARY_LISTENING, TWIST, TWISTD, spawn, stopCleanly
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




def test_theParentsTextLogToADescriptorIsPassedOn(tmp_path: Any) -> None:
    """
    C{twistd -n}'s and C{twist --log-format=text}'s log (text to a
    descriptor, alone, perhaps behind a level filter) is one the workers
    write to themselves; JSON, a rotating log file, a second observer or
    another filter is not.
    """
    reader, writer = os.pipe()
    with open(writer, "w", closefd=True) as out, open(tmp_path / "plain.log", "a") as plain:
        text = textFileLogObserver(out)
        destination = logs.directDestination(LogPublisher(text))
        assert destination == {"fd": writer, "encoding": out.encoding, "limit": select.PIPE_BUF}
        assert logs.directDestination(LogPublisher(textFileLogObserver(plain)))["limit"] > select.PIPE_BUF  # type: ignore[index]
        byLevel = FilteringLogObserver(text, [LogLevelFilterPredicate(LogLevel.warn)])
        assert logs.directDestination(LogPublisher(byLevel)) == destination
        # Workers that apply no filter of their own (twistd serversock's) must not write past it.
        assert logs.directDestination(LogPublisher(byLevel), filtered=False) is None
        rotating = LogFile.fromFullPath(str(tmp_path / "twistd.log"))
        others = [jsonFileLogObserver(out), textFileLogObserver(rotating), textFileLogObserver(out, timeFormat=None), FilteringLogObserver(text, [lambda e: True])]  # type: ignore[list-item]
        for observer in others:
            assert logs.directDestination(LogPublisher(observer)) is None, observer
        assert logs.directDestination(LogPublisher(text, lambda event: None)) is None
        rotating.close()
    os.close(reader)


def test_aWorkerWritesItsOwnLinesWhole(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A worker given its parent's log writes each event there as one line of
    the parent's text, with itself as the system, a failure's traceback in
    the same write; a line longer than one write may carry whole goes to
    the parent instead.
    """
    reader, writer = os.pipe()
    relayedText = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", relayedText)
    monkeypatch.setattr(logs, "LOG_FD", writer)
    monkeypatch.setattr(logs, "_direct", None)
    try:
        logs.writeOwnLines({"encoding": "utf-8", "limit": select.PIPE_BUF}, 3)
        log = Logger(namespace="myapp", observer=logObserver)
        log.error("order {order} failed", order=42)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("dividing", log_system="HTTPChannel,1,127.0.0.1")
        log.info("{big}", big="x" * select.PIPE_BUF)
        written = os.read(reader, 65536).decode()
    finally:
        os.close(reader)
        os.close(writer)
    system = f"worker 3 pid {os.getpid()}"
    first, second = written.split("\n", 1)
    assert re.fullmatch(rf"\S+ \[{system}\] order 42 failed", first), first
    assert second.startswith(f"{first[:first.index(' ')]} [{system} HTTPChannel,1,127.0.0.1] dividing\n\tTraceback"), second
    assert "ZeroDivisionError" in second and "x" * 100 not in written
    [big] = relayed(relayedText.getvalue().encode())
    assert formatEvent(big) == "x" * select.PIPE_BUF


@pytest.mark.parametrize(
    "log, error",
    [
        ({"encoding": "utf-8", "limit": 4096}, None),
        ({"encoding": "utf-8"}, "field 'log': missing field 'limit'"),
        ({"encoding": "utf-8", "limit": "4096"}, "field 'log': field 'limit' is '4096', not an integer"),
        ({"encoding": "no-such-codec", "limit": 4096}, "field 'log': no encoding 'no-such-codec'"),
        ([], "field 'log' is [], not an object"),
    ],
)
def test_theStartupMessageSaysWhereToLog(log: Any, error: str | None) -> None:
    """A worker's start-up message may pass its parent's log; a bad one is one line naming it."""
    from twisted_serversock.ipc.channel import channelPair
    from twisted_serversock.ipc.spawn import readStartup

    workerEnd, parentEnd = channelPair()
    try:
        send(parentEnd, "start", worker="cluster", index=1, heartbeat=1, argv=["p"], listeners={}, log=log)
        if error is None:
            assert readStartup(workerEnd, timeout=5)["log"] == log
        else:
            with pytest.raises(ValueError, match="^bad start-up message: " + re.escape(error) + "$"):
                readStartup(workerEnd, timeout=5)
    finally:
        workerEnd.close()
        parentEnd.close()


LINES_RPY = """\
from twisted.logger import Logger
from twisted.web.resource import Resource

log = Logger(namespace="myapp.lines")


class Lines(Resource):
    isLeaf = True

    def render_GET(self, request):
        tag = request.args[b"tag"][0].decode()
        for n in range(int(request.args[b"n"][0])):
            log.info("tag {tag} line {n}", tag=tag, n=n)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("failed {tag}", tag=tag)
        return b"done"


resource = Lines()
"""

#: A line of the text log (a time, the system, the text) or of a traceback in it.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\S+ \[[^\]]+\] .*|\t.*|")


async def request(port: int, *tags: str, n: int = 1) -> None:
    """C{lines.rpy} with each of C{tags}, one after the other on one connection."""
    client = await connect(port)
    for i, tag in enumerate(tags):
        client.transport.write(f"GET /lines.rpy?n={n}&tag={tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await eventually(lambda: client.received.count(b"done") == i + 1)
    client.transport.loseConnection()


@pytest.mark.parametrize("runner", ["twistd", "twist"])
@pytest_twisted.ensureDeferred
async def test_workersWriteTheirLinesToTheParentsStandardOutput(workdir: str, runner: str) -> None:
    """
    C{twistd -n} and C{twist --log-format=text} logging to standard output
    (a pipe here, as under Docker, Kubernetes or journald), C{workers=2}:
    each worker writes its own lines there, in the primary's format with
    the worker as their system, even while the primary is stopped
    (SIGSTOP); under load each worker's lines are all there, whole, in
    order, and a failure's traceback follows its line.
    """
    with open(os.path.join(workdir, "lines.rpy"), "w") as f:
        f.write(LINES_RPY)
    listen = ["web", "--listen", "gecko:port=0:loopback=1:workers=2", "--path", workdir]
    proc = spawn([*TWISTD, "-n", "--pidfile=", *listen] if runner == "twistd" else [*TWIST, *listen], workdir)
    primary = proc.transport.pid
    try:
        port = int((await proc.waitFor(PRIMARY_LISTENING)).group("port"))
        await proc.waitFor(r"Worker 2 \(pid \d+\) is ready")
        # A connection a worker already has: it is served, and logged, without the primary.
        client = await connect(port)
        client.transport.write(b"GET /lines.rpy?n=1&tag=first HTTP/1.1\r\nHost: x\r\n\r\n")
        await eventually(lambda: b"done" in client.received)
        os.kill(primary, signal.SIGSTOP)
        try:
            client.transport.write(b"GET /lines.rpy?n=3&tag=stopped HTTP/1.1\r\nHost: x\r\n\r\n")
            await proc.waitFor(r"\[worker [12] pid \d+\] tag stopped line 2\n")
        finally:
            os.kill(primary, signal.SIGCONT)
        client.transport.loseConnection()
        tags = [[f"c{c}r{r}" for r in range(3)] for c in range(8)]
        await timeout(defer.gatherResults([defer.ensureDeferred(request(port, *t, n=200)) for t in tags]), 60)
        await eventually(lambda: proc.output.count("GET /lines.rpy?n=200&") == 24)
    finally:
        status = await stopCleanly(proc)
    assert status == 0, proc.output[-3000:]
    lines = proc.output.split("\n")
    assert [line for line in lines if not LOG_LINE.fullmatch(line)] == []
    seen: dict[tuple[str, str], list[int]] = {}
    for line in lines:
        if m := re.fullmatch(r"\S+ \[worker [12] pid (\d+)\] tag (\w+) line (\d+)", line):
            seen.setdefault((m.group(1), m.group(2)), []).append(int(m.group(3)))
    assert {tag for _pid, tag in seen} == {"first", "stopped", *(t for c in tags for t in c)}
    assert str(primary) not in {pid for pid, _tag in seen}
    for (pid, tag), numbers in seen.items():
        assert numbers == list(range({"first": 1, "stopped": 3}.get(tag, 200))), (pid, tag, numbers[:10])
    failed = [i for i, line in enumerate(lines) if re.search(r"\[worker [12] pid \d+\] failed c0r0$", line)]
    assert len(failed) == 1 and lines[failed[0] + 1] == "\tTraceback (most recent call last):", lines[failed[0] : failed[0] + 3]
