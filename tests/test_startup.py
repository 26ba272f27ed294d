"""
A newcomer's first commands, under the installed C{twistd} and C{twist}
scripts: C{twist serversock} serves as C{twistd -n serversock} does; a
C{--factory} module in the working directory is found (and an unimportable
one says where it was looked for); and every start-up failure (busy port,
missing directory, permission denied, privileged port as non-root, stale
socket file) is one line naming the endpoint, the Gecko result and what to
do, with a non-zero exit - and under other plugins (C{twistd web}) the
traceback's last line says the same.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from typing import Iterator

import pytest
import pytest_twisted

from ._procs import TWIST, TWISTD, echo, serving, spawn, stopCleanly
from .conftest import asNobody, timeout, unprivilegedPythonPath

SHOUT = textwrap.dedent(
    """
    from twisted.internet.protocol import Factory, Protocol

    class Shout(Protocol):
        def dataReceived(self, data):
            self.transport.write(data.upper())

    def make():
        return Factory.forProtocol(Shout)
    """
)


@pytest.fixture
def enterableWorkdir() -> Iterator[str]:
    """
    A short directory that the unprivileged user may enter but not write
    (unlike conftest's C{workdir}, which is private to us): the working
    directory of the processes these tests start, some as that user.
    """
    d = tempfile.mkdtemp(prefix="/tmp/sst")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest_twisted.ensureDeferred
async def test_twistServesAsTwistdDoes(enterableWorkdir: str, workers: str) -> None:
    """
    C{twist serversock} (which never calls C{privilegedStartService})
    listens, serves the factory from the working directory - in the
    workers too - and stops cleanly on SIGTERM.
    """
    with open(os.path.join(enterableWorkdir, "shout.py"), "w") as f:
        f.write(SHOUT)
    argv = TWIST + ["serversock", "--listen", "gecko:port=0:loopback=1", "--workers", workers, "--factory", "shout.make"]
    proc = spawn(argv, enterableWorkdir)
    try:
        port = await serving(proc, int(workers))
        for _ in range(4):
            assert await echo(port, b"twist") == b"TWIST"
    finally:
        status = await stopCleanly(proc)
    assert status == 0, proc.output
    assert "Traceback" not in proc.output


@pytest.mark.parametrize("program", ["twistd", "twist"])
def test_unimportableFactorySaysWhereItLooked(enterableWorkdir: str, program: str) -> None:
    """
    A factory that cannot be found: one line that names the working
    directory and C{sys.path}, and says how to make it found.
    """
    argv = (TWISTD + ["-n", "--pidfile="] if program == "twistd" else TWIST) + ["serversock", "--factory", "myapp.factory"]
    out = subprocess.run(argv, cwd=enterableWorkdir, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    (line,) = [line for line in text.splitlines() if "--factory myapp.factory cannot be imported" in line]
    assert f"in the working directory {enterableWorkdir}" in line
    assert "site-packages" in line
    assert "run from the directory that holds myapp.py" in line and "PYTHONPATH" in line
    assert "Traceback" not in text


def _nobodyTwistd(enterableWorkdir: str) -> list[str]:
    """
    The installed C{twistd} script, run as the unprivileged user: a copy of
    it (CI's virtualenv is not readable by others) run by the real
    interpreter, with the packages on a C{PYTHONPATH} that user can read.
    Not C{python -c}: that would put the working directory on C{sys.path}.
    """
    script = os.path.join(enterableWorkdir, "twistd")
    shutil.copy(TWISTD[0], script)
    os.chmod(script, 0o755)
    # -S: not the interpreter's own site-packages, which may hold another
    # (partial) set of packages; only the PYTHONPATH the test gives.
    return asNobody([os.path.realpath(sys.executable), "-S", script])


#: (case, endpoint template, as the unprivileged user, Gecko result, advice)
FAILURES = [
    ("busy port", "gecko:port={busy}:loopback=1", False, "NS_ERROR_SOCKET_ADDRESS_IN_USE", "choose another port"),
    ("missing directory", "geckounix:{dir}/missing/app.sock", False, "NS_ERROR_FILE_NOT_FOUND", "mkdir -p {dir}/missing"),
    ("permission denied", "geckounix:{dir}/app.sock", True, "NS_ERROR_CONNECTION_REFUSED", "may not create files in {dir}"),
    ("privileged port", "gecko:port=80:loopback=1", True, "NS_ERROR_CONNECTION_REFUSED", "ports below 1024 need root"),
    ("stale socket file", "geckounix:{dir}/stale.sock", False, "NS_ERROR_SOCKET_ADDRESS_IN_USE", "add reclaim=1"),
]


@pytest.mark.parametrize("plugin", ["serversock", "web"])
@pytest.mark.parametrize("case, template, unprivileged, result, advice", FAILURES, ids=[f[0] for f in FAILURES])
def test_startupFailureIsOneLine(
    enterableWorkdir: str, plugin: str, case: str, template: str, unprivileged: bool, result: str, advice: str
) -> None:
    """
    C{twistd serversock}: one line (no traceback) naming the C{--listen}
    endpoint, the result and the advice, and a non-zero exit.  C{twistd
    web} (Twisted's own plugin, which prints a traceback): its last line
    carries the same result and advice.
    """
    if unprivileged and os.getuid() != 0 and case == "permission denied":
        pytest.skip("needs root, to run the bind as another user")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(os.path.join(enterableWorkdir, "stale.sock"))
    stale.close()  # the file stays: nothing listens on it any more
    description = template.format(busy=busy.getsockname()[1], dir=enterableWorkdir)
    advice = advice.format(dir=enterableWorkdir)
    if unprivileged:
        argv = _nobodyTwistd(enterableWorkdir)
        env = dict(os.environ, PYTHONPATH=unprivilegedPythonPath())
    else:
        argv, env = list(TWISTD), dict(os.environ)
    argv += ["-n", "--pidfile=", plugin, "--listen", description]
    if plugin == "serversock":
        argv += ["--workers", "1"]
    try:
        out = subprocess.run(argv, cwd=enterableWorkdir, env=env, capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    if plugin == "serversock":
        lines = [line for line in text.splitlines() if "cannot listen" in line]
        assert len(lines) == 1, text
        assert re.search(rf"twistd serversock: cannot listen on --listen {re.escape(description)}: {result} \(0x", lines[0]), text
        line = lines[0]
        assert "Traceback" not in text
        assert "Started worker" not in text
    else:
        line = text.strip().splitlines()[-1]
        assert "CannotListenError" in line and result in line, text
    assert advice in line, text
    if case == "stale socket file":
        assert stat.S_ISSOCK(os.lstat(os.path.join(enterableWorkdir, "stale.sock")).st_mode), "left alone"


@pytest_twisted.ensureDeferred
async def test_twistStartupFailureIsOneLine(enterableWorkdir: str) -> None:
    """
    Under C{twist} too, a port that cannot be had is one line and a
    non-zero exit, with nothing served.
    """
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        description = f"gecko:port={port}:loopback=1"
        proc = spawn(TWIST + ["serversock", "--listen", description, "--workers", "1"], enterableWorkdir)
        status = await timeout(proc.ended, 60)
    finally:
        busy.close()
    assert status != 0
    lines = [line for line in proc.output.splitlines() if "cannot listen" in line]
    assert lines == [
        f"twist serversock: cannot listen on --listen {description}: NS_ERROR_SOCKET_ADDRESS_IN_USE (0x804B0036): "
        f"listen on 127.0.0.1:{port} (backlog {socket.SOMAXCONN}): Address already in use; another socket is bound "
        f"to port {port}: stop the program that has it (ss -ltnp 'sport = :{port}' names it), or choose another "
        f"port (port=0 picks a free one)"
    ], proc.output
    assert "Traceback" not in proc.output and "Started worker" not in proc.output
