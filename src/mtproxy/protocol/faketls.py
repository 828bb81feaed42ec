"""Fake TLS: a TLS 1.3-looking handshake authenticated with the proxy secret.

The client hides an HMAC of its ClientHello (keyed with the secret) in the hello's
``random`` field; the server proves it knows the secret the same way in its
ServerHello. After that both sides exchange obfuscated2 bytes inside TLS
application-data records. docs/protocol.md §4 has the layouts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mtproxy.protocol.errors import TlsError


class TlsAuthError(TlsError):
    """A well-formed ClientHello that no configured secret signed."""

RECORD_HEADER_LEN = 5
RANDOM_OFFSET = 11  # 5-byte record header + 4-byte handshake header + 2-byte version
RANDOM_LEN = 32
#: Largest record payload we accept (TLS 1.3 ciphertext limit 2^14 + 256).
MAX_RECORD_IN = 16640
#: Largest record payload we send (the TLS plaintext limit).
MAX_RECORD_OUT = 16384
#: Largest ClientHello record we look at; real apps send 517..~2000 bytes.
MAX_HELLO = 16384

TYPE_CCS = 0x14
TYPE_ALERT = 0x15
TYPE_HANDSHAKE = 0x16
TYPE_APPDATA = 0x17

CCS_RECORD = b"\x14\x03\x03\x00\x01\x01"
TLS13_SUITES = (0x1301, 0x1302, 0x1303)

EXT_SERVER_NAME = 0x0000
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_KEY_SHARE = 0x0033
GROUP_X25519 = 0x001D
GROUP_SECP256R1 = 0x0017
GROUP_SECP384R1 = 0x0018
GROUP_X25519MLKEM768 = 0x11EC
#: Bytes of a server's key share per group (the hybrid one: ML-KEM ciphertext + X25519).
KEY_SHARE_LENGTHS = {
    GROUP_X25519: 32,
    GROUP_SECP256R1: 65,
    GROUP_SECP384R1: 97,
    GROUP_X25519MLKEM768: 1088 + 32,
}


def is_grease(value: int) -> bool:
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class ClientHello:
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    server_names: tuple[str, ...]
    #: Groups the client sent a key share for, in its order.
    key_share_groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerHelloShape:
    """What the fake ServerHello copies from the mask site's real answer.

    ``extension_order`` lists ServerHello extension types as the site sends them;
    ``appdata_len`` is the one application-data record's length; ``cipher_suite`` and
    ``key_share_group`` are the site's choices, used when the client offers them.
    The defaults are the official server's layout.
    """

    extension_order: tuple[int, ...] = (EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS)
    appdata_len: int = 2500
    cipher_suite: int | None = None
    key_share_group: int = GROUP_X25519


@dataclass(frozen=True, slots=True)
class VerifiedHello:
    secret_index: int
    timestamp: int
    hello: ClientHello


class _Incomplete(Exception):
    """The bytes so far end before the structure does (not an error: wait for more)."""


class _Cursor:
    """Bounds-checked reader over a byte string.

    Reading past a declared length is a TlsError; reading past the bytes received so
    far (``avail``, for a hello still arriving) is :class:`_Incomplete`.
    """

    __slots__ = ("avail", "data", "end", "pos")

    def __init__(self, data: bytes | bytearray, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.avail = len(data)
        self.end = len(data) if end is None else end

    def take(self, n: int) -> bytes | bytearray:
        if n < 0 or self.pos + n > self.end:
            raise TlsError("truncated ClientHello")
        if self.pos + n > self.avail:
            raise _Incomplete
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def sub(self, len_bytes: int) -> _Cursor:
        n = self.uint(len_bytes)
        if self.pos + n > self.end:
            raise TlsError("a ClientHello length field overruns its container")
        cur = _Cursor(self.data, self.pos, self.pos + n)
        self.pos += n
        return cur

    @property
    def left(self) -> int:
        return self.end - self.pos


def hello_record_length(head: bytes) -> int:
    """Total length of the ClientHello record whose first 5 bytes are ``head``."""
    if len(head) < RECORD_HEADER_LEN:
        raise TlsError("a TLS record header is 5 bytes")
    if head[0] != TYPE_HANDSHAKE or head[1] != 3 or head[2] not in (1, 3):
        raise TlsError("not a TLS handshake record")
    length = int.from_bytes(head[3:5], "big")
    if not 64 <= length <= MAX_HELLO:
        raise TlsError(f"ClientHello record length {length} out of range")
    return RECORD_HEADER_LEN + length


def parse_client_hello(record: bytes) -> ClientHello:
    """Structure of a single-record ClientHello (no authentication)."""
    if len(record) < RECORD_HEADER_LEN or hello_record_length(record[:5]) != len(record):
        raise TlsError("ClientHello record length does not match the data")
    try:
        return _parse_hello(record, len(record))
    except _Incomplete:  # pragma: no cover - the whole record is there
        raise TlsError("truncated ClientHello") from None


def check_hello_prefix(data: bytes | bytearray) -> None:
    """Raise TlsError as soon as ``data`` cannot be the start of a hello we would parse.

    Everything :func:`parse_client_hello` checks is checked on what has arrived, so a
    prefix of a record it accepts is never refused (the HMAC, time and SNI checks
    need the whole record and are not made here). :class:`HelloCheck` is the same,
    resumable, for bytes that keep arriving.
    """
    HelloCheck().check(data)


class HelloCheck:
    """:func:`check_hello_prefix` over a growing buffer, looking at each byte about once.

    The fixed fields (up to the extensions) are parsed again until they have all
    arrived; then each extension is checked when its bytes are there.
    """

    __slots__ = ("_end", "_pos", "_total")

    def __init__(self) -> None:
        self._total = 0
        self._pos = -1  # next extension to check, once the fixed fields are done
        self._end = 0

    def check(self, data: bytes | bytearray) -> None:
        if not self._total:
            head = bytes(data[:RECORD_HEADER_LEN])
            if head[:1] not in (b"", b"\x16") or head[1:2] not in (b"", b"\x03"):
                raise TlsError("not a TLS handshake record")
            if len(head) > 2 and head[2] not in (1, 3):
                raise TlsError("not a TLS handshake record")
            if len(head) < RECORD_HEADER_LEN:
                return
            self._total = hello_record_length(head)
        if self._pos < 0:
            try:
                fields = _hello_fields(data, self._total)
            except _Incomplete:
                return
            exts = fields[3]
            self._pos, self._end = (exts.pos, exts.end) if exts is not None else (0, 0)
        avail = min(len(data), self._total)
        pos, end = self._pos, self._end
        while pos < end:
            if end - pos < 4:
                raise TlsError("truncated ClientHello")
            if avail < pos + 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            if pos + 4 + length > end:
                raise TlsError("a ClientHello length field overruns its container")
            if data[pos] == 0 and data[pos + 1] == 0:  # server_name
                if avail < pos + 4 + length:
                    break
                _server_names(_Cursor(data, pos + 4, pos + 4 + length))
            pos += 4 + length
        self._pos = pos


def _hello_fields(
    record: bytes | bytearray, total: int
) -> tuple[bytes, bytes, tuple[int, ...], _Cursor | None]:
    """random, session id, suites and the extensions (a cursor) of a ClientHello record."""
    cur = _Cursor(record, RECORD_HEADER_LEN, total)
    if cur.uint(1) != 1:
        raise TlsError("handshake message is not a ClientHello")
    body = cur.sub(3)
    if cur.left:
        raise TlsError("data after the ClientHello message in its record")
    body.take(2)  # legacy_version
    random = bytes(body.take(RANDOM_LEN))
    session_len = body.uint(1)
    if session_len > 32:
        raise TlsError("session id longer than 32 bytes")
    session_id = bytes(body.take(session_len))
    suites_cur = body.sub(2)
    if suites_cur.left % 2 or not suites_cur.left:
        raise TlsError("malformed cipher suite list")
    count = suites_cur.left // 2
    suites: tuple[int, ...] = struct.unpack(f">{count}H", suites_cur.take(2 * count))
    body.sub(1)  # compression methods
    return random, session_id, suites, body.sub(2) if body.left else None


def _parse_hello(record: bytes | bytearray, total: int) -> ClientHello:
    random, session_id, suites, exts = _hello_fields(record, total)
    names: list[str] = []
    groups: list[int] = []
    while exts is not None and exts.left:
        ext_type = exts.uint(2)
        ext = exts.sub(2)
        if ext_type == EXT_SERVER_NAME:
            names += _server_names(ext)
        elif ext_type == EXT_KEY_SHARE:
            groups += _key_share_groups(ext)
    return ClientHello(random, session_id, suites, tuple(names), tuple(groups))


def _take_all(cur: _Cursor) -> bytes:
    return bytes(cur.take(cur.left))


def _server_names(ext: _Cursor) -> list[str]:
    names: list[str] = []
    entries = ext.sub(2)
    while entries.left:
        kind = entries.uint(1)
        name = _take_all(entries.sub(2))
        if kind == 0:
            try:
                names.append(name.decode("ascii").lower())
            except UnicodeDecodeError as exc:
                raise TlsError("SNI host name is not ASCII") from exc
    return names


def _key_share_groups(ext: _Cursor) -> list[int]:
    """Groups of a ClientHello key_share; a malformed one is ignored, as before."""
    groups: list[int] = []
    try:
        entries = ext.sub(2)
        while entries.left:
            groups.append(entries.uint(2))
            entries.sub(2)
    except TlsError:
        return []
    return groups


def _zero_random(record: bytes) -> bytes:
    return record[:RANDOM_OFFSET] + bytes(RANDOM_LEN) + record[RANDOM_OFFSET + RANDOM_LEN :]


def verify_client_hello(record: bytes, secrets: Sequence[bytes]) -> VerifiedHello:
    """Find the secret whose HMAC the hello carries; return its timestamp.

    The first 28 bytes of HMAC xor random must be zero (compared in constant time);
    the last 4 are the client's unix time, little-endian.
    """
    hello = parse_client_hello(record)
    zeroed = _zero_random(record)
    random = hello.random
    for index, secret in enumerate(secrets):
        mac = hmac.new(secret, zeroed, hashlib.sha256).digest()
        if hmac.compare_digest(mac[:28], random[:28]):
            ts = int.from_bytes(mac[28:], "little") ^ int.from_bytes(random[28:], "little")
            return VerifiedHello(index, ts, hello)
    raise TlsAuthError("ClientHello HMAC matches no secret")


def choose_cipher_suite(suites: Sequence[int]) -> int:
    """The client's first non-GREASE suite when it is a TLS 1.3 one, as the official server."""
    for suite in suites:
        if not is_grease(suite):
            return suite if suite in TLS13_SUITES else TLS13_SUITES[0]
    return TLS13_SUITES[0]


def x25519_public() -> bytes:
    """A real X25519 public value, so the key share is a point on the curve."""
    return X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _ec_public(curve: ec.EllipticCurve) -> bytes:
    key = ec.generate_private_key(curve).public_key()
    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def server_key_share(
    group: int,
    x25519: Callable[[], bytes] = x25519_public,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """A server key share of ``group`` that looks like a real one.

    Curve points are real points; the ML-KEM part of the hybrid group is a ciphertext,
    which looks uniformly random, followed by a real X25519 point.
    """
    if group == GROUP_SECP256R1:
        return _ec_public(ec.SECP256R1())
    if group == GROUP_SECP384R1:
        return _ec_public(ec.SECP384R1())
    if group == GROUP_X25519MLKEM768:
        return random_bytes(1088) + x25519()
    return x25519()


def choose_group(shape: ServerHelloShape, hello: ClientHello) -> int:
    """The site's group when the client sent a share for it, else X25519."""
    wanted = shape.key_share_group
    if wanted in KEY_SHARE_LENGTHS and wanted in hello.key_share_groups:
        return wanted
    return GROUP_X25519


def build_server_hello(
    secret: bytes,
    hello: ClientHello,
    *,
    shape: ServerHelloShape | None = None,
    appdata_len: int | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
    key_share: Callable[[], bytes] = x25519_public,
) -> bytes:
    """ServerHello + CCS + one application-data record, HMAC-signed for the client.

    Exactly one application-data record follows, since the client's check covers
    ServerHello, CCS and one record (Telegram's apps read anything after it as
    payload). ``shape`` copies the mask site's extension order, suite, group and the
    size of its encrypted flight; without it, the official server's layout.
    """
    if appdata_len is None:
        if shape is not None:
            appdata_len = shape.appdata_len
        else:
            appdata_len = 2500 + int.from_bytes(random_bytes(2), "big") % 1120
    suite = choose_cipher_suite(hello.cipher_suites)
    group = GROUP_X25519
    if shape is not None:
        if shape.cipher_suite in TLS13_SUITES and shape.cipher_suite in hello.cipher_suites:
            suite = shape.cipher_suite
        group = choose_group(shape, hello)
    share = key_share() if group == GROUP_X25519 else server_key_share(group, key_share)
    blocks = {
        EXT_KEY_SHARE: _ext(
            EXT_KEY_SHARE, group.to_bytes(2, "big") + len(share).to_bytes(2, "big") + share
        ),
        EXT_SUPPORTED_VERSIONS: _ext(EXT_SUPPORTED_VERSIONS, b"\x03\x04"),
    }
    order = [t for t in (shape or _OFFICIAL).extension_order if t in blocks]
    order += [t for t in _OFFICIAL.extension_order if t not in order]
    extensions = b"".join(blocks[t] for t in dict.fromkeys(order))
    sid = hello.session_id
    body = (
        b"\x03\x03"
        + bytes(RANDOM_LEN)
        + bytes([len(sid)])
        + sid
        + suite.to_bytes(2, "big")
        + b"\x00"
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    handshake = b"\x02" + len(body).to_bytes(3, "big") + body
    response = bytearray(
        record_header(len(handshake), TYPE_HANDSHAKE)
        + handshake
        + CCS_RECORD
        + record_header(appdata_len)
        + random_bytes(appdata_len)
    )
    digest = hmac.new(secret, hello.random + bytes(response), hashlib.sha256).digest()
    response[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_LEN] = digest
    return bytes(response)


_OFFICIAL = ServerHelloShape()


def verify_server_hello(secret: bytes, client_random: bytes, response: bytes) -> bool:
    """Client-side check of :func:`build_server_hello`'s signature."""
    if len(response) < RANDOM_OFFSET + RANDOM_LEN:
        return False
    expected = hmac.new(secret, client_random + _zero_random(response), hashlib.sha256).digest()
    return hmac.compare_digest(expected, response[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_LEN])


def build_client_hello(
    secret: bytes,
    domain: str,
    timestamp: int,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """A browser-like ClientHello signed for ``secret`` (self-check, bench, tests)."""
    name = domain.encode("ascii")
    sni = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    exts = (
        _ext(0x0A0A, b"")
        + _ext(0x0000, sni)
        + _ext(0x0017, b"")
        + _ext(0x000A, b"\x00\x06\x0a\x0a\x00\x1d\x00\x17")
        + _ext(0x000D, b"\x00\x08\x04\x03\x08\x04\x04\x01\x05\x03")
        + _ext(0x0033, b"\x00\x29\x0a\x0a\x00\x01\x00\x00\x1d\x00\x20" + random_bytes(32)[:32])
        + _ext(0x002B, b"\x06\x0a\x0a\x03\x04\x03\x03")
    )
    suites = b"\x0a\x0a\x13\x01\x13\x02\x13\x03\xc0\x2b\xc0\x2f"

    session_id = random_bytes(32)

    def assemble(padding: bytes | None) -> bytes:
        all_exts = exts if padding is None else exts + _ext(0x0015, padding)
        body = (
            b"\x03\x03"
            + bytes(RANDOM_LEN)
            + b"\x20"
            + session_id
            + len(suites).to_bytes(2, "big")
            + suites
            + b"\x01\x00"
            + len(all_exts).to_bytes(2, "big")
            + all_exts
        )
        handshake = b"\x01" + len(body).to_bytes(3, "big") + body
        return record_header(len(handshake), TYPE_HANDSHAKE, version=b"\x03\x01") + handshake

    unpadded = len(assemble(None))
    record = bytearray(assemble(bytes(max(0, 517 - unpadded - 4))))
    mac = hmac.new(secret, bytes(record), hashlib.sha256).digest()
    ts = (int.from_bytes(mac[28:], "little") ^ timestamp) & 0xFFFFFFFF
    record[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_LEN] = mac[:28] + ts.to_bytes(4, "little")
    return bytes(record)


def _ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def record_header(length: int, kind: int = TYPE_APPDATA, version: bytes = b"\x03\x03") -> bytes:
    return struct.pack(">B2sH", kind, version, length)


class RecordReader:
    """Strips TLS record framing from a byte stream, in place.

    Application-data payloads are kept, ChangeCipherSpec records are dropped, any
    other record type is an error. State carries over between calls, so records may
    be split anywhere across reads.
    """

    __slots__ = ("_head", "_remaining", "_skip")

    def __init__(self) -> None:
        self._head = bytearray()
        self._remaining = 0
        self._skip = False

    def unwrap(self, buf: memoryview, n: int) -> int:
        """Compact the payload bytes of ``buf[:n]`` to its front; return their count.

        This runs once per read on the upload path of every fake-TLS client, so the
        common case (whole record headers inside the buffer) avoids helper calls.
        """
        i = out = 0
        remaining = self._remaining
        try:
            while i < n:
                if remaining:
                    take = remaining if remaining < n - i else n - i
                    if self._skip:
                        if buf[i] != 1:
                            raise TlsError("malformed ChangeCipherSpec record")
                    else:
                        if out != i:
                            buf[out : out + take] = buf[i : i + take]
                        out += take
                    i += take
                    remaining -= take
                    continue
                if self._head or n - i < RECORD_HEADER_LEN:
                    take = min(RECORD_HEADER_LEN - len(self._head), n - i)
                    self._head += buf[i : i + take]
                    i += take
                    if len(self._head) < RECORD_HEADER_LEN:
                        break
                    head = self._head
                    remaining = self._start_record(head[0], head[1], head[2], head[3], head[4])
                    head.clear()
                else:
                    remaining = self._start_record(
                        buf[i], buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]
                    )
                    i += RECORD_HEADER_LEN
        finally:
            self._remaining = remaining
        return out

    def _start_record(self, kind: int, major: int, minor: int, high: int, low: int) -> int:
        length = (high << 8) | low
        if major != 3 or minor != 3:
            raise TlsError(f"unexpected record version {major}.{minor}")
        if kind == TYPE_APPDATA:
            if length > MAX_RECORD_IN:
                raise TlsError(f"record of {length} bytes exceeds {MAX_RECORD_IN}")
            self._skip = False
        elif kind == TYPE_CCS:
            if length != 1:
                raise TlsError("ChangeCipherSpec record must hold one byte")
            self._skip = True
        else:
            raise TlsError(f"unexpected TLS record type {kind:#x}")
        return length


def wrapped_size(n: int, max_record: int = MAX_RECORD_OUT) -> int:
    """Bytes on the wire for ``n`` payload bytes split into records of ``max_record``."""
    return n + RECORD_HEADER_LEN * -(-n // max_record)


def wrap_records(payload: bytes | memoryview, max_record: int = MAX_RECORD_OUT) -> bytes:
    """Payload split into application-data records (the slow, simple path)."""
    out = bytearray()
    for start in range(0, len(payload), max_record):
        chunk = payload[start : start + max_record]
        out += record_header(len(chunk))
        out += chunk
    return bytes(out)
