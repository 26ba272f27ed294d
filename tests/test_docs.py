"""
Every code block in README.md and docs/ runs as written, so the
documentation cannot drift from the code.

Each fenced block tagged C{sh} or C{python} is run by C{tests/_docrun.py}
(see there for what "run" means: servers are started for real and probed,
then stopped with SIGTERM) in a copy of the checkout, inside a private
network namespace (only C{lo}, so the documented ports 8080 and 7000 are
free) and mount namespace (private C{/tmp}, C{/run} and C{/srv}, with
C{/srv/www/index.html}, so documented paths such as C{/tmp/web.sock} touch
nothing outside).  Blocks without a tag (diagrams, sample output) or
tagged C{text} (records) are not code.

A block is steered by an HTML comment on the line before its fence:

    <!-- doc-test: probe=tcp://127.0.0.1:7000 probe=unix:///run/app.sock -->
    <!-- doc-test: file=shout.py -->
    <!-- doc-test: skip: REASON -->

C{probe=} names how to check each server the block starts (C{http://},
C{tcp://}, C{unix://}), in order; C{file=NAME} saves a block into the working
directory of the later blocks of the same document instead of running it;
C{skip:} (with a reason, used sparingly) is for a block that cannot run
here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import revealInterpreterLines

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
RUNNER = Path(__file__).resolve().parent / "_docrun.py"

FENCE = re.compile(r"^```([\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->$")
LANGUAGES = {"sh": "sh", "python": "python"}


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    text: str
    skip: str | None = None
    probes: list[str] = field(default_factory=list)
    file: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse(path: Path) -> list[Block]:
    """
    The code blocks of a Markdown file, with their C{doc-test} directives.
    """
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        block = Block(path, start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n")
        d = DIRECTIVE.match(lines[prev].strip()) if prev >= 0 else None
        if d:
            words = d.group(1)
            if words.startswith("skip:"):
                block.skip = words[len("skip:") :].strip()
            else:
                for word in shlex.split(words):
                    key, _, value = word.partition("=")
                    if key == "probe":
                        block.probes.append(value)
                    elif key == "file":
                        block.file = value
                    else:
                        raise ValueError(f"{path}:{start + 1}: unknown doc-test word {word!r}")
        blocks.append(block)
        i = end + 1
    return blocks


ALL = [b for doc in DOCS for b in parse(doc)]
#: Tagged C{text}: a transcript or a record (the commands C{python3 -m bench}
#: ran, with its own C{$WORK} and C{$PORT}), not something to type; tagged
#: C{ini}: a configuration file (the systemd units in docs/workers.md, whose
#: C{ExecStart} tests/test_lifecycle.py runs under systemd-socket-activate);
#: C{dockerfile} and C{yaml}: docs/containers.md's image and manifest, which
#: tests/test_containers_doc.py runs.
NOT_RUN = {"text", "ini", "dockerfile", "yaml"}
CODE = [b for b in ALL if b.lang and b.lang not in NOT_RUN]
RUNNABLE = [b for b in CODE if not b.skip and not b.file]


def test_everyBlockIsRunOrSaysWhyNot() -> None:
    """
    Every tagged block is C{sh} or C{python}; a skipped one gives a reason,
    and skips stay few.
    """
    assert len(DOCS) > 3 and len(RUNNABLE) > 10
    for block in CODE:
        assert block.lang in LANGUAGES, f"{block.name}: tag code blocks sh or python (or leave a diagram untagged)"
        if block.skip is not None:
            assert len(block.skip) > 20, f"{block.name}: say why the block cannot run here"
    skipped = [b for b in CODE if b.skip]
    assert len(skipped) <= len(CODE) // 4, [b.name for b in skipped]


def test_readmeTestCommandIsWhatCIRuns() -> None:
    """
    The README's test command (not run here: it is this suite) is the first
    step of .ci/run, verbatim.
    """
    first = parse(ROOT / "README.md")[:2]
    (test,) = [b for b in first if "pytest" in b.text]
    command = test.text.strip()
    assert test.skip, "the README's test command runs the whole suite; it must not run inside it"
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert command in steps
    later = [i for i, line in enumerate(steps) if "bench icount" in line or "tox" in line]
    assert later and steps.index(command) < min(later), "the README's test command must be CI's first test step"


#: A block that runs C{twistd -u/-g}: its processes drop to another user,
#: who must be able to run this interpreter.
DROPS_PRIVILEGES = re.compile(r"\btwistd\b.*\s-u\s")


def _sandbox(workdir: str, revealInterpreter: bool = False) -> list[str]:
    """
    The command prefix that runs a block inside private network and mount
    namespaces, in C{workdir}; with C{revealInterpreter}, one where the
    unprivileged user can run this interpreter wherever it is installed
    (pyenv's, under C{/root}).
    """
    # The checkout too: the runner lives there, and an editable install
    # imports the package from it (CI may clone under /tmp).
    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, workdir, str(ROOT))}
    keep = {p for p in keep if p.startswith(("/tmp/", "/run/", "/srv/"))}
    q = shlex.quote
    script = ["set -e", "umask 022", "ip link set lo up", "mount -t tmpfs -o mode=0755 tmpfs /run"]
    for i, path in enumerate(sorted(keep)):
        if path.startswith("/run/"):
            raise RuntimeError(f"cannot keep {path} visible")
        script += [f"mkdir -p /run/keep/{i}", f"mount --bind {q(path)} /run/keep/{i}"]
    script += ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mkdir -p /srv", "mount -t tmpfs -o mode=0755 tmpfs /srv"]
    for i, path in enumerate(sorted(keep)):
        script += [f"mkdir -p {q(path)}", f"mount --bind /run/keep/{i} {q(path)}", f"umount /run/keep/{i}"]
    if revealInterpreter:
        # What was kept above is visible already (its parents re-made 0755).
        script += revealInterpreterLines(visible=("/tmp/", "/run/", "/srv/"))
    script += [
        "mkdir -p /srv/www",
        "echo '<h1>hello from the docs</h1>' > /srv/www/index.html",
        f"cd {q(workdir)}",
        'exec "$@"',
    ]
    return ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script), "sh"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """
    A copy of the checkout's files (not its virtualenvs), for blocks that
    use the source tree (C{pip install .}, C{--root .}).
    """
    work = tmp_path / "checkout"
    shutil.copytree(
        ROOT, work, ignore=shutil.ignore_patterns(".git", ".venv", ".tox", "__pycache__", "*.egg-info", "build", "dist")
    )
    return work


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.name for b in RUNNABLE])
def test_block(block: Block, checkout: Path) -> None:
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare, for private network and mount namespaces (CI runs as root)")
    for earlier in parse(block.path):
        if earlier.file and earlier.line < block.line:
            target = checkout / earlier.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(earlier.text)
    spec = checkout / "block.json"
    spec.write_text(json.dumps({"lang": block.lang, "text": block.text, "probes": block.probes}))
    env = dict(os.environ)
    # The reader's shell: this environment's scripts (twistd, twist, python3)
    # first on PATH.  pip installs what `pip install .` builds without
    # fetching a build backend (the namespace has no network).
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PIP_NO_BUILD_ISOLATION"] = "0"
    env["PIP_NO_INDEX"] = "1"
    out = subprocess.run(
        _sandbox(str(checkout), bool(DROPS_PRIVILEGES.search(block.text))) + [sys.executable, str(RUNNER), str(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, f"{block.name}:\n{block.text}\n{out.stderr}{out.stdout}"
