"""Fake TLS (docs/protocol.md §4): ClientHello auth, ServerHello layout and signature, records.

HMACs and byte layouts are recomputed here from the protocol notes; two captured
hellos from another implementation (MTG's test data) check the verifier against a
client this project did not write.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mtproxy.protocol.errors import TlsError
from mtproxy.protocol.faketls import (
    CCS_RECORD,
    MAX_RECORD_IN,
    MAX_RECORD_OUT,
    ClientHello,
    RecordReader,
    TlsAuthError,
    build_client_hello,
    build_server_hello,
    choose_cipher_suite,
    hello_record_length,
    is_grease,
    parse_client_hello,
    verify_client_hello,
    verify_server_hello,
    wrap_records,
    wrapped_size,
)

MTG = json.loads(
    (Path(__file__).parents[1] / "fakes_selftest" / "data" / "mtg_client_hellos.json").read_text()
)

rngs = st.integers(0, 2**64).map(random.Random)
secret_st = st.binary(min_size=16, max_size=16)
secrets_st = st.lists(secret_st, min_size=1, max_size=16, unique=True)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20)
domain_st = st.lists(label, min_size=1, max_size=4).map(".".join)
ts_st = st.integers(0, 2**32 - 1)
GREASE = [0x0A0A + 0x1010 * i for i in range(16)]


def zero_random(record: bytes) -> bytes:
    return record[:11] + bytes(32) + record[43:]


def hello_for(secret: bytes, domain: str = "www.example.com", ts: int = 1_700_000_000,
              seed: int = 0) -> bytes:
    return build_client_hello(secret, domain, ts, random_bytes=random.Random(seed).randbytes)


@given(secrets_st, st.data(), domain_st, ts_st, rngs)
def test_client_hello_round_trip(
    secrets: list[bytes], data: st.DataObject, domain: str, ts: int, rnd: random.Random
) -> None:
    index = data.draw(st.integers(0, len(secrets) - 1))
    record = build_client_hello(secrets[index], domain, ts, random_bytes=rnd.randbytes)
    assert record[:3] == b"\x16\x03\x01"
    assert len(record) == 5 + int.from_bytes(record[3:5], "big") == hello_record_length(record[:5])
    if len(domain) < 100:
        assert len(record) == 517  # padded like a browser, as the official server expects
    verified = verify_client_hello(record, secrets)
    assert verified.secret_index == index
    assert verified.timestamp == ts
    assert verified.hello.server_names == (domain,)
    assert len(verified.hello.session_id) == 32
    # Independent check of the scheme: HMAC over the zeroed record, xor the random.
    mac = hmac.new(secrets[index], zero_random(record), hashlib.sha256).digest()
    mixed = bytes(a ^ b for a, b in zip(mac, record[11:43], strict=True))
    assert mixed[:28] == bytes(28)
    assert int.from_bytes(mixed[28:], "little") == ts


def test_sni_is_lowercased() -> None:
    record = hello_for(b"k" * 16, "WWW.Example.COM")
    assert verify_client_hello(record, [b"k" * 16]).hello.server_names == ("www.example.com",)


@pytest.mark.parametrize("entry", MTG["ok"], ids=["mtg0", "mtg1"])
def test_hellos_captured_from_another_implementation(entry: dict[str, Any]) -> None:
    body = base64.b64decode(entry["handshake_b64"])
    record = b"\x16\x03\x01" + struct.pack(">H", len(body)) + body
    secret = bytes.fromhex(MTG["secret_hex"])
    verified = verify_client_hello(record, [bytes(16), secret])
    assert verified.secret_index == 1
    assert verified.timestamp == entry["time"]
    assert verified.hello.server_names == (entry["host"],)
    assert verified.hello.session_id == base64.b64decode(entry["session_id_b64"])
    assert choose_cipher_suite(verified.hello.cipher_suites) == entry["cipher_suite"]


@pytest.mark.parametrize("entry", MTG["bad"], ids=["mtg-bad"])
def test_tampered_hello_from_another_implementation(entry: dict[str, Any]) -> None:
    body = base64.b64decode(entry["handshake_b64"])
    record = b"\x16\x03\x01" + struct.pack(">H", len(body)) + body
    with pytest.raises(TlsError):
        verify_client_hello(record, [bytes.fromhex(MTG["secret_hex"])])


def flip(record: bytes, bit: int) -> bytes:
    out = bytearray(record)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


TS_BITS = range((11 + 28) * 8, (11 + 32) * 8)


def test_every_single_bit_flip_is_caught() -> None:
    """All bits are covered by the HMAC except the 4 timestamp bytes, which are xored in.

    A flipped timestamp bit still verifies, with the timestamp changed by that bit; the
    handshake's time window is what bounds it.
    """
    secret = bytes(range(16))
    ts = 1_700_000_000
    record = hello_for(secret, ts=ts)
    for bit in range(len(record) * 8):
        bad = flip(record, bit)
        if bit in TS_BITS:
            offset = bit - TS_BITS.start
            assert verify_client_hello(bad, [secret]).timestamp == ts ^ (1 << offset)
            continue
        with pytest.raises(TlsError):
            verify_client_hello(bad, [secret])


@given(secret_st, domain_st, ts_st, st.integers(0, 517 * 8 - 1), rngs)
def test_random_bit_flip_fails_or_only_moves_the_timestamp(
    secret: bytes, domain: str, ts: int, bit: int, rnd: random.Random
) -> None:
    record = build_client_hello(secret, domain, ts, random_bytes=rnd.randbytes)
    bit %= len(record) * 8
    try:
        verified = verify_client_hello(flip(record, bit), [secret])
    except TlsError:
        assert bit not in TS_BITS
        return
    assert bit in TS_BITS and verified.timestamp == ts ^ (1 << (bit - TS_BITS.start))


def test_auth_failure_is_its_own_subclass() -> None:
    record = hello_for(b"a" * 16)
    with pytest.raises(TlsAuthError):
        verify_client_hello(record, [b"b" * 16, b"c" * 16])
    with pytest.raises(TlsAuthError):
        verify_client_hello(record, [])
    assert issubclass(TlsAuthError, TlsError)


def make_hello(suites: tuple[int, ...], session_id: bytes = b"S" * 32) -> ClientHello:
    return ClientHello(b"R" * 32, session_id, suites, ("www.example.com",))


@given(secret_st, st.binary(min_size=32, max_size=32), st.binary(max_size=32),
       st.integers(0, 3000), rngs)
@example(b"s" * 16, b"r" * 32, b"i" * 32, 0, random.Random(0))
def test_server_hello_layout_and_signature(
    secret: bytes, client_random: bytes, session_id: bytes, appdata_len: int,
    rnd: random.Random,
) -> None:
    hello = ClientHello(client_random, session_id, (0x0A0A, 0x1302, 0x1301), ("x.org",))
    key = rnd.randbytes(32)
    filler = rnd.randbytes(appdata_len)
    resp = build_server_hello(
        secret, hello, appdata_len=appdata_len, random_bytes=lambda n: filler[:n],
        key_share=lambda: key,
    )
    sid = len(session_id)
    sh_len = 0x7A - 32 + sid
    assert resp[:5] == b"\x16\x03\x03" + sh_len.to_bytes(2, "big")
    assert resp[5:9] == b"\x02\x00" + (sh_len - 4).to_bytes(2, "big")
    assert resp[9:11] == b"\x03\x03"
    assert resp[43] == sid and resp[44 : 44 + sid] == session_id  # session id echoed
    rest = resp[44 + sid :]
    assert rest[:2] == b"\x13\x02"  # first non-GREASE suite
    assert rest[2:5] == b"\x00\x00\x2e"
    assert rest[5:13] == b"\x00\x33\x00\x24\x00\x1d\x00\x20" and rest[13:45] == key
    assert rest[45:51] == b"\x00\x2b\x00\x02\x03\x04"
    assert rest[51:57] == CCS_RECORD == b"\x14\x03\x03\x00\x01\x01"
    assert rest[57:62] == b"\x17\x03\x03" + appdata_len.to_bytes(2, "big")
    assert rest[62:] == filler
    # The signature, recomputed: HMAC(secret, client_random || response, random zeroed).
    expected = hmac.new(secret, client_random + zero_random(resp), hashlib.sha256).digest()
    assert resp[11:43] == expected
    assert verify_server_hello(secret, client_random, resp)
    assert not verify_server_hello(bytes(b ^ 1 for b in secret), client_random, resp)
    assert not verify_server_hello(secret, bytes(32), resp) or client_random == bytes(32)
    assert not verify_server_hello(secret, client_random, resp[:-1] + bytes([resp[-1] ^ 1]))
    assert not verify_server_hello(secret, client_random, resp[:40])


def test_server_hello_default_sizes() -> None:
    hello = make_hello((0x1301,))
    resp = build_server_hello(b"k" * 16, hello)
    assert resp[3:5] == b"\x00\x7a"  # the official server's 0x7a-byte ServerHello
    appdata = int.from_bytes(resp[127 + 6 + 3 : 127 + 6 + 5], "big")
    assert 2500 <= appdata < 2500 + 1120
    assert len(resp) == 127 + 6 + 5 + appdata


@pytest.mark.parametrize(
    ("suites", "chosen"),
    [
        ((0x1301,), 0x1301),
        ((0x1303, 0x1301), 0x1303),
        ((0x0A0A, 0x1302), 0x1302),
        ((0x0A0A, 0xFAFA, 0x1303, 0x1301), 0x1303),
        ((0x3A3A, 0xC02B, 0x1302), 0x1301),  # first real suite is not TLS 1.3: default
        ((0xC02F,), 0x1301),
        ((0x0A0A,), 0x1301),
        ((), 0x1301),
    ],
)
def test_cipher_suite_choice(suites: tuple[int, ...], chosen: int) -> None:
    assert choose_cipher_suite(suites) == chosen
    resp = build_server_hello(b"k" * 16, make_hello(suites), appdata_len=10)
    assert resp[76:78] == chosen.to_bytes(2, "big")


def test_grease_values() -> None:
    assert [v for v in range(0x10000) if is_grease(v)] == GREASE


# -- records -------------------------------------------------------------------------

record_st = st.one_of(
    st.binary(max_size=2000).map(lambda p: ("data", p)),
    st.integers(0, 16).map(lambda n: ("data", bytes([n]) * (MAX_RECORD_IN - n))),
    st.just(("ccs", b"")),
)


def encode_records(records: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for kind, payload in records:
        if kind == "ccs":
            out += CCS_RECORD
        else:
            out += b"\x17\x03\x03" + len(payload).to_bytes(2, "big") + payload
    return out


def unwrap_in_chunks(reader: RecordReader, wire: bytes, cuts: list[int]) -> bytes:
    """Feed the stream through a reused, oversized buffer, as the socket layer does."""
    points = [*sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]
    buf = bytearray(b"\xee" * (len(wire) + 16))
    view = memoryview(buf)
    out = b""
    prev = 0
    for point in points:
        n = point - prev
        buf[:n] = wire[prev:point]
        buf[n:] = b"\xee" * (len(buf) - n)
        kept = reader.unwrap(view, n)
        assert 0 <= kept <= n
        assert buf[n:] == b"\xee" * (len(buf) - n)  # nothing past n is touched
        out += bytes(buf[:kept])
        prev = point
    return out


@given(st.lists(record_st, max_size=8), st.lists(st.integers(0, 1 << 20), max_size=20))
def test_unwrap_in_place_under_any_split(
    records: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    wire = encode_records(records)
    expected = b"".join(p for kind, p in records if kind == "data")
    assert unwrap_in_chunks(RecordReader(), wire, cuts) == expected


@given(st.binary(max_size=40_000), st.sampled_from([1, 100, 1425, MAX_RECORD_OUT]),
       st.lists(st.integers(0, 1 << 20), max_size=8))
def test_wrap_records_consistency(payload: bytes, max_record: int, cuts: list[int]) -> None:
    wire = wrap_records(payload, max_record)
    assert len(wire) == wrapped_size(len(payload), max_record)
    records = -(-len(payload) // max_record)
    assert wrapped_size(len(payload), max_record) == len(payload) + 5 * records
    pos = 0
    while pos < len(wire):
        assert wire[pos : pos + 3] == b"\x17\x03\x03"
        length = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        assert 0 < length <= max_record
        pos += 5 + length
    assert pos == len(wire)
    assert unwrap_in_chunks(RecordReader(), wire, cuts) == payload
    assert wrap_records(memoryview(payload), max_record) == wire


@pytest.mark.parametrize(
    "head",
    [
        b"\x17\x03\x03" + (MAX_RECORD_IN + 1).to_bytes(2, "big"),
        b"\x17\x03\x03\xff\xff",
        b"\x17\x03\x01\x00\x10",
        b"\x17\x03\x04\x00\x10",
        b"\x17\x02\x03\x00\x10",
        b"\x15\x03\x03\x00\x02",  # alert
        b"\x16\x03\x03\x00\x10",  # handshake
        b"\x18\x03\x03\x00\x10",
        b"\x00\x00\x00\x00\x00",
        b"\x14\x03\x03\x00\x02",  # CCS must hold one byte
        b"\x14\x03\x03\x00\x00",
    ],
)
def test_bad_record_headers_are_tls_errors(head: bytes) -> None:
    reader = RecordReader()
    buf = bytearray(b"\x17\x03\x03\x00\x02ok" + head)
    with pytest.raises(TlsError):
        reader.unwrap(memoryview(buf), len(buf))
    assert buf[:2] == b"ok"


def test_ccs_content_must_be_one() -> None:
    buf = bytearray(b"\x14\x03\x03\x00\x01\x02")
    with pytest.raises(TlsError):
        RecordReader().unwrap(memoryview(buf), len(buf))


def test_largest_record_and_empty_record() -> None:
    payload = bytes(range(256)) * (MAX_RECORD_IN // 256)
    assert len(payload) == MAX_RECORD_IN
    wire = encode_records([("data", b""), ("data", payload), ("ccs", b""), ("data", b"end")])
    assert unwrap_in_chunks(RecordReader(), wire, []) == payload + b"end"


@given(st.binary(max_size=300), st.lists(st.integers(0, 1 << 16), max_size=6))
def test_unwrap_garbage_raises_only_tls_error(garbage: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(TlsError):
        unwrap_in_chunks(RecordReader(), garbage, cuts)


# -- garbage ClientHellos ------------------------------------------------------------

GOOD = hello_for(b"g" * 16)


@st.composite
def mangled_hellos(draw: st.DrawFn) -> bytes:
    """A real hello with a few bytes changed, cut or inserted, record length kept sane."""
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set":
            data[pos] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[pos : pos + draw(st.integers(1, 40))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
    if draw(st.booleans()) and len(data) >= 5:
        data[3:5] = (len(data) - 5).to_bytes(2, "big")
    return bytes(data)


any_bytes = st.binary(max_size=700) | (
    st.binary(max_size=600).map(lambda b: b"\x16\x03\x01" + len(b).to_bytes(2, "big") + b)
)


@given(mangled_hellos() | any_bytes)
def test_garbage_hellos_raise_only_tls_error(data: bytes) -> None:
    try:
        hello = parse_client_hello(data)
    except TlsError:
        pass
    else:
        assert len(hello.random) == 32 and len(hello.session_id) <= 32
    with contextlib.suppress(TlsError):
        verify_client_hello(data, [b"g" * 16, b"h" * 16])


@given(st.binary(max_size=8))
@example(b"")
@example(b"\x16")
@example(b"\x16\x03\x01\x02")
def test_hello_record_length_on_garbage(head: bytes) -> None:
    try:
        total = hello_record_length(head)
    except TlsError:
        return
    assert head[:2] == b"\x16\x03" and 5 + 64 <= total <= 5 + 16384


@pytest.mark.parametrize(
    "head",
    [b"\x16\x03\x01\x00\x3f", b"\x16\x03\x01\x40\x01", b"\x17\x03\x01\x02\x00",
     b"\x16\x02\x01\x02\x00", b"\x16\x03\x02\x02\x00"],
)
def test_hello_record_length_bounds(head: bytes) -> None:
    with pytest.raises(TlsError):
        hello_record_length(head)


def test_hello_parse_rejects_trailing_or_missing_bytes() -> None:
    with pytest.raises(TlsError):
        parse_client_hello(GOOD + b"\x00")
    with pytest.raises(TlsError):
        parse_client_hello(GOOD[:-1])


# -- deciding on a hello that is still arriving ------------------------------------------


@given(rngs, st.sampled_from([517, 1200, 4000]), st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_no_prefix_of_a_parseable_hello_is_refused(
    rng: random.Random, pad_to: int, ts: int
) -> None:
    from fakes import build_client_hello as fake_hello

    from mtproxy.protocol.faketls import check_hello_prefix

    record = fake_hello(rng.randbytes(16), "a.example.org", ts, pad_to=pad_to)
    parse_client_hello(record)
    for n in range(len(record) + 1):
        check_hello_prefix(bytearray(record[:n]))


@given(rngs, st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4))
@settings(deadline=None)
def test_a_refused_prefix_means_a_refused_record(
    rng: random.Random, edits: list[tuple[int, int]]
) -> None:
    """Once a prefix is refused, every longer one and the whole record are too."""
    from fakes import build_client_hello as fake_hello

    from mtproxy.protocol.faketls import check_hello_prefix

    record = bytearray(fake_hello(rng.randbytes(16), "b.example.org", 1, pad_to=600))
    for pos, value in edits:
        record[pos % len(record)] = value
    refused_at = None
    for n in range(len(record) + 1):
        try:
            check_hello_prefix(record[:n])
        except TlsError:
            refused_at = n
            break
    whole_ok = True
    try:
        total = hello_record_length(bytes(record[:5]))
        parse_client_hello(bytes(record[:total]))
        whole_ok = len(record) >= total
    except TlsError:
        whole_ok = False
    if refused_at is not None:
        assert not whole_ok
        for n in range(refused_at, min(len(record), refused_at + 40) + 1):
            with pytest.raises(TlsError):
                check_hello_prefix(record[:n])
    elif len(record) >= 5 and len(record) >= hello_record_length(bytes(record[:5])):
        assert whole_ok
