# -*- test-case-name: tests.test_cluster -*-
"""
The program a cluster worker runs: the primary's own command line
(C{sys.orig_argv}) taken apart into the interpreter's options and the
program (a script, C{-m module} or C{-c command}) with its arguments.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Program", "splitCommandLine"]

# CPython options that take a value (the rest of the token, or the next one).
_WITH_VALUE = set("WX")


class Program(NamedTuple):
    """
    A Python command line taken apart.

    @ivar flags: the interpreter's options (C{-u}, C{-X dev}, ...), for the
        worker's interpreter.
    @ivar kind: C{"script"}, C{"module"} or C{"command"}.
    @ivar target: the script's path, the module's name or the command.
    @ivar args: the program's arguments.
    """

    flags: list[str]
    kind: str
    target: str
    args: list[str]


def splitCommandLine(argv: list[str]) -> Program:
    """
    Take apart C{argv} as CPython reads its own command line.

    @raise ValueError: for a program that cannot be run again (read from
        standard input, or no program at all).
    """
    flags: list[str] = []
    i = 1
    while i < len(argv):
        token = argv[i]
        if token == "--":
            i += 1
            break
        if token == "-" or not token.startswith("-"):
            break
        if token.startswith("--"):
            flags.append(token)  # --check-hash-based-pycs VALUE is the only one with a value
            if token == "--check-hash-based-pycs" and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
            i += 1
            continue
        j = 1
        kept = "-"
        while j < len(token):
            c = token[j]
            if c in "mc":
                value = token[j + 1 :] or (argv[i + 1] if i + 1 < len(argv) else None)
                if value is None:
                    raise ValueError(f"the command line {argv!r} ends after -{c}")
                if kept != "-":
                    flags.append(kept)
                rest = argv[i + 1 :] if token[j + 1 :] else argv[i + 2 :]
                return Program(flags, "module" if c == "m" else "command", value, rest)
            if c in _WITH_VALUE:
                value = token[j + 1 :]
                if kept != "-":
                    flags.append(kept)
                    kept = "-"
                if value:
                    flags += ["-" + c, value]
                else:
                    flags += ["-" + c] + argv[i + 1 : i + 2]
                    i += 1
                break
            kept += c
            j += 1
        else:
            if kept != "-":
                flags.append(kept)
        i += 1
    if i >= len(argv) or argv[i] == "-":
        raise ValueError(
            f"cluster workers run the program again, but {argv!r} reads it from standard input; "
            "run a script file, -m module or -c command"
        )
    return Program(flags, "script", argv[i], argv[i + 1 :])
