"""
The group of a UNIX socket file.

A web server reaches an application's socket through its group: nginx's
workers run as www-data, the socket is mode 0660 and must belong to
www-data - either because it is created in a set-group-ID www-data
directory (as Twisted's own C{unix:} does there) or because C{group=} says
so (like systemd's C{SocketGroup=}).  Proved with a real nginx, running its
workers as www-data, proxying to C{twistd -n web} (the installed script) on
a C{geckounix:} socket, and answering 200.

CI runs as root: nginx's master must be root to run its workers as
www-data.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.utils import getProcessOutputAndValue

from twisted_serversock import NSError
from twisted_serversock.endpoints import GeckoUNIXServerEndpoint

from ._hardening import CollectingProcess
from .conftest import Recorder, asNobody, code, connectUNIX, eventually, nobodyEnv, statesSeenWhileBinding, timeout, theReactor
from ._procs import TWISTD, Proc, spawn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux UNIX-domain semantics")

ROOT = os.getuid() == 0


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


WWW = _gid("www-data")
needsWWW = pytest.mark.skipif(WWW is None, reason="no www-data group on this host")


def _nginx() -> str | None:
    return shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


@pytest.fixture
def top() -> Iterator[str]:
    """
    A short, world-searchable directory (nginx's workers, as www-data, must
    reach what is in it).
    """
    d = tempfile.mkdtemp(prefix="/tmp/tsg")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def setgidDirectory(parent: str, gid: int) -> str:
    """
    A directory of group C{gid}, mode 02770: set-group-ID, so that what is
    created in it belongs to C{gid}; only its owner and that group may enter.
    """
    path = os.path.join(parent, "run")
    os.mkdir(path)
    os.chown(path, -1, gid)
    os.chmod(path, 0o2770)
    return path


# ----------------------------------------------------------------------
# The Gecko API, on real sockets.


@needsWWW
@pytest.mark.skipif(not ROOT, reason="needs root to create a www-data directory")
@pytest_twisted.ensureDeferred
async def test_setgidDirectoryGivesItsGroup(servers: Any, top: str) -> None:
    """
    In a set-group-ID directory, the socket gets the directory's group
    (it used to get the process's: the private bind directory was chmod-ed
    0700, which cleared the bit).
    """
    assert WWW is not None and WWW != os.getgid()
    run = setgidDirectory(top, WWW)
    path = os.path.join(run, "app.sock")
    srv = servers()
    srv.initWithFilename(path, 0o660, -1)
    st = os.lstat(path)
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (WWW, 0o660)
    assert sorted(os.listdir(run)) == ["app.sock"]
    rec = Recorder()
    srv.asyncListen(rec)
    client = await connectUNIX(path)
    t = await rec.nextAccepted()
    t.close(0)
    await client.whenClosed()


@pytest.mark.parametrize("form", ["name", "gid", "digits"])
@pytest_twisted.ensureDeferred
async def test_groupArgument(servers: Any, top: str, form: str) -> None:
    """
    C{group=} (a name, a gid, or a string of digits) gives the socket file
    that group; the mode stays exact.  (A process may always give its files
    a group it is in: its own group works unprivileged too.)
    """
    gid = WWW if ROOT and WWW is not None else os.getgid()
    name = grp.getgrgid(gid).gr_name
    group: Any = {"name": name, "gid": gid, "digits": str(gid)}[form]
    path = os.path.join(top, "app.sock")
    srv = servers()
    srv.initWithFilename(path, 0o660, -1, group=group)
    st = os.lstat(path)
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (gid, 0o660)
    assert os.listdir(top) == ["app.sock"]


@pytest.mark.parametrize("group", ["no-such-group-tss", "", 1.5, -1, True])
def test_badGroup(servers: Any, top: str, group: Any) -> None:
    with pytest.raises(NSError) as e:
        servers().initWithFilename(os.path.join(top, "app.sock"), 0o660, -1, group=group)
    assert code(e) == "NS_ERROR_INVALID_ARG"
    assert "group" in str(e.value)
    assert os.listdir(top) == []


@pytest.mark.skipif(not ROOT, reason="needs root to give a file another group than its own")
def test_groupNeverSeenOtherwise(servers: Any, top: str) -> None:
    """
    A watcher thread polling the path while sockets are created there with
    C{group=} never sees one with another group or mode.  (It can miss a
    window, but not invent one.)
    """
    gid = WWW if WWW is not None else 4321
    path = os.path.join(top, "app.sock")

    def bind() -> None:
        srv = servers()
        srv.initWithFilename(path, 0o660, -1, group=gid)
        srv.close()

    seen = statesSeenWhileBinding(path, bind, lambda st: (st.st_gid, stat.S_IMODE(st.st_mode)))
    assert seen <= {(gid, 0o660)}
    assert os.listdir(top) == []


@pytest.mark.skipif(not ROOT, reason="needs root to run as nobody")
def test_groupNotOursUnprivileged(top: str) -> None:
    """
    An unprivileged process may not give its socket a group it is not in:
    a clear error naming the group, and nothing left behind.
    """
    os.chown(top, 65534, 65534)
    script = (
        "import sys\n"
        "from twisted_serversock import ServerSocket, NSError, results\n"
        "try:\n"
        "    ServerSocket().initWithFilename(sys.argv[1], 0o660, -1, group=0)\n"
        "except NSError as e:\n"
        "    print(results.nameOf(e.result), e)\n"
    )
    out = subprocess.run(
        asNobody([sys.executable, "-c", script, os.path.join(top, "app.sock")]),
        capture_output=True, text=True, env=nobodyEnv(), cwd="/", timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "group 0" in out.stdout, out.stdout
    assert os.listdir(top) == []


@pytest_twisted.ensureDeferred
async def test_endpointGroup(top: str) -> None:
    """
    C{GeckoUNIXServerEndpoint(group=...)} reaches the socket file.
    """
    gid = WWW if ROOT and WWW is not None else os.getgid()
    path = os.path.join(top, "a.sock")
    endpoint = GeckoUNIXServerEndpoint(theReactor(), path=path, mode=0o660, group=grp.getgrgid(gid).gr_name)
    port = await timeout(endpoint.listen(protocol.Factory.forProtocol(protocol.Protocol)))
    try:
        assert os.lstat(path).st_gid == gid
    finally:
        await timeout(port.stopListening())
    assert os.listdir(top) == []


# ----------------------------------------------------------------------
# A real nginx, running its workers as www-data, in front of twistd web.


_NGINX_CONF = """\
user www-data;
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen unix:{d}/nginx.sock;
        location / {{ proxy_pass http://unix:{app}:/; }}
    }}
}}
"""


async def nginxGet(top: str, app: str, url: str) -> tuple[int, bytes, str]:
    """
    Start nginx (workers as www-data) proxying to the UNIX socket C{app},
    GET C{url} through it with curl, stop nginx.

    @return: the status, the body and nginx's error log.
    """
    nginx = _nginx()
    assert nginx is not None
    d = os.path.join(top, "nginx")
    os.mkdir(d)
    os.chmod(d, 0o755)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(_NGINX_CONF.format(d=d, app=app))
    proc = CollectingProcess()
    theReactor().spawnProcess(proc, nginx, [nginx, "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf], env=dict(os.environ))
    try:
        await eventually(lambda: os.path.exists(os.path.join(d, "nginx.sock")) or proc.ended.called)
        assert not proc.ended.called, proc.out + proc.err
        out, err, status = await timeout(
            getProcessOutputAndValue(
                "curl",
                ["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--unix-socket", os.path.join(d, "nginx.sock"), url],
                env=dict(os.environ),
            ),
            30,
        )
        assert status == 0, err
        body, _, code_ = out.rpartition(b"\n")
    finally:
        if not proc.ended.called:
            proc.transport.signalProcess(signal.SIGQUIT)
        await timeout(proc.ended, 30)
    with open(os.path.join(d, "error.log")) as f:
        log = f.read()
    return int(code_), body, log


needsNginx = pytest.mark.skipif(
    not (ROOT and WWW is not None and _nginx() and shutil.which("curl")),
    reason="needs root, a www-data group, nginx and curl (.ci/run installs them)",
)


@needsNginx
@pytest.mark.parametrize("case", ["setgid-directory", "group-option", "twisted-unix-baseline"])
@pytest_twisted.ensureDeferred
async def test_nginxAsWWWData(top: str, case: str) -> None:
    """
    nginx (workers as www-data) answers 200 for a file that C{twistd -n web}
    serves on C{geckounix:...:mode=0660}: in a set-group-ID www-data
    directory with no C{group=}, and in a plain directory with
    C{group=www-data}.  (The baseline: Twisted's own C{unix:} in the
    set-group-ID directory.)
    """
    site = os.path.join(top, "site")
    os.mkdir(site)
    os.chmod(site, 0o755)
    with open(os.path.join(site, "hello.txt"), "wb") as f:
        f.write(b"hello through nginx\n")
    assert WWW is not None
    if case == "setgid-directory":
        app = os.path.join(setgidDirectory(top, WWW), "app.sock")
        listen = f"geckounix:{app}:mode=0660"
    elif case == "twisted-unix-baseline":
        app = os.path.join(setgidDirectory(top, WWW), "app.sock")
        listen = f"unix:{app}:mode=660"
    else:
        app = os.path.join(top, "app.sock")
        listen = f"geckounix:{app}:mode=0660:group=www-data"
    twistd: Proc = spawn(TWISTD + ["-n", "--pidfile=", "--logfile=-", "web", "--listen", listen, "--path", site], top)
    try:
        await eventually(lambda: os.path.exists(app) or twistd.ended.called, 30)
        assert not twistd.ended.called, twistd.output
        status, body, log = await nginxGet(top, app, "http://localhost/hello.txt")
        assert (status, body) == (200, b"hello through nginx\n"), log
        st = os.lstat(app)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (WWW, 0o660)
    finally:
        assert await twistd.stop(), twistd.output
    assert not os.path.exists(app)
