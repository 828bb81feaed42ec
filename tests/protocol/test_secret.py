"""Secret spellings (docs/protocol.md §1) and the links built from them."""

from __future__ import annotations

import base64
import contextlib
import string
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mtproxy.protocol.errors import SecretError
from mtproxy.protocol.secret import (
    ClientSecret,
    Mode,
    format_secret,
    is_valid_domain,
    links_for,
    parse_hex32,
    parse_secret,
)

KEY = bytes.fromhex("0123456789abcdef0123456789abcdef")
key_st = st.binary(min_size=16, max_size=16)
ALNUM = string.ascii_letters + string.digits
#: A DNS label: alphanumeric at both ends, hyphens allowed inside.
label = st.builds(
    lambda first, mid, last: first + mid + last if last else first,
    st.sampled_from(ALNUM),
    st.text(ALNUM + "-", max_size=20),
    st.sampled_from(ALNUM) | st.just(""),
)
domain_st = st.lists(label, min_size=1, max_size=4).map(".".join)


def test_the_three_spellings() -> None:
    assert parse_secret(KEY.hex()) == ClientSecret(KEY, Mode.CLASSIC)
    assert parse_secret(KEY.hex().upper()) == ClientSecret(KEY, Mode.CLASSIC)
    assert parse_secret(f"  dd{KEY.hex()}\n") == ClientSecret(KEY, Mode.SECURE)
    assert parse_secret(f"DD{KEY.hex()}") == ClientSecret(KEY, Mode.SECURE)
    tls = "ee" + KEY.hex() + b"www.example.com".hex()
    assert parse_secret(tls) == ClientSecret(KEY, Mode.TLS, "www.example.com")
    assert parse_secret(tls.upper()) == ClientSecret(KEY, Mode.TLS, "www.example.com")
    # A classic secret may happen to start with dd or ee.
    assert parse_secret("dd" + KEY.hex()[2:]).mode is Mode.CLASSIC
    assert parse_secret("ee" + KEY.hex()[2:]).mode is Mode.CLASSIC


@given(key_st, domain_st, st.booleans())
def test_ee_base64url_form(key: bytes, domain: str, padded: bool) -> None:
    text = base64.urlsafe_b64encode(b"\xee" + key + domain.encode()).decode()
    if not padded:
        text = text.rstrip("=")
    assert parse_secret(text) == ClientSecret(key, Mode.TLS, domain)


@given(key_st, st.sampled_from(list(Mode)), domain_st)
def test_format_round_trip(key: bytes, mode: Mode, domain: str) -> None:
    secret = ClientSecret(key, mode, domain if mode is Mode.TLS else None)
    text = format_secret(secret.key, secret.mode, secret.domain)
    assert str(secret) == text
    assert parse_secret(text) == secret
    expected_prefix = {Mode.CLASSIC: "", Mode.SECURE: "dd", Mode.TLS: "ee"}[mode]
    assert text == expected_prefix + key.hex() + (domain.encode().hex() if secret.domain else "")


@pytest.mark.parametrize(
    ("key", "mode", "domain"),
    [(b"short", Mode.CLASSIC, None), (bytes(17), Mode.SECURE, None), (KEY, Mode.TLS, None),
     (KEY, Mode.TLS, ""), (KEY, Mode.TLS, "bad domain"), (KEY, Mode.TLS, "a.com\n"),
     (KEY, Mode.TLS, "bücher.de")],
)
def test_format_refuses_bad_input(key: bytes, mode: Mode, domain: str | None) -> None:
    with pytest.raises(SecretError):
        format_secret(key, mode, domain)


@pytest.mark.parametrize(
    "domain",
    ["www.example.com", "a", "xn--bcher-kva.de", "1.2.3.4", "a-b.c", "x" * 63 + ".com"],
)
def test_valid_domains(domain: str) -> None:
    assert is_valid_domain(domain)


@pytest.mark.parametrize(
    "domain",
    ["", ".", "a..b", ".a", "a.", "-a.com", "a-.com", "a b.com", "a_b.com", "bücher.de",
     "x" * 64 + ".com", "com." + "x" * 64, "--", "a.-com", "a.com-",
     "a.com\n", "a.com\r", ("a" * 60 + ".") * 5 + "com"],
)
def test_invalid_domains(domain: str) -> None:
    assert not is_valid_domain(domain)


@pytest.mark.parametrize(
    "text",
    ["", "dd", "ee", KEY.hex()[:-1], KEY.hex() + "0", "dd" + KEY.hex()[:-1], "zz" + KEY.hex(),
     "ee" + KEY.hex(), "ee" + KEY.hex() + "0", "ee" + KEY.hex() + "2d2d",
     "ee" + KEY.hex() + b"a.com\n".hex(), "ee" + KEY.hex() + "ff00",
     base64.urlsafe_b64encode(b"\xdd" + KEY + b"a.com").decode(),
     base64.urlsafe_b64encode(b"\xee" + KEY).decode()],
)
def test_bad_secrets(text: str) -> None:
    with pytest.raises(SecretError):
        parse_secret(text)


@given(st.text(max_size=80))
@example("ee" + KEY.hex() + b"ok.org\n".hex())
@example("\u00ee" * 40)
def test_garbage_raises_only_secret_error(text: str) -> None:
    try:
        secret = parse_secret(text)
    except SecretError:
        pass
    else:
        assert len(secret.key) == 16
        if secret.mode is Mode.TLS:
            assert secret.domain is not None and is_valid_domain(secret.domain)
            assert secret.domain.isascii() and secret.domain.isprintable()
    with contextlib.suppress(SecretError):
        assert len(parse_hex32(text)) == 16


@given(key_st, st.lists(domain_st, max_size=3, unique=True),
       st.sets(st.sampled_from(list(Mode))),
       st.sampled_from(["203.0.113.5", "proxy.example.net", "2001:db8::1"]),
       st.integers(1, 65535))
def test_links(key: bytes, domains: list[str], modes: set[Mode], host: str, port: int) -> None:
    links = links_for(host, port, key, frozenset(modes), domains)
    expected: list[ClientSecret] = []
    if Mode.TLS in modes:
        expected += [ClientSecret(key, Mode.TLS, d) for d in domains]
    if Mode.SECURE in modes:
        expected.append(ClientSecret(key, Mode.SECURE))
    if Mode.CLASSIC in modes:
        expected.append(ClientSecret(key, Mode.CLASSIC))
    assert [link.secret for link in links] == expected
    for link in links:
        for url, scheme, where in ((link.tg, "tg", "proxy"), (link.https, "https", "t.me")):
            parts = urlsplit(url)
            assert parts.scheme == scheme
            assert where in (parts.netloc + parts.path)
            query = parse_qs(parts.query, strict_parsing=True)
            assert query["server"] == [host]
            assert query["port"] == [str(port)]
            assert parse_secret(query["secret"][0]) == link.secret
