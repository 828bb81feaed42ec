"""Fake-TLS client pieces, checked against MTG's captured ClientHellos and the mini proxy."""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from fakes.clients import (
    FakeTlsVerifyError,
    build_client_hello,
    client_hello_digest,
    open_faketls,
    parse_server_response,
)
from fakes.dc import FakeDC, echo_handler, packet_echo_handler
from fakes.obfs import TAGS, FakeTlsError

from .miniproxy import GREASE, MiniProxy, check_client_hello

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "mtg_client_hellos.json").read_text()
)
SECRET = os.urandom(16)
DOMAIN = "www.example.org"


def _vector_record(entry: dict[str, Any]) -> bytes:
    body = base64.b64decode(entry["handshake_b64"])
    return b"\x16\x03\x01" + struct.pack(">H", len(body)) + body


@pytest.mark.parametrize("entry", VECTORS["ok"])
def test_digest_matches_mtg_captured_hellos(entry: dict[str, Any]) -> None:
    secret = bytes.fromhex(VECTORS["secret_hex"])
    record = _vector_record(entry)
    xored = bytes(
        a ^ b for a, b in zip(client_hello_digest(secret, record), record[11:43], strict=True)
    )
    assert xored[:28] == bytes(28)
    assert int.from_bytes(xored[28:], "little") == entry["time"]
    check = check_client_hello(secret, record)
    assert check is not None
    assert check.timestamp == entry["time"]
    assert check.sni == entry["host"]
    assert check.session_id == base64.b64decode(entry["session_id_b64"])
    assert check.cipher_suites[0] == entry["cipher_suite"]


@pytest.mark.parametrize("entry", VECTORS["bad"])
def test_mtg_bad_hello_fails(entry: dict[str, Any]) -> None:
    secret = bytes.fromhex(VECTORS["secret_hex"])
    record = _vector_record(entry)
    xored = bytes(
        a ^ b for a, b in zip(client_hello_digest(secret, record), record[11:43], strict=True)
    )
    assert xored[:28] != bytes(28)
    assert check_client_hello(secret, record) is None


def _extensions(record: bytes) -> dict[int, bytes]:
    body = record[9:]
    pos = 34
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    assert end == len(body)
    pos += 2
    exts: dict[int, bytes] = {}
    while pos < end:
        etype, elen = struct.unpack(">HH", body[pos : pos + 4])
        exts[etype] = body[pos + 4 : pos + 4 + elen]
        pos += 4 + elen
    assert pos == end
    return exts


def test_client_hello_shape() -> None:
    now = int(time.time())
    hello = build_client_hello(SECRET, DOMAIN, now)
    assert len(hello) == 517
    assert hello[:5] == b"\x16\x03\x01\x02\x00"  # what the official server insists on
    assert hello[5] == 0x01 and int.from_bytes(hello[6:9], "big") == len(hello) - 9
    assert hello[9:11] == b"\x03\x03"
    assert hello[43] == 32
    suites_len = int.from_bytes(hello[76:78], "big")
    suites = [int.from_bytes(hello[78 + i : 80 + i], "big") for i in range(0, suites_len, 2)]
    assert suites[0] in GREASE and suites[1] == 0x1301
    exts = _extensions(hello)
    assert exts[0] == struct.pack(">HBH", len(DOMAIN) + 3, 0, len(DOMAIN)) + DOMAIN.encode()
    versions = exts[0x2B]
    assert 0x0304 in {
        int.from_bytes(versions[i : i + 2], "big") for i in range(1, len(versions), 2)
    }
    key_share = exts[0x33]
    assert b"\x00\x1d\x00\x20" in key_share and len(key_share) == 2 + 5 + 36
    assert 0x15 in exts and set(exts[0x15]) <= {0}
    assert sum(1 for e in exts if e in GREASE) == 2
    check = check_client_hello(SECRET, hello)
    assert check is not None and check.timestamp == now and check.sni == DOMAIN


def test_client_hello_options() -> None:
    sid = bytes(range(32))
    hello = build_client_hello(
        SECRET, DOMAIN, 1234, session_id=sid, cipher_suites=[0x1302, 0x1301], pad_to=0
    )
    assert 0x15 not in _extensions(hello)
    check = check_client_hello(SECRET, hello)
    assert check is not None
    assert check.session_id == sid and check.cipher_suites == (0x1302, 0x1301)
    assert check.timestamp == 1234
    assert len(build_client_hello(SECRET, DOMAIN, pad_to=700)) == 700
    assert check_client_hello(os.urandom(16), hello) is None
    tampered = bytearray(hello)
    tampered[-1] ^= 1
    assert check_client_hello(SECRET, bytes(tampered)) is None


async def _collect(stream_read: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = await stream_read(1 << 18)
        assert chunk, "unexpected EOF"
        out += chunk
    return out


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("coalesce", [False, True])
async def test_faketls_through_mini_proxy(tag: bytes, coalesce: bool) -> None:
    async with FakeDC(echo_handler) as dc, MiniProxy(SECRET, dc.host, dc.port, domain=DOMAIN) as px:
        stream = await open_faketls(
            "127.0.0.1", px.port, SECRET, DOMAIN, tag, -2, coalesce_header=coalesce
        )
        assert stream.handshake is not None and stream.handshake.verified
        info = parse_server_response(stream.handshake.response)
        assert info.session_id == stream.handshake.hello[44:76]
        assert info.cipher_suite == 0x1301
        data = os.urandom(100_000)
        stream.write(data)
        await stream.drain()
        assert await _collect(stream.read, len(data)) == data
        stream.write_eof()
        assert await stream.read() == b""
        stream.close()
        await dc.wait_closed_connections(1)
        (session,) = px.sessions
        assert session.tls and session.tag == tag and session.dc_id == -2
        assert session.hello is not None and session.hello.sni == DOMAIN
        assert max(session.client_records) == 16384
        # The first record carries the header alone, or header plus the first write.
        assert session.client_records[0] == (16384 if coalesce else 64)
        assert sum(session.client_records) == 64 + len(data)
        assert dc.connections[0].error is None


@pytest.mark.timeout_s(30)
async def test_faketls_reader_takes_large_records_and_ccs() -> None:
    async with (
        FakeDC(packet_echo_handler) as dc,
        MiniProxy(
            SECRET, dc.host, dc.port, domain=DOMAIN, out_record_size=16640, inject_ccs=True
        ) as px,
    ):
        stream = await open_faketls("127.0.0.1", px.port, SECRET, DOMAIN, TAGS[1], 2)
        payloads = [os.urandom(n) for n in (4, 40_000, 16_640)]
        for p in payloads:
            stream.send_packet(p)
        await stream.drain()
        assert [await stream.recv_packet() for _ in payloads] == payloads
        stream.close()


@pytest.mark.timeout_s(30)
async def test_oversized_server_record_is_refused() -> None:
    async with (
        FakeDC(echo_handler) as dc,
        MiniProxy(SECRET, dc.host, dc.port, domain=DOMAIN, out_record_size=16641) as px,
    ):
        stream = await open_faketls("127.0.0.1", px.port, SECRET, DOMAIN, TAGS[0], 2)
        stream.write(bytes(20_000))
        with pytest.raises(FakeTlsError):
            await _collect(stream.read, 20_000)
        stream.close()


@pytest.mark.timeout_s(30)
async def test_bad_server_hmac_is_detected() -> None:
    async with (
        FakeDC(echo_handler) as dc,
        MiniProxy(SECRET, dc.host, dc.port, domain=DOMAIN, corrupt_server_hmac=True) as px,
    ):
        with pytest.raises(FakeTlsVerifyError):
            await open_faketls("127.0.0.1", px.port, SECRET, DOMAIN, TAGS[0], 2)
        unverified = await open_faketls(
            "127.0.0.1", px.port, SECRET, DOMAIN, TAGS[0], 2, verify=False
        )
        assert unverified.handshake is not None and not unverified.handshake.verified
        unverified.close()


@pytest.mark.timeout_s(30)
async def test_wrong_secret_is_turned_away() -> None:
    async with FakeDC(echo_handler) as dc, MiniProxy(SECRET, dc.host, dc.port, domain=DOMAIN) as px:
        with pytest.raises(FakeTlsError) as info:
            await open_faketls("127.0.0.1", px.port, os.urandom(16), DOMAIN, TAGS[0], 2)
        assert not isinstance(info.value, FakeTlsVerifyError)
        stale = build_client_hello(SECRET, DOMAIN, int(time.time()) - 3600)
        with pytest.raises(FakeTlsError):
            await open_faketls("127.0.0.1", px.port, SECRET, DOMAIN, TAGS[0], 2, hello=stale)
        assert [type(s.error) for s in px.sessions] == [PermissionError, PermissionError]
