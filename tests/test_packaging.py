"""
Packaging: the wheel ships exactly the dropins under twisted/plugins/ (never
a dropin.cache, never a twisted/__init__.py), and the plugins are found from
a wheel install as well as from the editable install the tests run in.
"""

from __future__ import annotations

import configparser
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DROPINS = {"twisted/plugins/twisted_serversock_endpoints.py", "twisted/plugins/twisted_serversock_tap.py"}

DISCOVER = (
    "import sys\n"
    "from twisted.plugin import getPlugins\n"
    "from twisted.internet.interfaces import IStreamServerEndpointStringParser as I\n"
    "prefixes = sorted(p.prefix for p in getPlugins(I))\n"
    "from twisted.application.service import IServiceMaker\n"
    "prefixes += [m.tapname for m in getPlugins(IServiceMaker) if m.tapname == 'serversock']\n"
    "assert 'twisted.internet.reactor' not in sys.modules, 'a dropin imported the reactor'\n"
    "print(' '.join(prefixes))\n"
    "import twisted_serversock\n"
    "print(twisted_serversock.__file__)\n"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # A stray cache in the work tree must not reach the wheel.
    stray = ROOT / "twisted" / "plugins" / "dropin.cache"
    created = not stray.exists()
    if created:
        stray.write_bytes(b"not a real cache")
    out = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
            check=True,
            timeout=600,
        )
    finally:
        if created:
            stray.unlink()
    (built,) = out.glob("twisted_serversock-*.whl")
    yield built


def test_wheelContents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    underTwisted = {n for n in names if n.startswith("twisted/")}
    assert underTwisted == DROPINS
    assert not any(n.endswith("dropin.cache") for n in names)
    assert "twisted_serversock/__init__.py" in names
    assert "twisted_serversock/endpoints.py" in names
    assert not any(n.startswith("tests/") for n in names)


def test_pluginsFoundFromWheel(wheel: Path, tmp_path: Path) -> None:
    """
    Install the wheel alone into a new virtual environment that sees the
    dependencies (Twisted, zope.interface) but not this checkout, and
    discover the plugins there.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # The dependencies, through a path (.pth lines add directories; the .pth
    # files inside them, like this checkout's editable hook, are not run).
    deps = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    Path(target, "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    out = subprocess.run(
        [str(python), "-c", DISCOVER], capture_output=True, text=True, cwd="/", timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert out.returncode == 0, out.stderr
    prefixes, location = out.stdout.split("\n")[:2]
    assert {"gecko", "geckounix", "serversock"} <= set(prefixes.split())
    assert location.startswith(target), "the package was not imported from the wheel install"


def test_pluginsFoundFromEditableInstall() -> None:
    out = subprocess.run([sys.executable, "-c", DISCOVER], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert {"gecko", "geckounix", "serversock"} <= set(out.stdout.split("\n")[0].split())


def test_noPackageInitUnderTwisted() -> None:
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if tracked:  # (an sdist is not a git checkout)
        assert not [t for t in tracked if t.endswith("dropin.cache")]


def test_wheelIsTypedAndLicensed(wheel: Path) -> None:
    """
    PEP 561: the wheel carries C{py.typed}, so mypy checks users' code
    against our annotations; the MIT licence text the metadata declares;
    and no link to a place that does not exist.
    """
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "twisted_serversock/py.typed" in names
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = z.read(metadata).decode()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = z.read(licence).decode()
    assert "License-Expression: MIT" in meta
    assert text.startswith("MIT License") and text == (ROOT / "LICENSE").read_text()
    # No project URLs until the project has a public home: metadata must not
    # send users to a repository that does not exist.
    assert "Project-URL:" not in meta and "Home-page:" not in meta
    assert "Classifier: Typing :: Typed" in meta


def _pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.importorskip("tomli")
        import tomli as tomllib  # type: ignore[no-redef]
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _tox() -> configparser.ConfigParser:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    return tox


def test_supportedRangeIsTested() -> None:
    """
    What pyproject.toml claims is what tox.ini tests, so neither can drift:
    a py3X environment for every Python-version classifier, requires-python
    starting at the lowest, and the C{min} environment pinning exactly the
    lower bound of every runtime dependency, on that lowest Python.
    """
    project = _pyproject()["project"]
    tox = _tox()
    prefix = "Programming Language :: Python :: 3."
    minors = sorted(int(c[len(prefix):]) for c in project["classifiers"] if c.startswith(prefix) and c[len(prefix):].isdigit())
    envs = [e.strip() for e in tox["tox"]["envlist"].split(",")]
    assert [e for e in envs if e.startswith("py3")] == [f"py3{m}" for m in minors]
    assert {"min", "mypy", "docs"} <= set(envs)
    assert project["requires-python"] == f">=3.{minors[0]}"
    assert tox["testenv:min"]["basepython"] == f"python3.{minors[0]}"
    lower = {}
    for dep in project["dependencies"]:
        name, bound = dep.split(">=")
        lower[name.strip().lower()] = bound.strip()
    pins = dict(line.strip().lower().split("==") for line in tox["testenv:min"]["deps"].strip().splitlines())
    assert pins == lower


def test_installedVersionsAreInRange() -> None:
    """
    The installed Twisted and zope.interface are at least the lower bounds;
    inside tox's C{min} environment, exactly them (pip did not upgrade
    them), so that environment really tests the lowest supported versions.
    """
    from importlib.metadata import version

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(part) for part in v.split(".")[:3] if part.isdigit())

    pins = dict(line.strip().lower().split("==") for line in _tox()["testenv:min"]["deps"].strip().splitlines())
    installed = {name: version(name) for name in pins}
    if os.environ.get("TOX_ENV_NAME") == "min":
        assert installed == pins
    else:
        assert all(key(installed[name]) >= key(pins[name]) for name in pins), installed


#: The package's top-level modules that mypy does not hold to --strict
#: (none: a module added here needs its reason beside it).
NOT_STRICT: set[str] = set()


def test_everyCoreModuleIsTypeCheckedStrictly() -> None:
    """
    A new top-level module of the package is held to the strict mypy flags
    of pyproject's override (or named in L{NOT_STRICT}, with a reason
    there): the list cannot fall behind silently.
    """
    [override] = _pyproject()["tool"]["mypy"]["overrides"]
    strict = set(override["module"])
    package = ROOT / "twisted_serversock"
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    expected = {"twisted_serversock"} | {f"twisted_serversock.{m}" for m in modules - NOT_STRICT}
    assert expected <= strict
    assert not {f"twisted_serversock.{m}" for m in NOT_STRICT} & strict
    assert override["disallow_untyped_defs"] and override["warn_return_any"]
