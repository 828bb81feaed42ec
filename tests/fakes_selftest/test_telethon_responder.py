"""TelethonAuthResponder speaks the first auth-key steps well enough for the real Telethon."""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any

import pytest
from fakes.clients import open_dc_direct
from fakes.dc import FakeDC
from fakes.obfs import TAGS
from fakes.telethon_dc import (
    TELEGRAM_KEY_FINGERPRINT,
    AuthExchange,
    MtprotoParseError,
    TelethonAuthResponder,
    TelethonDriveError,
    drive_telethon,
    drive_telethon_raw,
    int_to_be,
    parse_plain_message,
    plain_message,
    req_pq_multi,
)
from telethon.crypto import rsa
from telethon.crypto.factorization import Factorization
from telethon.extensions import BinaryReader
from telethon.network.connection import (
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
    ConnectionTcpObfuscated,
)
from telethon.network.connection.tcpintermediate import (
    IntermediatePacketCodec,
    RandomizedIntermediatePacketCodec,
)
from telethon.tl.functions import ReqDHParamsRequest, ReqPqMultiRequest
from telethon.tl.types import PQInnerData, ResPQ

from .miniproxy import MiniProxy


class ObfuscatedIntermediate(ConnectionTcpObfuscated):  # type: ignore[misc]
    """Telethon's secret-less obfuscated2 with the intermediate codec."""

    packet_codec = IntermediatePacketCodec


class ObfuscatedPadded(ConnectionTcpObfuscated):  # type: ignore[misc]
    packet_codec = RandomizedIntermediatePacketCodec


def _signed_int128(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _res_pq(exchange: AuthExchange, nonce: bytes) -> ResPQ:
    request = bytes(ReqPqMultiRequest(_signed_int128(nonce)))
    assert request == req_pq_multi(nonce)
    reply = exchange.handle(struct.pack("<qqi", 0, 0x1234_5678_0000_0000, len(request)) + request)
    assert reply is not None
    msg = parse_plain_message(reply)
    assert msg.msg_id % 4 == 1
    result = BinaryReader(msg.body).tgread_object()
    assert isinstance(result, ResPQ)
    return result


def _req_dh(res: ResPQ, **override: object) -> bytes:
    pq = int.from_bytes(res.pq, "big")
    p, q = Factorization.factorize(pq)
    inner = bytes(
        PQInnerData(
            pq=res.pq,
            p=int_to_be(p),
            q=int_to_be(q),
            nonce=res.nonce,
            server_nonce=res.server_nonce,
            new_nonce=int.from_bytes(os.urandom(32), "little", signed=True),
        )
    )
    fields: dict[str, object] = {
        "nonce": res.nonce,
        "server_nonce": res.server_nonce,
        "p": int_to_be(p),
        "q": int_to_be(q),
        "public_key_fingerprint": res.server_public_key_fingerprints[0],
        "encrypted_data": rsa.encrypt(res.server_public_key_fingerprints[0], inner),
    }
    fields.update(override)
    body = bytes(ReqDHParamsRequest(**fields))
    return struct.pack("<qqi", 0, 0x1234_5678_0000_0004, len(body)) + body


def test_res_pq_is_what_telethon_expects() -> None:
    responder = TelethonAuthResponder()
    exchange = AuthExchange(responder)
    nonce = os.urandom(16)
    res = _res_pq(exchange, nonce)
    assert res.nonce == _signed_int128(nonce)
    assert int.from_bytes(res.pq, "big") == exchange.p * exchange.q
    assert len(res.pq) == 8
    assert Factorization.factorize(int.from_bytes(res.pq, "big")) == (exchange.p, exchange.q)
    fingerprints = [f & (2**64 - 1) for f in res.server_public_key_fingerprints]
    assert fingerprints == [TELEGRAM_KEY_FINGERPRINT]
    assert responder.saw_req_pq == 1
    assert exchange.handle(_req_dh(res)) is None
    assert exchange.finished
    assert responder.dh_params_ok == 1 and responder.errors == []
    assert responder.dh_ok_event.is_set()


@pytest.mark.parametrize(
    "override",
    [
        {"server_nonce": 5},
        {"nonce": 7},
        {"p": b"\x01\x02\x03\x05"},
        {"public_key_fingerprint": 0x15AE5FA8B5529542},
        {"encrypted_data": b"\x00" * 255},
    ],
)
def test_bad_req_dh_params_is_reported(override: dict[str, object]) -> None:
    responder = TelethonAuthResponder()
    exchange = AuthExchange(responder)
    res = _res_pq(exchange, os.urandom(16))
    assert exchange.handle(_req_dh(res, **override)) is None
    assert responder.saw_req_dh_params == 1
    assert responder.dh_params_ok == 0
    assert len(responder.errors) == 1 and "bad req_DH_params" in responder.errors[0]


def test_plain_message_parsing() -> None:
    body = req_pq_multi(bytes(16))
    padded = plain_message(body, msg_id=0) + os.urandom(12)  # TDLib-style trailing padding
    assert parse_plain_message(padded).body == body
    with pytest.raises(MtprotoParseError):
        parse_plain_message(b"\x01" + padded[1:])
    with pytest.raises(MtprotoParseError):
        parse_plain_message(padded[:30])


@pytest.mark.timeout_s(20)
@pytest.mark.parametrize("tag", TAGS)
async def test_responder_over_the_wire(tag: bytes) -> None:
    responder = TelethonAuthResponder()
    async with FakeDC(responder) as dc:
        stream = await open_dc_direct(dc.host, dc.port, tag, 2)
        stream.send_packet(plain_message(req_pq_multi(os.urandom(16)), msg_id=4))
        await stream.drain()
        reply = parse_plain_message(await stream.recv_packet())
        assert isinstance(BinaryReader(reply.body).tgread_object(), ResPQ)
        stream.send_packet(plain_message(b"\x00" * 8, msg_id=8))
        await stream.drain()
        with pytest.raises(asyncio.IncompleteReadError):
            await stream.recv_packet()
        stream.close()
        await dc.wait_closed_connections(1)
    assert responder.saw_req_pq == 1
    assert responder.tags == [tag] and responder.dc_ids == [2]
    assert responder.errors and "unexpected constructor" in responder.errors[0]


@pytest.mark.telethon
@pytest.mark.timeout_s(60)
@pytest.mark.parametrize(
    "connection_cls", [ConnectionTcpObfuscated, ObfuscatedIntermediate, ObfuscatedPadded]
)
async def test_telethon_straight_at_fake_dc(connection_cls: type[Any]) -> None:
    """Telethon's own secret-less obfuscated2 client is an independent check of FakeDC."""
    responder = TelethonAuthResponder()
    async with FakeDC(responder) as dc:
        await drive_telethon_raw(
            connection_cls, responder, dc_id=2, dc_host=dc.host, dc_port=dc.port, timeout=20
        )
    assert responder.dh_params_ok >= 1
    assert responder.tags[0] == connection_cls.packet_codec.obfuscate_tag


@pytest.mark.telethon
@pytest.mark.timeout_s(60)
@pytest.mark.parametrize(
    ("connection_cls", "prefix"),
    [
        (ConnectionTcpMTProxyAbridged, ""),
        (ConnectionTcpMTProxyIntermediate, ""),
        (ConnectionTcpMTProxyRandomizedIntermediate, "dd"),
    ],
)
async def test_drive_telethon_through_mini_proxy(connection_cls: type[Any], prefix: str) -> None:
    secret = os.urandom(16)
    responder = TelethonAuthResponder()
    async with FakeDC(responder) as dc, MiniProxy(secret, dc.host, dc.port) as proxy:
        await drive_telethon(
            "127.0.0.1",
            proxy.port,
            prefix + secret.hex(),
            connection_cls,
            dc_id=4,
            timeout=20,
            responder=responder,
        )
    assert responder.dh_params_ok >= 1
    assert responder.dc_ids[0] == 4
    assert responder.tags[0] == connection_cls.packet_codec.obfuscate_tag
    assert all(s.error is None for s in proxy.sessions)


@pytest.mark.telethon
@pytest.mark.timeout_s(60)
async def test_drive_telethon_fails_with_wrong_secret() -> None:
    responder = TelethonAuthResponder()
    async with FakeDC(responder) as dc, MiniProxy(os.urandom(16), dc.host, dc.port) as proxy:
        with pytest.raises(TelethonDriveError):
            await drive_telethon(
                "127.0.0.1",
                proxy.port,
                os.urandom(16).hex(),
                ConnectionTcpMTProxyIntermediate,
                timeout=6,
                responder=responder,
            )
    assert responder.dh_params_ok == 0
