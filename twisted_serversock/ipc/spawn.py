# -*- test-case-name: tests.test_lifecycle -*-
"""
How C{twistd serversock} starts one worker process: this interpreter
running L{twisted_serversock.ipc.worker} with its end of the channel as
descriptor L{CHANNEL_FD}, and the parent's C{sys.path} (so that the
factory's module is found where the parent found it).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.internet.protocol import ProcessProtocol

__all__ = ["CHANNEL_FD", "spawnWorkerProcess"]

#: The descriptor a worker's channel has in the worker.
CHANNEL_FD = 3


def spawnWorkerProcess(
    reactor: Any, processProtocol: ProcessProtocol, channel: socket.socket, factoryName: str, index: int, heartbeat: float
) -> Any:
    """
    Start worker C{index}, serving the protocol factory C{factoryName} and
    saying it is alive every C{heartbeat} seconds while idle, with
    C{channel} as its descriptor L{CHANNEL_FD} (the caller closes
    C{channel} afterwards).

    @return: the C{IProcessTransport}.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    argv = [
        sys.executable,
        "-m",
        "twisted_serversock.ipc.worker",
        "--channel-fd",
        str(CHANNEL_FD),
        "--factory",
        factoryName,
        "--index",
        str(index),
        "--heartbeat",
        repr(heartbeat),
    ]
    return reactor.spawnProcess(
        processProtocol,
        sys.executable,
        argv,
        env=env,
        childFDs={0: "w", 1: "r", 2: "r", CHANNEL_FD: channel.fileno()},
    )
