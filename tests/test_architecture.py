"""
The package's shape, checked: no import cycle among its modules, no module
over 600 lines, no function over 60, objects that use each other through real methods rather
than through each other's private attributes, and no private Twisted name
(a private module, class or attribute) outside the one module that wraps
them.  (See
C{docs/architecture.md} for the map these rules keep true.)  And one rule
of the test suite's own: no module of it imports a test module.

Static checks over the source (C{ast}), so they run in milliseconds and
name the offending module or line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import twisted_serversock

PACKAGE = Path(twisted_serversock.__file__).parent
NAME = "twisted_serversock"

#: Longest module allowed (lines).
MAX_LINES = 600
#: Longest function or method allowed (lines, its docstring included).
MAX_FUNCTION_LINES = 60
#: Private-attribute accesses on another object allowed in the whole
#: package, outside the one module that wraps Twisted's internals: the
#: count there is (a value object comparing itself with another of its
#: class), so that a new one is a decision, not a drift.
MAX_PRIVATE_ACCESSES = 1
#: The modules allowed to use Twisted's private attributes, each name
#: checked against the installed Twisted (C{_twistedcompat.problems()}).
COMPAT = ("_twistedcompat.py", "_h2compat.py")



def _importedFrom(name: str, isPackage: bool, node: ast.ImportFrom) -> str:
    """
    The module a C{from ... import} in module C{name} imports from, with a
    relative import resolved.
    """
    if not node.level:
        return node.module or ""
    base = name.split(".")
    if not isPackage:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))

def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([NAME, *parts])] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """
    Every package module C{name} imports, wherever the import statement is
    (module level, in a function, under C{TYPE_CHECKING}).
    """
    found = set()
    isPackage = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _importedFrom(name, isPackage, node)
            for alias in node.names:
                full = f"{source}.{alias.name}"
                found.add(full if full in modules else source)
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """
    The strongly connected components of C{graph} with more than one
    module (Tarjan's algorithm).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        onStack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in onStack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                onStack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _privateAccesses(path: Path, label: str = "") -> list[str]:
    """
    C{x._name} where C{x} is neither C{self}/C{cls} nor a module imported
    with C{import x} (such as C{os._exit}).
    """
    tree = ast.parse(path.read_text())
    importedModules = {
        (a.asname or a.name).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__"):
            continue
        value = node.value
        if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in importedModules):
            continue
        found.append(f"{label or path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


_REFLECTION = ("getattr", "hasattr", "setattr", "delattr")


def _privateNames(path: Path, label: str = "") -> list[str]:
    """
    Private Twisted names reached another way than C{x._name}: an import
    of a private Twisted module or name (C{twisted.scripts._twistd_unix},
    C{from twisted.web.http import _GenericHTTPChannelProtocol}), and a
    private attribute named as a string (C{getattr(x, "_channel")}).
    """
    where = label or path.relative_to(PACKAGE.parent)
    found = []

    def private(name: str) -> bool:
        return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend(f"{where}:{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("twisted.") and private(a.name))
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "twisted":
            module = node.module or ""
            names = [a.name for a in node.names]
            if private(module) or any(private(n) for n in names):
                found.append(f"{where}:{node.lineno}: from {module} import {', '.join(names)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _REFLECTION
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_noImportCycles() -> None:
    """
    No two modules of the package import each other, directly or through
    others, counting imports inside functions and under C{TYPE_CHECKING}.
    """
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(graph) == []


def test_modulesAreSmall() -> None:
    """
    No module is longer than L{MAX_LINES}: one job each.
    """
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_functionsAreShort() -> None:
    """
    No function or method is longer than L{MAX_FUNCTION_LINES}: a longer
    one is doing several jobs (split it by job, or by state).
    """
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _modules().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_fewPrivateAccesses() -> None:
    """
    Objects use each other through methods, callables and interfaces: at
    most L{MAX_PRIVATE_ACCESSES} accesses to another object's private
    attributes in the whole package, Twisted's internals (wrapped in
    L{COMPAT}) aside.
    """
    found = [a for path in _modules().values() if path.name not in COMPAT for a in _privateAccesses(path)]
    assert len(found) <= MAX_PRIVATE_ACCESSES, "\n".join(found)


def test_noPrivateTwistedNames() -> None:
    """
    Twisted's private modules, classes and attributes are used in
    the L{COMPAT} modules only, where each has a check that the installed Twisted
    still has it (C{_twistedcompat.problems()}).
    """
    found = [n for path in _modules().values() if path.name not in COMPAT for n in _privateNames(path)]
    assert found == []


#: The test suite: its modules share helpers through C{conftest.py} and the
#: C{_*.py} modules, never by importing one another.
TESTS = Path(__file__).parent


def _testModuleImports(path: Path, name: str, label: str = "") -> list[str]:
    """
    The imports in C{path} (the module C{name}, under C{tests}) of a test
    module (C{tests.test_*}, or C{test_*} in a package under C{tests}).
    """
    found = []
    isPackage = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _importedFrom(name, isPackage, node)
            targets = [source] + [f"{source}.{a.name}" for a in node.names]
        else:
            continue
        if any(t.split(".")[0] == "tests" and t.split(".")[-1].startswith("test_") for t in targets):
            found.append(f"{label or path.relative_to(TESTS.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_noTestModuleImportsAnother() -> None:
    """
    No module of the test suite imports a test module: a helper two test
    modules need is in C{conftest.py} or one of the C{_*.py} modules
    (tests/README.md says which).
    """
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        parts = list(path.relative_to(TESTS.parent).with_suffix("").parts)
        found += _testModuleImports(path, ".".join(parts))
    assert found == []


def test_checksSeeViolations(tmp_path: Path) -> None:
    """
    The checks above would see what they look for (they are not vacuous).
    """
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    source = tmp_path / "m.py"
    source.write_text("import os\nclass A:\n    def f(self, o):\n        os._exit\n        self._x\n        return o._y\n")
    assert [line.split(": ", 1)[1] for line in _privateAccesses(source, "m.py")] == ["o._y"]
    source.write_text(
        "import twisted.scripts._twistd_unix\n"
        "from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory\n"
        "from twisted.web.http import _GenericHTTPChannelProtocol, HTTPChannel\n"
        "from twisted.internet import tcp\n"
        "from ._local import x\n"
        "getattr(p, '_channel', None)\n"
        "getattr(p, 'wrappedProtocol', None)\n"
    )
    assert [line.split(": ", 1)[1] for line in _privateNames(source, "m.py")] == [
        "import twisted.scripts._twistd_unix",
        "from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory",
        "from twisted.web.http import _GenericHTTPChannelProtocol, HTTPChannel",
        "getattr(p, '_channel', None)",
    ]
    source.write_text(
        "from .test_tap import spawn\n"
        "from . import test_ipc, _procs\n"
        "import tests.test_cluster\n"
        "from tests.test_twistd import Proc\n"
        "from ._procs import spawn\n"
        "from .conftest import timeout\n"
        "from ..test_ipc import Collect\n"
        "import testing, test_x\n"
    )
    assert [line.split(": ", 1)[1] for line in _testModuleImports(source, "tests.soak.m", "m.py")] == [
        "from .test_tap import spawn",
        "from . import test_ipc, _procs",
        "import tests.test_cluster",
        "from tests.test_twistd import Proc",
        "from ..test_ipc import Collect",
    ]
    assert [line.split(": ", 1)[1] for line in _testModuleImports(source, "tests.m", "m.py")] == [
        "from .test_tap import spawn",
        "from . import test_ipc, _procs",
        "import tests.test_cluster",
        "from tests.test_twistd import Proc",
    ]
