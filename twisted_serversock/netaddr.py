# -*- test-case-name: tests.test_transport -*-
"""
L{NetAddr}, the scriptable address (Gecko's C{nsINetAddr}), and the
"is this address local" rules Gecko applies when going offline.
"""

from __future__ import annotations

import socket
from typing import TypeVar

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from zope.interface import implementer

from .interfaces import INetAddr
from .results import NS_ERROR_NOT_AVAILABLE, NSError

FAMILY_INET = 1
FAMILY_INET6 = 2
FAMILY_LOCAL = 3

__all__ = ["NetAddr", "FAMILY_INET", "FAMILY_INET6", "FAMILY_LOCAL"]

_T = TypeVar("_T")


def unixName(value: object) -> str:
    """
    A UNIX address as Gecko shows it: the path as text, and C{""} for an
    unnamed peer (C{None} or empty) or an abstract address (leading NUL).
    """
    if value is None:
        return ""
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
    return "" if text.startswith("\0") else text


def _scopeIndex(scope: int | str) -> int:
    # Twisted keeps a scope id as given: an index, or an interface name.
    if isinstance(scope, int):
        return scope
    try:
        return socket.if_nametoindex(scope)
    except OSError:
        return 0


@implementer(INetAddr)
class NetAddr:
    """
    An immutable L{INetAddr} built from a Twisted address.

    Besides the interface, it has Gecko's IPv6-only fields C{flow},
    C{scope} and C{isV4Mapped}, which raise C{NS_ERROR_NOT_AVAILABLE} for
    other families, as in Gecko.
    """

    FAMILY_INET = FAMILY_INET
    FAMILY_INET6 = FAMILY_INET6
    FAMILY_LOCAL = FAMILY_LOCAL

    def __init__(
        self,
        family: int,
        address: str,
        port: int = 0,
        flow: int = 0,
        scope: int = 0,
    ) -> None:
        self.family = family
        self.address = address
        self._port = port
        self._flow = flow
        self._scope = scope

    @classmethod
    def fromTwisted(cls, addr: object) -> NetAddr:
        """
        Convert a Twisted C{IPv4Address}, C{IPv6Address} or C{UNIXAddress}.

        A UNIX address's C{address} is its path; an unnamed peer and an
        abstract address (leading NUL) both give C{""}, as in Gecko.
        """
        if isinstance(addr, IPv4Address):
            return cls(FAMILY_INET, addr.host, addr.port)
        if isinstance(addr, IPv6Address):
            return cls(FAMILY_INET6, addr.host, addr.port, addr.flowInfo, _scopeIndex(addr.scopeID))
        if isinstance(addr, UNIXAddress):
            return cls(FAMILY_LOCAL, unixName(addr.name))
        raise TypeError(f"not a Twisted address: {addr!r}")

    def _inet6Only(self, value: _T) -> _T:
        if self.family != FAMILY_INET6:
            raise NSError(NS_ERROR_NOT_AVAILABLE, "only IPv6 addresses have this field")
        return value

    @property
    def port(self) -> int:
        if self.family == FAMILY_LOCAL:
            raise NSError(NS_ERROR_NOT_AVAILABLE, "a UNIX-domain address has no port")
        return self._port

    @property
    def flow(self) -> int:
        return int(self._inet6Only(self._flow))

    @property
    def scope(self) -> int:
        return int(self._inet6Only(self._scope))

    @property
    def isV4Mapped(self) -> bool:
        return bool(self._inet6Only(self.address.lower().startswith("::ffff:")))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NetAddr):
            return NotImplemented
        return (self.family, self.address, self._port) == (
            other.family,
            other.address,
            other._port,
        )

    def __hash__(self) -> int:
        return hash((self.family, self.address, self._port))

    def __repr__(self) -> str:
        return f"NetAddr(family={self.family}, address={self.address!r}, port={self._port})"


def ipFamily(host: object) -> int | None:
    """
    The address family of IP literal C{host} (an IPv6 literal may carry a
    C{%scope}), or C{None} if it is not one.  Never resolves a name.
    """
    if isinstance(host, str):
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, host.split("%", 1)[0])
            except (OSError, ValueError):
                continue
            return family
    return None


# What Gecko's IsLocal() calls local for a *listening* socket: exactly these.
_LOCAL_LISTEN_HOSTS = frozenset(["127.0.0.1", "::1", "::ffff:127.0.0.1"])


def isLocalListenAddress(host: str) -> bool:
    """
    Whether a listening socket bound to IP C{host} survives going offline
    without C{KeepWhenOffline} (Gecko's C{nsServerSocket::IsLocal}).
    """
    return host in _LOCAL_LISTEN_HOSTS


#: A connection from a peer whose IP starts with one of these, or is
#: C{::1}, survives going offline: the whole IPv4 loopback network
#: 127.0.0.0/8 (also v4-mapped).  (The accept pipeline tests this inline,
#: for every accepted TCP connection.)
LOOPBACK_PEER_PREFIXES = ("127.", "::ffff:127.")
