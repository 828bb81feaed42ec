"""DC address table (docs/protocol.md §7) and the HOST:PORT / ID=HOST:PORT spellings."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mtproxy.protocol.dc import (
    DcSpecError,
    DcTable,
    Endpoint,
    format_endpoint,
    parse_dc_override,
    parse_endpoint,
)

# Written out from docs/protocol.md §7, not imported, so a typo in the module's table shows.
EXPECTED_V4 = {
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
EXPECTED_V6 = {
    1: "2001:b28:f23d:f001::a",
    2: "2001:67c:04e8:f002::a",
    3: "2001:b28:f23d:f003::a",
    4: "2001:67c:04e8:f004::a",
    5: "2001:b28:f23f:f005::a",
    203: "2a0a:f280:0203:000a:5000::100",
    10001: "2001:b28:f23d:f001::e",
    10002: "2001:67c:04e8:f002::e",
    10003: "2001:b28:f23d:f003::e",
}


def normalised(endpoints: list[Endpoint]) -> list[tuple[str, int]]:
    return [(str(ipaddress.ip_address(h)), p) for h, p in endpoints]


def builtin(dc: int, v6_first: bool = False) -> list[tuple[str, int]]:
    v4 = [(EXPECTED_V4[dc], 443)]
    v6 = [(str(ipaddress.IPv6Address(EXPECTED_V6[dc])), 443)]
    return v6 + v4 if v6_first else v4 + v6


@pytest.mark.parametrize("prefer_ipv6", [False, True])
@pytest.mark.parametrize("dc", sorted(EXPECTED_V4))
def test_builtin_dcs_and_their_media_twins(dc: int, prefer_ipv6: bool) -> None:
    table = DcTable(prefer_ipv6=prefer_ipv6)
    assert normalised(table.resolve(dc)) == builtin(dc, prefer_ipv6)
    assert normalised(table.resolve(-dc)) == builtin(dc, prefer_ipv6)
    assert table.canonical(-dc) == dc


@pytest.mark.parametrize("dc", [0, 6, 7, 100, 202, 204, 9999, 10000, 10004, 32767, -32768, -6])
def test_unknown_ids_go_to_the_default_dc(dc: int) -> None:
    assert DcTable().canonical(dc) == 2
    assert normalised(DcTable().resolve(dc)) == builtin(2)
    assert normalised(DcTable(default_dc=4).resolve(dc)) == builtin(4)


LOCAL_A: Endpoint = ("127.0.0.2", 443)
LOCAL_B: Endpoint = ("::1", 8443)


def test_overrides() -> None:
    table = DcTable(overrides={2: [LOCAL_A, LOCAL_B], -4: [LOCAL_B], 7: [LOCAL_A]})
    assert table.resolve(2) == [LOCAL_A, LOCAL_B]  # order kept, both families
    assert table.resolve(-2) == [LOCAL_A, LOCAL_B]  # media falls back to the positive id
    assert table.resolve(-4) == [LOCAL_B]  # unless it has its own row
    assert normalised(table.resolve(4)) == builtin(4)
    assert table.resolve(7) == table.resolve(-7) == [LOCAL_A]  # new ids can be added
    assert table.resolve(0) == table.resolve(99) == [LOCAL_A, LOCAL_B]  # default dc 2
    assert DcTable(overrides={2: [LOCAL_A]}, prefer_ipv6=True).resolve(2) == [LOCAL_A]


@given(st.integers(-32768, 32767), st.booleans())
def test_every_id_resolves_somewhere(dc: int, prefer_ipv6: bool) -> None:
    endpoints = DcTable(prefer_ipv6=prefer_ipv6).resolve(dc)
    assert len(endpoints) == 2
    families = [":" in host for host, _ in endpoints]
    assert families == ([True, False] if prefer_ipv6 else [False, True])


hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
             min_size=1, max_size=4).map(".".join),
)
ports = st.integers(1, 65535)


@given(hosts, ports)
def test_endpoint_round_trip(host: str, port: int) -> None:
    text = format_endpoint((host, port))
    assert parse_endpoint(text) == (host, port)
    assert parse_endpoint(f"  {text} ") == (host, port)
    if ":" in host:
        assert text.startswith("[") and parse_endpoint(host, 443) == (host, 443)


def test_endpoint_defaults_and_port_zero() -> None:
    assert parse_endpoint("[::]", 443) == ("::", 443)
    assert parse_endpoint("example.org", 80) == ("example.org", 80)
    assert parse_endpoint("0.0.0.0:0", allow_port_zero=True) == ("0.0.0.0", 0)
    for text in ("0.0.0.0:0", "example.org", "[::1]"):
        with pytest.raises(DcSpecError):
            parse_endpoint(text)


@pytest.mark.parametrize(
    "text",
    ["", ":443", "host:", "host:http", "host:65536", "host:-1", "[::1", "[::1]443",
     "[]:443", "[zz::1]:443", "1:2:3:x", "host:4 43", "host:²", "host:١٢", "host:" + "9" * 5000],
)
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(DcSpecError):
        parse_endpoint(text, 443 if text.startswith("[") else None)


@given(st.integers(-32768, 32767).filter(bool), hosts, ports)
def test_dc_override_round_trip(dc: int, host: str, port: int) -> None:
    assert parse_dc_override(f"{dc}={format_endpoint((host, port))}") == (dc, (host, port))
    assert parse_dc_override(f" {dc} = {format_endpoint((host, 443))}")[1] == (host, 443)


def test_dc_override_default_port() -> None:
    assert parse_dc_override("2=149.154.167.51") == (2, ("149.154.167.51", 443))
    assert parse_dc_override("-2=[2001:67c:4e8:f002::a]:80") == (
        -2, ("2001:67c:4e8:f002::a", 80)
    )


@pytest.mark.parametrize(
    "text", ["", "2", "2:1.2.3.4:443", "x=1.2.3.4", "0=1.2.3.4", "32768=1.2.3.4",
             "-32769=1.2.3.4", "2=", "2=:443", "2=1.2.3.4:0", "2=host:²"],
)
def test_bad_dc_overrides(text: str) -> None:
    with pytest.raises(DcSpecError):
        parse_dc_override(text)


@given(st.text(max_size=40))
@example("h:²")
@example("1=h:³")
@example("[::1]:²")
def test_garbage_raises_only_dc_spec_error(text: str) -> None:
    for parse in (lambda t: parse_endpoint(t, 443), parse_endpoint, parse_dc_override):
        with contextlib.suppress(DcSpecError):
            parse(text)
    try:
        host, port = parse_endpoint(text, 443, allow_port_zero=True)
    except DcSpecError:
        return
    assert host and 0 <= port <= 65535
