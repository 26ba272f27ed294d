# -*- test-case-name: tests.test_worker_model_units -*-
"""
How a worker process is started, for C{twistd serversock} and cluster mode
alike: L{spawnWorkerProcess} runs L{WORKER_MODULE} (with the interpreter
options of a L{Command}) with the worker's end of its channel as
descriptor L{CHANNEL_FD}, and sends it its start-up message as the
channel's first message; the worker reads it (L{readStartup})
synchronously, before its reactor runs and before the factory or program
it serves is imported.

The start-up facts travel over the channel, not in the command line or
the environment, because the facts to come include secrets: the TLS
private keys a privileged parent loaded for unprivileged workers.  The
command line is public (C{ps}), a file outlives the process, and the
environment is inherited by every process the application starts.

The message is a control message C{start} whose fields are named and
checked like every control message's (L{twisted_serversock.ipc.control}):
C{worker} says which kind of worker this is (L{STARTUP_FIELDS}).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, NamedTuple

from twisted.internet.protocol import ProcessProtocol

from .control import INTEGER, NUMBER, OBJECT, STRING, STRINGS, MessageError, Spec, checkFields
from .wire import MAX_FDS, MAX_MESSAGE, Control, ProtocolError, decode

__all__ = [
    "CHANNEL_FD",
    "STARTUP_FIELDS",
    "STARTUP_TIMEOUT",
    "WORKER_MODULE",
    "Command",
    "WorkerCommand",
    "readStartup",
    "serversockCommand",
    "spawnWorkerProcess",
]

#: The descriptor a worker's channel has in the worker.
CHANNEL_FD = 3
#: The module every worker process runs.
WORKER_MODULE = "twisted_serversock.ipc.worker"
#: Seconds a worker waits for its start-up message before it gives up.
STARTUP_TIMEOUT = 30.0
#: The fields of the start-up message, by the kind of worker (its
#: C{worker} field); every kind also has C{index} (its number, 1, 2, ...)
#: and C{heartbeat} (how often it says it is alive while idle, seconds).
STARTUP_FIELDS: dict[str, Spec] = {
    # The protocol factory's name, and the parent's sys.path to find it.
    "serversock": {"factory": STRING, "path": STRINGS},
    # The primary's command line, and its listeners when the worker
    # started: description -> [route id, encoded address].
    "cluster": {"argv": STRINGS, "listeners": OBJECT},
}


class Command(NamedTuple):
    """
    How to run one worker process: the interpreter's options, its
    environment, its working directory (C{None}: the parent's) and its
    start-up message's fields.
    """

    argv: list[str]
    env: dict[str, str]
    path: str | None = None
    startup: dict[str, Any] | None = None


#: The command of worker C{index} that says it is alive every C{heartbeat}
#: seconds while idle: C{(index, heartbeat) -> Command}.
WorkerCommand = Callable[[int, float], Command]


def spawnWorkerProcess(
    reactor: Any, processProtocol: ProcessProtocol, channel: socket.socket, command: Command, send: Callable[..., None]
) -> Any:
    """
    Start one worker process running C{command}, its stdout and stderr read
    by C{processProtocol}, with C{channel} as its descriptor L{CHANNEL_FD}
    (the caller closes C{channel} afterwards), and send its start-up message
    with C{send} (the parent's C{sendControl} on the other end).

    @return: the C{IProcessTransport}.
    """
    process = reactor.spawnProcess(
        processProtocol,
        sys.executable,
        command.argv,
        env=command.env,
        path=command.path,
        childFDs={0: "w", 1: "r", 2: "r", CHANNEL_FD: channel.fileno()},
    )
    send("start", **(command.startup or {}))
    return process


def serversockCommand(factoryName: str, index: int, heartbeat: float) -> Command:
    """
    The command of a C{twistd serversock} worker: it serves the protocol
    factory C{factoryName}, found on the parent's C{sys.path}.
    """
    path = [p or os.getcwd() for p in sys.path]
    startup = {"worker": "serversock", "index": index, "heartbeat": heartbeat, "factory": factoryName, "path": path}
    return Command([sys.executable, "-m", WORKER_MODULE], dict(os.environ), None, startup)


def readStartup(channel: socket.socket, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
    """
    Read the start-up message, blocking: the worker has nothing to do
    before it.

    @return: its fields, checked (L{STARTUP_FIELDS}).
    @raise ValueError: one line saying what was wrong: no message within
        C{timeout} seconds, the channel closed, or a message that is not a
        start-up message or has a bad field (named).
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
        kinds = {"worker": STRING, "index": INTEGER, "heartbeat": NUMBER}
        kind = checkFields(message.fields, kinds, extra=True)["worker"]
        if kind not in STARTUP_FIELDS:
            raise MessageError(f"field 'worker' is {kind!r}, not one of {sorted(STARTUP_FIELDS)}")
        return checkFields(message.fields, {**kinds, **STARTUP_FIELDS[kind]})
    except (ProtocolError, MessageError) as e:
        raise ValueError(f"bad start-up message: {e}") from None
