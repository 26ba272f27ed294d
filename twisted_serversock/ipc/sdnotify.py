# -*- test-case-name: tests.test_lifecycle -*-
"""
systemd's service notification protocol (C{sd_notify}), without libsystemd:
newline-separated C{KEY=VALUE} lines in one datagram to the C{AF_UNIX}
socket C{NOTIFY_SOCKET} names (a leading C{@} is the abstract namespace).

With C{Type=notify} the unit is "active" only once C{READY=1} arrives, so
C{systemctl start} returns when the service can really serve;
C{WatchdogSec=} restarts a parent that stops sending C{WATCHDOG=1}.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["SystemdNotifier"]

_log = Logger()


class SystemdNotifier:
    """Notifies systemd when C{NOTIFY_SOCKET} is set; does nothing otherwise."""

    def __init__(self, reactor: Any, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode("utf-8", "surrogateescape")
        elif path.startswith("/"):
            self._address = path
        self._socket: socket.socket | None = None
        self._failed = False
        self._watchdog = LoopingCall(self.send, WATCHDOG=1)
        self._watchdog.clock = reactor
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        ours = self._address is not None and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid()))
        self._watchdogInterval = int(usec) / 2e6 if ours else 0.0

    def send(self, **fields: object) -> None:
        """Send one datagram of C{KEY=VALUE} lines (in the order given). Never blocks and never raises: a failure is logged once."""
        if self._address is None:
            return
        text = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto(text.encode("utf-8"), self._address)
        except OSError as e:
            if not self._failed:
                self._failed = True
                _log.warn("Could not notify systemd at NOTIFY_SOCKET: {error}", error=e)

    def ready(self, status: str) -> None:
        """Start-up or a reload is over."""
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def reloading(self, status: str) -> None:
        """A reload began (with the clock C{Type=notify-reload} wants)."""
        self.send(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1e6), STATUS=status)

    def stopping(self, status: str) -> None:
        """A stop began: the watchdog stops too."""
        self.send(STOPPING=1, STATUS=status)
        if self._watchdog.running:
            self._watchdog.stop()

    def status(self, status: str) -> None:
        """A new one-line status for C{systemctl status}."""
        self.send(STATUS=status)

    def startWatchdog(self) -> None:
        """Send C{WATCHDOG=1} now and every half C{WATCHDOG_USEC} from the reactor: a parent whose reactor is stuck is restarted."""
        if self._watchdogInterval and not self._watchdog.running:
            self._watchdog.start(self._watchdogInterval)
