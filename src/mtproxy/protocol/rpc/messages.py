"""Payloads carried inside RPC frames, as immutable values with ``encode``/``decode``.

Layouts follow the official server's packed C structs (all integers little-endian):
``struct tcp_rpc_nonce_packet`` / ``tcp_rpc_handshake_packet`` / ``process_id``
(``net/net-tcp-rpc-common.h``, ``common/pid.h``) and ``struct rpc_proxy_req`` and
friends (``mtproto/mtproto-common.h``, writer in ``mtproto-proxy.c:1795-1845``).

``decode`` raises :class:`RpcError` for malformed bytes; constructors raise
``ValueError`` for out-of-range fields, which is always the caller's mistake.
Connection ids, ping ids, opcodes and flags are unsigned Python ints.

Layouts and meanings: docs/protocol.md §8.3 to §8.9.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, Self

from mtproxy.protocol.rpc.constants import (
    FLAG_ABRIDGED,
    FLAG_EXTMODE2,
    FLAG_HAS_AD_TAG,
    FLAG_HTTP_QUERY_INFO,
    FLAG_INTERMEDIATE,
    FLAG_MAGIC,
    FLAG_NOT_ENCRYPTED,
    FLAG_PAD,
    FLAG_QUICKACK,
    FLAGS_WITH_EXTRA,
    MAX_PROXY_EXTRA_BYTES,
    RPC_CLOSE_CONN,
    RPC_CLOSE_EXT,
    RPC_CRYPTO_AES,
    RPC_HANDSHAKE,
    RPC_HANDSHAKE_ERROR,
    RPC_NONCE,
    RPC_PING,
    RPC_PONG,
    RPC_PROXY_ANS,
    RPC_PROXY_REQ,
    RPC_SIMPLE_ACK,
    TL_PROXY_TAG,
)
from mtproxy.protocol.rpc.errors import RpcError

IPAddress = IPv4Address | IPv6Address

_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_OP_ID: Final = struct.Struct("<IQ")  # opcode + 64-bit id
_NONCE: Final = struct.Struct("<IIII16s")
_PID: Final = struct.Struct("<IHHI")
_HANDSHAKE: Final = struct.Struct("<II12s12s")
_HANDSHAKE_ERROR: Final = struct.Struct("<Ii12s")
_PROXY_REQ_HEAD: Final = struct.Struct("<IIQ16si16si")
_PROXY_ANS_HEAD: Final = struct.Struct("<IIQ")
_SIMPLE_ACK: Final = struct.Struct("<IQ4s")

_V4_MAPPED_PREFIX: Final = bytes(10) + b"\xff\xff"

#: MTProto functions the official proxy forwards without an auth key (mtproto-proxy.c:1709-1716):
#: req_pq, req_pq_multi, req_DH_params, set_client_DH_params.
UNENCRYPTED_FUNCTIONS: Final = frozenset({0x60469778, 0xBE7E8EF1, 0xD712E4BE, 0xF5045F1F})


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} outside {low}..{high}")


def _check_u32(name: str, value: int) -> None:
    _check_range(name, value, 0, 0xFFFFFFFF)


def _check_u64(name: str, value: int) -> None:
    _check_range(name, value, 0, 0xFFFFFFFFFFFFFFFF)


def _opcode(payload: bytes) -> int:
    if len(payload) < 4:
        raise RpcError(f"RPC message of {len(payload)} bytes has no opcode")
    return int(_U32.unpack_from(payload)[0])


def _expect(payload: bytes, opcode: int, name: str, size: int | None = None) -> None:
    got = _opcode(payload)
    if got != opcode:
        raise RpcError(f"expected {name} (0x{opcode:08x}), got opcode 0x{got:08x}")
    if size is not None and len(payload) != size:
        raise RpcError(f"{name} must be {size} bytes, got {len(payload)}")


# --- addresses and TL strings ------------------------------------------------------


def encode_ip16(ip: IPAddress) -> bytes:
    """16-byte address field: IPv4 as ``::ffff:a.b.c.d`` (mtproto-proxy.c:1806-1822)."""
    if isinstance(ip, IPv4Address):
        return _V4_MAPPED_PREFIX + ip.packed
    return ip.packed


def decode_ip16(raw: bytes) -> IPAddress:
    """Inverse of :func:`encode_ip16`; a v4-mapped address comes back as IPv4."""
    if len(raw) != 16:
        raise RpcError(f"address field must be 16 bytes, got {len(raw)}")
    if raw.startswith(_V4_MAPPED_PREFIX):
        return IPv4Address(raw[12:])
    return IPv6Address(raw)


def _normalize_ip(ip: IPAddress | str) -> IPAddress:
    addr = ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def encode_tl_string(data: bytes) -> bytes:
    """TL ``string``: 1-byte length (< 254) or ``fe`` + 3-byte length, data, zero pad to 4."""
    size = len(data)
    if size < 254:
        head = bytes((size,))
    elif size < 1 << 24:
        head = b"\xfe" + size.to_bytes(3, "little")
    else:
        raise ValueError(f"TL string of {size} bytes is too long")
    body = head + data
    return body + bytes(-len(body) % 4)


def decode_tl_string(buf: bytes, offset: int = 0) -> tuple[bytes, int]:
    """Read a TL string at ``offset``; return it and the offset after its padding."""
    if offset >= len(buf):
        raise RpcError("TL string missing")
    first = buf[offset]
    if first < 254:
        size, start = first, offset + 1
    elif first == 254:
        if offset + 4 > len(buf):
            raise RpcError("TL string length truncated")
        size, start = int.from_bytes(buf[offset + 1 : offset + 4], "little"), offset + 4
    else:
        raise RpcError("TL string with length byte 0xff")
    end = start + size
    padded_end = end + (-(end - offset) % 4)
    if padded_end > len(buf):
        raise RpcError(f"TL string of {size} bytes runs past its buffer")
    return bytes(buf[start:end]), padded_end


# --- handshake messages --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nonce:
    """RPC_NONCE, the plaintext first frame (seq -2) in each direction.

    ``key_select`` is the first 4 bytes of the proxy secret read as little-endian
    (:func:`mtproxy.protocol.proxy_config.key_selector`); ``crypto_ts`` is the
    sender's unix time (OFF ``time(0)``, net-tcp-rpc-client.c:605). The official
    nonce is MD5 over entropy (net-crypto-aes.c:217); any 16 random bytes do.
    Only the 32-byte form is supported: extra-key and DH schemas are never
    requested by this client, so a longer nonce is an error.
    """

    key_select: int
    crypto_ts: int
    nonce: bytes
    crypto_schema: int = RPC_CRYPTO_AES

    def __post_init__(self) -> None:
        _check_u32("key_select", self.key_select)
        _check_u32("crypto_ts", self.crypto_ts)
        _check_u32("crypto_schema", self.crypto_schema)
        if len(self.nonce) != 16:
            raise ValueError(f"nonce must be 16 bytes, got {len(self.nonce)}")

    def encode(self) -> bytes:
        return _NONCE.pack(
            RPC_NONCE, self.key_select, self.crypto_schema, self.crypto_ts, self.nonce
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_NONCE, "RPC_NONCE", _NONCE.size)
        _, key_select, schema, ts, nonce = _NONCE.unpack(payload)
        return cls(key_select=key_select, crypto_ts=ts, nonce=nonce, crypto_schema=schema)


@dataclass(frozen=True, slots=True)
class ProcessId:
    """``struct process_id``: ip (host-order u32), port, pid, start time; 12 bytes.

    The official client sends ``{our ipv4 or 0, 0, getpid(), start time}`` as its own
    id and ``{server ipv4 or 0, server port, 0, 0}`` as the expected peer id
    (net-tcp-rpc-client.c:241-262, common/pid.c); 127.0.0.1 is written as 0.
    Zero fields act as wildcards in :meth:`matches`.
    """

    ip: int = 0
    port: int = 0
    pid: int = 0
    utime: int = 0

    def __post_init__(self) -> None:
        _check_u32("ip", self.ip)
        _check_range("port", self.port, 0, 0xFFFF)
        _check_range("pid", self.pid, 0, 0xFFFF)
        _check_u32("utime", self.utime)

    def encode(self) -> bytes:
        return _PID.pack(self.ip, self.port, self.pid, self.utime)

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        if len(raw) != _PID.size:
            raise RpcError(f"process id must be {_PID.size} bytes, got {len(raw)}")
        ip, port, pid, utime = _PID.unpack(raw)
        return cls(ip=ip, port=port, pid=pid, utime=utime)

    def matches(self, pattern: ProcessId) -> bool:
        """OFF's ``matches_pid``: equal wherever ``pattern`` has a non-zero field."""
        return all(
            want == 0 or want == have
            for have, want in (
                (self.ip, pattern.ip),
                (self.port, pattern.port),
                (self.pid, pattern.pid),
                (self.utime, pattern.utime),
            )
        )

    @staticmethod
    def ip_field(ip: IPAddress | str) -> int:
        """The ``ip`` value for an address: host-order IPv4, 0 for loopback or IPv6."""
        addr = _normalize_ip(ip)
        if isinstance(addr, IPv6Address) or int(addr) == 0x7F000001:
            return 0
        return int(addr)


@dataclass(frozen=True, slots=True)
class Handshake:
    """RPC_HANDSHAKE (seq -1, first encrypted frame): flags, sender id, peer id.

    ``flags`` is 0 or :data:`RPCF_USE_CRC32C`; a reply with any of the low 8 bits set
    is refused by the official client (net-tcp-rpc-client.c:315). The server copies
    the client's ``sender_pid`` into its reply's ``peer_pid``.
    """

    flags: int
    sender_pid: ProcessId
    peer_pid: ProcessId

    def __post_init__(self) -> None:
        _check_u32("flags", self.flags)

    def encode(self) -> bytes:
        return _HANDSHAKE.pack(
            RPC_HANDSHAKE, self.flags, self.sender_pid.encode(), self.peer_pid.encode()
        )

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_HANDSHAKE, "RPC_HANDSHAKE", _HANDSHAKE.size)
        _, flags, sender, peer = _HANDSHAKE.unpack(payload)
        return cls(
            flags=flags, sender_pid=ProcessId.decode(sender), peer_pid=ProcessId.decode(peer)
        )


@dataclass(frozen=True, slots=True)
class HandshakeError:
    """RPC_HANDSHAKE_ERROR: a signed error code (e.g. -4 pid mismatch) and the sender id."""

    error_code: int
    sender_pid: ProcessId

    def __post_init__(self) -> None:
        _check_range("error_code", self.error_code, -(1 << 31), (1 << 31) - 1)

    def encode(self) -> bytes:
        return _HANDSHAKE_ERROR.pack(RPC_HANDSHAKE_ERROR, self.error_code, self.sender_pid.encode())

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_HANDSHAKE_ERROR, "RPC_HANDSHAKE_ERROR", _HANDSHAKE_ERROR.size)
        _, code, sender = _HANDSHAKE_ERROR.unpack(payload)
        return cls(error_code=code, sender_pid=ProcessId.decode(sender))


# --- proxy messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyReq:
    """RPC_PROXY_REQ: one client packet forwarded to the middle-end.

    Wire layout: ``op | flags | conn_id:u64 | remote_ip[16] | remote_port:i32 |
    our_ip[16] | our_port:i32 | [extra_len:i32 | TL_PROXY_TAG | tl_string(tag)] |
    payload``. ``remote_*`` is the client's address, ``our_*`` the proxy's public
    address and listening port. The extra block is present when ``flags & 12``;
    :data:`FLAG_HAS_AD_TAG` must be set exactly when ``ad_tag`` is given. The HTTP
    info item (flag 4) is only skipped when decoding: this proxy never sends it.
    """

    flags: int
    conn_id: int
    remote_ip: IPAddress
    remote_port: int
    our_ip: IPAddress
    our_port: int
    payload: bytes
    ad_tag: bytes | None = None

    def __post_init__(self) -> None:
        _check_u32("flags", self.flags)
        _check_u64("conn_id", self.conn_id)
        _check_range("remote_port", self.remote_port, 0, 0xFFFF)
        _check_range("our_port", self.our_port, 0, 0xFFFF)
        object.__setattr__(self, "remote_ip", _normalize_ip(self.remote_ip))
        object.__setattr__(self, "our_ip", _normalize_ip(self.our_ip))
        if bool(self.flags & FLAG_HAS_AD_TAG) != (self.ad_tag is not None):
            raise ValueError("FLAG_HAS_AD_TAG must be set exactly when ad_tag is given")

    def encode(self) -> bytes:
        if self.flags & FLAG_HTTP_QUERY_INFO:
            raise ValueError("FLAG_HTTP_QUERY_INFO is not supported by this encoder")
        if len(self.payload) % 4:
            raise ValueError(f"payload length {len(self.payload)} is not a multiple of 4")
        parts = [
            _PROXY_REQ_HEAD.pack(
                RPC_PROXY_REQ,
                self.flags,
                self.conn_id,
                encode_ip16(self.remote_ip),
                self.remote_port,
                encode_ip16(self.our_ip),
                self.our_port,
            )
        ]
        if self.ad_tag is not None:
            extra = _U32.pack(TL_PROXY_TAG) + encode_tl_string(self.ad_tag)
            if len(extra) > MAX_PROXY_EXTRA_BYTES:
                raise ValueError(f"ad tag of {len(self.ad_tag)} bytes is too long")
            parts += (_I32.pack(len(extra)), extra)
        parts.append(self.payload)
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_PROXY_REQ, "RPC_PROXY_REQ")
        if len(payload) < _PROXY_REQ_HEAD.size:
            raise RpcError(f"RPC_PROXY_REQ of {len(payload)} bytes is truncated")
        _, flags, conn_id, rip, rport, oip, oport = _PROXY_REQ_HEAD.unpack_from(payload)
        for name, port in (("remote", rport), ("our", oport)):
            if not 0 <= port <= 0xFFFF:
                raise RpcError(f"RPC_PROXY_REQ {name} port {port} out of range")
        pos = _PROXY_REQ_HEAD.size
        ad_tag = None
        if flags & FLAGS_WITH_EXTRA:
            if pos + 4 > len(payload):
                raise RpcError("RPC_PROXY_REQ extra block length missing")
            (extra_len,) = _I32.unpack_from(payload, pos)
            pos += 4
            if not 0 <= extra_len <= MAX_PROXY_EXTRA_BYTES or extra_len % 4:
                raise RpcError(f"RPC_PROXY_REQ extra block length {extra_len} invalid")
            if pos + extra_len > len(payload):
                raise RpcError("RPC_PROXY_REQ extra block runs past the message")
            extra = payload[pos : pos + extra_len]
            pos += extra_len
            if flags & FLAG_HAS_AD_TAG:
                if len(extra) < 4 or _U32.unpack_from(extra)[0] != TL_PROXY_TAG:
                    raise RpcError("RPC_PROXY_REQ extra block does not start with TL_PROXY_TAG")
                ad_tag, _ = decode_tl_string(extra, 4)
        if (len(payload) - pos) % 4:
            raise RpcError("RPC_PROXY_REQ payload is not a multiple of 4 bytes")
        return cls(
            flags=flags,
            conn_id=conn_id,
            remote_ip=decode_ip16(rip),
            remote_port=rport,
            our_ip=decode_ip16(oip),
            our_port=oport,
            payload=bytes(payload[pos:]),
            ad_tag=ad_tag,
        )


@dataclass(frozen=True, slots=True)
class ProxyAns:
    """RPC_PROXY_ANS: data from the DC for one client (flags: +8 flush, +16 small error)."""

    flags: int
    conn_id: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_u32("flags", self.flags)
        _check_u64("conn_id", self.conn_id)

    def encode(self) -> bytes:
        if len(self.payload) % 4:
            raise ValueError(f"payload length {len(self.payload)} is not a multiple of 4")
        return _PROXY_ANS_HEAD.pack(RPC_PROXY_ANS, self.flags, self.conn_id) + self.payload

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_PROXY_ANS, "RPC_PROXY_ANS")
        if len(payload) < _PROXY_ANS_HEAD.size:
            raise RpcError(f"RPC_PROXY_ANS of {len(payload)} bytes is truncated")
        _, flags, conn_id = _PROXY_ANS_HEAD.unpack_from(payload)
        return cls(flags=flags, conn_id=conn_id, payload=bytes(payload[_PROXY_ANS_HEAD.size :]))


@dataclass(frozen=True, slots=True)
class SimpleAck:
    """RPC_SIMPLE_ACK: the quick-ack token for a client packet sent with QUICKACK.

    ``confirm`` is kept as the 4 raw bytes: intermediate clients get them as they
    are, abridged clients byte-reversed (OFF bswap32, mtproto-proxy.c:879-881).
    """

    conn_id: int
    confirm: bytes

    def __post_init__(self) -> None:
        _check_u64("conn_id", self.conn_id)
        if len(self.confirm) != 4:
            raise ValueError(f"confirm must be 4 bytes, got {len(self.confirm)}")

    def encode(self) -> bytes:
        return _SIMPLE_ACK.pack(RPC_SIMPLE_ACK, self.conn_id, self.confirm)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_SIMPLE_ACK, "RPC_SIMPLE_ACK", _SIMPLE_ACK.size)
        _, conn_id, confirm = _SIMPLE_ACK.unpack(payload)
        return cls(conn_id=conn_id, confirm=confirm)


@dataclass(frozen=True, slots=True)
class CloseExt:
    """RPC_CLOSE_EXT (ME -> proxy): the DC side of ``conn_id`` is gone; close the client."""

    conn_id: int

    def __post_init__(self) -> None:
        _check_u64("conn_id", self.conn_id)

    def encode(self) -> bytes:
        return _OP_ID.pack(RPC_CLOSE_EXT, self.conn_id)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_CLOSE_EXT, "RPC_CLOSE_EXT", _OP_ID.size)
        return cls(conn_id=_OP_ID.unpack(payload)[1])


@dataclass(frozen=True, slots=True)
class CloseConn:
    """RPC_CLOSE_CONN (proxy -> ME): the client behind ``conn_id`` disconnected."""

    conn_id: int

    def __post_init__(self) -> None:
        _check_u64("conn_id", self.conn_id)

    def encode(self) -> bytes:
        return _OP_ID.pack(RPC_CLOSE_CONN, self.conn_id)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_CLOSE_CONN, "RPC_CLOSE_CONN", _OP_ID.size)
        return cls(conn_id=_OP_ID.unpack(payload)[1])


@dataclass(frozen=True, slots=True)
class Ping:
    """RPC_PING with a 64-bit id; either side may send it (OFF every 5 s)."""

    ping_id: int

    def __post_init__(self) -> None:
        _check_u64("ping_id", self.ping_id)

    def encode(self) -> bytes:
        return _OP_ID.pack(RPC_PING, self.ping_id)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_PING, "RPC_PING", _OP_ID.size)
        return cls(ping_id=_OP_ID.unpack(payload)[1])

    def pong(self) -> Pong:
        """The answer: same id (net-tcp-rpc-common.c:138-150)."""
        return Pong(self.ping_id)


@dataclass(frozen=True, slots=True)
class Pong:
    """RPC_PONG echoing the id of a :class:`Ping`."""

    ping_id: int

    def __post_init__(self) -> None:
        _check_u64("ping_id", self.ping_id)

    def encode(self) -> bytes:
        return _OP_ID.pack(RPC_PONG, self.ping_id)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        _expect(payload, RPC_PONG, "RPC_PONG", _OP_ID.size)
        return cls(ping_id=_OP_ID.unpack(payload)[1])


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A well-framed message with an opcode this module does not know; OFF ignores these."""

    opcode: int
    body: bytes

    def __post_init__(self) -> None:
        _check_u32("opcode", self.opcode)

    def encode(self) -> bytes:
        return _U32.pack(self.opcode) + self.body


RpcMessage = (
    Nonce
    | Handshake
    | HandshakeError
    | ProxyReq
    | ProxyAns
    | SimpleAck
    | CloseExt
    | CloseConn
    | Ping
    | Pong
    | UnknownMessage
)

_DECODERS: Final[dict[int, Callable[[bytes], RpcMessage]]] = {
    RPC_NONCE: Nonce.decode,
    RPC_HANDSHAKE: Handshake.decode,
    RPC_HANDSHAKE_ERROR: HandshakeError.decode,
    RPC_PROXY_REQ: ProxyReq.decode,
    RPC_PROXY_ANS: ProxyAns.decode,
    RPC_SIMPLE_ACK: SimpleAck.decode,
    RPC_CLOSE_EXT: CloseExt.decode,
    RPC_CLOSE_CONN: CloseConn.decode,
    RPC_PING: Ping.decode,
    RPC_PONG: Pong.decode,
}


def parse_message(payload: bytes) -> RpcMessage:
    """Decode any frame payload by its opcode; unknown opcodes become :class:`UnknownMessage`."""
    opcode = _opcode(payload)
    decoder = _DECODERS.get(opcode)
    if decoder is None:
        return UnknownMessage(opcode=opcode, body=bytes(payload[4:]))
    return decoder(bytes(payload))


# --- RPC_PROXY_REQ flags for a client connection ---------------------------------------


class ClientFraming(enum.Enum):
    """How the client framed its packets inside obfuscated2 (docs/protocol.md §3)."""

    ABRIDGED = "abridged"
    INTERMEDIATE = "intermediate"
    PADDED = "padded"


def proxy_req_flags(
    framing: ClientFraming,
    *,
    auth_key_id: int,
    quickack: bool = False,
    has_ad_tag: bool = False,
    forward_pad: bool = False,
) -> int:
    """Flags of an RPC_PROXY_REQ carrying one packet of a client connection.

    Always :data:`FLAG_MAGIC` (every ext-server client, mtproto-proxy.c:1734) and
    :data:`FLAG_EXTMODE2` (obfuscated2 clients, net-tcp-rpc-ext-server.c:1324-1330);
    :data:`FLAG_ABRIDGED` for abridged, :data:`FLAG_INTERMEDIATE` for intermediate
    and padded; :data:`FLAG_NOT_ENCRYPTED` when the packet's ``auth_key_id`` (its
    first 8 bytes, little-endian) is 0; :data:`FLAG_QUICKACK` when the client asked
    for a quick ack on this packet; :data:`FLAG_HAS_AD_TAG` when an ad tag is sent.

    Padded clients: the official server marks them ``MEDIUM | PAD`` but forwards
    only ``QUICKACK | DROPPED | COMPACT | MEDIUM | EXTMODE`` (mtproto-proxy.c:1543),
    so the ME never sees PAD; that is the default here. ALX, ERL and TMT send
    ``PAD | INTERMEDIATE``; pass ``forward_pad=True`` to do the same. The ME's
    answers are not padded either way: the proxy pads toward the client itself.
    """
    flags = FLAG_MAGIC | FLAG_EXTMODE2
    flags |= FLAG_ABRIDGED if framing is ClientFraming.ABRIDGED else FLAG_INTERMEDIATE
    if framing is ClientFraming.PADDED and forward_pad:
        flags |= FLAG_PAD
    if auth_key_id == 0:
        flags |= FLAG_NOT_ENCRYPTED
    if quickack:
        flags |= FLAG_QUICKACK
    if has_ad_tag:
        flags |= FLAG_HAS_AD_TAG
    return flags


def packet_auth_key_id(packet: bytes) -> int | None:
    """The MTProto ``auth_key_id`` (first 8 bytes, little-endian), or None if too short."""
    if len(packet) < 8:
        return None
    return int.from_bytes(packet[:8], "little")


def unencrypted_packet_allowed(packet: bytes) -> bool:
    """OFF's filter for packets with ``auth_key_id == 0`` (mtproto-proxy.c:1690-1716).

    Such a packet is forwarded only if it is at least 28 bytes, 4-aligned, its
    inner length (``int32`` at offset 16) is 20.. ``len - 20`` and its function
    (offset 20) is one of :data:`UNENCRYPTED_FUNCTIONS`.
    """
    if len(packet) < 28 or len(packet) % 4:
        return False
    inner_len, function = struct.unpack_from("<iI", packet, 16)
    if inner_len < 20 or inner_len + 20 > len(packet):
        return False
    return function in UNENCRYPTED_FUNCTIONS
