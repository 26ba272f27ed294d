# -*- test-case-name: tests.test_control -*-
"""
The control socket of a primary: ask a running cluster (C{workers=N}) or
C{twistd serversock} how it is, and steer it, without signals.

A UNIX socket the primary listens on (C{control=PATH} on the endpoint,
C{--control PATH} for C{twistd serversock}), mode 0600 and only its own
uid and root allowed (checked with C{SO_PEERCRED}), so a local user who
can reach the file still cannot steer it.  Under C{twistd -u/-g} the
file is made before privileges are dropped, so it belongs to root and
root steers the cluster.  The client is
L{twisted_serversock.ctl} (C{serversockctl}).

The protocol is one JSON object per line each way, so that C{socat} and
a shell script can speak it too::

    {"command": "status"}                  -> {"ok": true, "status": {...}}
    {"command": "reload"}                  -> {"ok": true, "reloads": 3}
    {"command": "scale", "workers": "+1"}  -> {"ok": true, "workers": 3}
    anything else                          -> {"ok": false, "error": "..."}

Reading the status costs the primary nothing until someone asks: every
figure is a counter it keeps anyway, or read from C{/proc} on request.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from ._clusteroptions import MAX_WORKERS
from ._listeningport import GeckoListeningPort
from ._procstat import acceptQueue, processStats
from .results import NSError
from .serversocket import ServerSocket

__all__ = ["ControlFactory", "ControlTarget", "listenControl"]

_log = Logger()

#: The longest request line read; a longer one closes the connection.
MAX_REQUEST = 4096


class ControlTarget:
    """
    What the control socket reads and steers: a primary's pool (its
    workers), dispatcher (its connection counters) and routes (its
    listeners).

    @ivar primary: a L{Primary<twisted_serversock.ipc.primary.Primary>}.
    """

    def __init__(self, primary: Any, reactor: Any) -> None:
        self.primary, self._reactor = primary, reactor
        self._started = reactor.seconds()

    def status(self) -> dict[str, Any]:
        """Everything C{status} and C{top} show, as plain JSON values."""
        pool, dispatcher = self.primary.pool, self.primary.dispatcher
        now = self._reactor.seconds()
        workers = _describe(pool.workers.live, now) if pool is not None else []
        for worker in workers:
            stats = processStats(worker["pid"]) if worker["pid"] else None
            worker["rss"], worker["cpu"] = (stats.rss, stats.cpu) if stats is not None else (None, None)
        return {
            "pid": os.getpid(),
            "uptime": now - self._started,
            "stopping": self.primary.stopper.stopping,
            "target": len(pool.workers.slots) if pool is not None else 0,
            "reloads": pool.reloads if pool is not None else 0,
            "workers": workers,
            "listeners": [_listener(route) for route in dispatcher.routes.values()],
            "connections": {
                "accepted": dispatcher.accepted,
                "handedOff": dispatcher.adopted,
                "resent": dispatcher.redispatched,
                "refused": dispatcher.refused,
                "closedUnserved": dispatcher.dropped,
                "waiting": dispatcher.waiting,
                "inFlight": len(dispatcher.held) - dispatcher.waiting,  # held: sent or waiting
            },
            "acceptPauses": dispatcher.pauses,
        }

    def reload(self) -> int:
        """A fresh worker for every slot (as SIGHUP); the reload count after it."""
        pool = self._pool()
        pool.reload()
        return int(pool.reloads)

    def scale(self, target: str | int) -> int:
        """
        Workers to C{target}: a number, or C{"+N"}/C{"-N"} relative to now
        (as SIGTTIN/SIGTTOU, never below one nor above C{MAX_WORKERS}); the number after it.

        @raise ValueError: naming the bad C{target}.
        """
        pool = self._pool()
        now = len(pool.workers.slots)
        text = str(target).strip()
        if not re.fullmatch(r"[+-]?\d{1,4}", text):
            raise ValueError(f"workers must be a number or +N/-N, not {target!r}")
        wanted = now + int(text) if text[0] in "+-" else int(text)
        if wanted < 1:
            raise ValueError(f"workers must stay at 1 or more, not {wanted}")
        if wanted > MAX_WORKERS:
            raise ValueError(f"workers can be at most {MAX_WORKERS}, not {wanted}")
        for _ in range(wanted - now):
            pool.addWorker()
        for _ in range(now - wanted):
            pool.removeWorker()
        return len(pool.workers.slots)

    def _pool(self) -> Any:
        if self.primary.pool is None:
            raise ValueError("this primary has no workers")
        if self.primary.stopper.stopping:
            raise ValueError("the primary is stopping")
        return self.primary.pool


def _describe(live: list[Any], now: float) -> list[dict[str, Any]]:
    """Each live worker as plain values: number, pid, state, age, connections open and adopted, its slot's restarts."""
    return [
        {"index": w.index, "pid": w.pid, "state": w.state, "age": now - w.startedAt, "open": w.link.open, "served": w.link.adopted, "restarts": w.slot.restarts}
        for w in live
    ]


def _listener(route: Any) -> dict[str, Any]:
    """A route's name, whether accepting is paused, and its ports' accept queue (TCP only)."""
    queue = backlog = None
    for port in route.ports:
        fd = _listeningFd(port)
        depth = acceptQueue(fd) if fd is not None else None
        if depth is not None:
            queue, backlog = (queue or 0) + depth[0], (backlog or 0) + depth[1]
    return {"name": route.name, "paused": route.paused, "queue": queue, "backlog": backlog}


def _listeningFd(port: Any) -> int | None:
    """The listening socket's descriptor behind a gecko port (or a Twisted one), if it is open."""
    for name in ("serverSocket", "_port"):
        port = getattr(port, name, port)
    try:
        fd = int(port.fileno())
    except Exception:
        return None
    return fd if fd >= 0 else None


class ControlProtocol(LineOnlyReceiver):
    """One client of the control socket: a JSON request per line, a JSON answer each."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    factory: ControlFactory

    def lineReceived(self, line: bytes) -> None:
        """Answer one request (the answer's C{error} says what was wrong with a bad one)."""
        try:
            answer = self.factory.answer(line)
        except Exception:
            _log.failure("Control request {line!r} failed", line=line[:200])
            answer = {"ok": False, "error": "internal error (see the primary's log)"}
        self.sendLine(json.dumps(answer, separators=(",", ":")).encode())

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(json.dumps({"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"}).encode())
        if self.transport is not None:
            self.transport.loseConnection()


class ControlFactory(Factory):
    """Answers control requests about L{target<ControlTarget>}."""

    protocol = ControlProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(self, target: ControlTarget) -> None:
        self.target = target
        self._commands: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "status": lambda request: {"status": target.status()},
            "reload": self._reload,
            "scale": lambda request: {"workers": target.scale(request.get("workers", ""))},
        }

    def _reload(self, request: dict[str, Any]) -> dict[str, Any]:
        _log.info("Control socket: reload")
        return {"reloads": self.target.reload()}

    def answer(self, line: bytes) -> dict[str, Any]:
        """The answer to one request line (a clear C{error} for a bad one)."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # (nested too deep: not a request either)
            return {"ok": False, "error": "a request is one JSON object per line"}
        command = request.get("command") if isinstance(request, dict) else None
        handler = self._commands.get(command) if isinstance(command, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {command!r}; known: {', '.join(sorted(self._commands))}"}
        try:
            return {"ok": True, **handler(request)}
        except ValueError as e:
            return {"ok": False, "error": str(e)}


class _ControlAddress:
    """Where a control socket listens, bound as L{GeckoListeningPort} asks."""

    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor, self._path = reactor, path

    def bindServerSocket(self) -> ServerSocket:
        serv = ServerSocket(self._reactor)
        try:
            serv.initWithFilename(self._path, 0o600, -1, reclaimStale=True, allowedUids=["self", 0])
        except NSError as e:
            raise CannotListenError(None, self._path, e) from None
        return serv


def listenControl(reactor: Any, path: str, target: ControlTarget) -> IListeningPort:
    """
    Listen on the control socket C{path} for C{target}, now: a socket file
    of mode 0600 that only this process's uid (and root) may connect to; a
    stale file (nobody listening) is replaced, a live one is an error.

    @raise CannotListenError: the socket cannot be had (its C{socketError}
        says why).
    """
    port = GeckoListeningPort(_ControlAddress(reactor, path), ControlFactory(target))
    port.startListening()
    return port
