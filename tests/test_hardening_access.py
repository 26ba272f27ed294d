"""
Hardening: access control beyond file modes (C{allowedUids}, endpoint
option C{uids=}), against a real peer of another uid.

The API, argument checking and same-uid cases are in C{test_unix.py}
(C{test_allowedUids*}) and the option's parsing in C{test_endpoints.py};
here a process running as nobody (uid 65534) connects again and again to a
C{geckounix:...:uids=self} endpoint - an abstract socket, which any process
in the network namespace can reach, and a socket file whose mode lets
everyone in - and the factory must never see it, while the refusal is
logged once, with that process's pid and uid.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.endpoints import serverFromString

from ._hardening import CollectingProcess
from .conftest import asNobody, connectUNIX, failures, nobodyEnv, theReactor, timeout

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED, abstract sockets"),
    pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a peer as another user"),
]

NOBODY = 65534

_PEER = r"""
import json, socket, sys
target = sys.argv[1]
if target.startswith("@"):
    target = "\0" + target[1:]
answers = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(target)
    try:
        s.sendall(b"let me in")
        answers.append(s.recv(100).decode())
    except OSError as e:
        answers.append(type(e).__name__)
    s.close()
print(json.dumps(answers))
"""


class _Greeter(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.seen.append(self.transport.getPeer())  # type: ignore[attr-defined]
        self.transport.write(b"welcome")


@pytest.mark.parametrize("kind", ["abstract", "file"])
@pytest_twisted.ensureDeferred
async def test_otherUidRefusedBeforeTheFactory(logged: Any, kind: str) -> None:
    directory = None
    if kind == "abstract":
        target = "\0" + f"tss-uids-{uuid.uuid4().hex}"
        description = f"geckounix:@{target[1:]}:uids=self"
    else:
        directory = tempfile.mkdtemp(prefix="/tmp/tssa")
        os.chmod(directory, 0o755)
        target = os.path.join(directory, "app.sock")
        description = f"geckounix:{target}:mode=0666:uids=self"
    factory = protocol.Factory.forProtocol(_Greeter)
    factory.seen = []  # type: ignore[attr-defined]
    port = await timeout(serverFromString(theReactor(), description).listen(factory))
    try:
        peer = CollectingProcess()
        argv = asNobody([sys.executable, "-c", _PEER, target.replace("\0", "@"), "5"])
        pid = theReactor().spawnProcess(peer, argv[0], argv, env=nobodyEnv(), path="/").pid
        assert await timeout(peer.ended, 60) == 0, peer.err.decode()
        # Closed at once each time, without a byte.
        assert set(json.loads(peer.out)) <= {"", "ConnectionResetError", "BrokenPipeError"}
        assert factory.seen == []  # type: ignore[attr-defined]
        refusals = [e for e in logged if "Refused a connection" in (e.get("log_format") or "")]
        assert len(refusals) == 1, refusals
        assert refusals[0]["uid"] == NOBODY and refusals[0]["pid"] == pid
        # Our own uid is let in.
        ours = await connectUNIX(target)
        assert await ours.waitFor(7) == b"welcome"
        ours.transport.loseConnection()
        await ours.whenClosed()
        assert len(factory.seen) == 1  # type: ignore[attr-defined]
        assert failures(logged) == []
    finally:
        await timeout(port.stopListening())
        if directory is not None:
            os.rmdir(directory)
