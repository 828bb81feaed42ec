"""Client-side peers: an app dialling a proxy (classic or fake-TLS) and a proxy dialling a DC."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .obfs import (
    TLS_CCS,
    FakeTlsError,
    FakeTlsHandshakeResult,
    InitiatorHandshake,
    ObfsStream,
    accept_header,
    initiator_from_wire,
    make_initiator_header,
)

RANDOM_OFFSET = 11
GREASE_VALUES = tuple(0x0A0A + 0x1010 * i for i in range(16))

# Chrome-like default offer: TLS 1.3 suites first, then the usual TLS 1.2 ones.
DEFAULT_CIPHER_SUITES = (
    0x1301, 0x1302, 0x1303,
    0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
    0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
)  # fmt: skip


class FakeTlsVerifyError(FakeTlsError):
    """The server's random is not the HMAC a real MTProxy would have put there."""


# ---------------------------------------------------------------------------------------------
# Classic obfuscated2 client and proxy-to-DC dial


async def _dial(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)


def _client_handshake(
    secret: bytes, tag: bytes, dc_id: int, header: bytes | None
) -> tuple[InitiatorHandshake, bytes]:
    """A fresh header, or the ciphers of a replayed one plus the tag it really carries."""
    if header is None:
        return make_initiator_header(tag, dc_id, secret), tag
    return initiator_from_wire(header, secret), accept_header(header, secret).tag


async def open_obfs2(
    host: str,
    port: int,
    secret: bytes,
    tag: bytes,
    dc_id: int,
    *,
    header: bytes | None = None,
    coalesce_header: bool = False,
    timeout: float = 10.0,
) -> ObfsStream:
    """Connect like a Telegram app using a classic (or ``dd``) secret.

    ``header``: resend these exact 64 wire bytes (a replay); ``tag``/``dc_id`` are then
    ignored in favour of the ones inside it. ``coalesce_header``: hold the header back so
    it leaves together with the first write, as apps do.
    """
    if len(secret) != 16:
        raise ValueError("secret must be 16 bytes")
    hs, tag = _client_handshake(secret, tag, dc_id, header)
    reader, writer = await _dial(host, port, timeout)
    stream = ObfsStream(
        reader,
        writer,
        encryptor=hs.encryptor,
        decryptor=hs.decryptor,
        tag=tag,
        pending_out=hs.wire,
    )
    stream.header = hs.wire
    if not coalesce_header:
        stream.flush_pending()
        await stream.drain()
    return stream


async def open_dc_direct(
    host: str,
    port: int,
    tag: bytes,
    dc_id: int,
    *,
    header_base: bytes | None = None,
    timeout: float = 10.0,
) -> ObfsStream:
    """Connect to a DC (or FakeDC) the way a proxy in direct mode does: no secret.

    ``header_base`` lets a caller choose bytes 0-55 (e.g. to plant a fast-mode key).
    """
    hs = make_initiator_header(tag, dc_id, None, base=header_base)
    reader, writer = await _dial(host, port, timeout)
    stream = ObfsStream(reader, writer, encryptor=hs.encryptor, decryptor=hs.decryptor, tag=tag)
    stream.header = hs.wire
    writer.write(hs.wire)
    await writer.drain()
    return stream


# ---------------------------------------------------------------------------------------------
# Fake TLS


def _ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack(">HH", ext_type, len(body)) + body


def _u16_list(values: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(struct.pack(">H", v) for v in values)


def _pick_grease(count: int) -> list[int]:
    picks: list[int] = []
    while len(picks) < count:
        value = GREASE_VALUES[os.urandom(1)[0] & 15]
        if value not in picks:
            picks.append(value)
    return picks


def client_hello_digest(secret: bytes, record: bytes) -> bytes:
    """HMAC-SHA256 of the whole ClientHello record with its random field zeroed."""
    zeroed = record[:RANDOM_OFFSET] + bytes(32) + record[RANDOM_OFFSET + 32 :]
    return hmac.new(secret, zeroed, hashlib.sha256).digest()


def build_client_hello(
    secret: bytes,
    domain: str,
    timestamp: int | None = None,
    *,
    session_id: bytes | None = None,
    cipher_suites: list[int] | None = None,
    pad_to: int = 517,
) -> bytes:
    """A Chrome-shaped TLS 1.3 ClientHello record carrying the fake-TLS HMAC in ``random``.

    ``cipher_suites`` given explicitly is used verbatim (include GREASE values yourself);
    the default puts one GREASE suite first. ``pad_to`` is the total record size reached
    with the padding extension (no padding if the hello is already larger).
    """
    if timestamp is None:
        timestamp = int(time.time())
    if session_id is None:
        session_id = os.urandom(32)
    grease = _pick_grease(5)
    suites = (
        list(cipher_suites) if cipher_suites is not None else [grease[0], *DEFAULT_CIPHER_SUITES]
    )
    host = domain.encode("idna") if domain else b""
    x25519 = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    sni_entry = b"\x00" + struct.pack(">H", len(host)) + host
    exts = [
        _ext(grease[1], b""),
        _ext(0x0000, struct.pack(">H", len(sni_entry)) + sni_entry) if host else b"",
        _ext(0x0017, b""),  # extended_master_secret
        _ext(0xFF01, b"\x00"),  # renegotiation_info
        _ext(0x000A, struct.pack(">H", 8) + _u16_list((grease[2], 0x001D, 0x0017, 0x0018))),
        _ext(0x000B, b"\x01\x00"),  # ec_point_formats
        _ext(0x0023, b""),  # session_ticket
        _ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),  # ALPN
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),  # status_request
        _ext(
            0x000D,
            struct.pack(">H", 16)
            + _u16_list((0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)),
        ),
        _ext(0x0012, b""),  # signed_certificate_timestamp
        _ext(
            0x0033,
            struct.pack(">H", 5 + 36)
            + struct.pack(">HH", grease[2], 1)
            + b"\x00"
            + struct.pack(">HH", 0x001D, 32)
            + x25519,
        ),
        _ext(0x002D, b"\x01\x01"),  # psk_key_exchange_modes
        _ext(0x002B, b"\x06" + _u16_list((grease[3], 0x0304, 0x0303))),
        _ext(0x001B, b"\x02\x00\x02"),  # compress_certificate (brotli)
        _ext(grease[4], b"\x00"),
    ]
    suites_raw = _u16_list(suites)
    body_head = (
        b"\x03\x03"
        + bytes(32)
        + bytes([len(session_id)])
        + session_id
        + struct.pack(">H", len(suites_raw))
        + suites_raw
        + b"\x01\x00"
    )
    ext_raw = b"".join(exts)
    # record header 5 + handshake header 4 + body + extensions length 2 + extensions
    size = 5 + 4 + len(body_head) + 2 + len(ext_raw)
    if size + 4 <= pad_to:
        ext_raw += _ext(0x0015, bytes(pad_to - size - 4))
    body = body_head + struct.pack(">H", len(ext_raw)) + ext_raw
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    record = b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake
    digest = client_hello_digest(secret, record)
    random = digest[:28] + bytes(
        a ^ b for a, b in zip(digest[28:32], struct.pack("<I", timestamp & 0xFFFFFFFF), strict=True)
    )
    return record[:RANDOM_OFFSET] + random + record[RANDOM_OFFSET + 32 :]


async def read_server_hello_raw(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Read the server's answer to a ClientHello: ServerHello, CCS, exactly one AppData.

    Raises FakeTlsError as soon as a record header is not the expected one (e.g. a masking
    host answered), or if the server closes early; TimeoutError if it stalls.
    """
    parts: list[bytes] = []
    async with asyncio.timeout(timeout):
        for rtype in (0x16, 0x14, 0x17):
            try:
                head = await reader.readexactly(5)
                if head[0] != rtype or head[1:3] not in (b"\x03\x01", b"\x03\x03"):
                    raise FakeTlsError(f"expected a {rtype:#x} record, got header {head.hex()}")
                body = await reader.readexactly(int.from_bytes(head[3:5], "big"))
            except asyncio.IncompleteReadError as exc:
                got = sum(len(p) for p in parts) + len(exc.partial)
                raise FakeTlsError(f"server closed the handshake after {got} more bytes") from exc
            parts.append(head + body)
    return b"".join(parts)


def server_response_digest(secret: bytes, client_random: bytes, response: bytes) -> bytes:
    """HMAC-SHA256(secret, client_random || response with its random zeroed)."""
    zeroed = response[:RANDOM_OFFSET] + bytes(32) + response[RANDOM_OFFSET + 32 :]
    return hmac.new(secret, client_random + zeroed, hashlib.sha256).digest()


def verify_server_response(secret: bytes, client_hello: bytes, response: bytes) -> bool:
    client_random = client_hello[RANDOM_OFFSET : RANDOM_OFFSET + 32]
    expect = server_response_digest(secret, client_random, response)
    return hmac.compare_digest(expect, response[RANDOM_OFFSET : RANDOM_OFFSET + 32])


@dataclass(frozen=True)
class ServerHelloInfo:
    """The fields of a ServerHello tests usually assert on."""

    version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression: int
    extensions: dict[int, bytes]
    extension_order: tuple[int, ...]
    ccs: bytes
    appdata_len: int


def parse_server_response(response: bytes) -> ServerHelloInfo:
    """Split SH + CCS + AppData and decode the ServerHello (raises FakeTlsError if malformed)."""
    try:
        sh_len = int.from_bytes(response[3:5], "big")
        sh = response[5 : 5 + sh_len]
        if response[0] != 0x16 or sh[0] != 0x02:
            raise FakeTlsError("first record is not a ServerHello")
        if int.from_bytes(sh[1:4], "big") != len(sh) - 4:
            raise FakeTlsError("ServerHello length mismatch")
        pos = 4
        version = int.from_bytes(sh[pos : pos + 2], "big")
        random = sh[pos + 2 : pos + 34]
        pos += 34
        sid_len = sh[pos]
        session_id = sh[pos + 1 : pos + 1 + sid_len]
        pos += 1 + sid_len
        cipher = int.from_bytes(sh[pos : pos + 2], "big")
        compression = sh[pos + 2]
        pos += 3
        ext_total = int.from_bytes(sh[pos : pos + 2], "big")
        pos += 2
        if pos + ext_total != len(sh):
            raise FakeTlsError("ServerHello extensions length mismatch")
        exts: dict[int, bytes] = {}
        order = []
        while pos < len(sh):
            etype, elen = struct.unpack(">HH", sh[pos : pos + 4])
            exts[etype] = sh[pos + 4 : pos + 4 + elen]
            order.append(etype)
            pos += 4 + elen
        rest = response[5 + sh_len :]
        ccs = rest[:6]
        app = rest[6:]
        if ccs != TLS_CCS or app[:3] != b"\x17\x03\x03":
            raise FakeTlsError("ServerHello not followed by CCS and AppData")
        app_len = int.from_bytes(app[3:5], "big")
        if len(app) != 5 + app_len:
            raise FakeTlsError("AppData record length mismatch")
    except (IndexError, struct.error) as exc:
        raise FakeTlsError(f"truncated ServerHello: {exc}") from exc
    return ServerHelloInfo(
        version, random, session_id, cipher, compression, exts, tuple(order), ccs, app_len
    )


async def open_faketls(
    host: str,
    port: int,
    secret: bytes,
    domain: str,
    tag: bytes,
    dc_id: int,
    *,
    timestamp: int | None = None,
    hello: bytes | None = None,
    header: bytes | None = None,
    coalesce_header: bool = False,
    verify: bool = True,
    timeout: float = 10.0,
) -> ObfsStream:
    """Connect like a Telegram app using an ``ee`` secret.

    Sends ``hello`` (default: a fresh one for ``domain``), reads SH+CCS+AppData, checks the
    server random (FakeTlsVerifyError) and then speaks obfuscated2 inside AppData records,
    with a CCS record in front as apps send it. The handshake bytes are kept on the stream
    as ``stream.handshake`` (a FakeTlsHandshakeResult). ``hello``/``header`` allow replays;
    ``coalesce_header`` puts the header in one record with the first write; ``verify=False``
    keeps going after a bad server random (``stream.handshake.verified`` says which).
    """
    if len(secret) != 16:
        raise ValueError("secret must be 16 bytes")
    if hello is None:
        hello = build_client_hello(secret, domain, timestamp)
    reader, writer = await _dial(host, port, timeout)
    try:
        writer.write(hello)
        await writer.drain()
        response = await read_server_hello_raw(reader, timeout)
        verified = verify_server_response(secret, hello, response)
        if verify and not verified:
            raise FakeTlsVerifyError("server random is not HMAC(secret, client_random || reply)")
    except BaseException:
        writer.close()
        raise
    hs, tag = _client_handshake(secret, tag, dc_id, header)
    writer.write(TLS_CCS)
    stream = ObfsStream(
        reader,
        writer,
        encryptor=hs.encryptor,
        decryptor=hs.decryptor,
        tag=tag,
        tls=True,
        pending_out=hs.wire,
    )
    stream.header = hs.wire
    stream.handshake = FakeTlsHandshakeResult(hello, response, verified)
    if not coalesce_header:
        stream.flush_pending()
    await stream.drain()
    return stream


async def faketls_exchange(
    host: str, port: int, hello: bytes, *, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send a ClientHello and return the open connection plus whatever SH+CCS+AppData came."""
    reader, writer = await _dial(host, port, timeout)
    writer.write(hello)
    await writer.drain()
    try:
        response = await read_server_hello_raw(reader, timeout)
    except BaseException:
        writer.close()
        raise
    return reader, writer, response
