"""The mask site's TLS 1.3 profile: the hello we measure with, reading a flight, storing it."""

from __future__ import annotations

import random
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol.faketls import (
    CCS_RECORD,
    EXT_KEY_SHARE,
    EXT_SUPPORTED_VERSIONS,
    GROUP_SECP256R1,
    GROUP_X25519,
    GROUP_X25519MLKEM768,
    KEY_SHARE_LENGTHS,
    MAX_RECORD_IN,
    ClientHello,
    ServerHelloShape,
    build_server_hello,
    parse_client_hello,
    record_header,
)
from mtproxy.protocol.tlsprofile import (
    DRAWN_RANGE,
    HRR_RANDOM,
    ProfileError,
    TlsProfile,
    build_probe_hello,
    drawn_profile,
    parse_flight,
    single_record_length,
)

ORDERS = [(EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE), (EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS)]


def client(groups: tuple[int, ...] = (GROUP_X25519MLKEM768, GROUP_X25519)) -> ClientHello:
    return ClientHello(b"r" * 32, b"s" * 32, (0x0A0A, 0x1301, 0x1302, 0x1303), ("x.org",), groups)


def extensions_of(record: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of every extension of a ClientHello record, in order."""
    pos = 5 + 4 + 2 + 32
    pos += 1 + record[pos]
    pos += 2 + int.from_bytes(record[pos : pos + 2], "big")
    pos += 1 + record[pos]
    end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
    pos += 2
    out = []
    while pos < end:
        kind = int.from_bytes(record[pos : pos + 2], "big")
        length = int.from_bytes(record[pos + 2 : pos + 4], "big")
        out.append((kind, record[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    assert pos == end == len(record)
    return out


@given(st.integers(0, 2**32))
@settings(max_examples=30, deadline=None)
def test_probe_hello_is_a_browser_like_tls13_hello(seed: int) -> None:
    rnd = random.Random(seed)
    record = build_probe_hello("www.example.com", random_bytes=rnd.randbytes)
    hello = parse_client_hello(record)
    assert record[:3] == b"\x16\x03\x01" and len(record) > 1200
    assert hello.server_names == ("www.example.com",)
    assert hello.key_share_groups[1:] == (GROUP_X25519MLKEM768, GROUP_X25519)
    assert 0x1301 in hello.cipher_suites and len(hello.session_id) == 32
    exts = extensions_of(record)
    kinds = [k for k, _ in exts]
    assert len(set(kinds)) == len(kinds)  # no duplicates
    assert {0x0000, 0x000A, 0x000D, 0x0010, EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE,
            0x002D, 0xFE0D} <= set(kinds)  # fmt: skip
    assert kinds[0] & 0x0F0F == 0x0A0A and kinds[-1] & 0x0F0F == 0x0A0A  # GREASE at both ends
    shares = dict(exts)[EXT_KEY_SHARE]
    mlkem = shares[2 + 5 + 4 : 2 + 5 + 4 + 1184]
    for i in range(0, 1152, 3):  # every 12-bit coefficient of the encapsulation key < q
        a = mlkem[i] | (mlkem[i + 1] & 0x0F) << 8
        b = mlkem[i + 1] >> 4 | mlkem[i + 2] << 4
        assert a < 3329 and b < 3329


def test_probe_hellos_differ_in_extension_order() -> None:
    orders = {tuple(k for k, _ in extensions_of(build_probe_hello("a.org"))) for _ in range(8)}
    assert len(orders) > 1


def test_python_ssl_takes_the_probe_hello() -> None:
    """A real TLS 1.3 server (OpenSSL through Python's ssl) answers it with a ServerHello."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = Path(tmp, "c.pem"), Path(tmp, "k.pem")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))  # fmt: skip
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert_path, key_path)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = ctx.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(build_probe_hello("www.example.com"))
    with pytest.raises(ssl.SSLWantReadError):
        server.do_handshake()
    profile = parse_flight(outgoing.read())
    assert profile.key_share_group == GROUP_X25519 and profile.ccs
    assert EXT_SUPPORTED_VERSIONS in profile.extension_order and len(profile.records) >= 3


@given(st.sampled_from(ORDERS), st.integers(1, 16000), st.sampled_from([0x1301, 0x1302, 0x1303]),
       st.sampled_from(sorted(KEY_SHARE_LENGTHS)))
@settings(max_examples=40, deadline=None)
def test_the_fake_answer_reads_back_as_the_shape_it_copied(
    order: tuple[int, ...], size: int, suite: int, group: int
) -> None:
    shape = ServerHelloShape(order, size, suite, group)
    flight = build_server_hello(b"k" * 16, client((GROUP_X25519MLKEM768, group, GROUP_X25519)),
                                shape=shape)
    profile = parse_flight(flight)
    assert profile.extension_order == order and profile.records == (size,)
    assert profile.cipher_suite == suite and profile.key_share_group == group and profile.ccs
    sh_len = int.from_bytes(flight[3:5], "big")
    assert sh_len == 0x7A - 32 + KEY_SHARE_LENGTHS[group]


def test_a_group_the_client_did_not_offer_falls_back_to_x25519() -> None:
    shape = ServerHelloShape(ORDERS[0], 100, 0x1302, GROUP_SECP256R1)
    profile = parse_flight(build_server_hello(b"k" * 16, client((GROUP_X25519,)), shape=shape))
    assert profile.key_share_group == GROUP_X25519


def test_a_suite_the_client_did_not_offer_is_not_used() -> None:
    hello = ClientHello(b"r" * 32, b"", (0x1303,), (), (GROUP_X25519,))
    flight = build_server_hello(b"k" * 16, hello, shape=ServerHelloShape(ORDERS[0], 50, 0x1301))
    assert parse_flight(flight).cipher_suite == 0x1303


def sh_record(exts: bytes, random32: bytes = b"R" * 32) -> bytes:
    body = b"\x03\x03" + random32 + b"\x00" + b"\x13\x01\x00" + len(exts).to_bytes(2, "big") + exts
    msg = b"\x02" + len(body).to_bytes(3, "big") + body
    return record_header(len(msg), 0x16) + msg


TLS13 = b"\x00\x2b\x00\x02\x03\x04" + b"\x00\x33\x00\x24\x00\x1d\x00\x20" + bytes(32)


@pytest.mark.parametrize(
    ("flight", "why"),
    [
        (b"", "silent"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "alert"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not TLS"),
        (sh_record(b"\x00\x33\x00\x24\x00\x1d\x00\x20" + bytes(32)) + CCS_RECORD
         + record_header(40) + bytes(40), "not TLS 1.3"),
        (sh_record(TLS13, HRR_RANDOM) + CCS_RECORD, "HelloRetryRequest"),
        (sh_record(TLS13) + CCS_RECORD, "no encrypted records"),
        (sh_record(TLS13) + CCS_RECORD + record_header(40) + bytes(39), "middle of a record"),
        (sh_record(TLS13) + CCS_RECORD + record_header(0), "empty encrypted record"),
    ],
)
def test_unusable_answers(flight: bytes, why: str) -> None:
    with pytest.raises(ProfileError, match=why):
        parse_flight(flight)


def test_a_flight_of_four_records() -> None:
    records = (36, 1639, 281, 53)
    flight = sh_record(TLS13) + CCS_RECORD + b"".join(record_header(n) + bytes(n) for n in records)
    profile = parse_flight(flight)
    assert profile.records == records
    assert profile.extension_order == (EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE)
    # One record as long on the wire as the four: 2009 + 4 * 5 bytes, minus one header.
    assert profile.shape().appdata_len == single_record_length(records) == 2009 + 15


def test_a_flight_too_large_for_one_record_is_capped() -> None:
    assert single_record_length([16000, 16000]) == MAX_RECORD_IN


def test_json_round_trip_and_refusals() -> None:
    profile = TlsProfile((43, 51), 0x1302, GROUP_X25519, (36, 1639), True, "fetched",
                         "127.0.0.1:443", "www.example.com", 1.5e9)  # fmt: skip
    assert TlsProfile.from_json(profile.to_json()) == profile
    for bad in (b"{", b"[]", b'{"format": 2}', profile.to_json().replace(b"1639", b"99999"),
                profile.to_json().replace(b"fetched", b"guessed")):
        with pytest.raises(ValueError):
            TlsProfile.from_json(bad)


def test_a_drawn_profile_is_plausible_and_one_record() -> None:
    rng = random.Random(5)
    profile = drawn_profile(1.0, "m:443", "d", rng)
    assert profile.source == "drawn" and len(profile.records) == 1
    assert DRAWN_RANGE[0] <= profile.shape().appdata_len < DRAWN_RANGE[1]
    assert profile.extension_order in ORDERS
