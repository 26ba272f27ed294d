"""
The one place benchmarks are registered: L{BENCHMARKS} lists their module
names (modules of the C{bench} package), in the order the full suite runs
them.  See the C{bench} package docstring for what such a module holds.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS: tuple[str, ...] = (
    "icount",
    "accept",
    "keepalive",
    "echo",
    "burst",
    "memory",
    "workers",
    "dispatch",
    "skewed",
    "cluster",
    "logs",
    "tls",
    "tlscluster",
    "tlsresume",
)


def load(name: str) -> ModuleType:
    """
    The benchmark module C{name}.

    @raise KeyError: if C{name} is not registered.
    """
    if name not in BENCHMARKS:
        raise KeyError(name)
    return importlib.import_module(f"bench.{name}")
