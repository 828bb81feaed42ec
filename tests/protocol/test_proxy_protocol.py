"""PROXY protocol v1/v2: round trips, incremental feeding, garbage and the size bound."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.proxy_protocol import (
    MAX_HEADER_LENGTH,
    MIN_MAX_LENGTH,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build_v1,
    build_v2,
    parse_proxy_header,
)

ports = st.integers(min_value=0, max_value=0xFFFF)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
endpoints4 = st.tuples(st.tuples(v4, ports), st.tuples(v4, ports))
endpoints6 = st.tuples(st.tuples(v6, ports), st.tuples(v6, ports))
endpoints = st.one_of(endpoints4, endpoints6)
payload = st.binary(max_size=64)
tlv_list = st.lists(
    st.tuples(st.integers(0, 0xFF).filter(lambda t: t != 0x03), st.binary(max_size=40)),
    max_size=4,
)


def canonical(addr: tuple[str, int]) -> tuple[str, int]:
    return str(ipaddress.ip_address(addr[0])), addr[1]


def family_of(addr: tuple[str, int]) -> str:
    return "INET" if ipaddress.ip_address(addr[0]).version == 4 else "INET6"


def parse_all(data: bytes) -> ProxyHeader:
    header = parse_proxy_header(data)
    assert header is not None
    return header


# --- round trips ----------------------------------------------------------------------


@given(endpoints, payload)
def test_v1_round_trip(ends: tuple[tuple[str, int], tuple[str, int]], rest: bytes) -> None:
    src, dst = ends
    wire = build_v1(src, dst)
    assert len(wire) <= V1_MAX_LENGTH
    header = parse_all(wire + rest)
    assert header.version == 1
    assert header.command == "PROXY"
    assert header.family == family_of(src)
    assert header.source == canonical(src)
    assert header.destination == canonical(dst)
    assert header.header_length == len(wire)
    assert (wire + rest)[header.header_length :] == rest


@given(endpoints, payload, tlv_list, st.booleans())
def test_v2_round_trip(
    ends: tuple[tuple[str, int], tuple[str, int]],
    rest: bytes,
    tlvs: list[tuple[int, bytes]],
    with_crc: bool,
) -> None:
    src, dst = ends
    wire = build_v2(src, dst, tlvs=tlvs, with_crc32c=with_crc)
    header = parse_all(wire + rest)
    assert header.version == 2
    assert header.command == "PROXY"
    assert header.family == family_of(src)
    assert header.source == canonical(src)
    assert header.destination == canonical(dst)
    assert header.header_length == len(wire)
    assert [t for t in header.tlvs if t[0] != 0x03] == tlvs
    assert any(t[0] == 0x03 for t in header.tlvs) == with_crc


@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=27),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=27),
)
def test_v2_unix_round_trip(src_path: str, dst_path: str) -> None:
    header = parse_all(build_v2((src_path, 0), (dst_path, 0), family="UNIX"))
    assert header.family == "UNIX"
    assert header.source == (src_path, 0)
    assert header.destination == (dst_path, 0)
    assert header.header_length == 16 + 216


# --- any split point -----------------------------------------------------------------


wires = st.one_of(
    endpoints.map(lambda e: build_v1(*e)),
    st.tuples(endpoints, tlv_list, st.booleans()).map(
        lambda a: build_v2(*a[0], tlvs=a[1], with_crc32c=a[2])
    ),
    st.just(build_v1(None, None)),
    st.just(b"PROXY UNKNOWN ffff:f::1 whatever 1 2\r\n"),
    st.just(build_v2(command="LOCAL")),
    st.just(build_v2(("10.0.0.1", 1), ("10.0.0.2", 2), command="LOCAL")),
    st.just(build_v2(("/run/lb.sock", 0), ("@abstract", 0), family="UNIX")),
)


@given(wires, payload, st.data())
def test_every_prefix_waits_and_whole_header_parses(
    wire: bytes, rest: bytes, data: st.DataObject
) -> None:
    full = parse_all(wire + rest)
    assert full.header_length == len(wire)
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    assert parse_proxy_header(wire[:cut]) is None
    assert parse_proxy_header(wire) == full


@settings(max_examples=30)
@given(wires)
def test_byte_by_byte_feeding(wire: bytes) -> None:
    """The caller's loop: append one byte at a time until a header appears."""
    buf = b""
    result = None
    for byte in wire:
        assert result is None
        buf += bytes([byte])
        result = parse_proxy_header(buf)
    assert result is not None
    assert result.header_length == len(wire)


# --- garbage ----------------------------------------------------------------------------


def check_garbage(data: bytes) -> None:
    """Only a header, None (a valid prefix, below the bound) or ProxyProtocolError."""
    try:
        header = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    if header is None:
        assert len(data) < MAX_HEADER_LENGTH
        assert V2_SIGNATURE.startswith(data[:12]) or b"PROXY ".startswith(data[:6])
    else:
        assert 0 < header.header_length <= min(len(data), MAX_HEADER_LENGTH)


@given(st.binary(max_size=300))
@example(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n")
@example(V2_SIGNATURE + b"\x21\x11\x00\x0c")
def test_random_bytes(data: bytes) -> None:
    check_garbage(data)


@given(st.binary(max_size=200).map(lambda b: V2_SIGNATURE + b))
def test_random_bytes_after_v2_signature(data: bytes) -> None:
    check_garbage(data)


v1_alphabet = st.sampled_from(list(b"PROXYTCUNKW0123456789abcdef:. \r\n"))


@given(st.lists(v1_alphabet, max_size=120).map(lambda b: b"PROXY " + bytes(b)))
def test_random_v1_like_lines(data: bytes) -> None:
    check_garbage(data)


@given(wires, st.data())
def test_mutated_headers(wire: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(wire) - 1), label="pos")
    value = data.draw(st.integers(0, 255), label="value")
    mutated = wire[:pos] + bytes([value]) + wire[pos + 1 :]
    check_garbage(mutated)
    check_garbage(mutated[: data.draw(st.integers(0, len(mutated)), label="cut")])


def test_error_is_a_protocol_error() -> None:
    assert issubclass(ProxyProtocolError, ProtocolError)


@pytest.mark.parametrize(
    "first",
    [b"\xef", b"\xee\xee\xee\xee", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n", b"proxy "],
)
def test_non_header_rejected_at_first_byte(first: bytes) -> None:
    """A client that bypassed the balancer is dropped at once, not after a timeout."""
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(first[:1])


# --- size bound -----------------------------------------------------------------------


def test_v1_without_crlf_is_bounded() -> None:
    line = b"PROXY UNKNOWN " + b"f" * (V1_MAX_LENGTH - 14)
    assert len(line) == V1_MAX_LENGTH
    assert parse_proxy_header(line[:-1]) is None
    with pytest.raises(ProxyProtocolError, match="CRLF"):
        parse_proxy_header(line)


def test_v1_worst_case_length_accepted_and_one_more_rejected() -> None:
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    worst = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(worst) == V1_MAX_LENGTH
    assert parse_all(worst).header_length == V1_MAX_LENGTH
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(worst[:-2] + b"f\r\n")


@pytest.mark.parametrize("limit", [MIN_MAX_LENGTH, 512, MAX_HEADER_LENGTH])
def test_v2_declared_length_over_limit_rejected_before_body(limit: int) -> None:
    fixed = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, limit - 16 + 1)
    with pytest.raises(ProxyProtocolError, match="limit"):
        parse_proxy_header(fixed, max_length=limit)
    exact = V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, limit - 16)
    assert parse_proxy_header(exact, max_length=limit) is None


def test_v2_large_tlvs_within_limit() -> None:
    wire = build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(0xE0, b"x" * 3000)])
    assert parse_all(wire).tlvs == ((0xE0, b"x" * 3000),)
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(wire, max_length=1024)


@given(st.binary(max_size=MAX_HEADER_LENGTH + 50))
def test_none_only_below_bound(data: bytes) -> None:
    try:
        if parse_proxy_header(data) is None:
            assert len(data) < MAX_HEADER_LENGTH
    except ProxyProtocolError:
        pass


def test_tiny_limit_refused() -> None:
    with pytest.raises(ValueError):
        parse_proxy_header(b"", max_length=MIN_MAX_LENGTH - 1)


# --- v1 specifics -------------------------------------------------------------------


def test_spec_examples() -> None:
    header = parse_all(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert header == ProxyHeader(
        1, "PROXY", "INET", ("192.168.0.1", 56324), ("192.168.0.11", 443), 47
    )
    header = parse_all(b"PROXY TCP6 2001:DB8::1 ::1 65535 0\r\n")
    assert header.source == ("2001:db8::1", 65535)
    assert header.destination == ("::1", 0)
    assert parse_all(b"PROXY UNKNOWN\r\n").source is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 01.2.3.4 1.2.3.4 1 1\r\n",  # leading zero in an address
        b"PROXY TCP4 1.2.3.4 1.2.3.4 01 1\r\n",  # leading zero in a port
        b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 1\r\n",
        b"PROXY TCP4 256.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY TCP4 1.2.3 1.2.3.4 1 1\r\n",
        b"PROXY TCP4 ::1 ::1 1 1\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 1\r\n",  # zone ids are not addresses on the wire
        b"PROXY TCP4 1.2.3.4  1.2.3.4 1 1\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1 \r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 +1\r\n",
        b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY UDP4 1.2.3.4 1.2.3.4 1 1\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\n",  # a lone LF
        b"PROXY TCP4 1.2.3.4 1.2.3.4 1 1\rX",  # a lone CR
        b"PROXY UNKNOWN \r\r\n",
        b"PROXY UNKNOWN \xff\r\n",
        b"PROXY\r\n",
        b"PROXY \r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    header = parse_all(b"PROXY UNKNOWN 1.2.3.4 not-an-address 99999 x\r\nrest")
    assert (header.family, header.source, header.destination) == ("UNSPEC", None, None)
    assert header.header_length == len(b"PROXY UNKNOWN 1.2.3.4 not-an-address 99999 x\r\n")


# --- v2 specifics -------------------------------------------------------------------


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, size) + body


IPV4_BLOCK = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1234, 443)


def test_v2_hand_built_ipv4() -> None:
    header = parse_all(v2(0x21, 0x11, IPV4_BLOCK) + b"\xef")
    assert header == ProxyHeader(2, "PROXY", "INET", ("10.0.0.1", 1234), ("10.0.0.2", 443), 28)
    assert build_v2(("10.0.0.1", 1234), ("10.0.0.2", 443)) == v2(0x21, 0x11, IPV4_BLOCK)


def test_v2_local_discards_block_and_family() -> None:
    for fam in (0x00, 0x11, 0x21, 0xFF):
        header = parse_all(v2(0x20, fam, b"\x01\x02\x03\x04\x05"))
        assert (header.command, header.source, header.header_length) == ("LOCAL", None, 21)


def test_v2_unspec_family_or_transport_ignores_addresses() -> None:
    for fam in (0x00, 0x01, 0x10, 0x20):
        header = parse_all(v2(0x21, fam, IPV4_BLOCK + b"\x01"))
        assert (header.family, header.source, header.header_length) == ("UNSPEC", None, 29)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (v2(0x11, 0x11, IPV4_BLOCK), "version"),
        (v2(0x31, 0x11, IPV4_BLOCK), "version"),
        (v2(0x22, 0x11, IPV4_BLOCK), "command"),
        (v2(0x2F, 0x11, IPV4_BLOCK), "command"),
        (v2(0x21, 0x41, IPV4_BLOCK), "family"),
        (v2(0x21, 0x13, IPV4_BLOCK), "family"),
        (v2(0x21, 0x12, IPV4_BLOCK), "datagram"),
        (v2(0x21, 0x22, bytes(36)), "datagram"),
        (v2(0x21, 0x11, IPV4_BLOCK[:11]), "needs 12"),
        (v2(0x21, 0x21, bytes(35)), "needs 36"),
        (v2(0x21, 0x31, bytes(215)), "needs 216"),
        (v2(0x21, 0x11, IPV4_BLOCK + b"\x04\x00"), "TLV"),
        (v2(0x21, 0x11, IPV4_BLOCK + b"\x04\x00\x02\x00"), "TLV"),
        (v2(0x21, 0x11, IPV4_BLOCK + b"\x03\x00\x02\x00\x00"), "CRC32C"),
        (v2(0x21, 0x11, IPV4_BLOCK + b"\x03\x00\x04\x00\x00\x00\x00"), "CRC32C"),
    ],
)
def test_v2_malformed(wire: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse_proxy_header(wire)


def test_v2_signature_mismatch_rejected_early() -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"\r\n\r\n\x00\r\nQUIX")
    assert parse_proxy_header(b"\r\n\r\n\x00\r\nQU") is None


def test_v2_crc32c_detects_a_flipped_bit() -> None:
    wire = bytearray(build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), with_crc32c=True))
    assert parse_proxy_header(bytes(wire)) is not None
    wire[17] ^= 0x01  # inside the source address
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_proxy_header(bytes(wire))


def test_builders_refuse_bad_input() -> None:
    with pytest.raises(ValueError):
        build_v1(("1.2.3.4", 1), ("::1", 2))
    with pytest.raises(ValueError):
        build_v1(("1.2.3.4", 1), None)
    with pytest.raises(ValueError):
        build_v2(("1.2.3.4", 70000), ("1.2.3.4", 1))
    with pytest.raises(ValueError):
        build_v2(("x" * 200, 0), ("y", 0), family="UNIX")
    with pytest.raises(ValueError):
        build_v2(("1.2.3.4", 1), ("1.2.3.4", 1), family="INET6")


def test_more_builder_and_parser_refusals() -> None:
    with pytest.raises(ProxyProtocolError, match="unknown v1 protocol"):
        parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".replace(b"TCP4", b"TCP5"))
    with pytest.raises(ValueError, match="not an IP address"):
        build_v1(("example.com", 1), ("1.2.3.4", 2))
    with pytest.raises(ValueError, match="both addresses or neither"):
        build_v2(("1.2.3.4", 1), None)
    with pytest.raises(ValueError, match="needs addresses"):
        build_v2(family="INET")
    with pytest.raises(ValueError, match="longer than 65535"):
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(0xE0, bytes(65000)), (0xE1, bytes(600))])
    with pytest.raises(ValueError, match="TLV type"):
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), tlvs=[(256, b"")])
