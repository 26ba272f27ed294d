"""
Hardening: UNIX socket paths with symbolic links in the way, and a
directory someone else can write to.

The rules (C{twisted_serversock._unix}, C{docs/unix.md}): a symbolic link
at the final component is never followed - not at the check, not at the
link into place, not for the lock file, not at close; links above it are
followed as in any path, but the parent is resolved once, and our private
directory must still be ours when we bind in it.

Cases already covered in C{test_unix.py} and not repeated here: a link at
the path, dangling or to a file or to a stale socket
(C{test_otherEntriesInWay}); a link put at the path after the bind, at close
(C{test_closeLeavesReplacedPath}); a file appearing at the path just before
the link (C{test_raceAtLink}).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from typing import Any, Iterator

import pytest

from twisted_serversock import NSError, _unix

from .conftest import asNobody, code, nobodyEnv

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux UNIX-domain semantics")

NOBODY = 65534
ROOT = os.getuid() == 0


@pytest.fixture
def base() -> Iterator[str]:
    """
    A short, world-searchable directory holding C{attic} (writable by
    everyone, sticky or not, per test) and C{link -> attic}.
    """
    path = tempfile.mkdtemp(prefix="/tmp/tssh")
    os.chmod(path, 0o755)
    os.mkdir(os.path.join(path, "attic"))
    os.symlink("attic", os.path.join(path, "link"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def attic(base: str, sticky: bool) -> str:
    d = os.path.join(base, "attic")
    os.chmod(d, 0o1777 if sticky else 0o777)
    if ROOT:
        os.chown(d, NOBODY, NOBODY)
    return d


def privateDirs(d: str) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith(".tss-")]


_CONNECT = r"""
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(errno.errorcode[e.errno])
else:
    print("connected")
"""


def connectAsNobody(path: str) -> str:
    out = subprocess.run(
        asNobody([sys.executable, "-c", _CONNECT, path]),
        capture_output=True,
        text=True,
        env=nobodyEnv(),
        cwd="/",
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("sticky", [True, False], ids=["sticky", "not-sticky"])
def test_parentIsSymlinkToWorldWritableDirectory(servers: Any, base: str, sticky: bool) -> None:
    """
    A symbolic link above the socket is followed: the socket lands in the
    directory it leads to, with exactly the mode asked for, owned by us, and
    reachable by its path; another user (who may write to that directory)
    cannot connect to a 0600 socket, and close removes it through the link.
    """
    d = attic(base, sticky)
    path = os.path.join(base, "link", "app.sock")
    srv = servers()
    srv.initWithFilename(path, 0o600, -1)
    real = os.path.join(d, "app.sock")
    st = os.lstat(real)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert privateDirs(d) == []
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)  # queued: listen() was called before the link
    if ROOT:
        assert connectAsNobody(path) == "EACCES"
    srv.close()
    assert os.listdir(d) == []


@pytest.mark.skipif(not ROOT, reason="playing the other user needs root")
def test_privateDirectorySwappedIsRefused(servers: Any, base: str, monkeypatch: Any) -> None:
    """
    In a directory others may write to (not sticky), another user renames
    our fresh private directory away and puts their own in its place before
    we bind: the bind is refused, nothing appears at the path, and their
    directory is left alone.
    """
    d = attic(base, sticky=False)
    path = os.path.join(d, "app.sock")
    real = _unix._makePrivate
    swapped: list[bytes] = []

    def makeThenSwap(parentFD: int) -> bytes:
        name = real(parentFD)
        # The other user's move: ours away, theirs (mode 0777) in its place.
        os.rename(name, b".moved-away", src_dir_fd=parentFD, dst_dir_fd=parentFD)
        os.mkdir(name, dir_fd=parentFD)
        os.chown(name, NOBODY, NOBODY, dir_fd=parentFD)
        os.chmod(os.path.join(os.fsencode(d), name), 0o777)
        swapped.append(name)
        return name

    monkeypatch.setattr(_unix, "_makePrivate", makeThenSwap)
    fds = len(os.listdir("/proc/self/fd"))
    srv = servers()
    with pytest.raises(NSError) as e:
        srv.initWithFilename(path, 0o600, -1)
    monkeypatch.undo()
    assert code(e) == "NS_ERROR_FAILURE"
    assert "owned by uid 65534" in str(e.value)
    assert not os.path.lexists(path)
    theirs = os.path.join(d, os.fsdecode(swapped[0]))
    assert os.stat(theirs).st_uid == NOBODY and os.listdir(theirs) == []
    assert len(os.listdir("/proc/self/fd")) == fds
    # The object is still usable.
    srv.initWithFilename(path, 0o600, -1)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_symlinkAppearsAtFinalComponent(servers: Any, base: str, monkeypatch: Any) -> None:
    """
    A symbolic link put at the path between the check and the link into
    place (pointing where the socket would do harm): link() does not
    follow it, the bind fails with NS_ERROR_SOCKET_ADDRESS_IN_USE, and
    nothing is created where it points.
    """
    d = attic(base, sticky=True)
    path = os.path.join(d, "app.sock")
    victim = os.path.join(base, "victim.sock")
    realLink = os.link

    def racingLink(*args: Any, **kwargs: Any) -> None:
        os.symlink(victim, path)
        realLink(*args, **kwargs)

    monkeypatch.setattr(os, "link", racingLink)
    with pytest.raises(NSError) as e:
        servers().initWithFilename(path, 0o600, -1)
    monkeypatch.undo()
    assert code(e) == "NS_ERROR_SOCKET_ADDRESS_IN_USE"
    assert os.readlink(path) == victim
    assert not os.path.lexists(victim)
    assert sorted(os.listdir(d)) == ["app.sock"]


@pytest.mark.parametrize("target", ["file", "dangling"])
def test_lockFileSymlinkNotFollowed(servers: Any, base: str, target: str) -> None:
    """
    C{reclaimStale} with a symbolic link planted at C{path + ".lock"}: it
    is not followed (neither created, truncated nor chmod-ed through), and
    the bind fails.
    """
    d = attic(base, sticky=True)
    path = os.path.join(d, "app.sock")
    precious = os.path.join(base, "precious")
    if target == "file":
        with open(precious, "wb") as f:
            f.write(b"keep me")
        os.chmod(precious, 0o644)
    os.symlink(precious, path + ".lock")
    with pytest.raises(NSError) as e:
        servers().initWithFilename(path, 0o600, -1, reclaimStale=True)
    assert code(e) == "NS_ERROR_FILE_UNRESOLVABLE_SYMLINK"
    assert not os.path.lexists(path)
    if target == "file":
        with open(precious, "rb") as f:
            assert f.read() == b"keep me"
        assert stat.S_IMODE(os.stat(precious).st_mode) == 0o644
    else:
        assert not os.path.lexists(precious)
    assert sorted(os.listdir(d)) == ["app.sock.lock"]


def test_parentRepointedBeforeClose(servers: Any, base: str) -> None:
    """
    The link above the socket is re-pointed while the socket is open, to a
    directory with a socket of the same name: close removes nothing there
    (it is not our inode).  Ours stays where it was created.
    """
    d = attic(base, sticky=True)
    other = os.path.join(base, "other")
    os.mkdir(other)
    srv = servers()
    srv.initWithFilename(os.path.join(base, "link", "app.sock"), 0o600, -1)
    theirs = socket.socket(socket.AF_UNIX)
    theirs.bind(os.path.join(other, "app.sock"))
    theirs.close()
    link = os.path.join(base, "link")
    os.unlink(link)
    os.symlink("other", link)
    srv.close()
    assert stat.S_ISSOCK(os.lstat(os.path.join(other, "app.sock")).st_mode)
    assert stat.S_ISSOCK(os.lstat(os.path.join(d, "app.sock")).st_mode)


def test_privateDirectoryNameIsNotFollowed(servers: Any, base: str, monkeypatch: Any) -> None:
    """
    If the private directory's name is turned into a symbolic link before
    it is opened, it is not followed (C{O_NOFOLLOW}): nothing is bound in
    the directory it points to.
    """
    d = attic(base, sticky=False)
    elsewhere = os.path.join(base, "elsewhere")
    os.mkdir(elsewhere)
    real = _unix._makePrivate

    def makeThenLink(parentFD: int) -> bytes:
        name = real(parentFD)
        os.rmdir(name, dir_fd=parentFD)
        os.symlink(elsewhere, name, dir_fd=parentFD)
        return name

    monkeypatch.setattr(_unix, "_makePrivate", makeThenLink)
    with pytest.raises(NSError) as e:
        servers().initWithFilename(os.path.join(d, "app.sock"), 0o600, -1)
    monkeypatch.undo()
    # O_NOFOLLOW | O_DIRECTORY on a symbolic link: ELOOP or ENOTDIR.
    assert code(e) in ("NS_ERROR_FILE_UNRESOLVABLE_SYMLINK", "NS_ERROR_FILE_NOT_DIRECTORY")
    assert os.listdir(elsewhere) == []
    assert not os.path.lexists(os.path.join(d, "app.sock"))

