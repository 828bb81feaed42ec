"""Telegram datacenter addresses for direct mode, and the ``ID=HOST:PORT`` spelling.

Negative ids are media DCs, which share the addresses of the positive id in direct
mode; 203 is the CDN DC; 10001-10003 are the test DCs; anything else goes to the
default DC, as the official server does.

The table and the fallbacks: docs/protocol.md §7.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mtproxy.protocol.errors import ProtocolError

DC_PORT = 443
DEFAULT_DC = 2

DC_IPV4: dict[int, str] = {
    1: "149.154.175.50",
    2: "149.154.167.51",
    3: "149.154.175.100",
    4: "149.154.167.91",
    5: "149.154.171.5",
    203: "91.105.192.100",
    10001: "149.154.175.10",
    10002: "149.154.167.40",
    10003: "149.154.175.117",
}
DC_IPV6: dict[int, str] = {
    1: "2001:b28:f23d:f001::a",
    2: "2001:67c:4e8:f002::a",
    3: "2001:b28:f23d:f003::a",
    4: "2001:67c:4e8:f004::a",
    5: "2001:b28:f23f:f005::a",
    203: "2a0a:f280:203:a:5000::100",
    10001: "2001:b28:f23d:f001::e",
    10002: "2001:67c:4e8:f002::e",
    10003: "2001:b28:f23d:f003::e",
}


class DcSpecError(ProtocolError):
    """An address or ``ID=HOST:PORT`` override could not be parsed."""


Endpoint = tuple[str, int]


def parse_endpoint(
    text: str, default_port: int | None = None, *, allow_port_zero: bool = False
) -> Endpoint:
    """``host:port``, ``[v6]:port`` or a bare v6 address with a default port.

    Port 0 (let the kernel choose) only makes sense for listening addresses.
    """
    text = text.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise DcSpecError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise DcSpecError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        host, port_text = text, None  # bare IPv6 address
    else:
        host, port_text = text, None
    if not host:
        raise DcSpecError(f"{text!r}: empty host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise DcSpecError(f"{text!r}: {host!r} is not an IPv6 address") from exc
    if port_text is None:
        if default_port is None:
            raise DcSpecError(f"{text!r}: missing port")
        return host, default_port
    lowest = 0 if allow_port_zero else 1
    # str.isdigit() also admits digits such as '²' that int() refuses: check ASCII first.
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or not lowest <= int(port_text) < 65536:
        raise DcSpecError(f"{text!r}: port must be {lowest}-65535")
    return host, int(port_text)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_dc_override(text: str) -> tuple[int, Endpoint]:
    """``2=127.0.0.2:443`` -> (2, ("127.0.0.2", 443))."""
    ident, sep, addr = text.partition("=")
    if not sep:
        raise DcSpecError(f"{text!r}: expected ID=HOST:PORT, e.g. 2=149.154.167.51:443")
    try:
        dc_id = int(ident.strip())
    except ValueError as exc:
        raise DcSpecError(f"{text!r}: DC id {ident!r} is not an integer") from exc
    if not -32768 <= dc_id <= 32767 or dc_id == 0:
        raise DcSpecError(f"{text!r}: DC id must be a non-zero 16-bit integer")
    return dc_id, parse_endpoint(addr, DC_PORT)


@dataclass(frozen=True)
class DcTable:
    """Where each DC id goes; overrides win, then the built-in tables."""

    overrides: Mapping[int, Sequence[Endpoint]] = field(default_factory=dict)
    prefer_ipv6: bool = False
    default_dc: int = DEFAULT_DC

    def canonical(self, dc_id: int) -> int:
        """The DC id whose addresses serve ``dc_id`` (media -> positive, unknown -> default)."""
        if dc_id in self.overrides:
            return dc_id
        positive = abs(dc_id)
        if positive in self.overrides or positive in DC_IPV4:
            return positive
        return self.default_dc

    def resolve(self, dc_id: int) -> list[Endpoint]:
        """Addresses to try in order: the preferred family first, then the other."""
        if dc_id in self.overrides:
            return list(self.overrides[dc_id])
        key = self.canonical(dc_id)
        if key in self.overrides:
            return list(self.overrides[key])
        v4 = [(DC_IPV4[key], DC_PORT)] if key in DC_IPV4 else []
        v6 = [(DC_IPV6[key], DC_PORT)] if key in DC_IPV6 else []
        return v6 + v4 if self.prefer_ipv6 else v4 + v6
