"""
Twisted plugin dropin: the C{gecko:} and C{geckounix:} server endpoint
strings of twisted-serversock.

This module is imported by Twisted's plugin discovery in every process that
looks for plugins (C{twistd}, C{twist}, C{serverFromString}).  It is kept
tiny on purpose: it imports neither the reactor nor the implementation,
which is imported only when a C{gecko:} or C{geckounix:} string is parsed.
(A dropin that imports the reactor breaks C{twistd --reactor=...} whenever
the plugin cache is stale.)
"""

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _GeckoServerParser:
    """
    Parse a C{gecko:} or C{geckounix:} description by delegating to
    C{twisted_serversock.endpoints}.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def parseStreamServer(self, reactor, *args, **kwargs):  # type: ignore[no-untyped-def]
        from twisted_serversock.endpoints import PARSERS

        return PARSERS[self.prefix](reactor, *args, **kwargs)


geckoEndpointParser = _GeckoServerParser("gecko")
geckoUNIXEndpointParser = _GeckoServerParser("geckounix")
