"""Just enough of a DC's MTProto auth-key exchange to drive the real Telethon client.

The responder answers ``req_pq_multi`` with a valid ``resPQ`` and checks the
``req_DH_params`` Telethon derives from it. Telethon only gets there if every byte went both
ways through the proxy intact, so a valid ``req_DH_params`` is end-to-end proof.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from .dc import DcConn

REQ_PQ_MULTI = 0xBE7E8EF1
REQ_PQ = 0x60469778
RES_PQ = 0x05162463
REQ_DH_PARAMS = 0xD712E4BE
VECTOR = 0x1CB5C415
# Fingerprint of one of Telegram's current production RSA keys; Telethon ships it.
TELEGRAM_KEY_FINGERPRINT = 0x0BC35F3509F7B7A5
RSA_BLOCK = 256


class MtprotoParseError(ValueError):
    """Bytes that are not the unencrypted MTProto message we expect."""


# ---------------------------------------------------------------------------------------------
# TL helpers


def tl_bytes(data: bytes) -> bytes:
    """TL ``bytes``/``string`` encoding, padded to 4."""
    n = len(data)
    head = bytes([n]) if n <= 253 else b"\xfe" + n.to_bytes(3, "little")
    raw = head + data
    return raw + bytes(-len(raw) % 4)


def read_tl_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Decode TL ``bytes`` at ``pos``; returns (value, next position)."""
    if pos >= len(buf):
        raise MtprotoParseError("TL bytes past end")
    first = buf[pos]
    if first <= 253:
        n, head = first, 1
    else:
        n, head = int.from_bytes(buf[pos + 1 : pos + 4], "little"), 4
    end = pos + head + n
    if end > len(buf):
        raise MtprotoParseError("TL bytes overrun the message")
    value = buf[pos + head : end]
    return value, end + (-(head + n) % 4)


def int_to_be(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:  # deterministic for n < 3.3e24
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def random_prime(bits: int) -> int:
    for _ in range(100_000):
        candidate = int.from_bytes(os.urandom((bits + 7) // 8), "big")
        candidate |= (1 << (bits - 1)) | 1
        candidate &= (1 << bits) - 1
        if _is_prime(candidate):
            return candidate
    raise RuntimeError("no prime found")


def new_server_msg_id() -> int:
    """A server message id: unix time * 2^32, ``≡ 1 (mod 4)`` as for responses."""
    return (int(time.time() * (1 << 32)) & ~3) | 1


@dataclass(frozen=True)
class PlainMessage:
    msg_id: int
    body: bytes


def parse_plain_message(packet: bytes) -> PlainMessage:
    """Parse an unencrypted message by its declared length (trailing padding is ignored)."""
    if len(packet) < 20:
        raise MtprotoParseError(f"message of {len(packet)} bytes is too short")
    auth_key_id, msg_id, length = struct.unpack_from("<qqi", packet)
    if auth_key_id != 0:
        raise MtprotoParseError(f"auth_key_id {auth_key_id:#x} is not 0")
    if length <= 0 or 20 + length > len(packet):
        raise MtprotoParseError(f"declared length {length} does not fit in {len(packet)} bytes")
    return PlainMessage(msg_id, packet[20 : 20 + length])


def plain_message(body: bytes, msg_id: int | None = None) -> bytes:
    return (
        struct.pack("<qqi", 0, new_server_msg_id() if msg_id is None else msg_id, len(body)) + body
    )


def req_pq_multi(nonce: bytes) -> bytes:
    """A client's ``req_pq_multi`` body (for hand-driven tests)."""
    return struct.pack("<I", REQ_PQ_MULTI) + nonce


# ---------------------------------------------------------------------------------------------
# One connection's exchange (sans I/O)


class AuthExchange:
    """State of the first two auth-key steps on one connection.

    ``handle(packet)`` returns the reply packet, or None when the exchange is over (after
    req_DH_params) and the connection should be closed.
    """

    def __init__(self, responder: TelethonAuthResponder) -> None:
        self.responder = responder
        self.nonce: bytes | None = None
        self.server_nonce = os.urandom(16)
        p = random_prime(31)
        q = random_prime(32)
        while q == p:
            q = random_prime(32)
        self.p, self.q = min(p, q), max(p, q)
        self.finished = False

    def handle(self, packet: bytes) -> bytes | None:
        msg = parse_plain_message(packet)
        if len(msg.body) < 4:
            raise MtprotoParseError("body too short for a constructor")
        (ctor,) = struct.unpack_from("<I", msg.body)
        if ctor in (REQ_PQ_MULTI, REQ_PQ):
            return self._on_req_pq(msg.body)
        if ctor == REQ_DH_PARAMS:
            self._on_req_dh(msg.body)
            self.finished = True
            return None
        raise MtprotoParseError(f"unexpected constructor {ctor:#010x}")

    def _on_req_pq(self, body: bytes) -> bytes:
        if len(body) < 20:
            raise MtprotoParseError("req_pq_multi too short")
        self.nonce = body[4:20]
        self.responder.saw_req_pq += 1
        pq = int_to_be(self.p * self.q)
        reply = (
            struct.pack("<I", RES_PQ)
            + self.nonce
            + self.server_nonce
            + tl_bytes(pq)
            + struct.pack("<Ii", VECTOR, len(self.responder.fingerprints))
            + b"".join(struct.pack("<Q", f) for f in self.responder.fingerprints)
        )
        return plain_message(reply)

    def _on_req_dh(self, body: bytes) -> None:
        self.responder.saw_req_dh_params += 1
        problems = []
        if self.nonce is None:
            problems.append("req_DH_params before req_pq_multi")
        if body[4:20] != self.nonce:
            problems.append("nonce not echoed")
        if body[20:36] != self.server_nonce:
            problems.append("server_nonce not echoed")
        p, pos = read_tl_bytes(body, 36)
        q, pos = read_tl_bytes(body, pos)
        if p != int_to_be(self.p) or q != int_to_be(self.q):
            problems.append(f"p/q {p.hex()}/{q.hex()} != {self.p:x}/{self.q:x}")
        if pos + 8 > len(body):
            raise MtprotoParseError("req_DH_params truncated at fingerprint")
        (fingerprint,) = struct.unpack_from("<Q", body, pos)
        if fingerprint not in self.responder.fingerprints:
            problems.append(f"fingerprint {fingerprint:#x}")
        encrypted, pos = read_tl_bytes(body, pos + 8)
        if len(encrypted) != RSA_BLOCK:
            problems.append(f"encrypted_data is {len(encrypted)} bytes")
        if problems:
            self.responder.errors.append("bad req_DH_params: " + "; ".join(problems))
            return
        self.responder.dh_params_ok += 1
        self.responder.dh_ok_event.set()


# ---------------------------------------------------------------------------------------------
# The FakeDC handler


@dataclass
class TelethonAuthResponder:
    """FakeDC handler; counters say how far each client got (they survive reconnects)."""

    saw_req_pq: int = 0
    saw_req_dh_params: int = 0
    dh_params_ok: int = 0
    errors: list[str] = field(default_factory=list)
    tags: list[bytes] = field(default_factory=list)
    dc_ids: list[int] = field(default_factory=list)
    dh_ok_event: asyncio.Event = field(default_factory=asyncio.Event)
    #: Key fingerprints offered in resPQ (TDLib knows other keys than Telethon's default).
    fingerprints: tuple[int, ...] = (TELEGRAM_KEY_FINGERPRINT,)

    async def __call__(self, conn: DcConn) -> None:
        self.tags.append(conn.tag)
        self.dc_ids.append(conn.dc_id)
        exchange = AuthExchange(self)
        while not exchange.finished:
            try:
                packet = await conn.recv_packet_ex()
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self.errors.append(f"EOF inside a packet ({len(exc.partial)} bytes)")
                return
            conn.packets_in += 1
            try:
                reply = exchange.handle(packet.payload)
            except MtprotoParseError as exc:
                self.errors.append(str(exc))
                return
            if reply is not None:
                conn.send_packet(reply)
                await conn.drain()

    async def wait_dh_ok(self, timeout: float) -> None:
        await asyncio.wait_for(self.dh_ok_event.wait(), timeout)


# ---------------------------------------------------------------------------------------------
# Driving Telethon


class TelethonDriveError(AssertionError):
    """Telethon did not produce a valid req_DH_params in time."""


# A TEST-NET address: the MTProxy connection never dials the session's DC address.
_DUMMY_DC_HOST = "192.0.2.1"


async def drive_telethon_raw(
    connection_cls: type[Any],
    responder: TelethonAuthResponder,
    *,
    dc_id: int,
    dc_host: str = _DUMMY_DC_HOST,
    dc_port: int = 443,
    proxy: tuple[str, int, str] | None = None,
    timeout: float = 20.0,
) -> TelethonAuthResponder:
    """Run a Telethon client with any connection class until ``responder`` accepts its
    req_DH_params. Without ``proxy`` Telethon dials ``dc_host:dc_port`` itself (usable with
    ``ConnectionTcpObfuscated`` straight at a FakeDC)."""
    from telethon import TelegramClient
    from telethon.sessions import StringSession

    class ClosingConnection(connection_cls):  # type: ignore[misc]
        """Telethon 1.45 forgets the socket of a failed MTProxy attempt (it disconnects
        before marking itself connected); close it so tests leak nothing."""

        async def _connect(self, timeout: float | None = None, ssl: Any = None) -> None:
            try:
                await super()._connect(timeout=timeout, ssl=ssl)
            except BaseException:
                if self._writer is not None:
                    self._writer.close()
                raise

    ClosingConnection.__name__ = connection_cls.__name__
    before = responder.dh_params_ok
    responder.dh_ok_event.clear()
    with warnings.catch_warnings():
        # Telethon warns that python-socks is missing; MTProxy connections do not need it.
        warnings.simplefilter("ignore")
        client = TelegramClient(
            StringSession(),
            1,
            "x" * 32,
            connection=ClosingConnection,
            proxy=proxy,
            timeout=max(1.0, timeout / 2),
            connection_retries=1,
            retry_delay=0,
            auto_reconnect=False,
            receive_updates=False,
        )
    client.session.set_dc(dc_id, dc_host, dc_port)
    connect = asyncio.ensure_future(client.connect())
    ok_wait = asyncio.ensure_future(responder.dh_ok_event.wait())
    failure: BaseException | None = None
    try:
        done, _ = await asyncio.wait(
            {connect, ok_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ok_wait not in done and connect in done:
            # Telethon gave up; its last req_DH_params may still be in flight to the DC.
            failure = connect.exception() if not connect.cancelled() else None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(ok_wait), 2.0)
    finally:
        for task in (connect, ok_wait):
            task.cancel()
        await asyncio.gather(connect, ok_wait, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 10.0)
    if responder.dh_params_ok <= before:
        raise TelethonDriveError(
            f"no valid req_DH_params within {timeout}s: saw_req_pq={responder.saw_req_pq} "
            f"saw_req_dh_params={responder.saw_req_dh_params} errors={responder.errors} "
            f"telethon={failure!r}"
        )
    return responder


async def drive_telethon(
    proxy_host: str,
    proxy_port: int,
    secret_hex: str,
    connection_cls: type[Any],
    dc_id: int = 2,
    timeout: float = 20.0,
    *,
    responder: TelethonAuthResponder,
) -> TelethonAuthResponder:
    """Connect Telethon through an MTProxy (``ConnectionTcpMTProxy*`` class) and return once
    the FakeDC's ``responder`` saw a valid req_DH_params; raises TelethonDriveError otherwise.

    Telethon strips ``dd``/``ee`` prefixes and domains from ``secret_hex`` itself and puts
    ``dc_id`` into its header.
    """
    return await drive_telethon_raw(
        connection_cls,
        responder,
        dc_id=dc_id,
        proxy=(proxy_host, proxy_port, secret_hex),
        timeout=timeout,
    )
