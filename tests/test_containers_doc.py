"""
docs/containers.md's Dockerfile and Kubernetes manifest, run as far as a
machine without Docker and Kubernetes allows.

The Dockerfile's effect is built in a private mount namespace over a
copy-on-write view of this machine (overlays on C{/etc}, C{/var} and the
Python installation, which stands in for the base image's): each C{RUN}
line runs as written, C{COPY} copies from a build context (this checkout,
with a C{www/}).  Its exec-form C{CMD} then runs as PID 1 of a PID
namespace, as the C{USER}, in a private network namespace and in a cgroup
whose CPU quota is the manifest's CPU limit.  The manifest's probes are
sent to it as the kubelet sends them, its C{preStop} command runs in the
container, and the C{STOPSIGNAL} must end every process, exit status 0,
within C{terminationGracePeriodSeconds}.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import threads

from ._procs import Proc, alive, childrenOf, spawn
from .conftest import eventually, revealInterpreterLines, timeout

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "containers.md"


def block(lang: str) -> str:
    """The one fenced block of docs/containers.md tagged C{lang}."""
    [text] = re.findall(rf"^```{lang}\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    return text


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """A Dockerfile's instructions (upper-cased) and their arguments; comments and continuations handled."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _scalar(text: str) -> Any:
    if text.startswith("["):
        return json.loads(text)
    if text[:1] in "\"'":
        return text[1:-1]
    return int(text) if text.isdigit() else text


def _node(lines: list[tuple[int, str]]) -> Any:
    """The YAML block-style subset the manifest uses: mappings, lists, scalars, flow lists of strings."""
    indent = lines[0][0]
    if lines[0][1].startswith("- "):
        items, i = [], 0
        while i < len(lines):
            j = next((k for k in range(i + 1, len(lines)) if lines[k][0] <= indent), len(lines))
            items.append(_node([(indent + 2, lines[i][1][2:]), *lines[i + 1 : j]]))
            i = j
        return items
    mapping, i = {}, 0
    while i < len(lines):
        key, colon, value = lines[i][1].partition(":")
        if not colon or lines[i][0] != indent:
            raise ValueError(f"not in the YAML subset this test reads: {lines[i][1]!r}")
        j = next((k for k in range(i + 1, len(lines)) if lines[k][0] <= indent), len(lines))
        mapping[key] = _scalar(value.strip()) if value.strip() else _node(lines[i + 1 : j])
        i = j
    return mapping


def manifests(text: str) -> dict[str, Any]:
    """The manifest's documents by C{kind}."""
    found = {}
    for doc in re.split(r"^---$", text, flags=re.M):
        lines = [(len(line) - len(line.lstrip()), line.strip()) for line in doc.splitlines()]
        parsed = _node([line for line in lines if line[1] and not line[1].startswith("#")])
        found[parsed["kind"]] = parsed
    return found


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity (C{"2"}, C{"1500m"}) in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_theYamlSubset() -> None:
    """The manifest reader reads nested mappings, lists of mappings, quoted and flow values."""
    text = 'kind: X\nspec:\n  a: "2"\n  items:\n    - name: one\n      n: 3\n    - c: ["sleep", "5"]\n'
    assert manifests(text)["X"] == {"kind": "X", "spec": {"a": "2", "items": [{"name": "one", "n": 3}, {"c": ["sleep", "5"]}]}}
    assert cpus("1500m") == 1.5 and cpus("2") == 2.0


@pytest.fixture
def cpuGroup() -> Iterator[Path]:
    """A new cgroup (v1 cpu hierarchy, or v2 with the cpu controller); whatever runs in it is killed after the test."""
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare, for the namespaces of a container (CI runs as root)")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    parents = [m[4] for m in mounts if m[m.index("-") + 1] == "cgroup" and "cpu" in m[m.index("-") + 3].split(",")]
    parents += [m[4] for m in mounts if m[m.index("-") + 1] == "cgroup2" and "cpu" in _read(Path(m[4], "cgroup.subtree_control"))]
    if not parents:
        pytest.skip("needs a cgroup file system with the cpu controller, for the manifest's CPU limit")
    group = Path(tempfile.mkdtemp(prefix="tsscontainer", dir=parents[0]))
    group.chmod(0o755)  # as a container's: its user reads the quota
    yield group
    members = group / "cgroup.procs"
    for pid in members.read_text().split():
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while members.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    group.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _limitCPUs(group: Path, limit: float) -> None:
    period = 100000
    if (group / "cpu.max").exists():
        (group / "cpu.max").write_text(f"{int(limit * period)} {period}\n")
    else:
        (group / "cpu.cfs_period_us").write_text(f"{period}\n")
        (group / "cpu.cfs_quota_us").write_text(f"{int(limit * period)}\n")


class Image:
    """What the Dockerfile's instructions amount to: shell lines that build it, and how its container runs."""

    def __init__(self, dockerfile: str, context: Path) -> None:
        self.build: list[str] = []
        self.env = {"PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])}
        self.user = "0:0"
        self.workdir = "/"
        self.expose: list[int] = []
        self.stopSignal = "SIGTERM"
        self.cmd: list[str] = []
        q = shlex.quote
        for word, rest in instructions(dockerfile):
            if word == "FROM":
                # This machine's Python (first on PATH) stands in for the image's.
                assert re.fullmatch(r"python:3\.\d+-slim", rest), rest
            elif word == "ENV":
                for pair in shlex.split(rest):
                    key, equals, value = pair.partition("=")
                    assert equals, f"ENV {rest}: write KEY=value"
                    self.env[key] = value
                    self.build.append(f"export {key}={q(value)}")
            elif word == "RUN":
                mounts = re.findall(r"--mount=(\S+)\s+", rest)
                command = re.sub(r"^(--mount=\S+\s+)+", "", rest)
                binds = [dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in m.split(",")) for m in mounts]
                for bind in binds:
                    assert bind["type"] == "bind" and "rw" in bind, bind  # pip writes into the source (a copy)
                    self.build.append(f"mkdir -p {q(bind['target'])} && cp -a {q(str(context))}/. {q(bind['target'])}")
                self.build.append(f"sh -c {q(command)}")
                self.build += [f"rm -rf {q(bind['target'])}" for bind in binds]
            elif word == "COPY":
                source, target = rest.split()
                self.build.append(f"mkdir -p {q(target)} && cp -a {q(str(context / source))}/. {q(target)}")
            elif word == "USER":
                self.user = rest
            elif word == "WORKDIR":
                self.workdir = rest
                self.build.append(f"mkdir -p {q(rest)}")
            elif word == "EXPOSE":
                self.expose.append(int(rest))
            elif word == "STOPSIGNAL":
                self.stopSignal = rest
            elif word == "CMD":
                self.cmd = json.loads(rest)  # the exec form: JSON, else this fails
            else:
                raise AssertionError(f"an instruction this test cannot build: {word}")

    def asUser(self) -> list[str]:
        """The command prefix that becomes the C{USER} (numeric: Kubernetes' runAsNonRoot needs it)."""
        uid, _, gid = self.user.partition(":")
        assert uid.isdigit() and int(uid) != 0, f"USER {self.user}: a numeric, non-root user"
        return ["setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--"]

    def container(self, keep: list[str]) -> list[str]:
        """
        The command that builds the image's effect and becomes its C{CMD}, as
        PID 1 of new PID, network and mount namespaces; C{keep}: paths under
        C{/tmp} that stay visible.
        """
        q = shlex.quote
        keep = sorted({os.path.realpath(p) for p in keep if os.path.realpath(p).startswith("/tmp/")})
        script = ["set -e", "umask 022", "ip link set lo up", "mount -t tmpfs -o mode=0755 tmpfs /run"]
        script += [f"mkdir -p /run/keep/{i} && mount --bind {q(p)} /run/keep/{i}" for i, p in enumerate(keep)]
        script += ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs -o mode=0755 tmpfs /srv"]
        script += [f"mkdir -p {q(p)} && mount --bind /run/keep/{i} {q(p)} && umount /run/keep/{i}" for i, p in enumerate(keep)]
        for i, path in enumerate(["/etc", "/var", os.path.realpath(sys.prefix)]):
            # Copy-on-write: what the build writes (useradd, pip) stays in this namespace.
            script.append(f"mkdir -p /run/ovl/{i}/up /run/ovl/{i}/work")
            script.append(f"mount -t overlay overlay -o lowerdir={q(path)},upperdir=/run/ovl/{i}/up,workdir=/run/ovl/{i}/work {q(path)}")
        script += revealInterpreterLines(visible=("/tmp/", "/run/", "/srv/"))
        # A build sees none of this machine's pip settings (tox's min env
        # points PIP_CONSTRAINT at a file the namespace does not show).
        script.append('for v in $(env | sed -n "s/^\\(PIP_[A-Za-z_]*\\)=.*/\\1/p"); do unset "$v"; done')
        script += ["unset PYTHONPATH", f"export PATH={q(self.env['PATH'])}", "export PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0"]
        script += self.build
        env = [f"{k}={v}" for k, v in self.env.items()]
        script.append(f"cd {q(self.workdir)}")
        script.append("exec " + shlex.join(["env", "-i", *env, *self.asUser(), *self.cmd]))
        return ["unshare", "--pid", "--fork", "--kill-child", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script)]


#: A page that answers once the test says so (a file in the container's
#: C{/tmp}): a request in flight when the pod is stopped.
SLOW_RPY = """\
import os
from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class Slow(Resource):
    isLeaf = True

    def render_GET(self, request):
        open("/tmp/started", "w").close()

        def answer():
            if os.path.exists("/tmp/release"):
                loop.stop()
                request.write(b"finished after the stop signal\\n")
                request.finish()

        loop = task.LoopingCall(answer)
        loop.start(0.1)
        return NOT_DONE_YET


resource = Slow()
"""


#: A page that counts a client's visits in its twisted.web session, and
#: says which worker answered.
VISITS_RPY = """\
import os
from twisted.web.resource import Resource


class Visits(Resource):
    isLeaf = True

    def render_GET(self, request):
        session = request.getSession()
        session.visits = getattr(session, "visits", 0) + 1
        return f"{os.getpid()} {session.visits}\\n".encode()


resource = Visits()
"""


def _inContainer(pid: int, argv: list[str], *namespaces: str) -> list[str]:
    """C{argv} run in the namespaces (C{--net}, C{--mount}, C{--pid}) of the container whose PID 1 is C{pid}."""
    return ["nsenter", f"--target={pid}", *(namespaces or ("--net",)), "--", *argv]


def _probe(pid: int, probe: dict[str, Any]) -> int:
    """
    An C{httpGet} probe sent as the kubelet sends it (within its
    C{timeoutSeconds}), from inside the container's network namespace; the
    HTTP status, 0 if none came.
    """
    get = probe["httpGet"]
    url = f"http://127.0.0.1:{get['port']}{get['path']}"
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(probe.get("timeoutSeconds", 1)), url]
    out = subprocess.run(_inContainer(pid, curl), capture_output=True, text=True, timeout=60, check=False)
    return int(out.stdout or 0)


def _innerPid(pid: int) -> int:
    """Process C{pid}'s pid in its innermost PID namespace (the container's)."""
    [line] = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("NSpid:")]
    return int(line.split()[-1])


async def succeeds(pid: int, probe: dict[str, Any]) -> bool:
    """Whether the probe succeeds: Kubernetes counts an HTTP status of 200 to 399 a success."""
    status = await threads.deferToThread(_probe, pid, probe)
    return 200 <= status < 400


async def fails(pid: int, probe: dict[str, Any]) -> bool:
    """Whether the probe fails."""
    return not await succeeds(pid, probe)


def curl(pid: int, url: str, *options: str) -> Proc:
    """C{curl} run in the network namespace of the container whose PID 1 is C{pid}."""
    return spawn(_inContainer(pid, ["curl", "-sS", *options, url]), "/")


async def sessionsArePerWorker(pid: int, workers: set[int], url: str, jar: Path) -> None:
    """
    One client's requests, each on a new connection, reach every worker,
    and each change of worker starts a new twisted.web session.
    """
    answers = []
    for _ in range(6):
        visit = curl(pid, url, "-b", str(jar), "-c", str(jar))
        assert await timeout(visit.ended, 60) == 0, visit.output
        answers.append(tuple(int(n) for n in visit.output.split()))
    assert {worker for worker, _ in answers} == {_innerPid(w) for w in workers}, answers
    for (before, count), (worker, visits) in zip(answers, answers[1:]):
        assert visits == (count + 1 if worker == before else 1), answers


def build(tmp_path: Path) -> Path:
    """The build context: a copy of this checkout, with the site in C{www/}."""
    context = tmp_path / "context"
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(".git", ".venv", ".tox", "__pycache__", "*.egg-info", "build", "dist"))
    site = context / "www"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("<h1>hello from the container</h1>\n")
    (site / "slow.rpy").write_text(SLOW_RPY)
    (site / "visits.rpy").write_text(VISITS_RPY)
    for path in (tmp_path, context, site):
        path.chmod(0o755)
    return context


@pytest_twisted.ensureDeferred
async def test_dockerfileAndManifest(tmp_path: Path, cpuGroup: Path) -> None:
    """
    The Dockerfile's image serves as the manifest's pod: PID 1 is the
    C{CMD}, as the C{USER}; C{workers=auto} starts as many workers as the
    CPU limit allows; both probes succeed; twisted.web's sessions are per
    worker, as the page says.  Stopped as Kubernetes stops it: the pod
    still serves during C{preStop}; after the C{STOPSIGNAL} the readiness
    probe fails at once, a request in flight is answered, and every process
    is gone with status 0 within C{terminationGracePeriodSeconds}.
    """
    image = Image(block("dockerfile"), build(tmp_path))
    kinds = manifests(block("yaml"))
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert image.expose == [p["containerPort"] for p in container["ports"]]
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] in image.expose
    base = f"http://127.0.0.1:{image.expose[0]}"
    limit = cpus(container["resources"]["limits"]["cpu"])
    _limitCPUs(cpuGroup, limit)

    argv = image.container(keep=[str(tmp_path), sys.prefix, sys.base_prefix])
    # The shell joins the cgroup, then becomes the container (its processes stay in it).
    proc: Proc = spawn(["sh", "-c", f'echo $$ > {cpuGroup}/cgroup.procs && exec "$@"', "sh", *argv], str(tmp_path))
    # The build (pip install) comes first: give it time.
    listening = re.compile(r"Cluster primary \(pid 1\): .* is served by (\d+) worker process")
    await eventually(lambda: listening.search(proc.output) or proc.ended.called, 600)
    served = listening.search(proc.output)
    assert served, proc.output
    expected = min(math.ceil(limit), len(os.sched_getaffinity(0)))
    assert int(served.group(1)) == expected, proc.output
    why = (await proc.waitFor(r"workers=auto: .*")).group(0)
    assert f"the CPU quota of {cpuGroup}" in why, why
    for i in range(1, expected + 1):
        await proc.waitFor(rf"Worker {i} \(pid \d+\) is ready")
    [pid1] = childrenOf(proc.transport.pid)
    assert _innerPid(pid1) == 1, "the CMD is not PID 1 of its namespace"
    uid = image.user.partition(":")[0]
    assert re.search(rf"^Uid:\s+{uid}\s", Path(f"/proc/{pid1}/status").read_text(), re.MULTILINE)
    workers = childrenOf(pid1)
    assert len(workers) == expected

    for name in ("readinessProbe", "livenessProbe"):
        await eventually(lambda probe=container[name]: succeeds(pid1, probe))
    page = curl(pid1, f"{base}/")
    assert await timeout(page.ended, 60) == 0 and "hello from the container" in page.output, page.output
    if expected > 1:
        await sessionsArePerWorker(pid1, workers, f"{base}/visits.rpy", tmp_path / "cookies")

    # A request in flight, then Kubernetes' stop: the preStop hook in the
    # container, then the stop signal.
    containerTmp = Path(f"/proc/{pid1}/root/tmp")
    slow = curl(pid1, f"{base}/slow.rpy", "--max-time", "60")
    await eventually(lambda: (containerTmp / "started").exists() or slow.ended.called)
    readiness = container["readinessProbe"]
    began = time.monotonic()
    preStop = container["lifecycle"]["preStop"]["exec"]["command"]
    hook = _inContainer(pid1, [*image.asUser(), *preStop], "--net", "--mount", "--pid")
    hookDone = threads.deferToThread(subprocess.run, hook, timeout=60, check=True)
    await eventually(lambda: succeeds(pid1, readiness))
    assert not hookDone.called, "the pod no longer served during preStop"
    await timeout(hookDone, 60)
    os.kill(pid1, getattr(signal, image.stopSignal))
    await eventually(lambda: fails(pid1, readiness))
    assert alive(pid1) and not slow.ended.called, "the request in flight was not waited for"
    (containerTmp / "release").touch()
    assert await timeout(slow.ended, 60) == 0 and "finished after the stop signal" in slow.output, slow.output
    left = pod["terminationGracePeriodSeconds"] - (time.monotonic() - began)
    assert left > 0, "preStop took the whole grace period"
    assert await timeout(proc.ended, left) == 0, proc.output
    assert not alive(pid1) and not [w for w in workers if alive(w)]
    assert "Traceback" not in proc.output, proc.output
