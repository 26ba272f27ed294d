# -*- test-case-name: tests.test_lifecycle -*-
"""The worker lifecycle's defaults, named once for C{twistd serversock} and cluster mode alike."""

from __future__ import annotations

__all__ = ["GRACE", "TIMEOUT", "heartbeatFor"]

#: Seconds a worker gets to finish its open connections when it is stopped
#: (SIGTERM to the parent or to the worker itself, a reload, a recycle, its
#: parent gone), unless C{--grace} says otherwise.
GRACE = 10.0
#: Seconds of silence (no heartbeat, no ack) after which a worker is killed
#: and replaced, unless C{--timeout} says otherwise.
TIMEOUT = 30.0


def heartbeatFor(timeout: float) -> float:
    """
    How often an idle worker says it is alive to a parent that kills one
    silent for C{timeout} seconds: four times a timeout, within 50 ms..5 s.
    """
    return min(max(timeout / 4, 0.05), 5.0)
