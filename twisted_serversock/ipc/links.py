# -*- test-case-name: tests.test_dispatch_units -*-
"""
What the parent's L{Dispatcher<twisted_serversock.ipc.dispatch.Dispatcher>}
needs of a child's link, as a protocol, so that the dispatcher does not
import L{WorkerLink<twisted_serversock.ipc.parent.WorkerLink>}, which uses
it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

__all__ = ["ILink"]


class ILink(Protocol):
    """
    One child as the dispatcher sees it (see L{WorkerLink
    <twisted_serversock.ipc.parent.WorkerLink>}): it reads this state for
    least-loaded dispatch and changes it only through the methods.
    Connections and routes are typed C{Any}, so that this imports nothing.
    """

    inflight: dict[int, Any]
    sentOrder: deque[tuple[int, float]]
    window: int
    open: int
    routes: list[Any]
    accepting: bool

    def sendControl(self, type: str, **fields: Any) -> None: ...
    def serve(self, route: Any) -> None: ...
    def unserve(self, route: Any) -> None: ...
    def stopAccepting(self) -> None: ...
    def hand(self, held: Any, now: float) -> None: ...
    def adopt(self, connIds: tuple[int, ...], closed: int, now: float) -> tuple[list[Any], list[int]]: ...
    def detach(self) -> tuple[list[Any], list[Any]]: ...
