"""The 64-byte obfuscated2 handshake, client side and DC side.

Clients derive their keys from the header and the proxy secret; the proxy derives
keys for the DC leg from its own header alone (DCs know no secret).

Header layout and key derivations: docs/protocol.md §2.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mtproxy.protocol.crypto import CipherContext, aes_ctr
from mtproxy.protocol.errors import HandshakeError
from mtproxy.protocol.framing import Framing

HEADER_LEN = 64
SECRET_LEN = 16
KEY_SLICE = slice(8, 40)
IV_SLICE = slice(40, 56)
TAG_SLICE = slice(56, 60)
DC_SLICE = slice(60, 62)

#: First-four-byte values a real client never sends: the official server reads them as
#: plain HTTP, TLS, or unobfuscated intermediate/padded framings.
FORBIDDEN_PREFIXES = frozenset(
    {b"HEAD", b"POST", b"GET ", b"OPTI", b"\x16\x03\x01\x02", b"\xdd" * 4, b"\xee" * 4}
)


@dataclass(frozen=True, slots=True)
class StreamKey:
    key: bytes
    iv: bytes

    def cipher(self) -> CipherContext:
        return aes_ctr(self.key, self.iv)


@dataclass(slots=True)
class ClientHandshake:
    """What a valid client header told us, with the client's read stream positioned at 64."""

    secret_index: int
    framing: Framing
    dc_id: int
    decryptor: CipherContext
    #: Proxy -> client keystream (not yet used).
    encrypt_key: StreamKey
    #: Bytes 8..56 of the header: unique per connection, the replay-cache key.
    nonce: bytes


@dataclass(slots=True)
class OutgoingHandshake:
    """A header to send first, and the two ciphers for the connection it opens."""

    header: bytes
    encryptor: CipherContext
    decryptor: CipherContext


def is_forbidden_start(header: bytes | bytearray) -> bool:
    """True if a header's clear first bytes would make a server misread the stream.

    Works on a prefix too: it is True as soon as the bytes so far break a rule, so a
    server can tell at once that no client is talking (Telegram's apps draw their
    random header again whenever it breaks one of these rules).
    """
    return (
        header[:1] == b"\xef"
        or bytes(header[:4]) in FORBIDDEN_PREFIXES
        or header[4:8] == b"\0\0\0\0"
    )


def client_keys(header: bytes, secret: bytes) -> tuple[StreamKey, StreamKey]:
    """(client->proxy, proxy->client) keys for a header under ``secret``."""
    rev = header[KEY_SLICE.start : IV_SLICE.stop][::-1]
    read = StreamKey(hashlib.sha256(header[KEY_SLICE] + secret).digest(), header[IV_SLICE])
    write = StreamKey(hashlib.sha256(rev[:32] + secret).digest(), rev[32:48])
    return read, write


def parse_client_header(header: bytes, secrets: Sequence[bytes]) -> ClientHandshake:
    """Find the secret under which a client's 64-byte header decrypts to a valid tag."""
    if len(header) != HEADER_LEN:
        raise HandshakeError(f"obfuscated2 header must be {HEADER_LEN} bytes, got {len(header)}")
    seed = header[KEY_SLICE]
    iv = header[IV_SLICE]
    for index, secret in enumerate(secrets):
        decryptor = aes_ctr(hashlib.sha256(seed + secret).digest(), iv)
        plain = decryptor.update(header)
        framing = Framing.from_tag(plain[TAG_SLICE])
        if framing is None:
            continue
        dc_id = int.from_bytes(plain[DC_SLICE], "little", signed=True)
        _, write = client_keys(header, secret)
        return ClientHandshake(index, framing, dc_id, decryptor, write, header[8:56])
    raise HandshakeError("no secret decrypts the header to a known framing tag")


def _random_header(random_bytes: Callable[[int], bytes], fixed_middle: bytes | None) -> bytearray:
    while True:
        header = bytearray(random_bytes(HEADER_LEN))
        if fixed_middle is not None:
            header[8:56] = fixed_middle
        if not is_forbidden_start(header):
            return header


def _seal(header: bytearray, framing: Framing, dc_id: int, encryptor: CipherContext) -> bytes:
    header[TAG_SLICE] = framing.tag
    header[DC_SLICE] = dc_id.to_bytes(2, "little", signed=True)
    encrypted = encryptor.update(bytes(header))
    return bytes(header[:56]) + encrypted[56:]


def build_dc_header(
    framing: Framing,
    dc_id: int,
    *,
    passthrough: StreamKey | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> OutgoingHandshake:
    """The proxy's header towards a DC (no secret involved).

    With ``passthrough`` (the proxy->client key), bytes 8..56 carry its reverse, so the
    DC's downstream keystream *is* the client's and the proxy can forward the DC's
    bytes without decrypting and re-encrypting them (docs/protocol.md §2.4).
    """
    middle = None if passthrough is None else (passthrough.key + passthrough.iv)[::-1]
    header = _random_header(random_bytes, middle)
    encryptor = aes_ctr(bytes(header[KEY_SLICE]), bytes(header[IV_SLICE]))
    rev = bytes(header[8:56])[::-1]
    decryptor = aes_ctr(rev[:32], rev[32:48])
    return OutgoingHandshake(_seal(header, framing, dc_id, encryptor), encryptor, decryptor)


def build_client_header(
    secret: bytes,
    framing: Framing,
    dc_id: int,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> OutgoingHandshake:
    """A client's header towards a proxy (used by the self-check and the benchmark)."""
    header = _random_header(random_bytes, None)
    read, write = client_keys(bytes(header), secret)
    encryptor = read.cipher()
    return OutgoingHandshake(_seal(header, framing, dc_id, encryptor), encryptor, write.cipher())
