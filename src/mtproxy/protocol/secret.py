"""Proxy secrets in their textual forms, and the links users paste into Telegram.

The server holds 16 bytes per secret. Clients get it in one of three spellings that
also choose the client's mode: plain hex (classic), ``dd`` + hex (padded
intermediate only) and ``ee`` + hex + hex(domain) (fake TLS).

Spellings and links: docs/protocol.md §1.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import re
from dataclasses import dataclass
from urllib.parse import quote

from mtproxy.protocol.errors import SecretError

SECRET_LEN = 16
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_LABEL = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}\Z)({_LABEL}\.)*{_LABEL}")


class Mode(enum.Enum):
    """A client mode the server can enable; its value is the option spelling."""

    CLASSIC = "classic"
    SECURE = "secure"
    TLS = "tls"


@dataclass(frozen=True, slots=True)
class ClientSecret:
    key: bytes
    mode: Mode
    domain: str | None = None

    def __str__(self) -> str:
        return format_secret(self.key, self.mode, self.domain)


def generate_secret() -> bytes:
    return os.urandom(SECRET_LEN)


def is_valid_domain(domain: str) -> bool:
    return bool(_DOMAIN.fullmatch(domain))


def parse_hex32(text: str) -> bytes:
    """Exactly 32 hex characters, any case."""
    text = text.strip()
    if not _HEX32.fullmatch(text):
        raise SecretError(f"{text!r} is not 32 hex characters")
    return bytes.fromhex(text)


def parse_secret(text: str) -> ClientSecret:
    """Accept any of the three client spellings (``ee`` also in base64url)."""
    text = text.strip()
    if _HEX32.fullmatch(text):
        return ClientSecret(bytes.fromhex(text), Mode.CLASSIC)
    low = text.lower()
    if low.startswith("dd") and _HEX32.fullmatch(text[2:]):
        return ClientSecret(bytes.fromhex(text[2:]), Mode.SECURE)
    raw: bytes | None = None
    if low.startswith("ee") and len(text) > 34:
        try:
            raw = bytes.fromhex(text[2:])
        except ValueError:
            raw = None
    if raw is None:
        try:
            decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) > 17 and decoded[0] == 0xEE:
            raw = decoded[1:]
    if raw is not None and len(raw) > SECRET_LEN:
        try:
            domain = raw[SECRET_LEN:].decode("ascii")
        except UnicodeDecodeError:
            domain = ""
        if is_valid_domain(domain):
            return ClientSecret(raw[:SECRET_LEN], Mode.TLS, domain)
    raise SecretError(
        f"{text[:80]!r} is not a proxy secret: use 32 hex characters, dd + 32 hex, or ee + 32 hex "
        "+ hex(domain)"
    )


def format_secret(key: bytes, mode: Mode, domain: str | None = None) -> str:
    if len(key) != SECRET_LEN:
        raise SecretError("a secret is 16 bytes")
    if mode is Mode.CLASSIC:
        return key.hex()
    if mode is Mode.SECURE:
        return "dd" + key.hex()
    if not domain or not is_valid_domain(domain):
        raise SecretError(f"fake-TLS secrets need a valid domain, got {domain!r}")
    return "ee" + key.hex() + domain.encode("ascii").hex()


@dataclass(frozen=True, slots=True)
class ProxyLink:
    secret: ClientSecret
    tg: str
    https: str


def make_link(host: str, port: int, secret: ClientSecret) -> ProxyLink:
    query = f"server={quote(host, safe=':')}&port={port}&secret={secret}"
    return ProxyLink(secret, f"tg://proxy?{query}", f"https://t.me/proxy?{query}")


def links_for(
    host: str, port: int, key: bytes, modes: frozenset[Mode], domains: list[str]
) -> list[ProxyLink]:
    """One link per enabled mode (and per TLS domain), most censorship-resistant first."""
    out: list[ProxyLink] = []
    if Mode.TLS in modes:
        out += [make_link(host, port, ClientSecret(key, Mode.TLS, d)) for d in domains]
    if Mode.SECURE in modes:
        out.append(make_link(host, port, ClientSecret(key, Mode.SECURE)))
    if Mode.CLASSIC in modes:
        out.append(make_link(host, port, ClientSecret(key, Mode.CLASSIC)))
    return out
