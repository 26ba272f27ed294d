# -*- test-case-name: tests.test_drain -*-
"""
The cluster-mode options every gecko endpoint takes: C{workers}, and the
primary's C{grace} and C{lameduck} (seconds), checked alike for the
endpoint classes and their strings.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ._resources import availableCPUs

__all__ = ["MAX_WORKERS", "ClusterOptions", "autoWorkersWhy", "clusterOptions", "controlPath", "metricsEndpoint", "seconds", "workerCount"]

#: The most worker processes C{workers=} may ask for.
MAX_WORKERS = 1024


def workerCount(value: object) -> int:
    """
    The number of worker processes C{value} asks for: a whole number from 0
    to L{MAX_WORKERS} (as an C{int} or text), or C{"auto"}: one per CPU
    this process may use (L{availableCPUs
    <twisted_serversock._resources.availableCPUs>}: its affinity, capped by a
    container's CPU quota).

    @raise ValueError: naming C{workers} and the bad value.
    """
    if isinstance(value, (str, bytes)):
        text = _text(value, "workers").strip()
        if text.lower() == "auto":
            return availableCPUs().count
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"workers must be a whole number or 'auto', not {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"workers must be a whole number or 'auto', not {value!r}")
    if not 0 <= value <= MAX_WORKERS:
        raise ValueError(f"workers must be from 0 to {MAX_WORKERS} or 'auto', not {value}")
    return value


def autoWorkersWhy(value: object) -> str | None:
    """How C{workers=auto} chose its number (for the log), or C{None} for any other C{value}."""
    isAuto = isinstance(value, str) and value.strip().lower() == "auto"
    return availableCPUs().why if isAuto else None


def seconds(name: str, value: object) -> float | None:
    """
    C{value} (a number, or its text) as a finite number of seconds, 0 or
    more; C{None} stays C{None} (not given).

    @raise ValueError: naming C{name} and the bad value.
    """
    if value is None:
        return None
    number: object = value
    if isinstance(value, (str, bytes)):
        try:
            number = float(_text(value, name).strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number of seconds, 0 or more, not {value!r}")
    return float(number)


class ClusterOptions(NamedTuple):
    """An endpoint's cluster-mode options, checked (L{clusterOptions})."""

    workers: int
    workersWhy: str | None
    grace: float | None
    lameDuck: float | None
    control: str | None
    metrics: str | None


def clusterOptions(workers: object, grace: object = None, lameDuck: object = None, control: object = None, metrics: object = None) -> ClusterOptions:
    """
    Check an endpoint's C{workers}, C{grace}, C{lameDuck} (L{workerCount},
    L{seconds}), C{control} (L{controlPath}) and C{metrics}
    (L{metricsEndpoint}): all but the first are the cluster primary's, so
    they need C{workers} above 0.

    @raise ValueError: one line naming the bad option.
    """
    count = workerCount(workers)
    given = {"grace": grace, "lameduck": lameDuck, "control": control, "metrics": metrics}
    for name, value in given.items():
        if value is not None and not count:
            raise ValueError(f"{name} is a cluster primary's option: it needs workers=N (N above 0 or auto)")
    return ClusterOptions(
        count, autoWorkersWhy(workers), seconds("grace", grace), seconds("lameduck", lameDuck), controlPath(control), metricsEndpoint(metrics)
    )


def metricsEndpoint(value: object) -> str | None:
    """
    C{value} as the endpoint string the primary serves its metrics on
    (L{twisted_serversock.metrics}), checked (parsed, not bound); C{None}
    stays C{None}.

    @raise ValueError: for a description Twisted cannot parse, or without
        C{prometheus_client}, naming C{metrics}.
    """
    if value is None:
        return None
    from twisted.internet.endpoints import serverFromString

    from .metrics import needPrometheus

    description = _text(value, "metrics").strip()
    try:
        serverFromString(object(), description)  # only checked: no reactor is needed (or chosen) yet
    except Exception as e:
        raise ValueError(f"metrics={description!r}: {e}") from None
    needPrometheus("metrics=")
    return description


def controlPath(value: object) -> str | None:
    """
    C{value} as the path of a control socket (L{twisted_serversock.control});
    C{None} stays C{None}.

    @raise ValueError: for an empty path, a NUL byte, or one too long for a
        UNIX socket address, naming C{control}.
    """
    if value is None:
        return None
    path = _text(value, "control")
    if not path or "\0" in path:
        raise ValueError(f"control must be a socket file's path, not {path!r}")
    if len(path.encode()) > 107:
        raise ValueError(f"control: a UNIX socket path is at most 107 bytes, not {len(path.encode())}: {path!r}")
    return path


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not valid UTF-8: {value!r}") from None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    return value
