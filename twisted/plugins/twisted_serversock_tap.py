"""
Twisted plugin dropin: the C{twistd serversock} subcommand of
twisted-serversock.

Kept tiny, like the endpoint dropin: L{ServiceMaker} imports
C{twisted_serversock.tap} only when the subcommand is used, so discovering
plugins never imports the reactor or the implementation.
"""

from twisted.application.service import ServiceMaker

serversock = ServiceMaker(
    "twisted-serversock",
    "twisted_serversock.tap",
    "Serve a protocol factory from worker processes behind gecko:/geckounix: (or any) listening sockets",
    "serversock",
)
