# -*- test-case-name: tests.test_worker_model_units -*-
"""
How any worker process is started: L{spawnWorkerProcess} runs
L{WORKER_MODULE} with its channel as descriptor L{CHANNEL_FD} and sends the
start-up message, which the worker reads (L{readStartup}) before its
reactor runs or what it serves is imported.  Start-up facts travel over
the channel, never in the command line (public: C{ps}), a file (it
outlives the process) or the environment (inherited by every process the
application starts), because they include secrets: the TLS private keys a
privileged parent loads for its workers.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
from typing import Any, Callable, NamedTuple

from twisted.internet.protocol import ProcessProtocol

from .control import INTEGER, NUMBER, OBJECT, STRING, STRINGS, MessageError, Spec, checkFields, optional
from .logs import LOG_FD, directDestination
from .wire import MAX_FDS, MAX_MESSAGE, Control, ProtocolError, decode, encodeControl

__all__ = ["CHANNEL_FD", "FILES_ROOM", "STARTUP_FIELDS", "STARTUP_TIMEOUT", "WORKER_MODULE", "Command", "WorkerCommand"]
__all__ += ["readStartup", "serversockCommand", "spawnWorkerProcess", "GRACE", "TIMEOUT", "heartbeatFor"]

#: The descriptor a worker's channel has in the worker.
CHANNEL_FD = 3
#: The module every worker process runs.
WORKER_MODULE = "twisted_serversock.ipc"
#: Seconds a worker waits for its start-up message before it gives up.
STARTUP_TIMEOUT = 30.0
#: Seconds a worker gets to finish its open connections when it is stopped
#: (SIGTERM to the parent or to the worker itself, a reload, a recycle, its
#: parent gone), unless C{--grace} says otherwise.
GRACE = 10.0
#: Seconds of silence (no heartbeat, no ack) after which a worker is killed
#: and replaced, unless C{--timeout} says otherwise.
TIMEOUT = 30.0


def heartbeatFor(timeout: float) -> float:
    """
    How often an idle worker says it is alive (its start-up message's
    C{heartbeat}) to a parent that kills one silent for C{timeout} seconds:
    four times a timeout, within 50 ms..5 s.
    """
    return min(max(timeout / 4, 0.05), 5.0)


def _checkFiles(value: object) -> None:
    """
    @raise MessageError: a start-up message's C{files} is not {description:
        {path: base64}}, naming where, never showing a value (they are keys).
    """
    if not isinstance(value, dict):
        raise MessageError("field 'files' is not an object")
    for description, files in value.items():
        if not isinstance(files, dict):
            raise MessageError(f"field 'files'[{description!r}] is not an object")
        for path, data in files.items():
            try:
                base64.b64decode(data, validate=True)
            except (TypeError, ValueError):
                raise MessageError(f"field 'files'[{description!r}][{path!r}] is not a base64 string") from None


def _checkLog(value: dict[str, Any]) -> dict[str, Any]:
    """@raise MessageError: a start-up message's C{log} is not {encoding, limit}, naming where."""
    try:
        log = checkFields(value, {"encoding": STRING, "limit": INTEGER})
        "".encode(log["encoding"])
    except MessageError as e:
        raise MessageError(f"field 'log': {e}") from None
    except LookupError:
        raise MessageError(f"field 'log': no encoding {log['encoding']!r}") from None
    return log


#: Bytes of a start-up message its TLS files may take (the rest: command line, path, listeners).
FILES_ROOM = MAX_MESSAGE - 16384

#: The start-up message's fields by kind of worker (its C{worker} field),
#: besides C{index} (1, 2, ...) and C{heartbeat} (seconds between "alive"
#: messages while idle).  C{files}: the TLS files the parent read
#: (description -> {path as written: base64}), keys the workers' user may not read.
#: Any kind may have C{log}: the encoding and longest line of the parent's
#: log, passed as L{LOG_FD} (C{ipc.logs.directDestination}), to write to.
STARTUP_FIELDS: dict[str, Spec] = {
    # The protocol factory's name, the parent's sys.path to find it, the
    # geckotls: routes whose TLS the worker runs (route id -> description).
    "serversock": {"factory": STRING, "path": STRINGS, "tls": optional(OBJECT, {}), "files": optional(OBJECT, {})},
    # The primary's command line, its listeners at the worker's start: description -> [route id, encoded address].
    "cluster": {"argv": STRINGS, "listeners": OBJECT, "files": optional(OBJECT, {})},
}


class Command(NamedTuple):
    """One worker process: its argument vector, environment, directory (C{None}: ours), start-up fields."""

    argv: list[str]
    env: dict[str, str]
    path: str | None = None
    startup: dict[str, Any] | None = None


#: C{(index, heartbeat) -> Command}: worker C{index}, alive every C{heartbeat} s while idle.
WorkerCommand = Callable[[int, float], Command]


def spawnWorkerProcess(reactor: Any, processProtocol: ProcessProtocol, channel: socket.socket, command: Command, send: Callable[[bytes], object]) -> Any:
    """
    Start one worker process running C{command}, its output read by
    C{processProtocol}, C{channel} (the caller closes it) as its
    L{CHANNEL_FD}; send its start-up message with C{send}, the channel's
    other end's.  Where the parent logs text to a plain descriptor, the
    worker gets it as L{LOG_FD} and the start-up field C{log} (its
    C{encoding} and C{limit}: L{directDestination<twisted_serversock.ipc.logs.directDestination>})
    and writes its own log lines there.  A message that cannot be encoded (too large, a field JSON
    cannot carry) starts no process, which would only die waiting for it.

    @return: the C{IProcessTransport}.
    @raise ProtocolError: the start-up message cannot be encoded.
    """
    startup, fds = dict(command.startup or {}), {0: "w", 1: "r", 2: "r", CHANNEL_FD: channel.fileno()}
    # (A cluster worker's own twist applies twist's level filter; a
    # twistd serversock worker has no filter of its own.)
    if (destination := directDestination(filtered=startup.get("worker") == "cluster")) is not None:
        fds[LOG_FD] = destination.pop("fd")
        startup["log"] = destination
    message = encodeControl("start", **startup)
    process = reactor.spawnProcess(processProtocol, sys.executable, command.argv, env=command.env, path=command.path, childFDs=fds)
    send(message)
    return process


def serversockCommand(factoryName: str, index: int, heartbeat: float, tls: Callable[[], dict[str, Any]] | None = None, grace: float = GRACE) -> Command:
    """
    The command of a C{twistd serversock} worker serving C{factoryName}.

    @param grace: the grace period the worker takes when it is sent SIGTERM
        itself (as systemd's default C{KillMode} does) or loses its parent.

    @param tls: returns the start-up fields C{tls} and C{files}, if some
        listeners' TLS runs in the workers.
    """
    path = [p or os.getcwd() for p in sys.path]
    startup = {"worker": "serversock", "index": index, "heartbeat": heartbeat, "grace": grace, "factory": factoryName, "path": path}
    startup.update(tls() if tls is not None else {})
    return Command([sys.executable, "-m", WORKER_MODULE], dict(os.environ), None, startup)


def readStartup(channel: socket.socket, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
    """
    Read the start-up message, blocking (a worker has nothing to do before).

    @return: its fields, checked (L{STARTUP_FIELDS}).
    @raise ValueError: one line: none within C{timeout} seconds, the
        channel closed, another message, or a bad field (named).
    """
    channel.settimeout(timeout)
    try:
        data, ancillary, _flags, _addr = channel.recvmsg(MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * 4))
    except socket.timeout:
        raise ValueError(f"no start-up message from the parent within {timeout:g} s") from None
    except OSError as e:
        raise ValueError(f"cannot read the start-up message: {e}") from None
    finally:
        channel.setblocking(False)
    try:
        if ancillary:
            raise ProtocolError("descriptors came with it")
        message = decode(data, []) if data else None
        if not isinstance(message, Control) or message.type != "start":
            raise ProtocolError(f"it is {message!r}" if data else "the parent closed the channel")
        kinds: Spec = {"worker": STRING, "index": INTEGER, "heartbeat": NUMBER, "grace": optional(NUMBER, GRACE)}
        kind = checkFields(message.fields, kinds, extra=True)["worker"]
        if kind not in STARTUP_FIELDS:
            raise MessageError(f"field 'worker' is {kind!r}, not one of {sorted(STARTUP_FIELDS)}")
        _checkFiles(message.fields.get("files", {}))
        # "log": where the parent logs, if the worker writes its own lines there.
        log = checkFields(message.fields, {"log": optional(OBJECT, None)}, extra=True)["log"]
        fields = checkFields({k: v for k, v in message.fields.items() if k != "log"}, {**kinds, **STARTUP_FIELDS[kind]})
        return fields if log is None else {**fields, "log": _checkLog(log)}
    except (ProtocolError, MessageError) as e:
        raise ValueError(f"bad start-up message: {e}") from None
