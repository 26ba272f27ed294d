"""
TLS handshakes: server CPU per full handshake through C{geckotls:} against
Twisted's own C{ssl:} with the same certificate (RSA 2048) and options, in
one process each, with an A/A control row (a second C{ssl:} server).

The client is C{openssl s_time -new -www /} (a full handshake per
connection, no resumption, one tiny HTTP request each; the servers' C{http}
protocol answers and closes), pinned to the client CPU; the servers run on
the other, loaded one at a time in rotated order.  Server CPU comes from
schedstat (exact), divided by the connections s_time completed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from ._harness import BenchError, Context, Result, Target, interleaved, pairedRow, perOp

NAME = "tls"
TITLE = "TLS handshakes (server CPU)"

TARGET = Target("<=", 1.02)
_CONNECTIONS = re.compile(r"(\d+) connections in (\d+) real seconds")


def _certificate(ctx: Context) -> str:
    path = ctx.workdir / "tls.pem"
    key, cert = ctx.workdir / "tls-key.pem", ctx.workdir / "tls-cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "30", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    path.write_bytes(cert.read_bytes() + key.read_bytes())
    return str(path)


def run(ctx: Context) -> Result:
    if shutil.which("openssl") is None:
        raise BenchError("openssl is not installed (apt-get install openssl)")
    result = Result()
    seconds = 2 if ctx.quick else 4
    pem = _certificate(ctx)
    descs = {
        "A": f"geckotls:port=0:loopback=1:privateKey={pem}",
        "B": f"ssl:0:interface=127.0.0.1:privateKey={pem}",
        "B'": f"ssl:0:interface=127.0.0.1:privateKey={pem}",
    }
    servers = {k: ctx.pyServer("http", d, f"tls-{k}") for k, d in descs.items()}

    def load(server: object, time: int) -> dict[str, float]:
        address = server.address.split(":", 1)[1]  # type: ignore[attr-defined]
        out = ctx.run(["openssl", "s_time", "-connect", address, "-new", "-www", "/", "-time", time], timeout=time + 60)
        found = _CONNECTIONS.findall(out)
        if not found:
            raise BenchError(f"openssl s_time said nothing usable:\n{out[-2000:]}")
        return {"handshakes": float(found[-1][0])}

    try:
        for s in servers.values():  # warm-up, not measured
            load(s, 1)
        got = interleaved(
            ctx,
            servers,
            lambda s: load(s, seconds),
            "full handshake",
            lambda m: f"{perOp(m['cpu_ns'], m['handshakes'])[-1]:.0f}µs",
        )
    finally:
        for s in servers.values():
            s.stop()
    cpu = {k: perOp(got[k]["cpu_ns"], got[k]["handshakes"]) for k in servers}
    result.rows.append(pairedRow("server CPU per full TLS handshake", "µs", zip(cpu["A"], cpu["B"]), target=TARGET))
    result.rows.append(pairedRow("A/A control: server CPU per full TLS handshake", "µs", zip(cpu["B'"], cpu["B"]), control=True))
    result.details["full handshake"] = {"cpu_us_per_handshake": cpu, "handshakes": {k: got[k]["handshakes"] for k in servers}}
    result.commands = ctx.takeCommands()
    return result
