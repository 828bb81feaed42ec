"""The obfuscated2 key schedule agrees with Telethon's and with the protocol notes."""

from __future__ import annotations

import hashlib
import os
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fakes.obfs import (
    FORBIDDEN_PREFIXES,
    TAG_ABRIDGED,
    TAGS,
    accept_header,
    header_prefix_allowed,
    initiator_from_wire,
    make_initiator_header,
    random_header_base,
)
from telethon.network.connection.tcpabridged import (
    AbridgedPacketCodec,
)
from telethon.network.connection.tcpintermediate import (
    IntermediatePacketCodec,
    RandomizedIntermediatePacketCodec,
)
from telethon.network.connection.tcpmtproxy import MTProxyIO
from telethon.network.connection.tcpobfuscated import ObfuscatedIO

CODECS = [AbridgedPacketCodec, IntermediatePacketCodec, RandomizedIntermediatePacketCodec]


def test_forbidden_prefixes_are_refused() -> None:
    ok = bytearray(b"\x01" * 64)
    assert header_prefix_allowed(ok)
    for prefix in FORBIDDEN_PREFIXES:
        assert not header_prefix_allowed(prefix + bytes(ok[4:]))
    assert not header_prefix_allowed(b"\xef" + bytes(ok[1:]))
    assert not header_prefix_allowed(bytes(ok[:4]) + bytes(4) + bytes(ok[8:]))
    for _ in range(3000):
        assert header_prefix_allowed(random_header_base())


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dc_id", [2, -4, 10003])
def test_accepts_telethon_mtproxy_header(codec: type[Any], dc_id: int) -> None:
    """Telethon's MTProxy client is an independent obfuscated2-with-secret implementation."""
    secret = os.urandom(16)
    header, t_enc, t_dec = MTProxyIO.init_header(secret, dc_id, codec)
    got = accept_header(bytes(header), secret)
    assert got.tag == codec.obfuscate_tag
    assert got.dc_id == dc_id
    payload = os.urandom(3000)
    assert got.decryptor.update(t_enc.encrypt(payload)) == payload
    assert t_dec.encrypt(got.encryptor.update(payload)) == payload


@pytest.mark.parametrize("codec", CODECS)
def test_accepts_telethon_secretless_header(codec: type[Any]) -> None:
    header, t_enc, t_dec = ObfuscatedIO.init_header(codec)
    got = accept_header(bytes(header), None)
    assert got.tag == codec.obfuscate_tag
    payload = os.urandom(999)
    assert got.decryptor.update(t_enc.encrypt(payload)) == payload
    assert t_dec.encrypt(got.encryptor.update(payload)) == payload


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("with_secret", [True, False])
def test_initiator_header_matches_notes(tag: bytes, with_secret: bool) -> None:
    """Decode the fakes' header with docs/protocol.md §2.2/§2.3 written out here."""
    secret = os.urandom(16) if with_secret else None
    hs = make_initiator_header(tag, -2, secret)
    wire = hs.wire
    key, iv = wire[8:40], wire[40:56]
    if secret is not None:
        key = hashlib.sha256(key + secret).digest()
    # Keys come from the clear bytes 8-55; only 56-63 are encrypted (at stream offset 56).
    plain = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor().update(wire)
    assert plain[56:60] == tag
    assert struct.unpack("<h", plain[60:62]) == (-2,)
    assert header_prefix_allowed(wire)
    rev = wire[8:56][::-1]
    back_key = rev[:32] if secret is None else hashlib.sha256(rev[:32] + secret).digest()
    back = Cipher(algorithms.AES(back_key), modes.CTR(rev[32:48])).encryptor()
    assert hs.decryptor.update(back.update(b"x" * 100)) == b"x" * 100


def test_replayed_wire_header_rebuilds_same_ciphers() -> None:
    secret = os.urandom(16)
    first = make_initiator_header(TAG_ABRIDGED, 1, secret)
    again = initiator_from_wire(first.wire, secret)
    data = os.urandom(500)
    assert first.encryptor.update(data) == again.encryptor.update(data)
    assert first.decryptor.update(data) == again.decryptor.update(data)
