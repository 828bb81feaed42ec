"""Tests of the getProxyConfig / getProxySecret parsers."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.proxy_config import (
    MAX_CLUSTERS,
    MAX_CONFIG_BYTES,
    MAX_TARGETS,
    ProxyConfig,
    ProxyConfigError,
    ProxyTarget,
    key_selector,
    parse_proxy_config,
    parse_proxy_secret,
    validate_proxy_config,
)

SAMPLE_V4 = """# force_probability 1 10
default 2;
proxy_for 1 149.154.175.50:8888;
proxy_for -1 149.154.175.50:8888;
proxy_for 2 149.154.161.144:8888;
proxy_for 2 149.154.162.39:80;
proxy_for -2 149.154.165.109:8888;
proxy_for 203 91.105.192.110:443;
"""

SAMPLE_V6 = """default 2;
proxy_for 1 [2001:b28:f23d:f001::d]:8888;
proxy_for 2 [2001:67c:04e8:f002::d]:80;
proxy_for -2 [2001:67c:04e8:f002::d]:80;
"""


def expect_error(text: str | bytes, line: int | None, *fragments: str) -> ProxyConfigError:
    with pytest.raises(ProxyConfigError) as info:
        parse_proxy_config(text)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert err.line == line
    if line is not None:
        assert message.startswith(f"line {line}: ")
    for fragment in fragments:
        assert fragment in message
    return err


# --- examples --------------------------------------------------------------------------


def test_sample_v4() -> None:
    config = parse_proxy_config(SAMPLE_V4.encode())
    assert config.default_dc == 2
    assert config.dcs == (1, -1, 2, -2, 203)
    assert config.targets[2] == (
        ProxyTarget("149.154.161.144", 8888),
        ProxyTarget("149.154.162.39", 80),
    )
    assert config.lookup(-1) == (("149.154.175.50", 8888),)
    assert config.lookup(4) == config.targets[2]  # unknown dc -> default
    assert config.lookup(-4) == config.targets[2]
    assert (config.timeout_ms, config.min_connections, config.max_connections) == (300, 4, 8)


def test_sample_v6_hosts_are_unbracketed_and_normalized() -> None:
    config = parse_proxy_config(SAMPLE_V6)
    [target] = config.targets[2]
    assert target == ProxyTarget("2001:67c:4e8:f002::d", 80)
    assert IPv6Address(target.host) == IPv6Address("2001:67c:04e8:f002::d")
    assert str(target) == "[2001:67c:4e8:f002::d]:80"
    assert str(config.targets[1][0]) == "[2001:b28:f23d:f001::d]:8888"


def test_settings_and_flexible_spacing() -> None:
    text = (
        "timeout 500;\r\nmin_connections 2;\tmax_connections 3;\r\n"
        "proxy_for 5 host-a.example.org : 443 ;  # trailing comment\n"
        "proxy_for\t5\t10.0.0.1 :80;\n"
        "proxy 10.9.9.9:1;\n"
        "default 5 ;"
    )
    config = parse_proxy_config(text)
    assert (config.timeout_ms, config.min_connections, config.max_connections) == (500, 2, 3)
    assert config.targets[5] == (("host-a.example.org", 443), ("10.0.0.1", 80))
    assert config.targets[0] == (("10.9.9.9", 1),)  # 'proxy' rows belong to dc 0
    assert config.default_dc == 5


def test_without_default_statement_falls_back_to_dc_zero() -> None:
    config = parse_proxy_config("proxy_for 1 1.1.1.1:1;")
    assert config.default_dc == 0
    assert config.lookup(7) == ()
    config = parse_proxy_config("proxy 2.2.2.2:2; proxy_for 1 1.1.1.1:1;")
    assert config.lookup(7) == (("2.2.2.2", 2),)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "empty"),
        (" \n\t\r\n", 1, "empty"),
        ("# just a comment\n# and another\n", 2, "no proxy_for rows"),
        ("default 2;\ntimeout 100;\n", 2, "no proxy_for rows"),
        ("<!DOCTYPE html>\n<html><body>502</body></html>", 1, "HTML"),
        ("\n\n  <html>\n", 3, "HTML"),
        ("<?xml version='1.0'?><Error/>", 1, "HTML"),
        ("default 2;\nproxy_for 2 1.2.3.4:80;\nproxy_for 2 1.2.3.5:80", 3, "not terminated"),
        ("proxy_for 2 1.2.3.4:80;\nproxy_for 2 1.2.3.5:8", 2, "not terminated"),
        ("proxy_for 2 1.2.3.4:80;\nproxy_for", 2, "not terminated"),
        (
            "proxy_for 1 1.1.1.1:1;\nproxy_for 2 2.2.2.2:2;\nproxy_for 1 3.3.3.3:3;",
            3,
            "proxies for dc 1 intermixed",
        ),
        (
            "proxy 1.1.1.1:1;\nproxy_for 2 2.2.2.2:2;\nproxy 3.3.3.3:3;",
            3,
            "proxies for dc 0 intermixed",
        ),
        ("default 3;\nproxy_for 1 1.1.1.1:1;", 1, "default dc 3 has no proxy_for rows"),
        ("proxy_for 1 1.1.1.1:1;;", 1, "empty statement"),
        ("proxy_four 1 1.1.1.1:1;", 1, "unknown statement 'proxy_four'"),
        ("proxy_for 1 1.1.1.1:1;\nfoo bar;", 2, "unknown statement 'foo'"),
        ("proxy_for 32768 1.1.1.1:1;", 1, "outside -32768..32767"),
        ("proxy_for -32769 1.1.1.1:1;", 1, "outside -32768..32767"),
        ("proxy_for x 1.1.1.1:1;", 1, "dc id must be an integer"),
        ("proxy_for 1;", 1, "needs <host>:<port>"),
        ("proxy_for;", 1, "needs a dc id"),
        ("proxy_for 1 1.1.1.1;", 1, "expected <host>:<port>"),
        ("proxy_for 1 1.1.1.1:1 extra;", 1, "expected <host>:<port>"),
        ("proxy_for 1 1.1.1.1:0;", 1, "port 0 out of range"),
        ("proxy_for 1 1.1.1.1:65536;", 1, "port 65536 out of range"),
        ("proxy_for 1 999.1.1.1:80;", 1, "bad IPv4 address"),
        ("proxy_for 1 1.2.3:80;", 1, "bad IPv4 address"),
        ("proxy_for 1 [2001:::1]:80;", 1, "bad IPv6 address"),
        ("proxy_for 1 [1.2.3.4]:80;", 1, "bad IPv6 address"),
        ("proxy_for 1 2001:db8::1:80;", 1, "expected <host>:<port>"),
        ("proxy_for 1 [::1:80;", 1, "expected <host>:<port>"),
        ("proxy_for 1 -bad-.example:80;", 1, "bad host name"),
        ("proxy_for 1 a..b:80;", 1, "bad host name"),
        ("proxy_for 1 " + "a" * 64 + ":80;", 1, "longer than 63"),
        ("timeout 9;", 1, "timeout 9 ms outside 10..30000"),
        ("timeout 30001;", 1, "outside 10..30000"),
        ("timeout -5;", 1, "non-negative integer"),
        ("timeout 1 2;", 1, "exactly one value"),
        ("max_connections 1001;", 1, "max_connections 1001 outside 4..1000"),
        ("max_connections 3;", 1, "max_connections 3 outside 4..1000"),
        ("min_connections 0;", 1, "min_connections 0 outside 1..8"),
        ("min_connections 9;", 1, "min_connections 9 outside 1..8"),
        ("proxy_for 1 1.1.1.1:1;\n\n\xfe;", 3, "unknown statement"),
    ],
)
def test_malformed_configs(text: str, line: int, fragment: str) -> None:
    expect_error(text, line, fragment)


def test_binary_download_is_rejected_with_line() -> None:
    expect_error(b"proxy_for 1 1.1.1.1:1;\n\xff\xfe;", 2, "not UTF-8")


def test_oversized_download_is_rejected() -> None:
    row = "proxy_for 1 1.1.1.1:1;\n"
    expect_error(row * (MAX_CONFIG_BYTES // len(row) + 1), 1, "more than")


def test_too_many_targets() -> None:
    row = "proxy_for 1 1.1.1.1:1;\n"
    assert len(parse_proxy_config(row * MAX_TARGETS).targets[1]) == MAX_TARGETS
    expect_error(row * (MAX_TARGETS + 1), MAX_TARGETS + 1, "more than 4096 targets")


def test_accepted_boundaries() -> None:
    text = (
        "proxy_for 32767 1.1.1.1:65535; proxy_for -32768 [::1]:1;\n"
        "timeout 10; min_connections 1; max_connections 1;"
    )
    config = parse_proxy_config(text)
    assert config.dcs == (32767, -32768)
    assert (config.timeout_ms, config.min_connections, config.max_connections) == (10, 1, 1)
    assert parse_proxy_config("timeout 30000; proxy_for 1 a:1;").timeout_ms == 30000
    assert parse_proxy_config("max_connections 1000; proxy_for 1 a:1;").max_connections == 1000


def test_require_dcs() -> None:
    parse_proxy_config(SAMPLE_V4, require_dcs=[1, 2, -2])
    with pytest.raises(ProxyConfigError) as info:
        parse_proxy_config(SAMPLE_V4, require_dcs=[1, 3])
    assert str(info.value) == "line 8: no proxy_for rows for dc 3 (truncated download?)"
    with pytest.raises(ProxyConfigError, match="dc 3"):
        validate_proxy_config(SAMPLE_V4, require_dcs=(1, 2, 3))
    validate_proxy_config(SAMPLE_V4)  # no exception


def test_error_type_hierarchy() -> None:
    assert issubclass(ProxyConfigError, ProtocolError)


# --- properties -------------------------------------------------------------------------

dc_ids = st.integers(-0x8000, 0x7FFF)
hostnames = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True)
hosts = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (str(a), str(a))),
    st.ip_addresses(v=6).map(lambda a: (f"[{a.exploded}]", str(a))),
    hostnames.map(lambda h: (h, h)),
)
targets = st.tuples(hosts, st.integers(1, 0xFFFF))
spaces = st.sampled_from([" ", "  ", "\t", " \t "])


@dataclass
class Rendered:
    text: str
    config: ProxyConfig
    statement_lines: list[int]  # line of each statement, in order
    row_dcs: list[int]  # dc of each proxy_for/proxy row, in order


@st.composite
def configs(draw: st.DrawFn, min_clusters: int = 1) -> Rendered:
    dcs = draw(st.lists(dc_ids, min_size=min_clusters, max_size=6, unique=True))
    clusters = {dc: draw(st.lists(targets, min_size=1, max_size=4)) for dc in dcs}
    default = draw(st.none() | st.sampled_from(dcs))
    timeout = draw(st.none() | st.integers(10, 30000))
    conns = draw(
        st.none()
        | st.integers(1, 1000).flatmap(lambda mx: st.tuples(st.integers(1, mx), st.just(mx)))
    )
    statements: list[str] = []
    row_dcs: list[int] = []
    if default is not None:
        statements.append(f"default{draw(spaces)}{default}")
    if timeout is not None:
        statements.append(f"timeout {timeout}")
    if conns is not None:
        low, high = conns
        pair = [f"min_connections {low}", f"max_connections {high}"]
        statements += pair if high < 4 else pair[::-1]  # keep the file-order checks happy
    for dc, rows in clusters.items():
        for (shown, _), port in rows:
            sep = draw(st.sampled_from([":", " : ", ": ", " :"]))
            if dc == 0 and draw(st.booleans()):
                statements.append(f"proxy{draw(spaces)}{shown}{sep}{port}")
            else:
                statements.append(f"proxy_for{draw(spaces)}{dc}{draw(spaces)}{shown}{sep}{port}")
            row_dcs.append(dc)
    lines: list[str] = []
    statement_lines: list[int] = []
    if draw(st.booleans()):
        lines.append("# force_probability 1 10")
    for statement in statements:
        if draw(st.integers(0, 4)) == 0:
            lines.append("")
        statement_lines.append(len(lines) + 1)
        comment = draw(st.sampled_from(["", "  # note", "\t#x;y;"]))
        lines.append(f"{statement}{draw(st.sampled_from(['', ' ']))};{comment}")
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
    expected = ProxyConfig(
        clusters=tuple(
            (dc, tuple(ProxyTarget(host, port) for (_, host), port in rows))
            for dc, rows in clusters.items()
        ),
        default_dc=0 if default is None else default,
        timeout_ms=300 if timeout is None else timeout,
        min_connections=4 if conns is None else conns[0],
        max_connections=8 if conns is None else conns[1],
    )
    return Rendered(text, expected, statement_lines, row_dcs)


@given(configs())
def test_rendered_configs_parse_back(rendered: Rendered) -> None:
    config = parse_proxy_config(rendered.text.encode())
    assert config == rendered.config
    for dc, rows in rendered.config.targets.items():
        assert config.lookup(dc) == rows
    assert parse_proxy_config(rendered.text) == config


@given(configs(), dc_ids)
def test_lookup_falls_back_to_default(rendered: Rendered, dc: int) -> None:
    config = rendered.config
    expected = config.targets.get(dc, config.targets.get(config.default_dc, ()))
    assert config.lookup(dc) == expected


@given(configs(min_clusters=2), st.data())
def test_non_contiguous_rows_are_rejected(rendered: Rendered, data: st.DataObject) -> None:
    earlier = data.draw(st.sampled_from(rendered.config.dcs[:-1]))
    text = rendered.text.rstrip("\r\n") + f"\nproxy_for {earlier} 10.0.0.1:1;\n"
    line = text.rstrip("\n").count("\n") + 1
    expect_error(text, line, f"proxies for dc {earlier} intermixed")


@given(configs())
def test_missing_final_semicolon_is_rejected(rendered: Rendered) -> None:
    text = rendered.text
    # Cut at the last statement's own ';' (a comment after it may hold more ';').
    last_line = text.splitlines()[rendered.statement_lines[-1] - 1]
    offset = sum(len(x) for x in text.splitlines(keepends=True)[: rendered.statement_lines[-1] - 1])
    cut = offset + last_line.index(";")
    expect_error(text[:cut], rendered.statement_lines[-1], "not terminated by ';'")


@given(configs(), st.data())
def test_truncated_download_is_rejected_or_a_prefix(
    rendered: Rendered, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(rendered.text)))
    try:
        config = parse_proxy_config(rendered.text[:cut])
    except ProxyConfigError as err:
        assert "\n" not in str(err) and err.line is not None
        return
    full = rendered.config
    assert full.dcs[: len(config.dcs)] == config.dcs
    for dc, rows in config.targets.items():
        assert full.targets[dc][: len(rows)] == rows


@given(st.text(max_size=300))
def test_garbage_text_raises_only_config_error(text: str) -> None:
    try:
        parse_proxy_config(text)
    except ProxyConfigError as err:
        assert "\n" not in str(err)


@given(st.binary(max_size=300))
def test_garbage_bytes_raise_only_config_error(data: bytes) -> None:
    try:
        parse_proxy_config(data)
    except ProxyConfigError as err:
        assert "\n" not in str(err)


@given(
    st.lists(
        st.sampled_from(
            [
                "proxy_for",
                "proxy",
                "default",
                "timeout",
                "1",
                "-2",
                "1.2.3.4:80",
                "[::1]:5",
                ";",
                ":",
                "#c\n",
                "\n",
                " ",
                "min_connections",
                "max_connections",
                "3",
                "[",
                "]",
            ]
        ),
        max_size=40,
    )
)
def test_token_soup_raises_only_config_error(tokens: list[str]) -> None:
    try:
        parse_proxy_config(" ".join(tokens))
    except ProxyConfigError as err:
        assert "\n" not in str(err)


# --- proxy secret ------------------------------------------------------------------------


def test_key_selector_is_first_four_bytes_little_endian() -> None:
    assert key_selector(bytes.fromhex("c4f9faca") + bytes(124)) == 0xCAFAF9C4
    with pytest.raises(ProxyConfigError):
        key_selector(b"abc")


@pytest.mark.parametrize("size", [32, 128, 256])
def test_secret_lengths_accepted(size: int) -> None:
    secret = b"\x01" * size
    assert parse_proxy_secret(secret) == secret


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\x01" * 31, "31 bytes, expected 32..256"),
        (b"\x01" * 257, "257 bytes"),
        (b"<!DOCTYPE html><html><body>Not Found</body></html>" + b" " * 100, "HTML"),
        (b"\n<html>" + b"x" * 100, "HTML"),
        (bytes(4) + b"\x01" * 60, "key selector 0"),
    ],
)
def test_bad_secrets(data: bytes, fragment: str) -> None:
    with pytest.raises(ProxyConfigError, match=fragment):
        parse_proxy_secret(data)


@given(st.binary(min_size=32, max_size=256))
def test_random_secrets_only_fail_on_zero_selector(secret: bytes) -> None:
    if secret[:4] == bytes(4):
        with pytest.raises(ProxyConfigError):
            parse_proxy_secret(secret)
    else:
        assert parse_proxy_secret(secret) == secret


def test_config_objects_refuse_inconsistent_clusters() -> None:
    target = ProxyTarget("149.154.175.50", 8888)
    with pytest.raises(ValueError, match="twice"):
        ProxyConfig(clusters=((2, (target,)), (2, (target,))))
    with pytest.raises(ValueError, match="no targets"):
        ProxyConfig(clusters=((2, ()),))


def test_too_many_dcs_name_their_line() -> None:
    rows = "".join(f"proxy_for {dc} 10.0.0.1:80;\n" for dc in range(1, MAX_CLUSTERS + 2))
    with pytest.raises(ProxyConfigError, match=f"line {MAX_CLUSTERS + 1}: more than"):
        parse_proxy_config(rows)
