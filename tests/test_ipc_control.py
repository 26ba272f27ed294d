"""
Control messages on the worker channel go through an explicit table: a
message whose fields do not fit is rejected with a clear error before any
handler runs, and an error raised inside a handler is reported as the bug it
is - never as a bad message.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from twisted_serversock.ipc import wire
from twisted_serversock.ipc.channel import channelPair
from twisted_serversock.ipc.child import ParentLink
from twisted_serversock.ipc.control import INTEGER, OBJECT, STRING, ControlTable, MessageError, checkFields, optional
from twisted_serversock.ipc.parent import Dispatcher, WorkerLink

from .conftest import eventually, theReactor
from ._helpers import rawSend

# ----------------------------------------------------------------------
# The table itself (a parser: no reactor needed).


class _Counter:
    rejected = 0


class _Receiver:
    controls = ControlTable()

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @controls.handler("close", id=INTEGER)
    def _onClose(self, id: int) -> None:
        self.calls.append(("close", {"id": id}))

    @controls.handler("error", id=INTEGER, message=STRING, line=optional(INTEGER, 0))
    def _onError(self, id: int, message: str, line: int) -> None:
        self.calls.append(("error", {"id": id, "message": message, "line": line}))

    @controls.handler("route", extra=True, id=INTEGER)
    def _onRoute(self, id: int) -> None:
        self.calls.append(("route", {"id": id}))

    @controls.handler("broken")
    def _onBroken(self) -> None:
        raise TypeError("a bug inside the handler")


def _dispatch(receiver: _Receiver, counter: _Counter, type: str, **fields: Any) -> bool:
    return _Receiver.controls.dispatch(wire.Control(type, fields), "the test", counter, receiver)


def test_tableCallsTheHandlerWithCheckedFields() -> None:
    """
    A message whose fields fit reaches its handler, optional fields with
    their default when left out; fields a message allows beyond its own
    are not passed on.
    """
    receiver, counter = _Receiver(), _Counter()
    assert _dispatch(receiver, counter, "close", id=3)
    assert _dispatch(receiver, counter, "error", id=1, message="boom")
    assert _dispatch(receiver, counter, "error", id=1, message="boom", line=7)
    assert _dispatch(receiver, counter, "route", id=2, proxy=True, future="x")
    assert receiver.calls == [
        ("close", {"id": 3}),
        ("error", {"id": 1, "message": "boom", "line": 0}),
        ("error", {"id": 1, "message": "boom", "line": 7}),
        ("route", {"id": 2}),
    ]
    assert counter.rejected == 0


def test_tableSaysWhenItHasNoHandler() -> None:
    """
    An unknown message is not the table's to reject: it says it has no
    handler and counts nothing (the receiver decides).
    """
    receiver, counter = _Receiver(), _Counter()
    assert not _dispatch(receiver, counter, "nonsense", id=1)
    assert receiver.calls == [] and counter.rejected == 0


@pytest.mark.parametrize(
    "type, fields, why",
    [
        ("close", {}, "missing field 'id'"),
        ("close", {"id": "x"}, "field 'id' is 'x', not an integer"),
        ("close", {"id": True}, "field 'id' is True, not an integer"),
        ("close", {"id": 1, "wrong": 1}, "unexpected field 'wrong'"),
        ("error", {"id": 1, "message": 5}, "field 'message' is 5, not a string"),
        ("error", {"id": 1, "message": "m", "line": 1.5}, "field 'line' is 1.5, not an integer"),
    ],
)
def test_tableRejectsFieldsThatDoNotFit(logged: list[dict[str, Any]], type: str, fields: dict[str, Any], why: str) -> None:
    """
    A message whose fields do not fit is logged with what was wrong,
    counted as rejected, and its handler is not called.
    """
    receiver, counter = _Receiver(), _Counter()
    assert _dispatch(receiver, counter, type, **fields)
    assert receiver.calls == []
    assert counter.rejected == 1
    [event] = [e for e in logged if (e.get("log_format") or "").startswith("Bad ")]
    assert event["type"] == type and event["who"] == "the test" and event["error"] == why


def test_tableLetsAHandlerErrorThrough() -> None:
    """
    A TypeError raised inside a handler is the handler's bug: it goes up
    to the caller instead of counting as a bad message.
    """
    receiver, counter = _Receiver(), _Counter()
    with pytest.raises(TypeError, match="a bug inside the handler"):
        _dispatch(receiver, counter, "broken")
    assert counter.rejected == 0


def test_tableFromABaseKeepsItsEntries() -> None:
    """
    A table made from a base handles the base's messages and its own; the
    base is not changed.
    """
    table = ControlTable(base=_Receiver.controls)

    @table.handler("extra")
    def extra(receiver: _Receiver) -> None:
        receiver.calls.append(("extra", {}))

    receiver, counter = _Receiver(), _Counter()
    assert table.dispatch(wire.Control("close", {"id": 1}), "the test", counter, receiver)
    assert table.dispatch(wire.Control("extra", {}), "the test", counter, receiver)
    assert "extra" in table and "extra" not in _Receiver.controls
    assert receiver.calls == [("close", {"id": 1}), ("extra", {})]


# ----------------------------------------------------------------------
# Over a real channel.


@pytest_twisted.ensureDeferred
async def test_parentRejectsMalformedControlMessages(logged: list[dict[str, Any]]) -> None:
    """
    Each malformed control message from a child gets one warning naming
    the message and what was wrong, and counts as rejected; an unknown one
    is logged as unknown; the channel stays up.
    """
    parentEnd, childEnd = channelPair()
    link = WorkerLink(Dispatcher(theReactor().seconds), parentEnd, theReactor(), "child 1")
    try:
        rawSend(childEnd, wire.encodeControl("listen", id="x", port=0))
        rawSend(childEnd, wire.encodeControl("close", wrong=1))
        rawSend(childEnd, wire.encodeControl("ready", pid="me"))
        rawSend(childEnd, wire.encodeControl("nonsense"))
        await eventually(lambda: link.channel.rejected >= 4)
        assert link.channel.connected and not link.lost and not link.ready
        assert link.channel.rejected == 4
        bad = [(e["type"], e["error"]) for e in logged if (e.get("log_format") or "").startswith("Bad ")]
        assert bad == [
            ("listen", "field 'id' is 'x', not an integer"),
            ("close", "missing field 'id'"),
            ("ready", "field 'pid' is 'me', not an integer"),
        ]
        assert [e["type"] for e in logged if "unknown control message" in (e.get("log_format") or "")] == ["nonsense"]
        # A good message after them is handled.
        rawSend(childEnd, wire.encodeControl("ready", pid=1))
        await eventually(lambda: link.ready)
    finally:
        link.close()
        childEnd.close()


@pytest_twisted.ensureDeferred
async def test_typeErrorInAHandlerIsAFailureNotABadMessage(logged: list[dict[str, Any]]) -> None:
    """
    A TypeError raised while handling a well-formed message (here by the
    link's C{onReady} callback) is logged as a failure with its traceback,
    and the message is not counted as rejected or called bad.
    """
    parentEnd, childEnd = channelPair()
    link = WorkerLink(Dispatcher(theReactor().seconds), parentEnd, theReactor(), "child 1")

    def onReady(link: WorkerLink) -> None:
        raise TypeError("a bug in onReady")

    link.onReady = onReady
    try:
        rawSend(childEnd, wire.encodeControl("ready", pid=1))
        await eventually(lambda: any("log_failure" in e for e in logged))
        [failure] = [e["log_failure"] for e in logged if "log_failure" in e]
        assert failure.check(TypeError) and "a bug in onReady" in str(failure.value)
        assert link.channel.rejected == 0
        assert not [e for e in logged if (e.get("log_format") or "").startswith("Bad ")]
        assert link.channel.connected
        failure.cleanFailure()
    finally:
        link.close()
        childEnd.close()


@pytest_twisted.ensureDeferred
async def test_childRejectsMalformedControlMessages(logged: list[dict[str, Any]]) -> None:
    """
    The child's end checks the parent's control messages the same way.
    """
    parentEnd, childEnd = channelPair()
    link = ParentLink(childEnd, theReactor())
    try:
        rawSend(parentEnd, wire.encodeControl("listening", id=1, route="r", port=80))
        rawSend(parentEnd, wire.encodeControl("error", id=1))
        await eventually(lambda: link.channel.rejected >= 2)
        bad = [(e["type"], e["who"], e["error"]) for e in logged if (e.get("log_format") or "").startswith("Bad ")]
        assert bad == [
            ("listening", "the parent", "field 'route' is 'r', not an integer"),
            ("error", "the parent", "missing field 'message'"),
        ]
    finally:
        link.channel.loseConnection()
        parentEnd.close()



@pytest.mark.parametrize(
    "value, shown",
    [
        ("-----BEGIN PRIVATE KEY-----\n" + "SECRET" * 300, "a string of length 1828"),
        (["SECRET" * 10], "a list of length 1"),
        ("x" * 60000, "a string of length 60000"),
        (10**40, "an integer"),
    ],
)
def test_longValueIsNamedByKindAndSizeNotShown(value: Any, shown: str) -> None:
    """
    A field of the wrong kind whose value is long (a private key where an
    object belongs, or something huge) is named by field, kind and size;
    its value is not echoed into the error, the log or the worker's output.
    """
    with pytest.raises(MessageError) as raised:
        checkFields({"files": value}, {"files": OBJECT})
    assert str(raised.value) == f"field 'files' is {shown}, not an object"
    assert "SECRET" not in str(raised.value) and len(str(raised.value)) < 100
