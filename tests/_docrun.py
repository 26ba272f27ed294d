"""
Runs one code block of the documentation, as a reader would: the helper
behind C{tests/test_docs.py}, started inside a private network and mount
namespace (so the documented fixed ports and paths, 8080 or C{/run/app.sock},
collide with nothing on the machine).

    python tests/_docrun.py BLOCK.json

A C{python} block is run as a script.  A C{sh} block's commands (comments
dropped, backslash continuations joined) run with C{bash} in order: a
command that starts a server (C{twistd}, C{twist}, C{daphne}, the example C{httpd}) is
started in the background and must pass its probe (the block's C{probe=}
entries, in order of the servers, or the C{curl} commands that follow it);
any other command must exit 0 (retried for a while once a server is
starting, as a reader would retry a C{curl}).  At the end every server gets
SIGTERM and must stop cleanly.  Exit status 0 if all of it worked; the
reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

WAIT = 60.0

#: A command that starts a long-running server.
SERVER = re.compile(r"(^|&&\s*|;\s*)(twistd|twist|daphne)\s|-m twisted_serversock\.examples\.httpd\b")


def commands(text: str) -> list[str]:
    """
    The shell commands of a block: continuation lines joined, comments and
    blank lines dropped.
    """
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


#: How a server started on any free port says which: Twisted's endpoint
#: log line, or the Quick start's print.
PORT_LOGGED = re.compile(rb"(?:listening on (?:port |(?:\[[^\]]*\]|[\d.]+):)|starting on )(\d+)")


class Output:
    """
    A server's output (standard output and error), read by a thread as it
    comes, so that whoever waits for the server can wake as soon as it says
    something (that it listens, on which port) or exits, instead of
    sleeping a fixed time between looks.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.data = bytearray()
        self.ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        while True:
            chunk = os.read(stream.fileno(), 65536)
            with self._changed:
                if chunk:
                    self.data += chunk
                else:
                    self.ended = True
                self._changed.notify_all()
            if not chunk:
                stream.close()
                return

    def search(self, pattern: re.Pattern[bytes], deadline: float) -> re.Match[bytes] | None:
        """
        Wait until the output matches C{pattern}, ends, or C{deadline}
        passes; the match, if any.
        """
        with self._changed:
            self._changed.wait_for(
                lambda: self.ended or pattern.search(self.data) is not None, max(0.0, deadline - time.monotonic())
            )
            return pattern.search(self.data)

    def waitForMore(self, seconds: float) -> None:
        """
        Wait until the server says something more or its output ends: what
        a retry waits for (a server logs when it starts listening).  At
        most C{seconds}, for a server that announces nothing.
        """
        with self._changed:
            seen = len(self.data)
            self._changed.wait_for(lambda: self.ended or len(self.data) > seen, seconds)

    def text(self) -> str:
        with self._changed:
            return self.data.decode("utf-8", "replace")


def probe(template: str, deadline: float, server: subprocess.Popen[bytes], log: Output) -> str | None:
    """
    Wait until C{template} answers: C{http://...} (any HTTP status below
    500), C{proxy+http://...} (the same, behind a PROXY protocol header),
    C{tcp://host:port} or C{unix:///path} (a line sent is answered with at
    least one byte).  C{{port}} in it is the port the server's output says
    it listens on.  An error message on failure, else None.
    """
    last = ""
    url = template
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"the server exited with status {server.returncode} before {url} answered"
        if "{port}" in template:
            m = log.search(PORT_LOGGED, deadline)
            if not m:
                if log.ended:  # it said all it will say: let poll() above see it exit
                    try:
                        server.wait(max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
                continue
            url = template.replace("{port}", m.group(1).decode())
        try:
            if url.startswith("proxy+http://"):
                hostport = url[len("proxy+http://") :].split("/", 1)[0]
                host, port = hostport.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=5) as skt:
                    skt.sendall(
                        f"PROXY TCP4 192.0.2.1 {host} 40000 {port}\r\nGET / HTTP/1.0\r\nHost: docs\r\n\r\n".encode()
                    )
                    if skt.recv(64).startswith(b"HTTP/1."):
                        return None
                    last = "no HTTP answer"
            elif url.startswith("http://"):
                try:
                    urllib.request.urlopen(url, timeout=5).read()
                except urllib.error.HTTPError as e:
                    if e.code >= 500:
                        raise
                return None
            else:
                if url.startswith("tcp://"):
                    host, port = url[len("tcp://") :].rsplit(":", 1)
                    skt = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
                elif url.startswith("unix://"):
                    skt = socket.socket(socket.AF_UNIX)
                    skt.settimeout(5)
                    skt.connect(url[len("unix://") :])
                else:
                    return f"unknown probe {url!r}"
                with skt:
                    skt.sendall(b"hello from the docs\r\n\r\n")
                    if skt.recv(1):
                        return None
                    last = "the connection closed without an answer"
        except Exception as e:
            last = f"{type(e).__name__}: {e}"
        log.waitForMore(0.2)
    return f"{url} did not answer within {WAIT:.0f} s ({last})"


def _scratchVenv() -> None:
    """
    A virtualenv of its own for a block that runs C{pip install}, first on
    C{PATH}: what it installs must not replace the test environment's
    editable install.  It sees the test environment's packages (the
    dependencies, and the build backend: the namespace has no network).
    """
    import site

    subprocess.run([sys.executable, "-m", "venv", "scratch"], check=True, timeout=WAIT)
    purelib = subprocess.run(
        ["scratch/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "testenv.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    os.environ["PATH"] = os.pathsep.join([os.path.abspath("scratch/bin"), os.environ["PATH"]])


def run(block: dict[str, Any]) -> str | None:
    """
    Run the block; an error message, or None if it worked.
    """
    os.environ["PYTHONUNBUFFERED"] = "1"
    probes = list(block["probes"])
    if block["lang"] == "python":
        with open("block.py", "w") as f:
            f.write(block["text"])
        if not probes:
            out = subprocess.run([sys.executable, "block.py"], capture_output=True, text=True, timeout=WAIT)
            if out.returncode != 0:
                return f"exit status {out.returncode}\n{out.stdout}{out.stderr}"
            return None
        cmds = [f"exec {sys.executable} block.py"]  # a server: probed, then stopped
    else:
        cmds = commands(block["text"])
    if any("pip install" in cmd for cmd in cmds):
        _scratchVenv()
    servers: list[tuple[str, subprocess.Popen[bytes], Output]] = []
    failure = None
    try:
        for i, cmd in enumerate(cmds):
            if SERVER.search(cmd) or block["lang"] == "python":
                # A reader stops one server (Ctrl-C) before starting the next.
                for running in servers:
                    failure = failure or stop(*running)
                proc = subprocess.Popen(
                    ["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
                )
                log = Output(proc)
                servers.append((cmd, proc, log))
                followedByCurl = i + 1 < len(cmds) and cmds[i + 1].startswith("curl ")
                if probes and not followedByCurl:
                    failure = failure or probe(probes.pop(0), time.monotonic() + WAIT * 2, proc, log)
                elif not followedByCurl:
                    failure = f"no probe for the server {cmd!r}: add probe=URL to the block's doc-test line"
            else:
                deadline = time.monotonic() + (WAIT if servers else 0)
                while True:
                    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=WAIT)
                    if out.returncode == 0 or time.monotonic() >= deadline:
                        break
                    servers[-1][2].waitForMore(0.3)
                if out.returncode != 0:
                    failure = f"{cmd!r}: exit status {out.returncode}\n{out.stdout}{out.stderr}"
            if failure:
                break
        if not failure and probes:
            failure = f"unused probes {probes}: the block starts fewer servers"
    finally:
        for running in servers:
            stopped = stop(*running)  # always: a failed block must not leave its servers running
            failure = failure or stopped
        if failure:
            for cmd, proc, log in servers:
                failure += f"\n--- output of {cmd!r}:\n{log.text()[-4000:]}"
    return failure


def stop(cmd: str, proc: subprocess.Popen[bytes], log: Output) -> str | None:
    """
    Stop a server with SIGTERM (once); why that was not clean, if it was not.
    """
    if getattr(proc, "stopped", False):
        return None
    proc.stopped = True  # type: ignore[attr-defined]
    early = proc.poll()
    if early is not None:
        return f"{cmd!r} exited early with status {early}"
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        status = proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"{cmd!r} did not stop on SIGTERM"
    if status not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
        return f"{cmd!r} stopped with status {status}"
    return None


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        problem = run(json.load(f))
    if problem:
        sys.stderr.write(problem + "\n")
        sys.exit(1)
