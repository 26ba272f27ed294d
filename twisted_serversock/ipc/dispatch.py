# -*- test-case-name: tests.test_dispatch_units -*-
"""
The parent's dispatcher: which child gets each accepted connection (the
one with the fewest in hand, within its window: see L{MAX_INFLIGHT}), and
when the parent stops accepting (see L{MAX_WAITING}).

A connection is re-sent to another child only after the first child's
channel has ended and all it sent was read: a child adopts a connection
only after the kernel has taken its ack, so one whose ack never arrived was
never adopted, and never will be.  No connection is served by two
processes, even by one stopped (SIGSTOP) that wakes up: the parent re-sends
nothing while it lives.

A child at its descriptor limit refuses what it cannot take (it never
adopted it): the connection goes to another child of its route, and the
refusing one gets no more until it has room (its next close or adoption,
or a probe every L{FULL_RETRY} seconds).  Only when every child of the
route is full is a refused connection closed.
"""

from __future__ import annotations

import itertools
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from twisted.logger import Logger

from .channel import Channel
from .wire import encodeConn, encodeControl

__all__ = ["Dispatcher", "Route", "Link", "MAX_INFLIGHT", "INITIAL_WINDOW", "FAST_ACK", "ACK_DEADLINE", "MAX_WAITING", "FULL_RETRY"]

_log = Logger()

#: Unacknowledged hand-overs one child may have at once, at most.  Each
#: child has a window between 1 and this: it grows by one with each ack
#: within L{FAST_ACK}, and halves with each later than L{ACK_DEADLINE}.  A
#: child that acknowledges at once gets many connections per message; a
#: busy one (its reactor in a long handler) is committed to few: the others
#: wait in the parent and go to whichever child acknowledges first.
MAX_INFLIGHT = 32
INITIAL_WINDOW = 4
FAST_ACK = 0.001
#: A child that has left a hand-over unacknowledged this long gets no new
#: connections until it acknowledges (it is busy, stopped or stuck).
ACK_DEADLINE = 0.01
#: Accepted connections the parent keeps waiting for a child; at this many it
#: stops accepting (the rest wait in the kernel's backlog) until half are gone.
MAX_WAITING = 64
#: Seconds after which a child that refused a connection (at its descriptor
#: limit) and reported no room since is offered one again.
FULL_RETRY = 1.0
_PAUSE_LOG_EVERY = 10.0


@dataclass(slots=True, eq=False)
class _Held:
    """An accepted connection the parent still holds."""

    connId: int
    route: Route
    socket: socket.socket
    link: Link | None = None
    sentAt: float = 0.0


class Link:
    """
    One child as the dispatcher sees it: the messages it sends the child,
    and its counts, read for least-loaded dispatch and changed only through
    these methods (L{WorkerLink<twisted_serversock.ipc.parent.WorkerLink>}
    reads the child's messages).

    @ivar inflight: connections sent and not yet acknowledged, by id.
    @ivar sentOrder: C{(connection id, when sent)} in the order sent; its
        first is always unacknowledged (L{adopt} keeps it so: a dict's
        first entry is slow to find once many were deleted).
    @ivar window: how many unacknowledged it may have (see L{MAX_INFLIGHT}).
    @ivar adopted: connections acknowledged; C{open}: those not yet
        reported closed; C{sent}: those sent.
    @ivar limit: the C{sent} count at which C{onLimit} is called once (0: none).
    @ivar retired: it gets no new connections for good (L{stopAccepting}).
    @ivar full: it refused a connection (at its descriptor limit) and has
        not reported room since (see L{refuse}); C{fullSince}: when it was
        last offered one while full.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.inflight: dict[int, _Held] = {}
        self.sentOrder: deque[tuple[int, float]] = deque()
        self.window = INITIAL_WINDOW
        self.adopted = self.open = self.sent = self.limit = 0
        self.onLimit: Callable[[Link], None] | None = None
        self.routes: list[Route] = []
        self.accepting = True
        self.full = self.retired = False
        self.fullSince = 0.0

    def sendControl(self, type: str, **fields: Any) -> None:
        """Send a control message to the child."""
        self.channel.send(encodeControl(type, **fields))

    def stopAccepting(self) -> None:
        """The child gets no new connections (it is retiring or gone)."""
        self.accepting, self.retired = False, True

    def resumeAccepting(self) -> None:
        """The child gets new connections again (its successor failed)."""
        self.retired = False
        self.accepting = not self.full

    def markFull(self, now: float) -> None:
        """The child refused a connection: it gets none while others can take them, until L{hasRoom}."""
        self.full, self.fullSince, self.accepting = True, now, False

    def hasRoom(self) -> None:
        """The child has descriptors free again (a connection of its ended, or it adopted one)."""
        self.full = False
        self.accepting = not self.retired

    def hand(self, held: _Held, now: float) -> None:
        """Send C{held} to the child at C{now}, its own until acknowledged; call C{onLimit} when this makes C{limit}."""
        held.link, held.sentAt = self, now
        self.inflight[held.connId] = held
        self.sentOrder.append((held.connId, now))
        self.sent += 1
        self.channel.send(encodeConn(held.connId, held.route.id), (held.socket.fileno(),))
        if self.limit and self.sent == self.limit and self.onLimit is not None:
            self.onLimit(self)

    def adopt(self, connIds: tuple[int, ...], closed: int, now: float) -> tuple[list[_Held], list[int]]:
        """
        The child adopted C{connIds} and C{closed} of its connections ended:
        return the adopted connections, and the ids it was not given.  The
        window grows after a fast ack and halves after a slow one.
        """
        if closed:
            self.open = max(self.open - closed, 0)
        if self.full and (closed or connIds):
            self.hasRoom()
        first = self.inflight.get(connIds[0]) if connIds else None
        if first is not None:
            took = now - first.sentAt
            if took <= FAST_ACK:
                self.window = min(self.window + 1, MAX_INFLIGHT)
            elif took > ACK_DEADLINE:
                self.window = max(1, self.window // 2)
        popped = [(connId, self.inflight.pop(connId, None)) for connId in connIds]
        adopted = [held for _, held in popped if held is not None]
        unknown = [connId for connId, held in popped if held is None]
        self.adopted += len(adopted)
        self.open += len(adopted)
        self._trimOrder()
        return adopted, unknown

    def refuse(self, connIds: tuple[int, ...], now: float) -> list[_Held]:
        """The child refused C{connIds} (it never adopted them): return those it had, no longer its own; if any, it is L{markFull}."""
        refused = [held for held in (self.inflight.pop(connId, None) for connId in connIds) if held is not None]
        for held in refused:
            held.link = None
        if refused:
            self._trimOrder()
            self.markFull(now)
        return refused

    def _trimOrder(self) -> None:
        order, inflight = self.sentOrder, self.inflight
        while order and order[0][0] not in inflight:
            order.popleft()

    def detach(self) -> tuple[list[Route], list[_Held]]:
        """The child is gone: return the routes it served and what it had not acknowledged, which are no longer its own."""
        self.accepting, self.retired = False, True
        routes, self.routes = self.routes, []
        unacked, self.inflight = list(self.inflight.values()), {}
        self.sentOrder.clear()
        return routes, unacked


class Route:
    """
    One listener's way to its children.

    @ivar onOrphaned: when the last link goes away, the route closes and
        this closes its listener (a child's own); None for a worker pool's,
        whose workers come back.
    @ivar proxy: connections arrive with a PROXY protocol header, which the
        child parses (the parent never reads from a connection).
    @ivar waiting: its accepted connections no child could take yet.
    """

    def __init__(self, id: int, name: str, onOrphaned: Callable[[], None] | None) -> None:
        self.id, self.name, self.onOrphaned = id, name, onOrphaned
        self.links: list[Link] = []
        self.closed = self.proxy = self.paused = False
        self.ports: list[Any] = []
        self.waiting: deque[_Held] = deque()
        self._next = 0

    def __repr__(self) -> str:
        return f"<Route {self.id} {self.name}>"

    def watchPort(self, port: Any) -> None:
        """
        Pause accepting on C{port} while every child of this route is
        saturated: with C{pauseAccepting} (gecko endpoints) or
        C{stopReading} (Twisted's own ports); other ports are never paused.
        """
        self.ports.append(port)
        if self.paused:
            _setAccepting(port, False)

    def pick(self, now: float) -> Link | None:
        """
        The child with the fewest connections in hand among those that can
        take one (accepting, under its window, none of its hand-overs older
        than L{ACK_DEADLINE}); ties go to fewer unacknowledged, then in turn.
        A L{full<Link.full>} child is offered one only once L{FULL_RETRY}
        has passed, or when every other is full too (it will refuse it, or
        take it if it has room again).
        """
        links = self.links
        count = len(links)
        if not count:
            return None
        start = self._next = (self._next + 1) % count
        best, bestKey, full, busy = None, 0, None, False
        for i in range(count):
            link = links[(start + i) % count]
            if not link.accepting:
                if link.full and not link.retired and (full is None or link.fullSince < full.fullSince):
                    full = link
                continue
            n = len(link.inflight)
            if n and (n >= link.window or now - link.sentOrder[0][1] > ACK_DEADLINE):
                busy = True
                continue
            key = (n + link.open) * 1024 + n
            if best is None or key < bestKey:
                best, bestKey = link, key
        if full is not None and (now - full.fullSince >= FULL_RETRY or (best is None and not busy)):
            full.fullSince = now
            return full
        return best

    def setPaused(self, paused: bool) -> bool:
        """Stop (or resume) accepting on every watched port; False if it already was."""
        if self.paused is paused:
            return False
        self.paused = paused
        for port in self.ports:
            _setAccepting(port, not paused)
        return True


def _setAccepting(port: Any, accepting: bool) -> None:
    gecko = getattr(port, "resumeAccepting" if accepting else "pauseAccepting", None)
    if gecko is not None:
        gecko()
    elif not getattr(port, "connected", False) or not hasattr(port, "startReading"):
        return  # not a reader of its own, or closed
    elif not accepting:
        port.stopReading()
    elif not getattr(port, "disconnecting", False):
        port.startReading()


class Dispatcher:
    """
    Holds accepted connections and hands them to children.

    @ivar held: every connection not yet acknowledged, by id.
    @ivar waiting: how many wait for a child; at L{MAX_WAITING} the route's
        accepting pauses.
    @ivar redispatched: connections sent to a second child because the
        first was lost before acknowledging.
    @ivar dropped: connections closed unserved (their listener's last child
        gone, a shutdown's grace period over, or every child full).
    @ivar refused: connections a child refused (at its descriptor limit).
    @ivar pauses: how many times accepting paused; C{paused}: how many
        routes are paused now.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        """@param clock: the time now, in seconds (the reactor's C{seconds})."""
        self.routes: dict[int, Route] = {}
        self.held: dict[int, _Held] = {}
        self.waiting = self.accepted = self.adopted = self.redispatched = self.dropped = self.pauses = self.paused = 0
        self.refused = 0
        self._now = clock
        self._lastPauseLog = -_PAUSE_LOG_EVERY
        self._connIds, self._routeIds = itertools.count(1), itertools.count(1)
        self._idleWaiters: list[Callable[[], None]] = []
        # The routes with connections waiting (a closed one is no longer in
        # routes), in the order their first began to wait.
        self._queued: dict[Route, None] = {}
        self._gaveUp = False

    def addRoute(self, name: str, onOrphaned: Callable[[], None] | None = None) -> Route:
        """A new route (for one listener)."""
        route = Route(next(self._routeIds), name, onOrphaned)
        self.routes[route.id] = route
        return route

    def join(self, route: Route, link: Link) -> None:
        """Let C{link} serve C{route}, and give it what was waiting."""
        if route.closed or link in route.links:
            return
        if route.proxy:
            link.sendControl("route", id=route.id, proxy=True)
        route.links.append(link)
        link.routes.append(route)
        self.wake()

    def leave(self, link: Link) -> None:
        """C{link} gets no new connections (it is being retired); what it holds unacknowledged stays its own."""
        link.stopAccepting()
        for route in list(link.routes):
            self.leaveRoute(route, link)

    def leaveRoute(self, route: Route, link: Link) -> None:
        """C{link} serves C{route} no more (its program stopped listening on it); what was sent to it stays in flight."""
        if link in route.links:
            route.links.remove(link)
        if route in link.routes:
            link.routes.remove(route)

    def markProxy(self, route: Route) -> None:
        """Connections of C{route} carry a PROXY protocol header: tell its children, before the first reaches them."""
        if not route.proxy:
            route.proxy = True
            for link in route.links:
                link.sendControl("route", id=route.id, proxy=True)

    def submit(self, route: Route, skt: socket.socket) -> None:
        """Take an accepted socket for C{route}; hand it on now or as soon as a child of the route can take it."""
        held = _Held(next(self._connIds), route, skt)
        self.accepted += 1
        self.held[held.connId] = held
        if route.waiting or not self._send(held):
            route.waiting.append(held)
            self._queued[route] = None
            self.waiting += 1
            # (A closed route's are what its listener's queue held at the
            # close: there is no accepting left to pause.)
            if self.waiting >= MAX_WAITING and not route.closed and route.setPaused(True):
                self._paused(route)

    def _paused(self, route: Route) -> None:
        self.paused += 1
        self.pauses += 1
        now = self._now()
        if now - self._lastPauseLog >= _PAUSE_LOG_EVERY:
            self._lastPauseLog = now
            why = "No worker of {route!r} can take a connection now (all busy, stalled or starting): pausing accepts"
            _log.info(why + "; new connections wait in the kernel's backlog ({n} pause(s) so far)", route=route, n=self.pauses)

    def _send(self, held: _Held) -> bool:
        now = self._now()
        link = held.route.pick(now)
        if link is not None:
            link.hand(held, now)
        return link is not None

    def wake(self) -> None:
        """Hand waiting connections to children that can take them now; resume accepting once half have gone."""
        for route in list(self._queued):
            waiting = route.waiting
            while waiting:
                held = waiting[0]
                if held.connId in self.held and route.closed and not route.links:
                    self._drop(held, "its listener's last child is gone")
                elif held.connId in self.held and not self._send(held):
                    break
                waiting.popleft()
                self.waiting -= 1
            if not waiting:
                del self._queued[route]
        if self.paused and self.waiting <= MAX_WAITING // 2:
            for route in self.routes.values():
                if route.setPaused(False):
                    self.paused -= 1

    def acked(self, link: Link, connIds: tuple[int, ...], closed: int = 0) -> None:
        """C{link}'s child adopted C{connIds} and C{closed} of its connections ended: close our copies of the adopted."""
        adopted, unknown = link.adopt(connIds, closed, self._now())
        for connId in unknown:
            _log.warn("{link!r} acknowledged connection {id}, which it was not given", link=link, id=connId)
        for held in adopted:
            del self.held[held.connId]
            held.socket.close()  # a plain close: the child's copy lives on
        self.adopted += len(adopted)
        if self.waiting or self.paused:
            self.wake()
        self._checkIdle()

    def refusedBy(self, link: Link, connIds: tuple[int, ...]) -> None:
        """
        C{link}'s child refused C{connIds} (it is at its descriptor limit;
        it never adopted them): each goes to another child of its route, or
        is closed if every one is full; C{link} is marked full.
        """
        wasFull = link.full
        refused = link.refuse(connIds, self._now())
        self.refused += len(refused)
        if len(refused) < len(connIds):
            _log.warn("{link!r} refused {n} connection(s) it did not have in hand; ignored", link=link, n=len(connIds) - len(refused))
        if refused and not wasFull:
            why = "{link!r} is at its descriptor limit: it refused {n} connection(s), and gets none while another worker has room"
            _log.warn(why, link=link, n=len(refused))
        for held in reversed(refused):
            route = held.route
            if all(other.full or other.retired for other in route.links):
                self._drop(held, "every worker of it is at its descriptor limit")
                continue
            self.redispatched += 1
            route.waiting.appendleft(held)
            self._queued[route] = None
            self.waiting += 1
        self.wake()
        self._checkIdle()

    def linkLost(self, link: Link) -> None:
        """C{link}'s child is gone, all it sent read: re-route what it had not acknowledged (or close it, after L{dropAll})."""
        routes, unacked = link.detach()
        for route in routes:
            self.leaveRoute(route, link)
            if not route.links and route.onOrphaned is not None and not route.closed:
                route.closed = True
                route.onOrphaned()
        if self._gaveUp:  # the grace period is over: nobody is left to take them
            for held in unacked:
                self._drop(held, "its worker went away after the grace period ended")
        elif unacked:
            why = "{link!r} went away holding {n} unacknowledged connection(s); handing them to another child"
            _log.info(why, link=link, n=len(unacked))
            for held in reversed(unacked):
                held.link = None
                self.redispatched += 1
                held.route.waiting.appendleft(held)
                self._queued[held.route] = None
                self.waiting += 1
        self.wake()
        self._checkIdle()

    def closeRoute(self, route: Route) -> None:
        """The listener of C{route} is closed: connections already accepted still go to its children."""
        route.closed = True
        route.ports = []
        if route.setPaused(False):
            self.paused -= 1
        self.routes.pop(route.id, None)
        if not route.links:
            self.wake()

    def _drop(self, held: _Held, why: str) -> None:
        self.held.pop(held.connId, None)
        self.dropped += 1
        _log.error("Closing connection {id} of {route!r}: {why}", id=held.connId, route=held.route, why=why)
        held.socket.close()

    def dropAll(self, why: str) -> int:
        """
        Close every held connection no child has (at the end of a shutdown's
        grace period); return how many.  Those sent to a child still there
        stay its own: it may still adopt them (their message may be queued
        in its channel still); if it goes away first, L{linkLost} closes them.
        """
        self._gaveUp = True
        held = [h for h in self.held.values() if h.link is None]
        for each in held:
            self._drop(each, why)
        for route in self._queued:
            route.waiting.clear()
        self._queued.clear()
        self.waiting = 0
        self._checkIdle()
        return len(held)

    def whenIdle(self, callback: Callable[[], None]) -> None:
        """Call C{callback} once no connection is held (at once if none is)."""
        self._idleWaiters.append(callback)
        self._checkIdle()

    def _checkIdle(self) -> None:
        if not self.held:
            waiters, self._idleWaiters = self._idleWaiters, []
            for callback in waiters:
                callback()
