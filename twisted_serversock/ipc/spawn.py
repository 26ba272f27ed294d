# -*- test-case-name: tests.test_lifecycle -*-
"""
How a worker process is started, for C{twistd serversock} and cluster mode
alike: L{spawnWorkerProcess} runs a command with the worker's end of its
channel as descriptor L{CHANNEL_FD}; what differs is only the command (a
L{WorkerCommand}): L{serversockCommand} runs
L{twisted_serversock.ipc.worker} with a factory name, cluster mode runs the
program again (L{twisted_serversock.cluster.primary}).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, NamedTuple

from twisted.internet.protocol import ProcessProtocol

__all__ = ["CHANNEL_FD", "Command", "WorkerCommand", "spawnWorkerProcess", "serversockCommand"]

#: The descriptor a worker's channel has in the worker.
CHANNEL_FD = 3


class Command(NamedTuple):
    """
    How to run one worker process: its argument vector (run with this
    interpreter), its environment and its working directory (C{None}: the
    parent's).
    """

    argv: list[str]
    env: dict[str, str]
    path: str | None = None


#: The command of worker C{index} that says it is alive every C{heartbeat}
#: seconds while idle: C{(index, heartbeat) -> Command}.
WorkerCommand = Callable[[int, float], Command]


def spawnWorkerProcess(reactor: Any, processProtocol: ProcessProtocol, channel: socket.socket, command: Command) -> Any:
    """
    Start one worker process running C{command}, its stdout and stderr read
    by C{processProtocol}, with C{channel} as its descriptor L{CHANNEL_FD}
    (the caller closes C{channel} afterwards).

    @return: the C{IProcessTransport}.
    """
    return reactor.spawnProcess(
        processProtocol,
        sys.executable,
        command.argv,
        env=command.env,
        path=command.path,
        childFDs={0: "w", 1: "r", 2: "r", CHANNEL_FD: channel.fileno()},
    )


def serversockCommand(factoryName: str, index: int, heartbeat: float) -> Command:
    """
    The command of a C{twistd serversock} worker: this interpreter running
    L{twisted_serversock.ipc.worker} with the protocol factory
    C{factoryName}, and the parent's C{sys.path} (so that the factory's
    module is found where the parent found it).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    argv = [sys.executable, "-m", "twisted_serversock.ipc.worker", "--channel-fd", str(CHANNEL_FD), "--factory", factoryName]
    return Command(argv + ["--index", str(index), "--heartbeat", repr(heartbeat)], env)
