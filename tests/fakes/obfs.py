"""obfuscated2 streams, MTProto transport framings and fake-TLS records for test peers.

Written from the protocol notes alone, sharing nothing with ``mtproxy``: a fake that reused
the proxy's code could not catch a bug that is symmetric in encoder and decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

TAG_ABRIDGED = b"\xef" * 4
TAG_INTERMEDIATE = b"\xee" * 4
TAG_PADDED = b"\xdd" * 4
TAGS = (TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED)

HEADER_LEN = 64
# First words an obfuscated2 header must never start with: a server would read them as a
# plain (unobfuscated) transport, HTTP or TLS instead.
FORBIDDEN_PREFIXES = (
    b"HEAD",
    b"POST",
    b"GET ",
    b"OPTI",
    b"\x16\x03\x01\x02",
    b"\xdd\xdd\xdd\xdd",
    b"\xee\xee\xee\xee",
)

DEFAULT_MAX_PACKET = 1 << 24

TLS_CCS = b"\x14\x03\x03\x00\x01\x01"
TLS_MAX_OUT_RECORD = 16384
TLS_MAX_IN_RECORD = 16640

_READ_CHUNK = 1 << 18


class FramingError(ValueError):
    """A transport packet length that a conforming peer must refuse."""


class FakeTlsError(Exception):
    """The fake-TLS record layer saw something other than the expected records."""


class BadHeaderError(Exception):
    """An obfuscated2 header that does not decrypt to a known protocol tag."""


# ---------------------------------------------------------------------------------------------
# AES-256-CTR and header key schedule


def aes_ctr(key: bytes, iv: bytes) -> CipherContext:
    """A continuous AES-256-CTR keystream; the IV is a 128-bit big-endian counter."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


@dataclass(frozen=True)
class ObfsKeys:
    """Keys of one obfuscated2 connection: ``fwd`` = initiator to acceptor, ``back`` = reverse."""

    fwd_key: bytes
    fwd_iv: bytes
    back_key: bytes
    back_iv: bytes


def derive_keys(header: bytes, secret: bytes | None) -> ObfsKeys:
    """Key schedule of a 64-byte header; ``secret=None`` is the secret-less proxy-to-DC form."""
    if len(header) != HEADER_LEN:
        raise ValueError("obfuscated2 header must be 64 bytes")
    seed = bytes(header[8:56])
    rev = seed[::-1]
    if secret is None:
        return ObfsKeys(seed[0:32], seed[32:48], rev[0:32], rev[32:48])
    return ObfsKeys(
        hashlib.sha256(seed[0:32] + secret).digest(),
        seed[32:48],
        hashlib.sha256(rev[0:32] + secret).digest(),
        rev[32:48],
    )


def header_prefix_allowed(header: bytes | bytearray) -> bool:
    """Whether a server would treat these bytes as an obfuscated2 header at all."""
    return (
        header[0] != 0xEF
        and bytes(header[0:4]) not in FORBIDDEN_PREFIXES
        and bytes(header[4:8]) != b"\x00\x00\x00\x00"
    )


def random_header_base() -> bytearray:
    """Fresh random 64 bytes that pass the forbidden-prefix rules."""
    for _ in range(10_000):
        candidate = bytearray(os.urandom(HEADER_LEN))
        if header_prefix_allowed(candidate):
            return candidate
    raise RuntimeError("os.urandom kept producing forbidden header prefixes")


@dataclass
class InitiatorHandshake:
    """A header as sent on the wire plus the ciphers the initiator continues with."""

    wire: bytes
    keys: ObfsKeys
    encryptor: CipherContext
    decryptor: CipherContext


def make_initiator_header(
    tag: bytes, dc_id: int, secret: bytes | None, *, base: bytes | None = None
) -> InitiatorHandshake:
    """Build the 64-byte header an app (with secret) or a proxy (``secret=None``) sends.

    Bytes 0-55 go out in clear, 56-63 encrypted; the encryptor is left at offset 64.
    """
    if len(tag) != 4:
        raise ValueError("protocol tag must be 4 bytes")
    plain = bytearray(base) if base is not None else random_header_base()
    if len(plain) != HEADER_LEN:
        raise ValueError("header base must be 64 bytes")
    plain[56:60] = tag
    plain[60:62] = struct.pack("<h", dc_id)
    keys = derive_keys(bytes(plain), secret)
    enc = aes_ctr(keys.fwd_key, keys.fwd_iv)
    encrypted = enc.update(bytes(plain))
    wire = bytes(plain[:56]) + encrypted[56:64]
    return InitiatorHandshake(wire, keys, enc, aes_ctr(keys.back_key, keys.back_iv))


def initiator_from_wire(wire: bytes, secret: bytes | None) -> InitiatorHandshake:
    """Rebuild the initiator ciphers for an already-sent header (to replay it)."""
    keys = derive_keys(wire, secret)
    enc = aes_ctr(keys.fwd_key, keys.fwd_iv)
    enc.update(bytes(HEADER_LEN))
    return InitiatorHandshake(bytes(wire), keys, enc, aes_ctr(keys.back_key, keys.back_iv))


@dataclass
class AcceptedHeader:
    """What the accepting side learns from a header, and its ciphers (reader at offset 64)."""

    wire: bytes
    plain: bytes
    tag: bytes
    dc_id: int
    encryptor: CipherContext
    decryptor: CipherContext

    @property
    def tag_ok(self) -> bool:
        return self.tag in TAGS


def accept_header(wire: bytes, secret: bytes | None) -> AcceptedHeader:
    """Decrypt a received header the way the acceptor does (no tag check here)."""
    keys = derive_keys(wire, secret)
    dec = aes_ctr(keys.fwd_key, keys.fwd_iv)
    plain = dec.update(bytes(wire))
    tag = plain[56:60]
    (dc_id,) = struct.unpack("<h", plain[60:62])
    return AcceptedHeader(bytes(wire), plain, tag, dc_id, aes_ctr(keys.back_key, keys.back_iv), dec)


# ---------------------------------------------------------------------------------------------
# Transport framings


class Packet(NamedTuple):
    """One decoded transport packet. For server-sent quick-ack confirms ``payload`` is the
    4-byte token exactly as on the wire and ``quickack`` is True."""

    payload: bytes
    quickack: bool


def encode_packet(tag: bytes, payload: bytes, quickack: bool = False) -> bytes:
    """Frame one client-to-server packet; ``quickack`` asks the server for a quick ack."""
    n = len(payload)
    if n == 0 or n % 4:
        raise FramingError(f"payload length {n} is not a positive multiple of 4")
    if tag == TAG_ABRIDGED:
        words = n >> 2
        if words <= 0x7E:
            head = bytes([words | (0x80 if quickack else 0)])
        else:
            if words >= 1 << 24:
                raise FramingError("payload too long for abridged framing")
            head = bytes([0x7F | (0x80 if quickack else 0)]) + words.to_bytes(3, "little")
        return head + payload
    if tag == TAG_INTERMEDIATE:
        return struct.pack("<I", n | (0x80000000 if quickack else 0)) + payload
    if tag == TAG_PADDED:
        tail = os.urandom(os.urandom(1)[0] & 3)
        total = n + len(tail)
        return struct.pack("<I", total | (0x80000000 if quickack else 0)) + payload + tail
    raise FramingError(f"unknown protocol tag {tag.hex()}")


def encode_quickack_confirm(tag: bytes, token: bytes) -> bytes:
    """A server's quick-ack confirm: the 4-byte token with its top bit set.

    Abridged sends it byte-swapped so the flag lands in the first byte on the wire.
    """
    if len(token) != 4:
        raise ValueError("quick-ack token must be 4 bytes")
    value = int.from_bytes(token, "little") | 0x80000000
    if tag == TAG_ABRIDGED:
        return value.to_bytes(4, "big")
    if tag in (TAG_INTERMEDIATE, TAG_PADDED):
        return value.to_bytes(4, "little")
    raise FramingError(f"unknown protocol tag {tag.hex()}")


class PacketDecoder:
    """Incremental decoder of one framing.

    ``from_client=True`` decodes what a client sends (a set top bit asks for a quick ack and
    a payload follows); ``False`` decodes what a server sends (a set top bit is a bare 4-byte
    quick-ack confirm).
    """

    def __init__(
        self, tag: bytes, *, from_client: bool = True, max_len: int = DEFAULT_MAX_PACKET
    ) -> None:
        if tag not in TAGS:
            raise FramingError(f"unknown protocol tag {tag.hex()}")
        self.tag = tag
        self.from_client = from_client
        self.max_len = max_len
        self._buf = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes of an incomplete packet still waiting for the rest."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes and return the payloads of every packet they complete."""
        return [p.payload for p in self.feed_packets(data)]

    def feed_packets(self, data: bytes) -> list[Packet]:
        """Like :meth:`feed` but keeps the quick-ack flag of each packet."""
        self._buf += data
        out: list[Packet] = []
        while True:
            packet = self._next()
            if packet is None:
                return out
            out.append(packet)

    def _next(self) -> Packet | None:
        buf = self._buf
        if self.tag == TAG_ABRIDGED:
            if not buf:
                return None
            first = buf[0]
            flag = bool(first & 0x80)
            if flag and not self.from_client:
                return self._take_confirm()
            words = first & 0x7F
            head = 1
            if words == 0x7F:
                if len(buf) < 4:
                    return None
                words = int.from_bytes(buf[1:4], "little")
                head = 4
            length = words * 4
            keep = length
        else:
            if len(buf) < 4:
                return None
            (raw,) = struct.unpack_from("<I", buf)
            flag = bool(raw & 0x80000000)
            if flag and not self.from_client:
                return self._take_confirm()
            length = raw & 0x7FFFFFFF
            if length & 0x40000000:
                raise FramingError(f"length field {raw:#x} has reserved bits set")
            head = 4
            if self.tag == TAG_INTERMEDIATE:
                if length % 4:
                    raise FramingError(f"intermediate length {length} is not a multiple of 4")
                keep = length
            else:
                keep = length & ~3
        if length <= 0 or keep <= 0:
            raise FramingError(f"empty packet (length {length})")
        if length > self.max_len:
            raise FramingError(f"packet length {length} exceeds {self.max_len}")
        if len(buf) < head + length:
            return None
        payload = bytes(buf[head : head + keep])
        del buf[: head + length]
        return Packet(payload, flag)

    def _take_confirm(self) -> Packet | None:
        if len(self._buf) < 4:
            return None
        token = bytes(self._buf[:4])
        del self._buf[:4]
        return Packet(token, True)


# ---------------------------------------------------------------------------------------------
# Fake-TLS record layer


def wrap_tls_records(data: bytes, max_payload: int = TLS_MAX_OUT_RECORD) -> bytes:
    """Cut bytes into ``17 03 03 <len>`` application-data records."""
    if not data:
        return b""
    parts = []
    view = memoryview(data)
    for off in range(0, len(data), max_payload):
        chunk = view[off : off + max_payload]
        parts.append(b"\x17\x03\x03" + len(chunk).to_bytes(2, "big"))
        parts.append(bytes(chunk))
    return b"".join(parts)


class TlsRecordReader:
    """Incremental reader of the records that follow the fake-TLS handshake.

    Returns application-data payloads, skips change-cipher-spec records, and refuses other
    record types or oversized records.
    """

    def __init__(self, max_payload: int = TLS_MAX_IN_RECORD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.records = 0
        #: Payload length of every application-data record, in order.
        self.sizes: list[int] = []

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 5:
            rtype = buf[pos]
            if buf[pos + 1] != 0x03:
                raise FakeTlsError(f"bad record version {bytes(buf[pos + 1 : pos + 3]).hex()}")
            length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if length > self.max_payload:
                raise FakeTlsError(f"record of {length} bytes exceeds {self.max_payload}")
            if len(buf) - pos - 5 < length:
                break
            body = buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if rtype == 0x17:
                out.append(bytes(body))
                self.records += 1
                self.sizes.append(length)
            elif rtype == 0x14:
                continue
            elif rtype == 0x15:
                raise FakeTlsError(f"peer sent a TLS alert {bytes(body).hex()}")
            else:
                raise FakeTlsError(f"unexpected record type {rtype:#x}")
        del buf[:pos]
        return b"".join(out)


# ---------------------------------------------------------------------------------------------
# The stream


@dataclass
class FakeTlsHandshakeResult:
    """Raw bytes of one fake-TLS handshake, for tests that inspect it."""

    hello: bytes
    response: bytes
    verified: bool


class ObfsStream:
    """Plaintext view of one obfuscated2 connection, optionally inside fake-TLS records.

    ``read``/``readexactly`` and ``recv_packet`` share one buffer, but bytes handed to the
    packet decoder stay there: after the first ``recv_packet`` keep reading packets.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        encryptor: CipherContext,
        decryptor: CipherContext,
        tag: bytes,
        tls: bool = False,
        peer_is_client: bool = False,
        pending_out: bytes = b"",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.tag = tag
        self.tls = tls
        self.tls_record_size = TLS_MAX_OUT_RECORD
        self.header = b""
        self.handshake: FakeTlsHandshakeResult | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._enc = encryptor
        self._dec = decryptor
        self._buf = bytearray()
        self._eof = False
        self._tls_in = TlsRecordReader() if tls else None
        self._pending_out = pending_out
        self._decoder = PacketDecoder(tag, from_client=peer_is_client) if tag in TAGS else None
        self._packets: list[Packet] = []

    # -- reading -------------------------------------------------------------------------

    async def _fill(self, hint: int) -> bytes:
        """Read one chunk from the socket and return its plaintext (b'' at EOF)."""
        while True:
            raw = await self.reader.read(max(hint, _READ_CHUNK))
            if not raw:
                if self._tls_in is not None and self._tls_in.pending:
                    raise FakeTlsError("connection closed inside a TLS record")
                self._eof = True
                return b""
            payload = self._tls_in.feed(raw) if self._tls_in is not None else raw
            if payload:
                plain = self._dec.update(payload)
                self.bytes_in += len(plain)
                return plain

    async def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` plaintext bytes; ``b''`` only at EOF."""
        if n <= 0:
            return b""
        if self._buf:
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out
        if self._eof:
            return b""
        plain = await self._fill(n)
        if len(plain) <= n:
            return plain
        self._buf += memoryview(plain)[n:]
        return plain[:n]

    async def readexactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if self._eof:
                partial = bytes(self._buf)
                self._buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
            self._buf += await self._fill(n - len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buf

    # -- writing -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Encrypt and send; anything queued before (a header) goes first."""
        payload = self._pending_out + self._enc.update(data) if data else self._pending_out
        self._pending_out = b""
        self.bytes_out += len(data)
        if not payload:
            return
        if self.tls:
            payload = wrap_tls_records(payload, self.tls_record_size)
        self.writer.write(payload)

    def flush_pending(self) -> None:
        """Send a queued header even though no payload follows yet."""
        self.write(b"")

    async def drain(self) -> None:
        await self.writer.drain()

    def write_eof(self) -> None:
        self.flush_pending()
        if self.writer.can_write_eof() and not self.writer.is_closing():
            self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> ObfsStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- packets -------------------------------------------------------------------------

    def send_packet(self, payload: bytes, quickack: bool = False) -> None:
        self.write(encode_packet(self.tag, payload, quickack))

    async def recv_packet_ex(self) -> Packet:
        """Next packet with its quick-ack flag; IncompleteReadError at EOF."""
        if self._decoder is None:
            raise FramingError(f"no framing for tag {self.tag.hex()}")
        while not self._packets:
            data = await self.read(_READ_CHUNK)
            if not data:
                raise asyncio.IncompleteReadError(self._decoder.pending, None)
            self._packets.extend(self._decoder.feed_packets(data))
        return self._packets.pop(0)

    async def recv_packet(self) -> bytes:
        """Next packet payload; IncompleteReadError at EOF (``partial`` empty if clean)."""
        return (await self.recv_packet_ex()).payload
