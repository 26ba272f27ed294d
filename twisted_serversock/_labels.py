"""
How addresses and factories are named in log lines and reprs, the way
Twisted's own ports name them.  A leaf module: the endpoints, the cluster
and the worker code all label things the same way without importing each
other.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ILoggingContext

__all__ = ["describeAddress", "factoryLogPrefix"]


def describeAddress(address: object) -> str:
    """
    A Twisted address as people write it: C{host:port}, C{[v6]:port}, a
    socket path, or C{@name} for an abstract UNIX socket.
    """
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        raw: str | bytes | None = address.name
        name = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
        return "@" + name[1:] if name.startswith("\0") else name
    return repr(address)


def factoryLogPrefix(factory: object) -> str:
    """
    What Twisted's ports log a factory as (C{abstract._getLogPrefix}).
    """
    if ILoggingContext.providedBy(factory):
        return str(factory.logPrefix())
    return type(factory).__name__
