"""The mask site's TLS 1.3 answer, measured, so that the fake one can take its shape.

A passive censor sees a Telegram app's ClientHello and the proxy's answer; the answer
should look like what the site itself sends to that hello. This module builds a
ClientHello shaped like the apps' (a current Chrome's: GREASE, the hybrid
X25519MLKEM768 key share next to X25519, ALPN h2, an ECH GREASE extension, shuffled
extensions), and reads the server's first flight into a :class:`TlsProfile`: the
ServerHello's extension order, suite and key-share group, and the sizes of the
encrypted records up to the point where the server waits for the client.

Telegram's apps read exactly one application-data record after the ServerHello and
ChangeCipherSpec (anything after it is taken as payload), so the fake answer sends
the site's whole encrypted flight as one record of the same total size
(:func:`single_record_length`).
"""

from __future__ import annotations

import json
import math
import os
import random as _random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mtproxy.protocol import faketls
from mtproxy.protocol.faketls import (
    EXT_KEY_SHARE,
    EXT_SUPPORTED_VERSIONS,
    GROUP_SECP256R1,
    GROUP_SECP384R1,
    GROUP_X25519,
    GROUP_X25519MLKEM768,
    MAX_RECORD_IN,
    RECORD_HEADER_LEN,
    TYPE_ALERT,
    TYPE_APPDATA,
    TYPE_CCS,
    TYPE_HANDSHAKE,
    ServerHelloShape,
)

FORMAT = 1
#: A ServerHello whose random is this is a HelloRetryRequest (RFC 8446 §4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
#: Most encrypted records one flight may have, and the most bytes we read of it.
MAX_RECORDS = 64
MAX_FLIGHT = 256 * 1024
#: The official server's fallback range for the encrypted record's size.
DRAWN_RANGE = (2500, 3620)

_SUITES = (0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC013,
           0xC014, 0x009C, 0x009D, 0x002F, 0x0035)  # fmt: skip
_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
_MLKEM_Q = 3329
_GROUPS = (GROUP_X25519MLKEM768, GROUP_X25519, GROUP_SECP256R1, GROUP_SECP384R1)


class ProfileError(Exception):
    """The site's answer cannot be used as a TLS 1.3 profile; the message says why."""


@dataclass(frozen=True)
class TlsProfile:
    """What one TLS 1.3 server sends in its first flight, and where that was measured."""

    extension_order: tuple[int, ...]
    cipher_suite: int
    key_share_group: int
    #: Payload lengths of the encrypted records, in order.
    records: tuple[int, ...]
    #: Whether a ChangeCipherSpec record came between ServerHello and the records.
    ccs: bool = True
    #: "fetched" from the site, or "drawn" once when it never could be.
    source: str = "fetched"
    mask: str = ""
    sni: str = ""
    time: float = 0.0

    def shape(self) -> ServerHelloShape:
        return ServerHelloShape(
            extension_order=self.extension_order,
            appdata_len=single_record_length(self.records),
            cipher_suite=self.cipher_suite,
            key_share_group=self.key_share_group,
        )

    def describe(self) -> str:
        order = ", ".join(_EXT_NAMES.get(t, f"{t:#06x}") for t in self.extension_order)
        sizes = "/".join(map(str, self.records))
        return (
            f"ServerHello extensions {order}; suite {self.cipher_suite:#06x}; group "
            f"{_GROUP_NAMES.get(self.key_share_group, hex(self.key_share_group))}; encrypted "
            f"records {sizes} B, sent as one record of {single_record_length(self.records)} B"
        )

    def to_json(self) -> bytes:
        data = asdict(self)
        data["format"] = FORMAT
        return (json.dumps(data, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TlsProfile:
        """Parse a stored profile; ValueError (with the reason) if it is not one of ours."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a profile of this version")
        try:
            profile = cls(
                extension_order=tuple(_u16(v) for v in data["extension_order"]),
                cipher_suite=_u16(data["cipher_suite"]),
                key_share_group=_u16(data["key_share_group"]),
                records=tuple(_record_len(v) for v in data["records"]),
                ccs=bool(data["ccs"]),
                source=str(data["source"]),
                mask=str(data["mask"]),
                sni=str(data["sni"]),
                time=float(data["time"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a field is missing or wrong ({exc})") from None
        if not profile.records or len(profile.records) > MAX_RECORDS:
            raise ValueError("record list empty or too long")
        if len(profile.extension_order) > 32 or profile.source not in ("fetched", "drawn"):
            raise ValueError("extension list too long or unknown source")
        if not math.isfinite(profile.time):
            raise ValueError("time is not a number")
        return profile


_EXT_NAMES = {EXT_SUPPORTED_VERSIONS: "supported_versions", EXT_KEY_SHARE: "key_share",
              0x0029: "pre_shared_key"}  # fmt: skip
_GROUP_NAMES = {GROUP_X25519: "x25519", GROUP_SECP256R1: "secp256r1",
                GROUP_SECP384R1: "secp384r1", GROUP_X25519MLKEM768: "X25519MLKEM768"}  # fmt: skip


def _u16(value: object) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{value!r} is not a 16-bit value")
    return value


def _record_len(value: object) -> int:
    if not isinstance(value, int) or not 1 <= value <= MAX_RECORD_IN:
        raise ValueError(f"{value!r} is not a record length")
    return value


def single_record_length(records: tuple[int, ...] | list[int]) -> int:
    """Payload length of one record as long on the wire as all of ``records`` together.

    Capped at the largest record TLS 1.3 allows (2^14 + 256); a flight larger than
    that (a very long certificate chain) is then shorter than the site's.
    """
    total = sum(RECORD_HEADER_LEN + n for n in records)
    return max(1, min(MAX_RECORD_IN, total - RECORD_HEADER_LEN))


def drawn_profile(
    now: float, mask: str = "", sni: str = "", rng: _random.Random | None = None
) -> TlsProfile:
    """A plausible profile drawn once, for a site that could never be measured.

    One record size in the official server's range, and one of the two extension
    orders servers use. Drawn once and stored: never a fresh size per connection.
    """
    rng = rng or _random.SystemRandom()
    size = rng.randrange(*DRAWN_RANGE)
    order = rng.choice([(EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE),
                        (EXT_KEY_SHARE, EXT_SUPPORTED_VERSIONS)])  # fmt: skip
    return TlsProfile(
        extension_order=order, cipher_suite=0x1301, key_share_group=GROUP_X25519,
        records=(size,), source="drawn", mask=mask, sni=sni, time=now,
    )  # fmt: skip


# -- the ClientHello we measure with -----------------------------------------------------------


def _ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _u16s(values: tuple[int, ...] | list[int]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def _greases(random_bytes: Callable[[int], bytes], count: int) -> list[int]:
    """Distinct GREASE values (RFC 8701), as browsers pick them."""
    out: list[int] = []
    for byte in random_bytes(count * 4):
        value = ((byte & 0xF0) | 0x0A) * 0x101
        if value not in out:
            out.append(value)
        if len(out) == count:
            return out
    return (out + [0x0A0A + 0x1010 * i for i in range(16) if 0x0A0A + 0x1010 * i not in out])[
        :count
    ]


def _mlkem768_public(random_bytes: Callable[[int], bytes]) -> bytes:
    """1184 bytes shaped like an ML-KEM-768 encapsulation key (coefficients below q).

    Servers check that every 12-bit coefficient is below q; the key is never used.
    """
    raw = random_bytes(768 * 2)
    coeffs = [int.from_bytes(raw[i : i + 2], "big") % _MLKEM_Q for i in range(0, len(raw), 2)]
    out = bytearray()
    for a, b in zip(coeffs[0::2], coeffs[1::2], strict=True):
        out += bytes([a & 0xFF, (a >> 8) | ((b & 0x0F) << 4), b >> 4])
    return bytes(out) + random_bytes(32)


def build_probe_hello(
    domain: str,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
    x25519: Callable[[], bytes] = faketls.x25519_public,
) -> bytes:
    """A ClientHello like a current Chrome's, and like the one Telegram's apps send."""
    grease = _greases(random_bytes, 5)
    name = domain.encode("idna")
    sni = (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name
    shares = (
        _u16s([grease[1], 1]) + b"\x00"
        + _u16s([GROUP_X25519MLKEM768, 1184 + 32]) + _mlkem768_public(random_bytes) + x25519()
        + _u16s([GROUP_X25519, 32]) + x25519()
    )  # fmt: skip
    ech_payload = random_bytes(144 + 32 * (random_bytes(1)[0] % 4))
    ech = (
        b"\x00" + _u16s([1, 1]) + random_bytes(1) + _u16s([32]) + random_bytes(32)
        + len(ech_payload).to_bytes(2, "big") + ech_payload
    )  # fmt: skip
    shuffled = [
        _ext(0x0000, sni),
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),
        _ext(0x000A, _u16s([10, grease[1], *_GROUPS])),
        _ext(0x000B, b"\x01\x00"),
        _ext(0x000D, _u16s([len(_SIGALGS) * 2, *_SIGALGS])),
        _ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
        _ext(0x0012, b""),
        _ext(0x0017, b""),
        _ext(0x001B, b"\x02\x00\x02"),
        _ext(0x0023, b""),
        _ext(EXT_SUPPORTED_VERSIONS, b"\x06" + _u16s([grease[2], 0x0304, 0x0303])),
        _ext(0x002D, b"\x01\x01"),
        _ext(EXT_KEY_SHARE, len(shares).to_bytes(2, "big") + shares),
        _ext(0x44CD, b"\x00\x03\x02h2"),
        _ext(0xFE0D, ech),
        _ext(0xFF01, b"\x00"),
    ]
    _random.Random(random_bytes(8)).shuffle(shuffled)
    exts = _ext(grease[3], b"") + b"".join(shuffled) + _ext(grease[4], b"\x00")
    session_id = random_bytes(32)
    suites = _u16s([grease[0], *_SUITES])
    body = (
        b"\x03\x03" + random_bytes(32) + b"\x20" + session_id
        + len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
    )  # fmt: skip
    if len(body) + 2 + len(exts) + 4 + RECORD_HEADER_LEN < 513:
        pad = 513 - (len(body) + 2 + len(exts) + 4 + RECORD_HEADER_LEN) - 4
        exts += _ext(0x0015, bytes(max(0, pad)))
    body += len(exts).to_bytes(2, "big") + exts
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return faketls.record_header(len(handshake), TYPE_HANDSHAKE, b"\x03\x01") + handshake


# -- reading the server's first flight ---------------------------------------------------------


@dataclass(frozen=True)
class Record:
    kind: int
    payload: bytes


def split_records(data: bytes) -> tuple[list[Record], int]:
    """Whole records at the start of ``data``, and how many bytes they take."""
    records: list[Record] = []
    pos = 0
    while len(data) - pos >= RECORD_HEADER_LEN and len(records) <= MAX_RECORDS:
        kind, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if major != 3 or kind not in (TYPE_CCS, TYPE_ALERT, TYPE_HANDSHAKE, TYPE_APPDATA):
            head = data[pos : pos + RECORD_HEADER_LEN].hex()
            raise ProfileError(f"the site's answer is not TLS (record header {head})")
        if len(data) - pos - RECORD_HEADER_LEN < length:
            break
        start = pos + RECORD_HEADER_LEN
        records.append(Record(kind, data[start : start + length]))
        pos = start + length
    return records, pos


def parse_flight(data: bytes) -> TlsProfile:
    """The profile of a server's first flight (everything it sent before waiting for us)."""
    if not data:
        raise ProfileError("the site closed or stayed silent instead of answering the ClientHello")
    records, used = split_records(data)
    if used != len(data):
        raise ProfileError("the site's answer stopped in the middle of a record")
    first = records[0]
    if first.kind == TYPE_ALERT:
        detail = first.payload.hex() if first.payload else "empty"
        raise ProfileError(f"the site refused the ClientHello with a TLS alert ({detail})")
    if first.kind != TYPE_HANDSHAKE:
        raise ProfileError("the site's first record is not a handshake record")
    order, suite, group = _parse_server_hello(first.payload)
    ccs = False
    sizes: list[int] = []
    for record in records[1:]:
        if record.kind == TYPE_CCS and not sizes:
            ccs = True
        elif record.kind == TYPE_APPDATA:
            if not record.payload:
                raise ProfileError("the site sent an empty encrypted record")
            sizes.append(len(record.payload))
        elif record.kind == TYPE_ALERT:
            break
        else:
            raise ProfileError(f"unexpected record type {record.kind:#x} in the encrypted flight")
    if not sizes:
        raise ProfileError("no encrypted records followed the ServerHello")
    return TlsProfile(order, suite, group, tuple(sizes), ccs)


def _parse_server_hello(payload: bytes) -> tuple[tuple[int, ...], int, int]:
    try:
        return _server_hello_fields(payload)
    except (IndexError, ValueError) as exc:
        raise ProfileError(f"malformed ServerHello ({exc})") from None


def _server_hello_fields(p: bytes) -> tuple[tuple[int, ...], int, int]:
    if p[0] != 2:
        raise ProfileError("the site's first handshake message is not a ServerHello")
    end = 4 + int.from_bytes(p[1:4], "big")
    if end > len(p):
        raise ProfileError("the ServerHello does not fit its record")
    if p[6:38] == HRR_RANDOM:
        raise ProfileError(
            "the site asked for another key share (HelloRetryRequest); it supports neither "
            "X25519 nor X25519MLKEM768"
        )
    pos = 38
    pos += 1 + p[pos]  # session id
    suite = int.from_bytes(p[pos : pos + 2], "big")
    pos += 3  # suite, compression
    exts_end = pos + 2 + int.from_bytes(p[pos : pos + 2], "big")
    if exts_end > end:
        raise ValueError("extensions overrun the message")
    pos += 2
    order: list[int] = []
    version = 0x0303
    group = 0
    while pos + 4 <= exts_end:
        ext_type = int.from_bytes(p[pos : pos + 2], "big")
        length = int.from_bytes(p[pos + 2 : pos + 4], "big")
        body = p[pos + 4 : pos + 4 + length]
        if len(body) != length:
            raise ValueError("an extension overruns the message")
        order.append(ext_type)
        if ext_type == EXT_SUPPORTED_VERSIONS and length == 2:
            version = int.from_bytes(body, "big")
        elif ext_type == EXT_KEY_SHARE and length >= 2:
            group = int.from_bytes(body[:2], "big")
        pos += 4 + length
    if version != 0x0304:
        raise ProfileError(
            f"the site chose TLS {'1.2' if version == 0x0303 else hex(version)}, not TLS 1.3"
        )
    if not group:
        raise ProfileError("the ServerHello has no key share")
    return tuple(order), suite, group
