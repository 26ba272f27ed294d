# -*- test-case-name: tests.test_ipc -*-
"""
What the parent's L{Dispatcher<twisted_serversock.ipc.dispatch.Dispatcher>}
needs of a child's link: the state it keeps per child for least-loaded
dispatch, and a way to send.  L{WorkerLink<twisted_serversock.ipc.parent.WorkerLink>}
provides it; the dispatcher imports only this, so that it does not depend
on the module that uses it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol

__all__ = ["ILink", "ISender"]


class ISender(Protocol):
    """
    The sending half of a L{Channel<twisted_serversock.ipc.channel.Channel>}.
    """

    def send(self, data: bytes, fds: list[int] | tuple[int, ...] = (), then: Callable[[], None] | None = None) -> None: ...


class ILink(Protocol):
    """
    One child as the dispatcher sees it (see
    L{WorkerLink<twisted_serversock.ipc.parent.WorkerLink>} for what each
    attribute means).  Connections and routes are the dispatcher's own
    values, typed C{Any} here so that this module imports nothing.
    """

    inflight: dict[int, Any]
    sentOrder: deque[tuple[int, float]]
    window: int
    adopted: int
    open: int
    sent: int
    limit: int
    routes: list[Any]
    accepting: bool

    @property
    def onLimit(self) -> Callable[[Any], None] | None: ...

    @property
    def channel(self) -> ISender: ...

    def sendControl(self, type: str, **fields: Any) -> None: ...
