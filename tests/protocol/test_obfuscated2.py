"""obfuscated2 headers (docs/protocol.md §2) and download pass-through keys (§2.4).

The client and DC ends are computed here with ``hashlib`` and ``cryptography``
directly, from the protocol notes, so the proxy's key schedule is checked against an
independent one rather than against itself.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.errors import HandshakeError
from mtproxy.protocol.framing import Framing
from mtproxy.protocol.obfuscated2 import (
    build_client_header,
    build_dc_header,
    client_keys,
    is_forbidden_start,
    parse_client_header,
)

secret_st = st.binary(min_size=16, max_size=16)
secrets_st = st.lists(secret_st, min_size=1, max_size=16, unique=True)
dc_st = st.integers(-32768, 32767)
framing_st = st.sampled_from(list(Framing))
payload_st = st.binary(min_size=1, max_size=300)
#: Seeded generators: cheap for Hypothesis to draw, reproducible from the seed.
rngs = st.integers(0, 2**64).map(random.Random)

FORBIDDEN_STARTS = [
    b"\xef\x00\x00\x00",
    b"HEAD",
    b"POST",
    b"GET ",
    b"OPTI",
    b"\x16\x03\x01\x02",
    b"\xdd\xdd\xdd\xdd",
    b"\xee\xee\xee\xee",
]


def ctr(key: bytes, iv: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


def keystream(ctx: CipherContext, n: int) -> bytes:
    return ctx.update(bytes(n))


def independently_forbidden(header: bytes) -> bool:
    return header[0] == 0xEF or header[:4] in FORBIDDEN_STARTS or header[4:8] == bytes(4)


class Recorder:
    """A random_bytes stand-in that replays scripted blocks, then seeded bytes."""

    def __init__(self, rnd: random.Random, script: list[bytes] | None = None) -> None:
        self.rnd = rnd
        self.script = list(script or [])
        self.returned: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self.script.pop(0) if self.script else self.rnd.randbytes(n)
        assert len(out) == n
        self.returned.append(out)
        return out


def client_side_header(
    secret: bytes, framing: Framing, dc_id: int, rnd: random.Random
) -> tuple[bytes, CipherContext, CipherContext]:
    """A client's header, encryptor and decryptor, built the way an app builds them."""
    while True:
        raw = bytearray(rnd.randbytes(64))
        if not independently_forbidden(bytes(raw)):
            break
    raw[56:60] = framing.value
    raw[60:62] = dc_id.to_bytes(2, "little", signed=True)
    enc = ctr(hashlib.sha256(bytes(raw[8:40]) + secret).digest(), bytes(raw[40:56]))
    header = bytes(raw[:56]) + enc.update(bytes(raw))[56:]
    rev = bytes(raw[8:56])[::-1]
    dec = ctr(hashlib.sha256(rev[:32] + secret).digest(), rev[32:48])
    return header, enc, dec


@given(secrets_st, st.data(), framing_st, dc_st, payload_st, rngs)
def test_client_header_round_trip(
    secrets: list[bytes],
    data: st.DataObject,
    framing: Framing,
    dc_id: int,
    payload: bytes,
    rnd: random.Random,
) -> None:
    index = data.draw(st.integers(0, len(secrets) - 1))
    out = build_client_header(secrets[index], framing, dc_id, random_bytes=rnd.randbytes)
    header = out.header
    assert len(header) == 64 and not independently_forbidden(header)
    parsed = parse_client_header(header, secrets)
    assert (parsed.secret_index, parsed.framing, parsed.dc_id) == (index, framing, dc_id)
    assert parsed.nonce == header[8:56]
    # The proxy's read stream continues right after the 64 header bytes.
    assert parsed.decryptor.update(out.encryptor.update(payload)) == payload
    # What the proxy sends with encrypt_key is what the client's decryptor expects.
    assert out.decryptor.update(parsed.encrypt_key.cipher().update(payload)) == payload


@given(secret_st, framing_st, dc_st, payload_st, rngs)
def test_parse_matches_an_independent_client(
    secret: bytes, framing: Framing, dc_id: int, payload: bytes, rnd: random.Random
) -> None:
    header, enc, dec = client_side_header(secret, framing, dc_id, rnd)
    decoy = bytes(b ^ 0xFF for b in secret)
    parsed = parse_client_header(header, [decoy, secret])
    assert (parsed.secret_index, parsed.framing, parsed.dc_id) == (1, framing, dc_id)
    assert parsed.decryptor.update(enc.update(payload)) == payload
    assert dec.update(parsed.encrypt_key.cipher().update(payload)) == payload
    read, write = client_keys(header, secret)
    assert read.key == hashlib.sha256(header[8:40] + secret).digest()
    assert read.iv == header[40:56]
    assert write == parsed.encrypt_key


@given(secrets_st, secret_st, framing_st, dc_st, rngs)
def test_wrong_secret_is_a_handshake_error(
    secrets: list[bytes], other: bytes, framing: Framing, dc_id: int, rnd: random.Random
) -> None:
    secrets = [s for s in secrets if s != other]
    header = build_client_header(other, framing, dc_id, random_bytes=rnd.randbytes).header
    with pytest.raises(HandshakeError):
        parse_client_header(header, secrets)


@given(st.binary(max_size=80), st.lists(secret_st, max_size=3))
def test_garbage_header_raises_only_handshake_error(garbage: bytes, secrets: list[bytes]) -> None:
    try:
        parsed = parse_client_header(garbage, secrets)
    except HandshakeError:
        return
    # A random 64-byte header decrypts to a valid tag with odds of about 3 in 2**32.
    assert len(garbage) == 64 and parsed.framing in Framing


def test_bad_tag_is_rejected() -> None:
    secret = bytes(range(16))
    raw = bytearray(random.Random(1).randbytes(64))
    raw[0] = 0x01
    raw[56:60] = b"\xef\xef\xef\xee"
    enc = ctr(hashlib.sha256(bytes(raw[8:40]) + secret).digest(), bytes(raw[40:56]))
    header = bytes(raw[:56]) + enc.update(bytes(raw))[56:]
    with pytest.raises(HandshakeError):
        parse_client_header(header, [secret])
    with pytest.raises(HandshakeError):
        parse_client_header(header[:63], [secret])


@pytest.mark.parametrize("start", FORBIDDEN_STARTS)
def test_is_forbidden_start(start: bytes) -> None:
    assert is_forbidden_start(start + b"\x01" * 60)
    assert is_forbidden_start(b"\x01\x02\x03\x04" + bytes(4) + b"\x01" * 56)
    assert not is_forbidden_start(b"\x01\x02\x03\x04\x05" + b"\x01" * 59)


@pytest.mark.parametrize("with_passthrough", [False, True])
def test_dc_header_skips_every_forbidden_start(with_passthrough: bool) -> None:
    """Each scripted forbidden block is drawn and thrown away; the first clean one is used."""
    rnd = random.Random(7)
    script = [start + rnd.randbytes(60) for start in FORBIDDEN_STARTS]
    script.append(b"\x01\x02\x03\x04" + bytes(4) + rnd.randbytes(56))
    clean = b"\x10\x20\x30\x40\x50" + rnd.randbytes(59)
    script.append(clean)
    stub = Recorder(rnd, script)
    passthrough = None
    if with_passthrough:
        secret = rnd.randbytes(16)
        header = build_client_header(secret, Framing.PADDED, 2, random_bytes=rnd.randbytes).header
        passthrough = parse_client_header(header, [secret]).encrypt_key
    out = build_dc_header(Framing.INTERMEDIATE, 2, passthrough=passthrough, random_bytes=stub)
    assert len(stub.returned) == len(FORBIDDEN_STARTS) + 2
    assert out.header[:8] == clean[:8]
    if passthrough is None:
        assert out.header[:56] == clean[:56]


@given(framing_st, dc_st, rngs)
def test_dc_header_layout_and_keys(framing: Framing, dc_id: int, rnd: random.Random) -> None:
    stub = Recorder(rnd)
    out = build_dc_header(framing, dc_id, random_bytes=stub)
    header = out.header
    raw = stub.returned[-1]
    assert not independently_forbidden(header)
    # Bytes 0..55 go in clear; 56..63 are the tag, dc and noise encrypted with the
    # secret-less key hdr[8:40], iv hdr[40:56].
    assert header[:56] == raw[:56]
    plain = raw[:56] + framing.value + dc_id.to_bytes(2, "little", signed=True) + raw[62:]
    dc_read = ctr(raw[8:40], raw[40:56])
    assert header[56:] == dc_read.update(plain)[56:]
    # The DC side, derived here: its read stream continues at 64, its write key is
    # the reverse of bytes 8..56.
    up = b"proxy to dc " * 7
    assert dc_read.update(out.encryptor.update(up)) == up
    rev = raw[8:56][::-1]
    dc_write = ctr(rev[:32], rev[32:48])
    down = b"dc to proxy " * 9
    assert out.decryptor.update(dc_write.update(down)) == down


@given(secret_st, framing_st, framing_st, dc_st, rngs)
def test_passthrough_dc_keystream_is_the_clients(
    secret: bytes, client_framing: Framing, dc_framing: Framing, dc_id: int, rnd: random.Random
) -> None:
    """PROTOCOL §10: the DC's send keystream equals the client's receive keystream."""
    client_header, _, client_dec = client_side_header(secret, client_framing, dc_id, rnd)
    parsed = parse_client_header(client_header, [secret])
    out = build_dc_header(dc_framing, dc_id, passthrough=parsed.encrypt_key,
                          random_bytes=rnd.randbytes)
    dc_header = out.header
    assert not independently_forbidden(dc_header)
    # The DC reads the tag and id with the key in the header.
    dc_read = ctr(dc_header[8:40], dc_header[40:56])
    plain = dc_read.update(dc_header)
    assert plain[56:60] == dc_framing.value
    assert int.from_bytes(plain[60:62], "little", signed=True) == dc_id
    # Both keystreams, each derived only from the header its owner saw.
    dc_rev = dc_header[8:56][::-1]
    dc_send = ctr(dc_rev[:32], dc_rev[32:48])
    c_rev = client_header[8:56][::-1]
    client_recv = ctr(hashlib.sha256(c_rev[:32] + secret).digest(), c_rev[32:48])
    assert keystream(dc_send, 1000) == keystream(client_recv, 1000)
    # End to end: what the DC sends decrypts at the client with no work in between.
    message = b"resPQ from the DC" * 5
    assert client_dec.update(ctr(dc_rev[:32], dc_rev[32:48]).update(message)) == message
    # And the proxy's own decryptor for the DC leg agrees with the DC's send key.
    assert out.decryptor.update(ctr(dc_rev[:32], dc_rev[32:48]).update(message)) == message


@given(secret_st, framing_st, dc_st, rngs)
def test_client_header_obeys_forbidden_starts(
    secret: bytes, framing: Framing, dc_id: int, rnd: random.Random
) -> None:
    clean = b"\x01\x02\x03\x04\x05" + rnd.randbytes(59)
    script = [start + rnd.randbytes(60) for start in FORBIDDEN_STARTS] + [clean]
    stub = Recorder(rnd, script)
    out = build_client_header(secret, framing, dc_id, random_bytes=stub)
    assert len(stub.returned) == len(FORBIDDEN_STARTS) + 1
    assert out.header[:56] == clean[:56]
