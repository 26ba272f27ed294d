# -*- test-case-name: tests.test_logs -*-
"""
A worker's log, faithfully in its parent's: the worker writes each event as
one JSON text (L{logObserver}), the parent decodes it and publishes it to
its own observers with the worker's number and pid as its system
(L{LogRelay}), so an error in a worker is an error in the parent's log,
journald or JSON log, with its namespace, fields and traceback.

Where the parent's log is only text written to a plain descriptor (C{twistd
-n} or C{twist --log-format=text} logging to standard output: a terminal,
a file, Docker's or Kubernetes' pipe, journald's stream), the parent passes
that descriptor on (L{directDestination}, as L{LOG_FD}) and each worker
writes its own lines there (L{writeOwnLines}), formatted as the parent's
observer would have, each with one C{write()}: the parent does nothing for
them.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import time
from functools import partial
from json import dumps, loads
from typing import Any, Callable

from twisted.logger import (
    ILogObserver, Logger, LogLevel, eventAsJSON, eventFromJSON, formatEventAsClassicLogText, formatTime, globalLogPublisher, timeFormatRFC3339,
)  # fmt: skip
from zope.interface import provider

from .._twistedcompat import textLogFile

__all__ = ["logObserver", "LogRelay", "RECORD_SEPARATOR", "LOG_FD", "classicText", "directDestination", "writeOwnLines"]

#: What starts an event's line (RFC 7464, as C{twisted.logger.jsonFileLogObserver}
#: writes): any other line is text the program wrote itself.
RECORD_SEPARATOR = b"\x1e"


@provider(ILogObserver)
def logObserver(event: dict[str, Any]) -> None:
    """
    Every worker's log: each event as one line of JSON (after a record
    separator) on the real standard error, which the parent reads
    (L{LogRelay}).
    """
    if "log_time" not in event:  # an event not from a Logger
        event = {**event, "log_time": time.time()}
    if _direct is not None and _writeOwnLine(event, *_direct):
        return
    line = "\x1e" + _encode(event) + "\n"
    # The real standard error: twistd points sys.stderr at the log itself.
    stream = sys.__stderr__ or sys.stderr
    stream.write(line)
    stream.flush()


#: The descriptor a worker writes its own log lines to, when its parent
#: passes its log's (L{directDestination}).
LOG_FD = 4
#: The longest line a worker writes there itself (bytes) by its kind: one
#: C{write()} of at most C{PIPE_BUF} bytes to a pipe is never mixed with
#: another's, nor one to a stream socket of this size (one buffer), nor
#: any to a regular file (Linux locks its offset, or C{O_APPEND}'s end, for
#: the call).  A longer line (a long traceback) goes through the parent.
_LIMITS = {stat.S_IFIFO: select.PIPE_BUF, stat.S_IFSOCK: select.PIPE_BUF, stat.S_IFCHR: select.PIPE_BUF, stat.S_IFREG: 1 << 20}
#: (system, encoding, longest line) once L{writeOwnLines} was called.
_direct: tuple[str, str, int] | None = None

#: How C{twistd}'s and C{twist}'s text log formats an event.
classicText: Callable[[dict[str, Any]], "str | None"] = partial(
    formatEventAsClassicLogText, formatTime=partial(formatTime, timeFormat=timeFormatRFC3339)
)
#: An event both formats of a text log must write alike.
_PROBE = {"log_time": 1e9 + 0.5, "log_system": "probe", "log_format": "probe {n}", "n": 1, "log_level": LogLevel.error, "log_namespace": "probe"}


def directDestination(publisher: Any = globalLogPublisher, filtered: bool = True) -> dict[str, Any] | None:
    """
    Where this process logs, if its workers can write their lines there
    themselves as its observer would: C{publisher} has one observer, a
    C{textFileLogObserver} (perhaps behind a level filter, if C{filtered}:
    the workers apply it too, as a cluster worker's own C{twist} does) writing to a pipe, a socket, a
    terminal or a plain file.  A rotating C{twistd --logfile}, JSON,
    syslog, a C{--logger} or a second observer: C{None} (the relay).

    @return: C{{"fd": descriptor, "encoding": ..., "limit": longest line}}.
    """
    found = textLogFile(publisher, filtered)
    if found is None:
        return None
    outFile, formatEvent = found
    try:
        if formatEvent(dict(_PROBE)) != classicText(dict(_PROBE)):
            return None
        fd, encoding = outFile.fileno(), getattr(outFile, "encoding", None) or "utf-8"
        limit = _LIMITS.get(stat.S_IFMT(os.fstat(fd).st_mode))
    except (AttributeError, OSError, ValueError):  # no descriptor (io.UnsupportedOperation), closed
        return None
    return None if limit is None else {"fd": fd, "encoding": encoding, "limit": limit}


def writeOwnLines(settings: dict[str, Any] | None, index: int) -> None:
    """
    In worker C{index}: write each event as a line of text to L{LOG_FD}
    from now on (L{logObserver}), if the parent passed its log's
    descriptor (C{settings}: L{directDestination}'s encoding and limit).
    """
    global _direct
    if settings is not None:
        os.set_inheritable(LOG_FD, False)  # never into a process this one starts
        _direct = (f"worker {index} pid {os.getpid()}", settings["encoding"], settings["limit"])


def _writeOwnLine(event: dict[str, Any], system: str, encoding: str, limit: int) -> bool:
    """Write C{event} to L{LOG_FD} as the parent would have; C{False}: relay it instead."""
    global _direct
    own = event.get("log_system")
    text = classicText({**event, "log_system": system if own is None or own == "-" else f"{system} {own}"})
    data = (text or "").encode(encoding, "backslashreplace")
    if len(data) > limit:
        return False
    try:
        while data:
            try:
                data = data[os.write(LOG_FD, data) :]
            except BlockingIOError:  # as the parent's own write would, wait
                select.select([], [LOG_FD], [])
    except OSError:  # the destination is gone: the parent says what it can
        _direct = None
        return False
    return True


#: An event's keys that hold the objects that logged it: not sent.
_LOGGERS = ("log_logger", "log_source")


def _encode(event: dict[str, Any]) -> str:
    """
    C{event} as JSON, for L{_decode}: like C{eventAsJSON} (the same text
    for an event with a failure or fields JSON cannot carry, which it
    flattens), but for the usual event, whose fields are JSON's own types,
    at half its cost and size: its level by name, without the objects that
    logged it (L{_LOGGERS}: C{eventAsJSON} writes them as C{unpersistable}).
    A tuple among the fields arrives as a list.
    """
    if "log_failure" in event or "log_source" in (event.get("log_format") or ""):
        return eventAsJSON(event)
    plain = {key: value for key, value in event.items() if key not in _LOGGERS}
    if (level := plain.get("log_level")) is not None:
        plain["log_level"] = {"name": getattr(level, "name", None)}
    try:
        return dumps(plain)
    except (TypeError, ValueError):  # an object, bytes, a cycle: flattened
        return eventAsJSON(event)


class LogRelay:
    """
    The parent's end of one worker's output: each complete line of its
    standard error that is an event (L{logObserver}'s) is published to
    C{publisher} as it was logged, with C{system} as its system (the
    worker's own system after it, if it had one); any other line - what
    the program wrote itself - is logged as text, at C{info} from its
    standard output and at C{warn} from its standard error.  All the lines
    one read brings are published before the next read, in order.
    """

    def __init__(self, system: str, publisher: Callable[[dict[str, Any]], object] | None = None) -> None:
        """@param publisher: where the events go (default: the global log publisher)."""
        self.system = system
        publish: Any = publisher if publisher is not None else globalLogPublisher
        self._publish, self._log = publish, Logger(observer=publish)
        self._partial: dict[int, bytes] = {}

    def dataReceived(self, childFD: int, data: bytes) -> None:
        """C{data} from the worker's descriptor C{childFD} (1 or 2)."""
        if b"\n" not in data:
            self._partial[childFD] = self._partial.get(childFD, b"") + data
            return
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[childFD] = lines[-1]
        for line in lines[:-1]:
            self.relay(childFD, line)

    def flush(self) -> None:
        """The worker ended: relay what it wrote without an end of line."""
        for childFD, line in sorted(self._partial.items()):
            self.relay(childFD, line)
        self._partial.clear()

    def relay(self, childFD: int, line: bytes) -> None:
        """Publish one line of the worker's descriptor C{childFD}."""
        if line[:1] == RECORD_SEPARATOR and (event := _decode(line[1:])) is not None:
            own = event.get("log_system")
            event["log_system"] = self.system if own is None or own == "-" else f"{self.system} {own}"
            self._publish(event)
            return
        text = line.decode("utf-8", "backslashreplace").rstrip()
        if text:
            self._log.emit(LogLevel.info if childFD == 1 else LogLevel.warn, "{line}", line=text, log_system=self.system)


def _decode(text: bytes) -> dict[str, Any] | None:
    """
    The event L{logObserver} wrote as C{text}, or C{None} if it is not one.
    Like C{eventFromJSON}, at a fraction of its cost for the usual event,
    whose only object is its level: a failure's line takes the full decoder.
    """
    try:
        event = loads(text)
        if not isinstance(event, dict) or "log_time" not in event:
            return None
        if "log_failure" in event:
            event = eventFromJSON(text.decode("utf-8"))
            return event if hasattr(event["log_failure"], "getTraceback") else None
        level = event.get("log_level")
        if level is not None:
            event["log_level"] = LogLevel.levelWithName(level["name"])
    except Exception:  # not an event (a broken line): relayed as text, and reading goes on
        return None
    return event
