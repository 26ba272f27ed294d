# -*- test-case-name: tests.test_endpoints -*-
"""
Twisted server endpoints over L{ServerSocket}, and the parsers behind the
C{gecko:} and C{geckounix:} endpoint strings.

An endpoint binds synchronously inside C{listen()} and returns an already
fired Deferred, so C{twistd} and C{strports} fail at once, with the
C{NSError} in the C{CannotListenError}, instead of running without their
port.  Each accepted connection reaches the factory's protocol through
L{ISocketTransport.attachProtocol}: the protocol talks to the real Twisted
transport, with no stream layer in between.

The string parsers are reached through the dropin
C{twisted/plugins/twisted_serversock_endpoints.py}, which imports this module
only when a C{gecko:} or C{geckounix:} string is parsed.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Callable, Iterable

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorFDSet, IStreamServerEndpoint
from zope.interface import implementer

from . import _args
from ._clusteroptions import MAX_WORKERS as MAX_WORKERS, _text, clusterOptions
from ._clusteroptions import autoWorkersWhy as autoWorkersWhy, workerCount as workerCount  # re-exported
from .netaddr import ipFamily
from .results import NSError
from ._listeningport import GeckoListeningPort
from .serversocket import KeepWhenOffline, LoopbackOnly, ServerSocket

if TYPE_CHECKING:
    from ._types import StrOrBytesPath

__all__ = [
    "GeckoServerEndpoint",
    "GeckoUNIXServerEndpoint",
    "GeckoListeningPort",
    "parseGecko",
    "parseGeckoUNIX",
]



def _escape(value: object) -> str:
    """
    C{value} as text inside an endpoint string: C{\\}, C{:} and C{=}
    escaped with a backslash, as Twisted's grammar reads them.
    """
    text = os.fsdecode(value) if isinstance(value, bytes) else str(value)
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpointString(prefix: str, args: Iterable[object], options: Iterable[tuple[object, object]]) -> str:
    """
    The endpoint string of C{prefix} with positional C{args} and C{options}
    (name, value), in that order.
    """
    parts = [_escape(a) for a in args] + [f"{_escape(k)}={_escape(v)}" for k, v in options]
    return f"{prefix}:" + ":".join(parts)


#: Options only a cluster primary reads, which a worker's listener need not match.
_CLUSTER_ONLY = ("workers", "grace", "lameduck", "control", "metrics")


def _withoutWorkers(description: str) -> str:
    """
    C{description} without its cluster-only options (L{_CLUSTER_ONLY}, whatever their case).
    """
    segments = [""]
    escaped = False
    for char in description:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            segments.append("")
            continue
        segments[-1] += char
    kept = [segments[0]] + [seg for seg in segments[1:] if seg.split("=", 1)[0].lower() not in _CLUSTER_ONLY]
    return ":".join(kept)


class _GeckoEndpointBase:
    """
    What both endpoints share: bind in C{listen()}, fail with
    C{CannotListenError}.
    """

    _reactor: IReactorFDSet
    #: How many worker processes serve this endpoint (cluster mode); 0:
    #: this process.
    _workers: int = 0
    #: The endpoint as a string: as the user wrote it
    #: (C{gecko:8081:loopback=1:workers=2}) for an endpoint parsed from
    #: one, else the string of its arguments.  Logs name the endpoint by
    #: it, and cluster workers find the primary's listener by it.
    description: str = ""
    #: How C{workers=auto} chose the number of workers (the cluster
    #: primary logs it); C{None} for any other C{workers}.
    workersWhy: str | None = None
    #: Cluster mode: the seconds the primary's workers get to finish their
    #: connections once stopped, and its lame-duck delay after SIGTERM
    #: (L{ParentStop<twisted_serversock.ipc.signals.ParentStop>}); C{None}: not given.
    grace: float | None = None
    lameDuck: float | None = None
    #: Cluster mode: the path of the primary's control socket
    #: (L{twisted_serversock.control}); C{None}: none.
    control: str | None = None
    #: Cluster mode: the endpoint string the primary serves its metrics on
    #: (L{twisted_serversock.metrics}); C{None}: none.
    metrics: str | None = None

    def _cluster(self, workers: int | str, grace: float | str | None, lameDuck: float | str | None, control: str | None, metrics: str | None) -> None:
        self._workers, self.workersWhy, self.grace, self.lameDuck, self.control, self.metrics = clusterOptions(workers, grace, lameDuck, control, metrics)

    def _init(self, serv: ServerSocket) -> None:
        raise NotImplementedError

    def _where(self) -> tuple[str, int | None]:
        raise NotImplementedError

    def bindServerSocket(self) -> ServerSocket:
        """
        A new L{ServerSocket}, bound and listening as this endpoint
        describes, in this process (C{workers} aside), not yet accepting:
        what the endpoint's listening port calls each time it starts.

        @raise CannotListenError: if binding fails; its C{socketError} is
            the L{NSError}.
        """
        serv = ServerSocket(self._reactor)
        try:
            self._init(serv)
        except NSError as e:
            interface, port = self._where()
            raise CannotListenError(interface, port, e) from None
        return serv

    def clusterDescription(self) -> str:
        """
        L{description} without C{workers=}: in cluster mode a worker's
        endpoint attaches to the primary's listener with the same
        description (the worker runs the same program, so it writes the
        same string).
        """
        return _withoutWorkers(self.description)

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        """
        Bind and listen now, and start handing connections to
        C{protocolFactory}.  In cluster mode (C{workers} not 0) the first
        process binds and serves from worker processes that run the same
        program, and in a worker this attaches to that listener instead
        (L{twisted_serversock.cluster}).

        Never raises: like Twisted's endpoints (C{defer.execute}), every
        failure comes back as the failed Deferred.

        @return: a Deferred that has already fired: with the listening port,
            or with C{CannotListenError} whose C{socketError} is the
            L{NSError} (or whatever else binding raised).  (In a cluster
            worker, a listener the primary started after this worker may
            take a round trip to fire.)
        """
        if self._workers:
            from .cluster import listen as clusterListen

            return defer.maybeDeferred(clusterListen, self._reactor, self, protocolFactory, self._workers)
        return defer.execute(self.listenHere, protocolFactory)

    def listenHere(self, protocolFactory: IProtocolFactory) -> IListeningPort:
        """
        Bind and listen now, in this process, whatever C{workers} says
        (what a cluster primary does with its own listeners).

        @raise CannotListenError: binding failed (its C{socketError} is the
            L{NSError}).
        """
        port = GeckoListeningPort(self, protocolFactory)
        port.startListening()
        return port


@implementer(IStreamServerEndpoint)
class GeckoServerEndpoint(_GeckoEndpointBase):
    """
    A TCP server endpoint over L{ServerSocket}.

    @param port: the port; -1 or 0 picks a free one.
    @param loopback: listen on the loopback address only.
    @param backlog: the listen backlog; -1 means C{socket.SOMAXCONN}.
    @param keepWhenOffline: keep listening when the I/O service goes offline
        (IPv4 only).
    @param interface: an IP literal to listen on (instead of C{loopback}).
    @param ipv6: listen on IPv6 only (C{::1} with C{loopback}, else C{::}).
    @param dualStack: listen on C{::} for both IPv4 and IPv6.
    @param workers: serve from this many worker processes (cluster mode),
        C{"auto"} for one per CPU; 0 serves in this process.
    @param grace: cluster mode: seconds the workers get to finish their
        connections when the cluster stops or reloads (default 10).
    @param lameDuck: cluster mode: seconds the cluster goes on accepting
        and serving after SIGTERM/SIGINT before it stops (default 0).
    @param control: cluster mode: the path of the primary's control socket
        (L{twisted_serversock.control}), for C{serversockctl}.
    @param metrics: cluster mode: an endpoint string the primary serves its
        metrics on (L{twisted_serversock.metrics}).

    @raise TypeError: for an argument of the wrong type (a string port, a
        string boolean such as C{"no"}, which would be true), naming it.
    @raise ValueError: for a combination that makes no sense (for example
        C{interface} with C{loopback}), or a value out of range, naming it.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        port: int = -1,
        loopback: bool = False,
        backlog: int = -1,
        keepWhenOffline: bool = False,
        interface: str | None = None,
        ipv6: bool = False,
        dualStack: bool = False,
        workers: int | str = 0,
        grace: float | str | None = None,
        lameDuck: float | str | None = None,
        control: str | None = None,
        metrics: str | None = None,
    ) -> None:
        port = _args.integer(port, "port", None, _args.MAX_PORT)
        backlog = _args.integer(backlog, "backlog", None, _args.MAX_BACKLOG)
        loopback = _args.boolean(loopback, "loopback")
        keepWhenOffline = _args.boolean(keepWhenOffline, "keepWhenOffline")
        ipv6 = _args.boolean(ipv6, "ipv6")
        dualStack = _args.boolean(dualStack, "dualStack")
        if interface is not None:
            interface = _args.text(interface, "interface")
        self._cluster(workers, grace, lameDuck, control, metrics)
        if interface is not None and loopback:
            raise ValueError("interface and loopback cannot be combined: pick one address")
        if dualStack and (ipv6 or loopback or interface is not None):
            raise ValueError("dualstack listens on :: for both families; it cannot be combined with ipv6, loopback or interface")
        if keepWhenOffline and (ipv6 or dualStack or interface is not None):
            raise ValueError("keepWhenOffline applies to IPv4 listeners (port and loopback only)")
        #: The address to listen on when an interface is given.
        self._address: IPv4Address | IPv6Address | None = None
        if interface is not None:
            family = _ipFamily(interface)
            if ipv6 and family != socket.AF_INET6:
                raise ValueError(f"ipv6=1 contradicts the IPv4 interface {interface!r}")
            addressType = IPv6Address if family == socket.AF_INET6 else IPv4Address
            self._address = addressType("TCP", interface, max(port, 0))
        self._reactor = reactor
        self._port = port
        self._loopback = loopback
        self._backlog = backlog
        self._keepWhenOffline = keepWhenOffline
        self._interface = interface
        self._ipv6 = ipv6
        self._dualStack = dualStack
        given: list[tuple[str, object]] = [("port", port), ("loopback", int(loopback)), ("backlog", backlog)]
        given += [("keepWhenOffline", int(keepWhenOffline))]
        given += [("interface", interface), ("ipv6", int(ipv6)), ("dualstack", int(dualStack)), ("workers", self._workers)]
        defaults = {"port": -1, "backlog": -1, "interface": None}
        self.description = endpointString("gecko", (), [(k, v) for k, v in given if v != defaults.get(k, 0)])

    def __repr__(self) -> str:
        return f"<GeckoServerEndpoint {self._where()}>"

    def _where(self) -> tuple[str, int | None]:
        if self._interface is not None:
            return self._interface, self._port
        if self._dualStack or self._ipv6:
            return ("::1" if self._loopback else "::"), self._port
        return ("127.0.0.1" if self._loopback else "0.0.0.0"), self._port

    def _init(self, serv: ServerSocket) -> None:
        if self._address is not None:
            serv.initWithAddress(self._address, self._backlog)
        elif self._dualStack:
            serv.initDualStack(self._port, self._backlog)
        elif self._ipv6:
            serv.initIPv6(self._port, self._loopback, self._backlog)
        elif self._keepWhenOffline:
            flags = KeepWhenOffline | (LoopbackOnly if self._loopback else 0)
            serv.initSpecialConnection(self._port, flags, self._backlog)
        else:
            serv.init(self._port, self._loopback, self._backlog)


@implementer(IStreamServerEndpoint)
class GeckoUNIXServerEndpoint(_GeckoEndpointBase):
    """
    A UNIX-domain server endpoint over L{ServerSocket}: a socket file
    created safely at C{path} with exactly C{mode}, or an abstract address.

    @param path: the socket file's path (exclusive with C{abstract}).
    @param mode: the socket file's permissions.
    @param backlog: the listen backlog; -1 means C{socket.SOMAXCONN}.
    @param abstract: a Linux abstract-namespace name (without the leading
        NUL).
    @param reclaimStale: remove a stale socket file (nobody listening) at
        C{path} instead of failing.
    @param allowedUids: if not C{None}, only peers with these uids may
        connect (checked with SO_PEERCRED); a member C{"self"} is the uid
        the server runs as when a peer connects (see
        L{ServerSocket.initWithFilename}).
    @param group: the socket file's group, a name or a gid, set before the
        file appears (like systemd's C{SocketGroup=}); without it the file
        gets the group the directory gives new entries (a set-group-ID
        directory's group, else the process's).
    @param workers: serve from this many worker processes (cluster mode),
        C{"auto"} for one per CPU; 0 serves in this process.
    @param grace: cluster mode: seconds the workers get to finish their
        connections when the cluster stops or reloads (default 10).
    @param lameDuck: cluster mode: seconds the cluster goes on accepting
        and serving after SIGTERM/SIGINT before it stops (default 0).
    @param control: cluster mode: the path of the primary's control socket
        (L{twisted_serversock.control}), for C{serversockctl}.
    @param metrics: cluster mode: an endpoint string the primary serves its
        metrics on (L{twisted_serversock.metrics}).

    @raise TypeError: for an argument of the wrong type, naming it.
    @raise ValueError: for neither or both of C{path} and C{abstract},
        C{reclaimStale} or C{group} with C{abstract}, an unknown group, or a
        value out of range, naming it.
    """

    def __init__(
        self,
        reactor: IReactorFDSet,
        path: StrOrBytesPath | None = None,
        mode: int = 0o600,
        backlog: int = -1,
        abstract: str | None = None,
        reclaimStale: bool = False,
        allowedUids: Iterable[int | str] | None = None,
        group: int | str | None = None,
        workers: int | str = 0,
        grace: float | str | None = None,
        lameDuck: float | str | None = None,
        control: str | None = None,
        metrics: str | None = None,
    ) -> None:
        self._cluster(workers, grace, lameDuck, control, metrics)
        if (path is None) == (abstract is None):
            raise ValueError("give exactly one of path and abstract")
        if path is not None:
            _args.pathLike(path, "path")
        if abstract is not None and not isinstance(abstract, (str, bytes)):
            raise TypeError(f"abstract must be a string, not {abstract!r}")
        mode = _args.integer(mode, "mode", 0, 0o777)
        backlog = _args.integer(backlog, "backlog", None, _args.MAX_BACKLOG)
        reclaimStale = _args.boolean(reclaimStale, "reclaimStale")
        uids = _args.uids(allowedUids)
        gid = _args.groupId(group)
        if abstract is not None and reclaimStale:
            raise ValueError("reclaim applies to socket files, not abstract addresses")
        if abstract is not None and gid is not None:
            raise ValueError("group applies to socket files; an abstract address has no group (use allowedUids)")
        self._reactor = reactor
        self._path = path
        self._mode = mode
        self._backlog = backlog
        self._abstract = abstract
        self._reclaimStale = reclaimStale
        self._allowedUids = uids
        self._gid = gid
        uidList = None if uids is None else ",".join(sorted(str(uid) for uid in uids))
        given: list[tuple[str, object]] = [("path", path), ("mode", oct(mode)[2:]), ("backlog", backlog), ("abstract", abstract)]
        given += [("reclaim", int(reclaimStale)), ("uids", uidList), ("group", gid), ("workers", self._workers)]
        defaults = {"mode": "600", "backlog": -1, "path": None, "abstract": None, "uids": None, "group": None}
        self.description = endpointString("geckounix", (), [(k, v) for k, v in given if v != defaults.get(k, 0)])

    def __repr__(self) -> str:
        return f"<GeckoUNIXServerEndpoint {self._where()[0]}>"

    def _where(self) -> tuple[str, int | None]:
        if self._abstract is not None:
            return "@" + os.fsdecode(self._abstract), None
        assert self._path is not None  # one of the two, checked when made
        return os.fsdecode(self._path), None

    def _init(self, serv: ServerSocket) -> None:
        if self._abstract is not None:
            serv.initWithAbstractAddress(self._abstract, self._backlog, allowedUids=self._allowedUids)
        else:
            serv.initWithFilename(
                self._path,
                self._mode,
                self._backlog,
                reclaimStale=self._reclaimStale,
                allowedUids=self._allowedUids,
                group=self._gid,
            )


# ----------------------------------------------------------------------
# The string parsers.


def _ipFamily(host: str) -> int:
    family = ipFamily(host)
    if family is None:
        raise ValueError(f"interface must be an IP address literal (escape colons as \\:), not {host!r}")
    return family


_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


def _boolean(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 0/1/true/false/yes/no, not {value!r}")


def _integer(name: str, value: str, high: int) -> int:
    """
    The whole number C{value} spells, from -1 (the description's "any":
    the Python API takes any negative number for it) to C{high}; the range
    is checked by L{_args.integer}, as for the endpoint classes.
    """
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None
    return _args.integer(number, name, -1, high)


def _octalMode(value: str) -> int:
    text = value.strip()
    try:
        mode = int(text[2:] if text[:2].lower() == "0o" else text, 8)
    except ValueError:
        raise ValueError(f"mode must be octal permissions such as 0600, not {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be from 0 to 0777, not {value!r}")
    return mode


def _uids(value: str) -> frozenset[int | str]:
    # "self" stays a token, resolved when a peer connects: parsing happens as
    # root in a twistd --uid primary and as the dropped uid in its workers.
    uids: set[int | str] = set()
    for item in value.split(","):
        item = item.strip()
        if item.lower() == "self":
            uids.add(_args.SELF_UID)
        elif item.isdigit():
            uids.add(int(item))
        else:
            raise ValueError(f"uids must be a comma-separated list of uids or 'self', not {value!r}")
    return frozenset(uids)


def _options(
    prefix: str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    valid: Iterable[str],
    positional: str,
) -> tuple[dict[str, str], bool]:
    """
    Normalise a description's arguments: option names matched
    case-insensitively and checked, at most one positional argument (the
    value of C{positional}), every value a C{str}.

    @return: the options by canonical name, and whether C{positional} was
        given positionally.
    """
    names = {name.lower(): name for name in valid}
    options: dict[str, str] = {}
    if len(args) == 1 and args[0] in ("", b""):
        args = ()  # "gecko:" with nothing after the colon
    for key, value in kwargs.items():
        key = _text(key, "an option name")
        canonical = names.get(key.lower())
        if canonical is None:
            raise ValueError(
                f"unknown option {key!r} for {prefix}: endpoints; valid options are "
                + ", ".join(sorted(names.values()))
            )
        if canonical in options:
            raise ValueError(f"option {canonical!r} given twice")
        options[canonical] = _text(value, f"option {canonical}")
    if len(args) > 1:
        extra = ":".join(_text(a, "an argument") for a in args[1:])
        raise ValueError(
            f"{prefix}: takes at most one positional argument ({positional}); got extra {extra!r}"
            " (escape a colon inside a value as \\:)"
        )
    if args:
        if positional in options:
            raise ValueError(f"{positional} given both as a positional argument and as {positional}=")
        options[positional] = _text(args[0], positional)
    return options, bool(args)


_GECKO_OPTIONS = ("port", "loopback", "backlog", "keepWhenOffline", "interface", "ipv6", "dualstack", "workers", "grace", "lameduck", "control", "metrics")
_GECKOUNIX_OPTIONS = ("path", "mode", "backlog", "abstract", "reclaim", "uids", "group", "workers", "grace", "lameduck", "control", "metrics")


def parseGecko(reactor: IReactorFDSet, *args: object, **kwargs: object) -> GeckoServerEndpoint:
    """
    Build a L{GeckoServerEndpoint} from the arguments of a C{gecko:}
    description (as Twisted's grammar split them).

    @raise ValueError: naming the offending option or value, for every bad
        description.
    """
    o, _ = _options("gecko", args, kwargs, _GECKO_OPTIONS, "port")
    port = _integer("port", o["port"], _args.MAX_PORT) if "port" in o else -1
    backlog = _integer("backlog", o["backlog"], _args.MAX_BACKLOG) if "backlog" in o else -1
    interface = o.get("interface")
    endpoint = GeckoServerEndpoint(
        reactor,
        port=port,
        loopback=_boolean("loopback", o["loopback"]) if "loopback" in o else False,
        backlog=backlog,
        keepWhenOffline=_boolean("keepWhenOffline", o["keepWhenOffline"]) if "keepWhenOffline" in o else False,
        interface=None if interface is None else interface.strip(),
        ipv6=_boolean("ipv6", o["ipv6"]) if "ipv6" in o else False,
        dualStack=_boolean("dualstack", o["dualstack"]) if "dualstack" in o else False,
        workers=o.get("workers", 0),
        grace=o.get("grace"),
        lameDuck=o.get("lameduck"),
        control=o.get("control"),
        metrics=o.get("metrics"),
    )
    endpoint.description = endpointString("gecko", args, kwargs.items())
    return endpoint


def parseGeckoUNIX(reactor: IReactorFDSet, *args: object, **kwargs: object) -> GeckoUNIXServerEndpoint:
    """
    Build a L{GeckoUNIXServerEndpoint} from the arguments of a
    C{geckounix:} description.  A positional C{@name} is the abstract
    address C{name}.

    @raise ValueError: naming the offending option or value, for every bad
        description.
    """
    o, positionalPath = _options("geckounix", args, kwargs, _GECKOUNIX_OPTIONS, "path")
    path: str | None = o.get("path")
    abstract: str | None = o.get("abstract")
    if path is not None and positionalPath and path.startswith("@"):
        if abstract is not None:
            raise ValueError("@name and abstract= both name an abstract address; give one")
        abstract = path[1:]
        path = None
    if path is not None and abstract is not None:
        raise ValueError("path and abstract cannot be combined: a socket is a file or an abstract name")
    if path is None and abstract is None:
        raise ValueError("geckounix: needs a socket path (geckounix:/run/app.sock) or abstract=name")
    if path is not None and not path:
        raise ValueError("the socket path is empty")
    if abstract is not None:
        if not abstract:
            raise ValueError("the abstract name is empty")
        if "mode" in o:
            raise ValueError("mode applies to socket files; an abstract address has no permissions (use uids=)")
        if "reclaim" in o:  # given at all, even reclaim=0 (the class sees only true)
            raise ValueError("reclaim applies to socket files, not abstract addresses")
    endpoint = GeckoUNIXServerEndpoint(
        reactor,
        path=path,
        mode=_octalMode(o["mode"]) if "mode" in o else 0o600,
        backlog=_integer("backlog", o["backlog"], _args.MAX_BACKLOG) if "backlog" in o else -1,
        abstract=abstract,
        reclaimStale=_boolean("reclaim", o["reclaim"]) if "reclaim" in o else False,
        allowedUids=_uids(o["uids"]) if "uids" in o else None,
        group=o["group"].strip() if "group" in o else None,
        workers=o.get("workers", 0),
        grace=o.get("grace"),
        lameDuck=o.get("lameduck"),
        control=o.get("control"),
        metrics=o.get("metrics"),
    )
    endpoint.description = endpointString("geckounix", args, kwargs.items())
    return endpoint


#: The parsers by plugin prefix (for the dropin).
PARSERS: dict[str, Callable[..., _GeckoEndpointBase]] = {"gecko": parseGecko, "geckounix": parseGeckoUNIX}
