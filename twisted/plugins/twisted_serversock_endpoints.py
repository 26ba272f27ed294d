"""
Twisted plugin dropin: the C{gecko:}, C{geckounix:}, C{geckotls:} and
C{geckounixtls:} server endpoint strings of twisted-serversock.

This module is imported by Twisted's plugin discovery in every process that
looks for plugins (C{twistd}, C{twist}, C{serverFromString}).  It is kept
tiny on purpose: it imports neither the reactor nor the implementation,
which is imported only when one of its strings is parsed (the TLS ones
import pyOpenSSL then, not before).
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


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _GeckoTLSServerParser:
    """
    Parse a C{geckotls:} or C{geckounixtls:} description by delegating to
    C{twisted_serversock.tlsendpoints}.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def parseStreamServer(self, reactor, *args, **kwargs):  # type: ignore[no-untyped-def]
        from twisted_serversock import tlsendpoints

        parse = tlsendpoints.parseGeckoTLS if self.prefix == "geckotls" else tlsendpoints.parseGeckoUNIXTLS
        return parse(reactor, *args, **kwargs)


geckoTLSEndpointParser = _GeckoTLSServerParser("geckotls")
geckoUNIXTLSEndpointParser = _GeckoTLSServerParser("geckounixtls")
