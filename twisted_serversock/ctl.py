"""
C{serversockctl} (also C{python -m twisted_serversock.ctl}): see and
steer a running cluster through its control socket
(L{twisted_serversock.control}), in the style of C{systemctl} and
C{gunicornc}::

    serversockctl -s /run/app.ctl status          # a table; --json for machines
    serversockctl -s /run/app.ctl top             # the same, live, with CPU %
    serversockctl -s /run/app.ctl reload          # fresh workers (as SIGHUP)
    serversockctl -s /run/app.ctl scale +1        # or -1, or a number

C{-s} defaults to C{$SERVERSOCK_CONTROL}.  Exit status 0 when the primary
did what was asked, 1 when it answered with an error or could not be
reached (one line on standard error saying why), 2 for bad arguments.

A command-line program, not library code: it blocks, and writes to its
standard output.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import time
from typing import Any, TextIO

__all__ = ["ControlError", "main", "render", "request"]


class ControlError(Exception):
    """The control socket could not be used, or the primary answered with an error; the message says which."""


def request(path: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """
    Send one request to the control socket at C{path}; its answer.

    @raise ControlError: nothing listens there, the caller is not allowed,
        or the primary answered C{ok: false}.
    """
    skt = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    skt.settimeout(timeout)
    try:
        try:
            skt.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no control socket at {path} (is the cluster running with control={path}?)") from None
        except PermissionError:
            raise ControlError(f"not allowed to use {path}: the control socket admits the cluster's own user and root") from None
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                raise ControlError(f"nothing is listening at {path} (the cluster is not running)") from None
            raise ControlError(f"{path}: {e.strerror or e}") from None
        try:
            skt.sendall(json.dumps(message).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            answer = b""  # closed at once: turned away (see below)
        else:
            answer = _readLine(skt)
    except socket.timeout:
        raise ControlError(f"no answer from the cluster at {path} within {timeout:g} s (is its primary stopped or busy?)") from None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        skt.close()
    if not answer:
        raise ControlError(f"the cluster at {path} closed the connection without an answer: this user is not allowed to steer it")
    try:
        reply: dict[str, Any] = json.loads(answer)
    except ValueError:
        raise ControlError(f"the answer from {path} is not JSON: is it a twisted-serversock control socket?") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the answer from {path} is not a JSON object: is it a twisted-serversock control socket?")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the cluster refused the request")))
    return reply


def _readLine(skt: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = skt.recv(65536)
        except ConnectionResetError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):.1f}M"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def render(status: dict[str, Any], cpuPercent: dict[int, float] | None = None) -> str:
    """
    C{status} (a control socket's answer) as the table C{status} and
    C{top} print; with C{cpuPercent} (pid: percent of one CPU), a CPU%
    column instead of the CPU seconds.
    """
    c = status["connections"]
    serving = sum(1 for w in status["workers"] if w["state"] == "serving")
    lines = [
        f"primary pid {status['pid']}, up {_duration(status['uptime'])}{', stopping' if status['stopping'] else ''}: "
        f"{serving} of {status['target']} worker(s) serving, {status['reloads']} reload(s)",
        f"connections: {c['accepted']} accepted, {c['handedOff']} handed off, {c['resent']} re-sent, "
        f"{c['closedUnserved']} closed unserved, {c['inFlight']} in flight, {c['waiting']} waiting",
        "",
        f"{'WORKER':>6} {'PID':>7} {'STATE':<9} {'OPEN':>6} {'SERVED':>8} {'RESTARTS':>8} {'RSS':>8} {'CPU%' if cpuPercent is not None else 'CPU':>7} {'AGE':>7}",
    ]
    for w in status["workers"]:
        if cpuPercent is not None:
            cpu = f"{cpuPercent[w['pid']]:.1f}" if w["pid"] in cpuPercent else "-"
        else:
            cpu = "-" if w["cpu"] is None else f"{w['cpu']:.1f}s"
        lines.append(
            f"{w['index']:>6} {w['pid']:>7} {w['state']:<9} {w['open']:>6} {w['served']:>8} {w['restarts']:>8} {_size(w['rss']):>8} {cpu:>7} {_duration(w['age']):>7}"
        )
    lines += ["", f"{'LISTENER':<50} {'QUEUE':>6} {'BACKLOG':>8} PAUSED"]
    for listener in status["listeners"]:
        queue, backlog = ("-" if listener[k] is None else str(listener[k]) for k in ("queue", "backlog"))
        lines.append(f"{listener['name'][:50]:<50} {queue:>6} {backlog:>8} {'yes' if listener['paused'] else 'no'}")
    return "\n".join(lines)


def _top(path: str, interval: float, count: int, out: TextIO, timeout: float) -> None:
    """Print L{render} every C{interval} seconds (C{count} times; 0: until interrupted), with CPU % since the last."""
    before: tuple[float, dict[int, float]] | None = None
    shown = 0
    while True:
        status = request(path, {"command": "status"}, timeout)["status"]
        now = time.monotonic()
        cpu = {w["pid"]: w["cpu"] for w in status["workers"] if w["cpu"] is not None}
        percent: dict[int, float] = {}
        if before is not None and now > before[0]:
            percent = {pid: 100 * (used - before[1][pid]) / (now - before[0]) for pid, used in cpu.items() if pid in before[1]}
        before = (now, cpu)
        if out.isatty():
            out.write("\x1b[H\x1b[2J")
        out.write(render(status, percent) + "\n\n")
        out.flush()
        shown += 1
        if count and shown >= count:
            return
        time.sleep(interval)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serversockctl", description="See and steer a running twisted-serversock cluster through its control socket.")
    parser.add_argument("-s", "--socket", default=os.environ.get("SERVERSOCK_CONTROL"), help="the control socket's path (default: $SERVERSOCK_CONTROL)")
    parser.add_argument("-t", "--timeout", type=float, default=10.0, help="seconds to wait for the primary's answer (default 10)")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="workers, connections and listeners, once")
    status.add_argument("--json", action="store_true", help="the primary's answer as JSON")
    top = commands.add_parser("top", help="the status, live, with each worker's CPU %%")
    top.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between updates (default 1)")
    top.add_argument("-n", "--count", type=int, default=0, help="stop after this many updates (default: until interrupted)")
    commands.add_parser("reload", help="a fresh worker for every one (as SIGHUP); old ones finish their connections")
    scale = commands.add_parser("scale", help="set the number of workers: N, +N or -N")
    scale.add_argument("workers", help="N, +N or -N")
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run C{serversockctl} with C{argv}; its exit status."""
    out = out if out is not None else sys.stdout
    args = _parser().parse_args(argv)
    if not args.socket:
        print("serversockctl: give the control socket's path (-s PATH, or $SERVERSOCK_CONTROL)", file=sys.stderr)
        return 2
    try:
        if args.command == "status":
            status = request(args.socket, {"command": "status"}, args.timeout)["status"]
            out.write((json.dumps(status, indent=2) if args.json else render(status)) + "\n")
        elif args.command == "top":
            _top(args.socket, args.interval, args.count, out, args.timeout)
        elif args.command == "reload":
            out.write(f"reloading: reload {request(args.socket, {'command': 'reload'}, args.timeout)['reloads']}\n")
        else:
            out.write(f"{request(args.socket, {'command': 'scale', 'workers': args.workers}, args.timeout)['workers']} worker(s)\n")
    except ControlError as e:
        print(f"serversockctl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
