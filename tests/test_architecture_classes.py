"""
The worker side's classes are small: no class in C{ipc/}, C{cluster/} or
C{tap.py} over L{MAX_CLASS_LINES} lines, beside the ones named in
L{STILL_TOO_LONG}, each held at its size today so that it can only shrink
(and leaves that list once it fits).  A static check (C{ast}), as in
C{test_architecture}.
"""

from __future__ import annotations

import ast
from pathlib import Path

import twisted_serversock

PACKAGE = Path(twisted_serversock.__file__).parent

#: Longest class allowed on the worker side (lines, docstrings included).
MAX_CLASS_LINES = 300
#: Classes still over the limit, with the most lines each may have: none
#: now (the pool of worker processes was split by job).
STILL_TOO_LONG: dict[str, int] = {}


def _workerSide() -> list[Path]:
    return sorted([*PACKAGE.glob("ipc/*.py"), *PACKAGE.glob("cluster/*.py"), PACKAGE / "tap.py"])


def classSizes(paths: list[Path], root: Path = PACKAGE) -> dict[str, int]:
    """
    Every class defined in C{paths}, as C{"path/under/root.py:Name"}, with
    its length in lines.
    """
    sizes = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                name = f"{path.relative_to(root).as_posix()}:{node.name}"
                sizes[name] = node.end_lineno - node.lineno + 1
    return sizes


def test_workerSideClassesAreSmall() -> None:
    """
    No worker-side class is over the limit, or over its own ceiling.
    """
    sizes = classSizes(_workerSide())
    tooLong = {name: n for name, n in sizes.items() if n > STILL_TOO_LONG.get(name, MAX_CLASS_LINES)}
    assert tooLong == {}, f"classes over their limit (lines): {tooLong}"


def test_ceilingsAreStillNeeded() -> None:
    """
    A class in L{STILL_TOO_LONG} that fits the limit leaves the list.
    """
    sizes = classSizes(_workerSide())
    fits = [name for name in STILL_TOO_LONG if sizes.get(name, 0) <= MAX_CLASS_LINES]
    assert fits == [], f"remove from STILL_TOO_LONG: {fits}"


def test_checkSeesALongClass(tmp_path: Path) -> None:
    """
    The check counts a class's lines.
    """
    module = tmp_path / "m.py"
    module.write_text("class A:\n" + "    x = 1\n" * 400 + "\n\nclass B:\n    pass\n")
    assert classSizes([module], tmp_path) == {"m.py:A": 401, "m.py:B": 2}
