"""Which address of ours a middle-proxy sees: ``--nat-info``, else detection, else the socket's.

The RPC keys mix in the proxy's IPv4 address *as the middle-proxy sees it*; behind NAT
that is the public address, not the socket's, and a wrong one makes the middle-proxy
hang up right after our handshake. RPC_PROXY_REQ also carries the address a client
reached, translated the same way (OFF ``nat_translate_ip``).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address

from mtproxy.protocol.rpc import IPAddress


def parse_ip(host: str) -> IPAddress | None:
    """An address from a socket name: brackets and zone ids dropped, v4-mapped made IPv4."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def needs_public_address(ip: IPAddress) -> bool:
    """An IPv4 address the internet cannot see (private, CGNAT...), but not loopback."""
    return isinstance(ip, IPv4Address) and not ip.is_global and not ip.is_loopback


class AddressMap:
    """``--nat-info`` pairs plus a detected public IPv4 for unmapped private addresses."""

    def __init__(self, nat_info: Iterable[tuple[str, str]] = ()) -> None:
        self.nat: dict[IPAddress, IPAddress] = {
            ip_address(local): ip_address(public) for local, public in nat_info
        }
        self.detected: IPv4Address | None = None

    def mapped(self, ip: IPAddress) -> bool:
        return ip in self.nat

    def public(self, ip: IPAddress) -> IPAddress:
        """The address peers see for our local ``ip``."""
        found = self.nat.get(ip)
        if found is not None:
            return found
        if self.detected is not None and needs_public_address(ip):
            return self.detected
        return ip

    def wants_detection(self, ip: IPAddress) -> bool:
        """True when only a detected public address can stand in for ``ip``."""
        return ip not in self.nat and needs_public_address(ip)
