"""
The endpoint strings in real C{twistd} and C{twist} processes: serving
files with C{twistd web --listen gecko:...}, failing fast and clearly, UNIX
sockets answered by curl and removed on shutdown, C{.tac} files, and the
asyncio reactor (the dropin must not import a reactor).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from ._procs import STARTING, TWIST, TWISTD, spawn
from .conftest import connect, timeout


@pytest.fixture
def site() -> Iterator[str]:
    """
    A short, world-readable directory with a file to serve.
    """
    d = tempfile.mkdtemp(prefix="/tmp/tst")
    with open(os.path.join(d, "hello.txt"), "wb") as f:
        f.write(b"hello from gecko\n" * 1000)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def httpGet(port: int, path: str) -> bytes:
    client = await connect(port)
    client.transport.write(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
    return await client.whenClosed()


@pytest.mark.parametrize("reactorName", ["default", "asyncio"])
@pytest_twisted.ensureDeferred
async def test_twistdWebServesFile(site: str, reactorName: str) -> None:
    """
    C{twistd -n web --listen gecko:...} serves a file; with
    C{--reactor=asyncio} too, even with no plugin cache (which makes plugin
    discovery import every dropin before the reactor is chosen).
    """
    for d in {os.path.dirname(m.__file__ or "") for m in _dropinModules()}:
        cache = os.path.join(d, "dropin.cache")
        if reactorName == "asyncio" and os.access(d, os.W_OK) and os.path.exists(cache):
            os.unlink(cache)
    argv = TWISTD + ["-n", "--pidfile=", "--logfile=-"]
    if reactorName == "asyncio":
        argv.append("--reactor=asyncio")
    argv += ["web", "--listen", "gecko:port=0:loopback=1", "--path", site]
    proc = spawn(argv, site)
    try:
        port = int((await proc.waitFor(STARTING)).group(1))
        reply = await httpGet(port, "/hello.txt")
        assert reply.startswith(b"HTTP/1.0 200") or reply.startswith(b"HTTP/1.1 200")
        assert reply.endswith(b"hello from gecko\n" * 1000)
    finally:
        clean = await proc.stop()
    assert clean, proc.output
    assert "Traceback" not in proc.output
    if reactorName == "asyncio":
        assert "AsyncioSelectorReactor" in proc.output


def _dropinModules() -> list[Any]:
    import twisted.plugins.twisted_serversock_endpoints as dropin

    return [dropin]


@pytest_twisted.ensureDeferred
async def test_twistWeb(site: str) -> None:
    proc = spawn(TWIST + ["web", "--listen", "gecko:port=0:loopback=1", "--path", site], site)
    try:
        port = int((await proc.waitFor(STARTING)).group(1))
        reply = await httpGet(port, "/hello.txt")
        assert b" 200 " in reply.split(b"\r\n", 1)[0]
    finally:
        await proc.stop()


@pytest_twisted.ensureDeferred
async def test_busyPortFailsFast(site: str) -> None:
    """
    A busy port ends twistd by itself with a non-zero status and the
    error's name (no retrying; the wait is only a bound for a hang).
    """
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        proc = spawn(TWISTD + ["-n", "--pidfile=", "web", "--listen", f"gecko:port={busy.getsockname()[1]}:loopback=1"], site)
        code = await timeout(proc.ended, 30)
        assert code != 0
        assert "NS_ERROR_SOCKET_ADDRESS_IN_USE" in proc.output
    finally:
        busy.close()


@pytest.mark.parametrize(
    "description,words",
    [("gecko:port=abc", "port must be an integer"), ("gecko:port=1:colour=red", "unknown option 'colour'")],
)
@pytest_twisted.ensureDeferred
async def test_badStringFailsFast(site: str, description: str, words: str) -> None:
    proc = spawn(TWISTD + ["-n", "--pidfile=", "web", "--listen", description], site)
    code = await timeout(proc.ended, 30)
    assert code != 0
    assert words in proc.output


@pytest_twisted.ensureDeferred
async def test_geckounixWithCurl(site: str) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    path = os.path.join(site, "web.sock")
    proc = spawn(TWISTD + ["-n", "--pidfile=", "web", "--listen", f"geckounix:{path}:mode=0660", "--path", site], site)
    try:
        await proc.waitFor(r"Site starting on " + re.escape(repr(path)))
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o660)
        out, err, code = await timeout(
            getProcessOutputAndValue("curl", ["-s", "--unix-socket", path, "http://localhost/hello.txt"], env=dict(os.environ)),
            30,
        )
        assert code == 0, err
        assert out == b"hello from gecko\n" * 1000
    finally:
        clean = await proc.stop()
    assert clean, proc.output
    assert not os.path.exists(path), "twistd left the socket file behind"
    assert sorted(os.listdir(site)) == ["hello.txt"], "temporary entries were left behind"


TAC = """
from twisted.application import service, strports
from twisted_serversock.examples import echo

application = service.Application("gecko-echo")
strports.service("gecko:port=0:loopback=1", echo).setServiceParent(application)
"""


@pytest_twisted.ensureDeferred
async def test_tacFile(site: str) -> None:
    tac = os.path.join(site, "echo.tac")
    with open(tac, "w") as f:
        f.write(TAC)
    proc = spawn(TWISTD + ["-n", "--pidfile=", "-y", tac], site)
    try:
        port = int((await proc.waitFor(STARTING)).group(1))
        client = await connect(port)
        client.transport.write(b"tac echo")
        assert await client.waitFor(8) == b"tac echo"
        client.transport.loseConnection()
    finally:
        clean = await proc.stop()
    assert clean, proc.output
