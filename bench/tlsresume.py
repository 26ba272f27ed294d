"""
TLS session resumption across cluster workers: the fraction of
C{openssl s_client -sess_in} connections that resume, for C{workers=1},
2 and 4, TLS 1.2 and 1.3.

Two servers per worker count, both C{twistd}-less scripts serving a
2-byte page through L{GeckoTLSServerEndpoint
<twisted_serversock.tlsendpoints.GeckoTLSServerEndpoint>} over
C{gecko:...:workers=N}:

  - C{geckotls:} as parsed from a string, that is Twisted's C{ssl:}
    defaults (C{CertificateOptions}: no session cache, no tickets);
  - the same with C{CertificateOptions(enableSessionTickets=True)}:
    tickets on, each worker with the ticket keys OpenSSL made for its own
    context (nothing shares them).

One C{s_client -sess_out} connection saves a session, then
L{ATTEMPTS} C{s_client -sess_in} connections each report C{New,} or
C{Reused,}.  A count, not a timing: the load average does not change it.
"""

from __future__ import annotations

import os
import subprocess
import time

from ._harness import PYTHON, BenchError, Context, Result, Row, freePort, requireTool

NAME = "tlsresume"
TITLE = "TLS resumption across cluster workers (openssl s_client -sess_out/-sess_in)"

ATTEMPTS = 20
WORKERS = (1, 2, 4)
VERSIONS = ("1.2", "1.3")

SERVE_PY = """\
import sys

from twisted.internet import reactor
from twisted.internet.ssl import CertificateOptions, PrivateCertificate
from twisted.web import server, static

from twisted_serversock.endpoints import GeckoServerEndpoint
from twisted_serversock.tlsendpoints import GeckoTLSServerEndpoint, parseGeckoTLS

port, workers, pem, tickets, root = sys.argv[1:]
if tickets == "1":
    with open(pem) as f:
        pc = PrivateCertificate.loadPEM(f.read())
    options = CertificateOptions(privateKey=pc.privateKey.original, certificate=pc.original, enableSessionTickets=True)
    endpoint = GeckoTLSServerEndpoint(reactor, GeckoServerEndpoint(reactor, int(port), loopback=True, workers=int(workers)), options)
else:
    endpoint = parseGeckoTLS(reactor, port, loopback="1", privateKey=pem, workers=workers)
endpoint.listen(server.Site(static.File(root)))
reactor.run()
"""


def _sClient(port: int, version: str, session: str, out: bool) -> str:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", f"-tls1_{version[-1]}", "-ign_eof"]
    argv += ["-sess_out" if out else "-sess_in", session]
    done = subprocess.run(argv, input=b"GET /b HTTP/1.0\r\n\r\n", capture_output=True, timeout=30)
    return done.stdout.decode("utf-8", "replace")


def resumed(port: int, version: str, session: str) -> int:
    """
    How many of L{ATTEMPTS} connections resumed the session a first
    connection saved (0 if the server gave it none to save).
    """
    if os.path.exists(session):
        os.unlink(session)
    _sClient(port, version, session, True)
    if not os.path.exists(session) or os.path.getsize(session) == 0:
        return 0
    return sum("\nReused," in _sClient(port, version, session, False) for _ in range(ATTEMPTS))


def _serve(ctx: Context, workers: int, tickets: bool, pem: str) -> tuple[object, int]:
    root = ctx.workdir / "resume-www"
    root.mkdir(exist_ok=True)
    (root / "b").write_bytes(b"ok")
    script = ctx.workdir / "resume_serve.py"
    script.write_text(SERVE_PY)
    port = freePort()
    argv = [PYTHON, str(script), str(port), str(workers), pem, "1" if tickets else "0", str(root)]
    server = ctx.server(argv, f"resume-{workers}-{int(tickets)}", cpu=None, readyLine=False)
    server.waitConnectable("127.0.0.1", port, 60)
    # The primary accepts before its workers are up (connections wait for
    # them); the first session must not be saved with fewer workers
    # serving than the run has.
    start = time.monotonic()
    while len(_children(server.pid)) < workers and time.monotonic() - start < 60:
        time.sleep(0.1)
    time.sleep(3.0)  # the workers' programs start
    return server, port


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def run(ctx: Context) -> Result:
    requireTool("openssl", "openssl")
    from .tls import _certificate

    pem = _certificate(ctx)
    result = Result()
    details: dict[str, object] = {}
    for tickets in (False, True):
        label = "tickets on (CertificateOptions)" if tickets else "geckotls: string (ssl: defaults)"
        for workers in WORKERS:
            server, port = _serve(ctx, workers, tickets, pem)
            try:
                for version in VERSIONS:
                    count = resumed(port, version, str(ctx.workdir / "session.pem"))
                    ctx.log(f"{label}, workers={workers}, TLS {version}: {count}/{ATTEMPTS} resumed")
                    details[f"{int(tickets)}-{workers}-{version}"] = count
                    result.rows.append(
                        Row(f"resumed, {label}, workers={workers}, TLS {version}", "of 20", float(count), None, None)
                    )
            finally:
                server.stop()  # type: ignore[attr-defined]
    if not any(details.values()):
        raise BenchError("nothing resumed, not even with tickets on and one worker: the client or server is broken")
    result.details = {"resumed_of_20": details}
    result.commands = ctx.takeCommands()
    return result
