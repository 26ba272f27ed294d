"""
TLS on every core: full handshakes per second through C{twistd web
--listen geckotls:...:workers=2} (A) against the same in one process (B),
with nginx (two worker processes, its own temporary configuration on a
high port) on the same machine as a reference; and HTTPS keep-alive
requests per second, C{twistd web} on C{geckotls:} against C{ssl:}, one
process each.

Handshakes: an RSA-2048 certificate; the client is L{CLIENTS} C{openssl
s_time -new} processes side by side (C code; a full handshake per
connection, no resumption), so that every worker always has a handshake
waiting.  Nothing is pinned (two workers need both CPUs, and the client
shares them): the client's share of the machine's CPU is printed beside
each figure, as is the load average (three CI runs load this machine in
the background).  What counts is the ratio of A and B measured in the
same run, in rotated order.  Beside them, OpenSSL's own RSA-2048
signatures per second with two processes against one (C{openssl speed
-multi}), every third repetition: how much a second process can gain on
this machine at that moment, the ceiling of the workers' ratio.

Where a handshake's CPU goes in a cluster, two more measurements in the
same rotation: C{workers=1} (A1: one worker behind the primary, so the
hand-over's cost without a second server process), and the two
one-process servers driven at once, half the clients each (D: two
processes sharing the two cores with the client and no cluster at all).
Their server CPU per handshake against the single process's, beside
C{workers=2}'s, says how much of the cluster's extra CPU is the
hand-over and how much is two busy processes sharing two cores.

Keep-alive: C{wrk -t1 -c32} over HTTPS for a 2-byte file, server pinned
to one CPU and wrk to the other, as the other keep-alive rows.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

from ._harness import (
    BenchError, Context, Result, Server, Target, cpuNanoseconds, docroot, freePort, median, pairedRow, requireTool, rotations,
)  # fmt: skip
from ._workers import _twistd, childrenCpuNs, treeCpuNs
from .keepalive import parseWrk

NAME = "tlscluster"
TITLE = "TLS on every core: handshakes/s workers=2 vs one process (nginx beside), HTTPS keep-alive geckotls: vs ssl:"

CLIENTS = 4
HANDSHAKE_TARGET = Target(">=", 1.6)
KEEPALIVE_TARGET = Target(">=", 0.97)
_CONNECTIONS = re.compile(r"(\d+) connections in [\d.]+s;")

NGINX_CONF = """\
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def _twistdWeb(ctx: Context, key: str, listen: str, port: int, workers: int, cpu: int | None) -> Server:
    argv = [*_twistd(), "-n", "--pidfile=", f"--logfile={ctx.workdir / ('tlsc-' + key + '.log')}", "web"]
    argv += ["--listen", listen, "--path", str(docroot(ctx))]
    server = ctx.server(argv, f"tlsc-{key}", cpu=cpu, readyLine=False)
    server.waitConnectable("127.0.0.1", port, 60)
    log = ctx.workdir / f"tlsc-{key}.log"
    deadline = time.monotonic() + 60
    while workers and log.read_text(errors="replace").count(" is ready") < workers:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise BenchError(f"{listen}: the workers did not start:\n{server.stderrTail()}")
        time.sleep(0.1)
    server.address = f"127.0.0.1:{port}"
    return server


def _nginx(ctx: Context, cert: str, key: str) -> Server:
    nginx = requireTool("nginx", "nginx")
    prefix = ctx.workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    port = freePort()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, cert=cert, key=key))
    argv = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", "daemon off;"]
    server = ctx.server(argv, "tlsc-nginx", cpu=None, readyLine=False)
    server.waitConnectable("127.0.0.1", port, 30)
    server.address = f"127.0.0.1:{port}"
    return server


def handshakes(ctx: Context, server: Server, seconds: int, clients: int = CLIENTS) -> dict[str, float]:
    """
    C{clients} C{openssl s_time -new} side by side for C{seconds}: full
    handshakes per second, the client's share of the machine's CPUs, the
    server's CPU per handshake (µs), and the load average before.
    """
    argv = ["openssl", "s_time", "-connect", server.address, "-new", "-time", str(seconds)]
    ctx.record(argv)
    load = os.getloadavg()[0]
    cpu0, own0, client0, t0 = treeCpuNs(server.pid), cpuNanoseconds(server.pid), childrenCpuNs(), time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(clients)]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    wall = time.monotonic() - t0
    client = (childrenCpuNs() - client0) / 1e9 / wall / (os.cpu_count() or 1)
    done = 0
    for out in outs:
        found = _CONNECTIONS.findall(out)
        if not found:
            raise BenchError(f"openssl s_time said nothing usable:\n{out[-2000:]}")
        done += int(found[0])
    serverUs = (treeCpuNs(server.pid) - cpu0) / 1e3 / max(1, done)
    # (In a cluster, the primary's share: accepting and handing over.)
    ownUs = (cpuNanoseconds(server.pid) - own0) / 1e3 / max(1, done)
    return {"rate": done / wall, "client": client, "server_us": serverUs, "own_us": ownUs, "load": load}


def together(ctx: Context, servers: list[Server], seconds: int) -> dict[str, float]:
    """
    Drive C{servers} at once, L{CLIENTS} clients shared among them: their
    handshakes per second together, and their mean server CPU per
    handshake (µs).  (The client's share is not separable here.)
    """
    got: list[dict[str, float]] = []
    threads = [threading.Thread(target=lambda s=s: got.append(handshakes(ctx, s, seconds, CLIENTS // len(servers)))) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(got) != len(servers):
        raise BenchError("a server driven together with another gave no figures")
    return {
        "rate": sum(m["rate"] for m in got),
        "server_us": sum(m["server_us"] for m in got) / len(got),
        "client": sum(m["client"] for m in got) / len(got),
        "own_us": sum(m["own_us"] for m in got) / len(got),
        "load": got[0]["load"],
    }


_SIGNS = re.compile(r"^rsa 2048 bits\s+\S+\s+\S+\s+([\d.]+)", re.M)


def rsaSigns(ctx: Context, processes: int) -> float:
    """
    RSA-2048 signatures per second OpenSSL itself makes with C{processes}
    processes (C{openssl speed -multi}): the ceiling a TLS server's full
    handshakes have on this machine now, with one process or two.
    """
    argv = ["openssl", "speed", "-seconds", "2", "-multi", str(processes), "rsa2048"]
    out = ctx.run(argv, timeout=120, cpu=None)
    found = _SIGNS.findall(out)
    if not found:
        raise BenchError(f"openssl speed said nothing usable:\n{out[-2000:]}")
    return float(found[-1])


def _keepalive(ctx: Context, server: Server, seconds: int) -> tuple[float, float]:
    wrk = requireTool("wrk", "wrk")
    load = os.getloadavg()[0]
    out = ctx.run([wrk, "-t1", "-c32", f"-d{seconds}s", "--latency", f"https://{server.address}/b"], timeout=seconds + 30)
    rate, _p99, _errors = parseWrk(out)
    return rate, load


def run(ctx: Context) -> Result:
    requireTool("openssl", "openssl")
    from .tls import _certificate

    pem = _certificate(ctx)
    cert, key = str(ctx.workdir / "tls-cert.pem"), str(ctx.workdir / "tls-key.pem")
    result = Result()
    seconds = 3 if ctx.quick else 5
    ports = {k: freePort() for k in ("A", "A1", "B", "B2", "KA", "KB", "KB2")}
    servers = {
        "A": _twistdWeb(ctx, "A", f"geckotls:{ports['A']}:loopback=1:privateKey={pem}:workers=2", ports["A"], 2, None),
        "A1": _twistdWeb(ctx, "A1", f"geckotls:{ports['A1']}:loopback=1:privateKey={pem}:workers=1", ports["A1"], 1, None),
        "B": _twistdWeb(ctx, "B", f"geckotls:{ports['B']}:loopback=1:privateKey={pem}", ports["B"], 0, None),
        "B'": _twistdWeb(ctx, "B2", f"geckotls:{ports['B2']}:loopback=1:privateKey={pem}", ports["B2"], 0, None),
        "N": _nginx(ctx, cert, key),
    }
    got: dict[str, list[dict[str, float]]] = {k: [] for k in [*servers, "D"]}
    signs: list[tuple[float, float]] = []
    try:
        for s in servers.values():  # warm-up, not measured
            handshakes(ctx, s, 1)
        for rep, order in rotations([*servers, "D"], ctx.reps):
            if rep % 3 == 0:
                signs.append((rsaSigns(ctx, 2), rsaSigns(ctx, 1)))
                ctx.log(f"openssl speed rsa2048: {signs[-1][0]:,.0f} signs/s with 2 processes, {signs[-1][1]:,.0f} with 1")
            for k in order:
                if k == "D":
                    got[k].append(together(ctx, [servers["B"], servers["B'"]], seconds))
                else:
                    got[k].append(handshakes(ctx, servers[k], seconds))
            ctx.log(
                f"handshakes rep {rep + 1}: "
                + "  ".join(f"{k} {got[k][-1]['rate']:,.0f}/s ({got[k][-1]['server_us']:.0f} µs, client {got[k][-1]['client']:.0%}, load {got[k][-1]['load']:.1f})" for k in got)
            )
    finally:
        for s in servers.values():
            s.stop()
    rate = {k: [m["rate"] for m in got[k]] for k in got}
    note = (
        f"client CPU {median([m['client'] for m in got['A']]):.0%} vs {median([m['client'] for m in got['B']]):.0%} of the machine; "
        f"server CPU {median([m['server_us'] for m in got['A']]):.0f} vs {median([m['server_us'] for m in got['B']]):.0f} µs/handshake "
        f"(the primary's {median([m['own_us'] for m in got['A']]):.0f}); "
        f"nginx (2 workers) {median(rate['N']):,.0f}/s with client CPU {median([m['client'] for m in got['N']]):.0%}; "
        f"load average {min(m['load'] for v in got.values() for m in v):.1f}-{max(m['load'] for v in got.values() for m in v):.1f}"
    )
    result.rows.append(
        pairedRow("full TLS handshakes/s (RSA-2048), geckotls: workers=2 / one process", "/s", zip(rate["A"], rate["B"]), target=HANDSHAKE_TARGET, note=note)
    )
    result.rows.append(
        pairedRow("A/A control: one process / another, full handshakes/s", "/s", zip(rate["B'"], rate["B"]), control=True)
    )
    cpu = {k: [m["server_us"] for m in got[k]] for k in got}
    worker1 = median([m["server_us"] - m["own_us"] for m in got["A1"]])
    result.rows.append(
        pairedRow(
            "server CPU per handshake, workers=1 / one process (the hand-over's cost)", "µs", zip(cpu["A1"], cpu["B"]), control=True,
            note=f"the primary's {median([m['own_us'] for m in got['A1']]):.0f} µs, the worker's {worker1:.0f} µs",
        )  # fmt: skip
    )
    result.rows.append(
        pairedRow(
            "server CPU per handshake, two one-process servers at once / one alone (sharing the cores)", "µs", zip(cpu["D"], cpu["B"]), control=True,
            note=f"together {median(rate['D']):,.0f} handshakes/s; workers=2 spent {median(cpu['A']):.0f} µs",
        )  # fmt: skip
    )
    result.rows.append(
        pairedRow(
            "the machine now: openssl speed rsa2048, 2 processes / 1 (the ceiling of the ratio above)", "signs/s", signs, control=True
        )
    )
    result.rows.append(
        pairedRow("reference: nginx 2 workers / geckotls: workers=2, full handshakes/s", "/s", zip(rate["N"], rate["A"]), control=True)
    )
    keep = {
        "KA": _twistdWeb(ctx, "KA", f"geckotls:{ports['KA']}:loopback=1:privateKey={pem}", ports["KA"], 0, 0),
        "KB": _twistdWeb(ctx, "KB", f"ssl:{ports['KB']}:interface=127.0.0.1:privateKey={pem}", ports["KB"], 0, 0),
        "KB'": _twistdWeb(ctx, "KB2", f"ssl:{ports['KB2']}:interface=127.0.0.1:privateKey={pem}", ports["KB2"], 0, 0),
    }
    kept: dict[str, list[tuple[float, float]]] = {k: [] for k in keep}
    try:
        for s in keep.values():
            _keepalive(ctx, s, 1)
        for rep, order in rotations(list(keep), ctx.reps):
            for k in order:
                kept[k].append(_keepalive(ctx, keep[k], seconds))
            ctx.log(f"keep-alive rep {rep + 1}: " + "  ".join(f"{k} {kept[k][-1][0]:,.0f}/s (load {kept[k][-1][1]:.1f})" for k in keep))
    finally:
        for s in keep.values():
            s.stop()
    loads = [l for v in kept.values() for _r, l in v]
    result.rows.append(
        pairedRow(
            "HTTPS keep-alive req/s, twistd web geckotls: / ssl: (wrk -c32)",
            "req/s",
            zip([r for r, _l in kept["KA"]], [r for r, _l in kept["KB"]]),
            target=KEEPALIVE_TARGET,
            note=f"load average {min(loads):.1f}-{max(loads):.1f}",
        )
    )
    result.rows.append(
        pairedRow(
            "A/A control: HTTPS keep-alive req/s, ssl: / ssl:",
            "req/s",
            zip([r for r, _l in kept["KB'"]], [r for r, _l in kept["KB"]]),
            control=True,
        )
    )
    result.details = {"handshakes": got, "keepalive": kept, "rsa_signs_2_vs_1": signs}
    result.commands = ctx.takeCommands()
    return result
