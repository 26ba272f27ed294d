"""
The machinery every benchmark shares: a scratch directory, the C load
generator, server processes that are always cleaned up, CPU pinning,
per-process CPU time, interleaved A/B repetitions and their statistics, and
the L{Row}s that make up the ratio table.

Nothing here knows about a particular benchmark; see L{bench} for how one is
written and registered.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable

#: The CPU the servers run on and the CPU the load generators run on.
SERVER_CPU = 0
CLIENT_CPU = 1


def tidyCommand(text: str) -> str:
    """
    A command line as the docs show it: the interpreter as C{python}, the
    rest of its virtual environment as C{$VENV}, paths in this checkout
    relative to its root, the compiler as C{cc}, TCP ports as C{$PORT}.
    (The scratch directory, C{$WORK}, is replaced by the caller that knows
    it.)
    """
    text = text.replace(PYTHON, "python").replace(str(Path(PYTHON).parent), "$VENV/bin")
    text = text.replace(str(ROOT) + "/", "")
    text = re.sub(r"^(taskset -c \d+ )?/usr/bin/(cc|gcc) ", r"\1\2 ", text)
    text = re.sub(r"tcp:(\d+\.\d+\.\d+\.\d+):\d+", r"tcp:\1:$PORT", text)
    # The names of bench._netns's namespace and veth pair end in a pid.
    text = re.sub(r"\b(tsbench|tbh|tbp)\d+\b", r"\1$PID", text)
    return re.sub(r"(gecko:port=|tcp:|127\.0\.0\.1:)\d{4,5}\b", r"\1$PORT", text)


class BenchError(Exception):
    """
    A benchmark could not run (a server did not start, a client failed).
    """


# ----------------------------------------------------------------------
# Results.


@dataclass
class Target:
    """
    A target such as "ratio <= 1.03" or "value <= 200 ms".

    @ivar op: C{"<="} or C{">="}.
    @ivar limit: the bound.
    @ivar on: what is checked: C{"ratio"} (the median of pairwise A/B
        ratios) or C{"a"} (A's own median).
    """

    op: str
    limit: float
    on: str = "ratio"

    def check(self, row: Row) -> bool | None:
        value = row.ratio if self.on == "ratio" else row.a
        if value is None:
            return None
        return value <= self.limit if self.op == "<=" else value >= self.limit

    def __str__(self) -> str:
        what = "" if self.on == "ratio" else "A "
        return f"{what}{self.op} {self.limit:g}{'×' if self.on == 'ratio' else ''}"


@dataclass
class Row:
    """
    One line of the ratio table.

    @ivar name: what was measured (e.g. C{"instr/conn accept+close TCP"}).
    @ivar unit: the unit of C{a} and C{b}.
    @ivar a: the project's median (or its single deterministic value).
    @ivar b: the reference's median.
    @ivar ratio: the median of the per-pair ratios A/B (for a single pair,
        simply A/B).
    @ivar samples: the per-pair C{(a, b)} values.
    @ivar target: what the ratio (or A) must meet, if anything.
    @ivar note: one short remark for the table.
    @ivar control: whether this is an A/A control row (its "A" is a second
        instance of the reference).
    @ivar failed: a failure the numbers do not show (connections that
        never completed): the row misses its target whatever its value.
    """

    name: str
    unit: str
    a: float | None
    b: float | None
    ratio: float | None
    samples: list[tuple[float, float]] = field(default_factory=list)
    target: Target | None = None
    note: str = ""
    control: bool = False
    failed: bool = False

    @property
    def ok(self) -> bool | None:
        if self.failed:
            return False
        return None if self.target is None else self.target.check(self)

    def ratios(self) -> list[float]:
        return [a / b for a, b in self.samples if b]


def pairedRow(name: str, unit: str, samples: Iterable[tuple[float, float]], **kw: Any) -> Row:
    """
    A row from per-pair C{(a, b)} samples: the medians of A and B and the
    median of the pairwise ratios.
    """
    samples = list(samples)
    if not samples:
        return Row(name, unit, None, None, None, [], **kw)
    a = statistics.median(s[0] for s in samples)
    b = statistics.median(s[1] for s in samples)
    ratios = [x / y for x, y in samples if y]
    return Row(name, unit, a, b, statistics.median(ratios) if ratios else None, samples, **kw)


@dataclass
class Result:
    """
    What one benchmark returns.

    @ivar rows: its lines of the ratio table.
    @ivar commands: the exact commands it ran, in the form the docs show
        (scratch paths as C{$WORK}, ports as C{$PORT}).
    @ivar details: anything else worth keeping in the JSON results (raw
        samples, profiles, notes); must be JSON-serialisable.
    """

    rows: list[Row] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------
# Statistics helpers.


def rotations(items: Sequence[Any], reps: int) -> Iterator[tuple[int, list[Any]]]:
    """
    C{reps} orderings of C{items}, each rotated one further than the last
    (A B C, B C A, C A B, ...): interleaved runs where no item always goes
    first.
    """
    items = list(items)
    for rep in range(reps):
        k = rep % len(items)
        yield rep, items[k:] + items[:k]


def interleaved(
    ctx: Context,
    servers: dict[str, Server],
    measure: Callable[[Server], dict[str, float]],
    label: str,
    show: Callable[[dict[str, list[float]]], str],
) -> dict[str, dict[str, list[float]]]:
    """
    Load the servers one at a time, in rotated order (A B B', B B' A, ...),
    C{ctx.reps} times: C{measure(server)} runs one load and returns its
    figures, to which this adds C{cpu_ns}, the server's CPU time meanwhile.
    Logs each rep (C{show} formats a server's figures so far).

    @return: for each server, each figure's values, one per rep.
    """
    samples: dict[str, dict[str, list[float]]] = {key: {} for key in servers}
    for rep, order in rotations(list(servers), ctx.reps):
        for key in order:
            server = servers[key]
            before = server.cpuNs()
            got = dict(measure(server))
            got["cpu_ns"] = server.cpuNs() - before
            for name, value in got.items():
                samples[key].setdefault(name, []).append(value)
        ctx.log(f"{label} rep {rep + 1}: " + "  ".join(f"{k} {show(samples[k])}" for k in servers))
    return samples


def perOp(cpuNs: list[float], ops: list[float], scale: float = 1.0) -> list[float]:
    """
    Server CPU in µs per operation (per C{scale} operations), rep by rep.
    """
    return [ns / 1e3 / max(1.0, n / scale) for ns, n in zip(cpuNs, ops)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------------
# Processes.


def parseKV(text: str) -> dict[str, float]:
    """
    C{"a=1 b=2.5"} -> C{{"a": 1.0, "b": 2.5}} (the C client's output).
    """
    out = {}
    for key, value in re.findall(r"(\w+)=(-?[0-9.]+)", text):
        out[key] = float(value)
    return out


def cpuNanoseconds(pid: int) -> int:
    """
    On-CPU time of every thread of process C{pid}, in ns
    (C{/proc/PID/task/*/schedstat}, field 1: exact, unlike rusage ticks).
    """
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def rssBytes(pid: int) -> int:
    """
    The resident set size of process C{pid} (C{/proc/PID/status} VmRSS).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for {pid}")


def openFDs(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for programs such
    as C{twistd web} that must be told their port).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dieWithParent() -> None:
    """
    In a server child, before exec: be killed if the harness dies, even by
    SIGKILL (Linux C{PR_SET_PDEATHSIG}), so that no server outlives a run.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """
    A server process, started in its own session so that it and anything
    it starts can be stopped together.  Use as a context manager, or call
    L{stop}; L{Context} also stops every server it started.

    @ivar address: the address the C client takes (C{tcp:HOST:PORT} or
        C{unix:PATH}).
    @ivar pid: the server's process id (under C{taskset} and C{valgrind},
        which exec, this is the server itself).
    """

    def __init__(
        self,
        ctx: Context,
        argv: list[str],
        name: str,
        cpu: int | None,
        env: dict[str, str] | None,
        readyLine: bool,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.argv = ctx.pinned(argv, cpu)
        self.stderrPath = ctx.workdir / f"{name}.stderr"
        self.address = ""
        environ = dict(os.environ)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH", "")]))
        environ["PYTHONHASHSEED"] = "0"
        if env:
            environ.update(env)
        self._stderr = open(self.stderrPath, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            # A server that prints no READY line may log to standard output
            # (twistd -n does): nobody reads it, so it must not be a pipe.
            stdout=subprocess.PIPE if readyLine else subprocess.DEVNULL,
            stderr=self._stderr,
            cwd=ctx.workdir,
            env=environ,
            start_new_session=True,
            preexec_fn=_dieWithParent,
        )
        self.pid = self.proc.pid
        ctx._servers.append(self)

    def waitReadyLine(self, timeout: float) -> str:
        """
        Wait for the C{READY ADDRESS} line a L{bench._servers} server
        prints.
        """
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    break
                if sel.select(min(left, 0.5)):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode(errors="replace")
        if not line.startswith("READY "):
            self.stop()
            raise BenchError(f"server {self.name} did not start: {line!r}\n{self.stderrTail()}")
        self.address = line.split()[1]
        return self.address

    def waitConnectable(self, host: str, port: int, timeout: float) -> str:
        """
        Wait until TCP C{host:port} accepts a connection (for servers that
        print no READY line, such as C{twistd web}).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection((host, port), timeout=1):
                    self.address = f"tcp:{host}:{port}"
                    return self.address
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise BenchError(f"server {self.name} did not start listening on {host}:{port}\n{self.stderrTail()}")

    def cpuNs(self) -> int:
        return cpuNanoseconds(self.pid)

    def stderrTail(self, lines: int = 15) -> str:
        try:
            text = self.stderrPath.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """
        SIGTERM, wait up to C{timeout} (valgrind writes its counts on the
        way out), then SIGKILL the whole session.
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(5)
        # Anything the server started (none of ours do) goes with it.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        if self in self.ctx._servers:
            self.ctx._servers.remove(self)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Context:
    """
    One run of the suite: settings, the scratch directory, the compiled
    load generator and the record of commands.

    @ivar quick: the short mode (CI): fewer and shorter repetitions.
    @ivar reps: repetitions (A/B pairs) for wall-clock benchmarks.
    @ivar workdir: the scratch directory, removed by L{close}.
    @ivar cbench: the compiled C load generator.
    """

    def __init__(self, quick: bool = False, reps: int | None = None, verbose: bool = True) -> None:
        self.quick = quick
        self.reps = reps if reps is not None else (3 if quick else 9)
        self.verbose = verbose
        # Short: UNIX socket paths must fit in sun_path.
        self.workdir = Path(tempfile.mkdtemp(prefix="tsbench-", dir="/tmp"))
        self._servers: list[Server] = []
        self._commands: list[str] = []
        self.hasTaskset = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
        self.cbench = self._buildClient()

    # --- lifecycle

    def close(self) -> None:
        for server in list(self._servers):
            server.stop(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"  {message}", flush=True)

    # --- commands

    def _buildClient(self) -> Path:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise BenchError("no C compiler (cc): install gcc")
        out = self.workdir / "cbench"
        argv = [cc, "-O2", "-Wall", "-o", str(out), str(BENCH / "cbench.c")]
        self.record(argv)
        subprocess.run(argv, check=True, timeout=120)
        return out

    def pinned(self, argv: list[str], cpu: int | None) -> list[str]:
        if cpu is None or not self.hasTaskset:
            return list(argv)
        return ["taskset", "-c", str(cpu), *argv]

    def record(self, argv: Sequence[str]) -> str:
        """
        Remember a command for the docs (see L{tidyCommand}); returns it.
        """
        text = tidyCommand(shlex.join(str(a) for a in argv).replace(str(self.workdir), "$WORK"))
        if text not in self._commands:
            self._commands.append(text)
        return text

    def takeCommands(self) -> list[str]:
        commands, self._commands = self._commands, []
        return commands

    def server(
        self,
        argv: list[str],
        name: str,
        cpu: int | None = SERVER_CPU,
        env: dict[str, str] | None = None,
        readyLine: bool = True,
    ) -> Server:
        """
        Start a server process (pinned to C{cpu}); the caller waits for it
        with L{Server.waitReadyLine} (C{readyLine}) or
        L{Server.waitConnectable} (its standard output then goes to
        /dev/null).
        """
        server = Server(self, argv, name, cpu, env, readyLine)
        self.record(server.argv)
        return server

    def pyServer(self, mode: str, description: str, name: str, cpu: int | None = SERVER_CPU, prefix: Sequence[str] = (), timeout: float = 30.0) -> Server:
        """
        Start a L{bench._servers} server and wait for its READY line.
        """
        server = self.server([*prefix, PYTHON, "-m", "bench._servers", mode, description], name, cpu)
        server.waitReadyLine(timeout)
        return server

    def client(
        self, args: Sequence[object], timeout: float, cpu: int | None = CLIENT_CPU, prefix: Sequence[str] = ()
    ) -> dict[str, float]:
        """
        Run the C load generator (pinned to C{cpu}; under C{prefix}, such
        as L{bench._netns}'s C{ip netns exec NAME}) and parse its output.
        """
        return parseKV(self.run([*prefix, self.cbench, *args], timeout, cpu))

    def run(self, argv: Sequence[object], timeout: float, cpu: int | None = CLIENT_CPU) -> str:
        """
        Run a load tool (the C client, C{wrk}) pinned to C{cpu}, bounded by
        C{timeout}; its standard output.

        @raise BenchError: if it times out or fails.
        """
        command = self.pinned([str(a) for a in argv], cpu)
        self.record(command)
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout, text=True)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out: {shlex.join(command)}") from None
        if done.returncode != 0:
            raise BenchError(f"failed ({done.returncode}): {shlex.join(command)}\n{done.stderr}")
        return done.stdout


#: The accept-path variants both the instruction-count and the accept-rate
#: benchmarks measure: name -> (server mode, what the C client sends, A's
#: description, B's description).  C{$WORK} is the scratch directory.
ACCEPT_VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "accept+close TCP": ("close", "none", "gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"),
    "accept+close UNIX": ("close", "none", "geckounix:path=$WORK/a.sock", "unix:$WORK/b.sock"),
    "HTTP-close TCP": ("http", "http", "gecko:port=0:loopback=1", "tcp:0:interface=127.0.0.1"),
    "HTTP-close UNIX": ("http", "http", "geckounix:path=$WORK/a.sock", "unix:$WORK/b.sock"),
}


def requireTool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchError(f"{name} is not installed (Debian package {package!r})")
    return path


def calibrate(loops: int = 200_000) -> float:
    """
    Milliseconds for a fixed pure-Python loop: printed before and after a
    run, because this VM's speed drifts.
    """
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        x = 0
        for i in range(loops):
            x += i
        best = min(best, time.perf_counter() - t)
    return best * 1e3



# ----------------------------------------------------------------------
# Shared by several benchmarks.


def cpuNote(a: list[float], b: list[float]) -> str:
    """
    C{"server CPU/op 0.98× (33.1 vs 33.8 µs)"}: the paired median ratio
    and the medians of server CPU per operation.
    """
    paired = pairedRow("", "", zip(a, b))
    return f"server CPU/op {paired.ratio:.3f}× ({paired.a:.1f} vs {paired.b:.1f} µs)"


def _twistdWeb(ctx: Context) -> list[str]:
    script = Path(PYTHON).parent / "twistd"
    if script.exists():
        return [PYTHON, str(script)]
    found = shutil.which("twistd")
    if found is None:
        raise BenchError("twistd not found next to the interpreter nor on PATH")
    return [PYTHON, found]


def docroot(ctx: Context) -> Path:
    """
    A directory with a 2-byte file C{b}: what the C{twistd web} benchmarks
    serve.
    """
    root = ctx.workdir / "www"
    root.mkdir(exist_ok=True)
    (root / "b").write_bytes(b"ok")
    return root


def twistdWebServer(
    ctx: Context, impl: str, name: str, prefix: list[str] | None = None, timeout: float = 60
) -> Server:
    """
    Start C{twistd -n web} on a free loopback port through C{gecko:} (impl
    C{"A"}) or C{tcp:} (C{"B"}), serving L{docroot}; wait until it accepts.
    Its log (one access line per request, as usual) goes to /dev/null.

    Between the port being picked and twistd binding it, another process
    could take it; twistd then exits and this raises L{BenchError}.
    """
    port = freePort()
    listen = f"gecko:port={port}:loopback=1" if impl == "A" else f"tcp:{port}:interface=127.0.0.1"
    argv = [*(prefix or []), *_twistdWeb(ctx), "-n", "--pidfile=", "web", "--listen", listen, "--path", str(docroot(ctx))]
    server = ctx.server(argv, name, readyLine=False)
    server.waitConnectable("127.0.0.1", port, timeout)
    return server


Benchmark = Callable[[Context], Result]
