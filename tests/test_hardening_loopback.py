"""
Hardening: a loopback listener is unreachable through every
non-loopback address the host has.

Every address of this host (C{ip -j addr}, each confirmed local by
C{ip route get}, so no packet leaves the machine) is tried against
loopback-only listeners made every way there is: C{init(..., True, ...)},
C{initSpecialConnection} with C{LoopbackOnly}, C{initIPv6(..., True, ...)},
and the C{gecko:...:loopback=1} endpoints.  Controls make sure the test is
not vacuous: the loopback address itself connects, and a listener on all
interfaces is reachable through each address tried.  A peer in a network
namespace of our own (conftest's C{foreignHost}) is refused as well.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import serverFromString

from twisted_serversock import LoopbackOnly, ServerSocket

from .conftest import hasIPv6Loopback, theReactor, timeout

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux addresses"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]


def localAddresses() -> list[tuple[int, str, int]]:
    """
    C{(family, address, ifindex)} of every non-loopback address of this
    host that the kernel delivers locally.
    """
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True, timeout=30)
    found = []
    for link in json.loads(out.stdout):
        for info in link.get("addr_info", []):
            address = ipaddress.ip_address(info["local"])
            if address.is_loopback or info.get("tentative") or info.get("dadfailed"):
                continue  # (an IPv6 address still in duplicate detection cannot be used yet)
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            route = subprocess.run(["ip", "route", "get", str(address)], capture_output=True, text=True, timeout=30)
            if route.stdout.startswith("local "):
                found.append((family, str(address), int(link["ifindex"])))
    return found


def sockaddr(family: int, address: str, port: int, ifindex: int) -> Any:
    if family == socket.AF_INET6:
        scope = ifindex if ipaddress.ip_address(address).is_link_local else 0
        return (address, port, 0, scope)
    return (address, port)


def attempt(family: int, target: Any) -> int:
    """
    Connect to C{target}; 0 on success, else the errno.
    """
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        return s.connect_ex(target)


def listeners() -> list[tuple[str, ServerSocket]]:
    made = []
    for name, init in [
        ("init", lambda s: s.init(-1, True, -1)),
        ("initSpecialConnection", lambda s: s.initSpecialConnection(-1, LoopbackOnly, -1)),
        ("initIPv6", lambda s: s.initIPv6(-1, True, -1)),
    ]:
        if name == "initIPv6" and not hasIPv6Loopback():
            continue
        s = ServerSocket()
        init(s)
        made.append((name, s))
    return made


def assertOnlyLoopback(port: int, family: int, addresses: list[tuple[int, str, int]]) -> list[str]:
    """
    A loopback listener of C{family} on C{port}: reachable on loopback,
    refused on every address in C{addresses} (IPv4 ones also tried in
    their v4-mapped form against an IPv6 listener).

    @return: the addresses tried.
    """
    loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
    assert attempt(family, sockaddr(family, loopback, port, 0)) == 0
    tried = []
    for addrFamily, address, ifindex in addresses:
        if addrFamily == family:
            target = sockaddr(family, address, port, ifindex)
        elif family == socket.AF_INET6:
            target = (f"::ffff:{address}", port, 0, 0)
        else:
            continue
        assert attempt(family, target) == errno.ECONNREFUSED, f"{target} reached a loopback listener"
        tried.append(str(target[0]))
    return tried


def assertReachableOnAll(family: int, addresses: list[tuple[int, str, int]]) -> None:
    """
    The control: a listener on all interfaces is reachable through each
    address (so a refusal above means something).
    """
    with socket.socket(family, socket.SOCK_STREAM) as anyAddr:
        anyAddr.bind(("0.0.0.0", 0) if family == socket.AF_INET else ("::", 0))
        anyAddr.listen(64)
        port = anyAddr.getsockname()[1]
        for addrFamily, address, ifindex in addresses:
            if addrFamily == family:
                assert attempt(family, sockaddr(family, address, port, ifindex)) == 0, address


def test_loopbackListenersRefuseEveryLocalAddress(foreignHost: Any) -> None:
    addresses = localAddresses()
    # At least the foreign host's veth address is there.
    assert any(a == foreignHost.serverIP for _, a, _ in addresses), addresses
    for family in {f for f, _, _ in addresses}:
        assertReachableOnAll(family, addresses)
    for name, srv in listeners():
        try:
            family = socket.AF_INET6 if name == "initIPv6" else socket.AF_INET
            tried = assertOnlyLoopback(srv.port, family, addresses)
            assert tried, name
        finally:
            srv.close()


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest_twisted.ensureDeferred
async def test_loopbackEndpointRefusesEveryLocalAddress(foreignHost: Any, ipv6: bool) -> None:
    from twisted.internet import protocol

    if ipv6 and not hasIPv6Loopback():
        pytest.skip("no IPv6 loopback")
    addresses = localAddresses()
    description = "gecko:port=0:loopback=1" + (":ipv6=1" if ipv6 else "")
    port = await timeout(serverFromString(theReactor(), description).listen(protocol.Factory.forProtocol(protocol.Protocol)))
    try:
        assert assertOnlyLoopback(port.getHost().port, socket.AF_INET6 if ipv6 else socket.AF_INET, addresses)
    finally:
        await timeout(port.stopListening())


_FOREIGN = r"""
import errno, socket, sys
s = socket.socket()
s.settimeout(5)
print(errno.errorcode.get(s.connect_ex((sys.argv[1], int(sys.argv[2]))), "connected"))
"""


def test_loopbackUnreachableFromAnotherHost(foreignHost: Any) -> None:
    """
    From a network namespace of our own, through our veth address: the
    loopback listener's port is refused, while a listener on all
    interfaces is reached (the control).
    """
    srv = ServerSocket()
    srv.init(-1, True, -1)
    everywhere = socket.socket()
    everywhere.bind(("0.0.0.0", 0))
    everywhere.listen(8)

    def fromThere(port: int) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", foreignHost.name, sys.executable, "-c", _FOREIGN, foreignHost.serverIP, str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    try:
        assert fromThere(srv.port) == "ECONNREFUSED"
        assert fromThere(everywhere.getsockname()[1]) == "connected"
    finally:
        srv.close()
        everywhere.close()
