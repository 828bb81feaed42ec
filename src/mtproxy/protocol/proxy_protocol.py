"""HAProxy PROXY protocol (v1 text and v2 binary) header parsing and building.

A load balancer in front of the proxy prepends one header to each TCP stream
that carries the real client address; without it, per-client limits, stats and
the middle-end would all see the balancer's address. Facts follow the HAProxy
specification ``doc/proxy-protocol.txt``.

The listener must be configured to *require* the header and never to guess
whether it is present (the spec forbids guessing: anyone could spoof an
address). The caller feeds the bytes received so far::

    buf = b""
    while (header := parse_proxy_header(buf)) is None:
        chunk = await reader.read(MAX_HEADER_LENGTH - len(buf))
        if not chunk:
            raise ConnectionError("closed inside the PROXY header")
        buf += chunk
    rest = buf[header.header_length:]   # the client's first bytes

``parse_proxy_header`` returns None only while ``len(buf) < max_length``, so the
read size above is never zero and a client cannot make us buffer more than
``max_length`` bytes; the caller should also apply a short timeout (the spec
suggests at least 3 seconds).

The header layouts as the proxy uses them: docs/protocol.md §9.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mtproxy.protocol.crc32c import crc32c
from mtproxy.protocol.errors import ProtocolError

__all__ = [
    "MAX_HEADER_LENGTH",
    "MIN_MAX_LENGTH",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Address",
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyProtocolError",
    "build_v1",
    "build_v2",
    "parse_proxy_header",
]

Command = Literal["PROXY", "LOCAL"]
Family = Literal["INET", "INET6", "UNIX", "UNSPEC"]
Address = tuple[str, int]

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n", the spec's worst case
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
V2_UNIX_PATH_LENGTH = 108
# A v2 header may declare up to 64 KiB; real balancers send a few hundred bytes
# at most (addresses plus a handful of TLVs), so refuse to wait for more.
MAX_HEADER_LENGTH = 4096
MIN_MAX_LENGTH = V2_FIXED_LENGTH + 2 * V2_UNIX_PATH_LENGTH

PP2_TYPE_CRC32C = 0x03

_V2_COMMANDS: dict[int, Command] = {0x0: "LOCAL", 0x1: "PROXY"}
_V2_FAMILIES: dict[int, Family] = {0x0: "UNSPEC", 0x1: "INET", 0x2: "INET6", 0x3: "UNIX"}
_V2_FAMILY_CODES: dict[Family, int] = {name: code for code, name in _V2_FAMILIES.items()}
_V2_TRANSPORT_UNSPEC, _V2_TRANSPORT_STREAM, _V2_TRANSPORT_DGRAM = 0x0, 0x1, 0x2
_V2_ADDRESS_LENGTH: dict[Family, int] = {"INET": 12, "INET6": 36, "UNIX": 216}

_V1_PROTOCOLS: tuple[bytes, ...] = (b"TCP4 ", b"TCP6 ", b"UNKNOWN")
_V1_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V1_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyProtocolError(ProtocolError):
    """The bytes before the client's stream were not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header.

    ``source``/``destination`` are None when the header carries no usable
    address (v1 UNKNOWN, v2 LOCAL or UNSPEC): the caller then keeps the socket's
    own peer address, as the spec requires. For AF_UNIX the "ip" is the socket
    path (abstract names start with ``@``) and the port is 0.
    """

    version: Literal[1, 2]
    command: Command
    family: Family
    source: Address | None
    destination: Address | None
    header_length: int
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse_proxy_header(data: bytes, *, max_length: int = MAX_HEADER_LENGTH) -> ProxyHeader | None:
    """Parse the header at the start of ``data``; None while more bytes are needed.

    Raises :class:`ProxyProtocolError` as soon as ``data`` cannot be the start of
    a valid header, so a client that is not a load balancer is dropped at once.
    """
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(f"max_length must be at least {MIN_MAX_LENGTH}")
    if not data:
        return None
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data, max_length)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    raise ProxyProtocolError("connection does not start with a PROXY protocol header")


# --- version 1 -----------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    line = data[: end if end >= 0 else V1_MAX_LENGTH]
    _check_v1_prefix(line, complete=end >= 0)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1 header has no CRLF in its first {V1_MAX_LENGTH} bytes")
        return None
    text = line[len(V1_PREFIX) :].decode("ascii")
    header_length = end + 2
    if text == "UNKNOWN" or text.startswith("UNKNOWN "):
        # The spec tells receivers to ignore whatever follows UNKNOWN.
        return ProxyHeader(1, "PROXY", "UNSPEC", None, None, header_length)
    fields = text.split(" ")
    if len(fields) != 5:
        raise ProxyProtocolError("v1 header must have exactly five space-separated fields")
    protocol, src_ip, dst_ip, src_port, dst_port = fields
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"unknown v1 protocol {protocol!r}")
    family: Family = "INET" if protocol == "TCP4" else "INET6"
    source = (_v1_ip(src_ip, family), _v1_port(src_port))
    destination = (_v1_ip(dst_ip, family), _v1_port(dst_port))
    return ProxyHeader(1, "PROXY", family, source, destination, header_length)


def _check_v1_prefix(line: bytes, *, complete: bool) -> None:
    """Reject a v1 line early: wrong keyword, wrong protocol, bad bytes or a lone CR/LF."""
    head = line[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(head):
        raise ProxyProtocolError("not a PROXY protocol v1 header")
    proto = line[len(V1_PREFIX) : len(V1_PREFIX) + 8]
    if proto and not any(p.startswith(proto[: len(p)]) for p in _V1_PROTOCOLS):
        raise ProxyProtocolError("unknown v1 protocol")
    # In an unfinished line, a final CR may still be followed by its LF.
    body = line[:-1] if not complete and line.endswith(b"\r") else line
    for byte in body:
        if not 0x20 <= byte <= 0x7E:
            raise ProxyProtocolError("v1 header holds a byte that is not printable ASCII")


def _v1_ip(text: str, family: Family) -> str:
    try:
        if family == "INET":
            if _V1_IPV4.fullmatch(text) is None:
                raise ValueError(text)
            return str(ipaddress.IPv4Address(text))
        if _V1_IPV6.fullmatch(text) is None:
            raise ValueError(text)
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyProtocolError(f"bad {family} address in v1 header: {text!r}") from None


def _v1_port(text: str) -> int:
    if _V1_PORT.fullmatch(text) is None or int(text) > 0xFFFF:
        raise ProxyProtocolError(f"bad port in v1 header: {text!r}")
    return int(text)


# --- version 2 -----------------------------------------------------------------------


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader | None:
    sig = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(sig):
        raise ProxyProtocolError("not a PROXY protocol v2 signature")
    if len(data) <= len(V2_SIGNATURE):
        return None
    ver_cmd = data[12]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"unsupported v2 version {ver_cmd >> 4}")
    command = _V2_COMMANDS.get(ver_cmd & 0x0F)
    if command is None:
        raise ProxyProtocolError(f"unassigned v2 command {ver_cmd & 0x0F}")
    if len(data) < V2_FIXED_LENGTH:
        return None
    fam_byte = data[13]
    (length,) = struct.unpack_from("!H", data, 14)
    total = V2_FIXED_LENGTH + length
    if total > max_length:
        raise ProxyProtocolError(f"v2 header of {total} bytes exceeds the {max_length}-byte limit")
    if len(data) < total:
        return None
    if command == "LOCAL":
        # A health check from the balancer itself: the spec says to discard the
        # whole block, family included, and keep the socket's real endpoints.
        return ProxyHeader(2, "LOCAL", "UNSPEC", None, None, total)
    family = _V2_FAMILIES.get(fam_byte >> 4)
    transport = fam_byte & 0x0F
    if family is None or transport > _V2_TRANSPORT_DGRAM:
        raise ProxyProtocolError(f"invalid v2 family/transport byte 0x{fam_byte:02x}")
    if transport == _V2_TRANSPORT_DGRAM:
        raise ProxyProtocolError("v2 header describes a datagram flow on a TCP listener")
    if family == "UNSPEC" or transport == _V2_TRANSPORT_UNSPEC:
        # Unknown protocol: the block's layout is undefined, so ignore all of it.
        return ProxyHeader(2, "PROXY", "UNSPEC", None, None, total)
    address_length = _V2_ADDRESS_LENGTH[family]
    if length < address_length:
        raise ProxyProtocolError(
            f"v2 {family} header declares {length} bytes, needs {address_length}"
        )
    header = data[:total]
    tlvs = _v2_tlvs(header, address_length)
    source, destination = _v2_addresses(family, header[V2_FIXED_LENGTH:])
    return ProxyHeader(2, "PROXY", family, source, destination, total, tlvs)


def _v2_addresses(family: Family, block: bytes) -> tuple[Address, Address]:
    if family == "INET":
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        return (
            (str(ipaddress.IPv4Address(src)), sport),
            (str(ipaddress.IPv4Address(dst)), dport),
        )
    if family == "INET6":
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        return (
            (str(ipaddress.IPv6Address(src)), sport),
            (str(ipaddress.IPv6Address(dst)), dport),
        )
    return (
        (_unix_path(block[:V2_UNIX_PATH_LENGTH]), 0),
        (_unix_path(block[V2_UNIX_PATH_LENGTH : 2 * V2_UNIX_PATH_LENGTH]), 0),
    )


def _unix_path(raw: bytes) -> str:
    if raw[:1] == b"\x00":  # Linux abstract namespace, shown as "@name" by ss(8)
        return "@" + raw[1:].rstrip(b"\x00").decode("utf-8", "backslashreplace")
    return raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


def _v2_tlvs(header: bytes, address_length: int) -> tuple[tuple[int, bytes], ...]:
    """Walk the TLVs, checking every length; verify a CRC32C TLV if one is present."""
    pos = V2_FIXED_LENGTH + address_length
    tlvs: list[tuple[int, bytes]] = []
    crc_at = -1
    while pos < len(header):
        if len(header) - pos < 3:
            raise ProxyProtocolError("v2 header ends inside a TLV type/length")
        kind = header[pos]
        (size,) = struct.unpack_from("!H", header, pos + 1)
        start = pos + 3
        if start + size > len(header):
            raise ProxyProtocolError("v2 TLV runs past the end of the header")
        if kind == PP2_TYPE_CRC32C:
            if size != 4 or crc_at >= 0:
                raise ProxyProtocolError("v2 CRC32C TLV must appear once with 4 bytes")
            crc_at = start
        tlvs.append((kind, header[start : start + size]))
        pos = start + size
    if crc_at >= 0:
        zeroed = header[:crc_at] + b"\x00\x00\x00\x00" + header[crc_at + 4 :]
        if crc32c(zeroed) != int.from_bytes(header[crc_at : crc_at + 4], "big"):
            raise ProxyProtocolError("v2 header fails its CRC32C check")
    return tuple(tlvs)


# --- builders (what a load balancer sends; used by tests and the bench) --------------


def _ip_family(source: Address, destination: Address) -> Family:
    try:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(destination[0])
    except ValueError as exc:
        raise ValueError(f"not an IP address: {exc}") from None
    if src.version != dst.version:
        raise ValueError("source and destination must be of the same IP family")
    for _, port in (source, destination):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port out of range: {port}")
    return "INET" if src.version == 4 else "INET6"


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """The text header a v1 sender emits; both addresses None gives ``PROXY UNKNOWN``."""
    if source is None or destination is None:
        if source is not None or destination is not None:
            raise ValueError("give both addresses or neither")
        return b"PROXY UNKNOWN\r\n"
    family = _ip_family(source, destination)
    src_ip = ipaddress.ip_address(source[0])
    dst_ip = ipaddress.ip_address(destination[0])
    proto = "TCP4" if family == "INET" else "TCP6"
    line = f"PROXY {proto} {src_ip} {dst_ip} {source[1]} {destination[1]}\r\n"
    return line.encode("ascii")


def build_v2(
    source: Address | None = None,
    destination: Address | None = None,
    *,
    command: Command = "PROXY",
    family: Family | None = None,
    tlvs: Sequence[tuple[int, bytes]] = (),
    with_crc32c: bool = False,
) -> bytes:
    """The binary header a v2 sender emits.

    With no addresses the family is UNSPEC (what senders use for LOCAL health
    checks). ``family="UNIX"`` takes socket paths in place of IPs (ports are
    ignored). ``with_crc32c`` appends a checksum TLV over the whole header.
    """
    if (source is None) != (destination is None):
        raise ValueError("give both addresses or neither")
    if source is None or destination is None:
        if family not in (None, "UNSPEC"):
            raise ValueError(f"family {family} needs addresses")
        fam: Family = "UNSPEC"
        block = b""
    elif family == "UNIX":
        fam = "UNIX"
        block = _unix_block(source[0]) + _unix_block(destination[0])
    else:
        fam = _ip_family(source, destination)
        if family not in (None, fam):
            raise ValueError(f"addresses are {fam}, not {family}")
        src = ipaddress.ip_address(source[0]).packed
        dst = ipaddress.ip_address(destination[0]).packed
        block = src + dst + struct.pack("!HH", source[1], destination[1])
    fam_byte = (_V2_FAMILY_CODES[fam] << 4) | (_V2_TRANSPORT_STREAM if block else 0)
    tail = b"".join(_tlv(kind, value) for kind, value in tlvs)
    crc_tlv = _tlv(PP2_TYPE_CRC32C, b"\x00" * 4) if with_crc32c else b""
    length = len(block) + len(tail) + len(crc_tlv)
    if length > 0xFFFF:
        raise ValueError("v2 header longer than 65535 bytes")
    ver_cmd = 0x20 | (1 if command == "PROXY" else 0)
    header = V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam_byte, length) + block + tail + crc_tlv
    if with_crc32c:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def _unix_block(path: str) -> bytes:
    raw = b"\x00" + path[1:].encode() if path.startswith("@") else path.encode()
    if len(raw) > V2_UNIX_PATH_LENGTH:
        raise ValueError(f"unix socket path longer than {V2_UNIX_PATH_LENGTH} bytes")
    return raw.ljust(V2_UNIX_PATH_LENGTH, b"\x00")


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError("TLV type must fit a byte and value 65535 bytes")
    return struct.pack("!BH", kind, len(value)) + value
