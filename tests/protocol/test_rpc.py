"""Property and example tests of the middle-end RPC sans-I/O modules."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import zlib
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fakes.middle_end import me_side_keys
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mtproxy.protocol.crc32c import crc32c
from mtproxy.protocol.errors import ProtocolError
from mtproxy.protocol.rpc import (
    ClientFraming,
    CloseConn,
    CloseExt,
    Handshake,
    HandshakeError,
    Nonce,
    Ping,
    Pong,
    ProcessId,
    ProxyAns,
    ProxyReq,
    RpcClient,
    RpcClientState,
    RpcCodec,
    RpcError,
    RpcKeys,
    RpcMessage,
    SimpleAck,
    UnknownMessage,
    decode_ip16,
    decode_tl_string,
    derive_keys,
    encode_ip16,
    encode_tl_string,
    key_material,
    packet_auth_key_id,
    parse_message,
    proxy_req_flags,
    unencrypted_packet_allowed,
)
from mtproxy.protocol.rpc import constants as c
from mtproxy.protocol.rpc.codec import _next_seq

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
ports = st.integers(0, 0xFFFF)
ipv4 = st.ip_addresses(v=4)


def _not_v4_mapped(addr: IPv6Address) -> bool:
    return addr.ipv4_mapped is None


ipv6 = st.ip_addresses(v=6).map(lambda a: IPv6Address(a.packed)).filter(_not_v4_mapped)
any_ip = st.one_of(ipv4, ipv6)
aligned = st.integers(0, 64).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))
nonempty_aligned = st.integers(1, 64).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))
pids = st.builds(ProcessId, ip=u32, port=ports, pid=ports, utime=u32)
KNOWN_OPS = {
    c.RPC_NONCE,
    c.RPC_HANDSHAKE,
    c.RPC_HANDSHAKE_ERROR,
    c.RPC_PROXY_REQ,
    c.RPC_PROXY_ANS,
    c.RPC_SIMPLE_ACK,
    c.RPC_CLOSE_EXT,
    c.RPC_CLOSE_CONN,
    c.RPC_PING,
    c.RPC_PONG,
}


@st.composite
def proxy_reqs(draw: st.DrawFn) -> ProxyReq:
    ad_tag = draw(st.none() | st.binary(max_size=300))
    flags = draw(u32) & ~c.FLAGS_WITH_EXTRA
    if ad_tag is not None:
        flags |= c.FLAG_HAS_AD_TAG
    return ProxyReq(
        flags=flags,
        conn_id=draw(u64),
        remote_ip=draw(any_ip),
        remote_port=draw(ports),
        our_ip=draw(any_ip),
        our_port=draw(ports),
        payload=draw(aligned),
        ad_tag=ad_tag,
    )


messages: st.SearchStrategy[RpcMessage] = st.one_of(
    st.builds(
        Nonce,
        key_select=u32,
        crypto_ts=u32,
        nonce=st.binary(min_size=16, max_size=16),
        crypto_schema=u32,
    ),
    st.builds(Handshake, flags=u32, sender_pid=pids, peer_pid=pids),
    st.builds(HandshakeError, error_code=st.integers(-(2**31), 2**31 - 1), sender_pid=pids),
    proxy_reqs(),
    st.builds(ProxyAns, flags=u32, conn_id=u64, payload=aligned),
    st.builds(SimpleAck, conn_id=u64, confirm=st.binary(min_size=4, max_size=4)),
    st.builds(CloseExt, conn_id=u64),
    st.builds(CloseConn, conn_id=u64),
    st.builds(Ping, ping_id=u64),
    st.builds(Pong, ping_id=u64),
    st.builds(UnknownMessage, opcode=u32.filter(lambda op: op not in KNOWN_OPS), body=aligned),
)


# --- messages ----------------------------------------------------------------------


@given(messages)
def test_every_message_round_trips(message: RpcMessage) -> None:
    wire = message.encode()
    assert parse_message(wire) == message
    if not isinstance(message, UnknownMessage):
        assert type(message).decode(wire) == message


@given(messages, st.data())
def test_truncated_fixed_size_messages_are_rejected(
    message: RpcMessage, data: st.DataObject
) -> None:
    wire = message.encode()
    assume(not isinstance(message, ProxyReq | ProxyAns | UnknownMessage))
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(RpcError):
        parse_message(wire[:cut])


@given(proxy_reqs(), st.data())
def test_truncated_proxy_req_header_is_rejected(req: ProxyReq, data: st.DataObject) -> None:
    wire = req.encode()
    header = len(wire) - len(req.payload)
    cut = data.draw(st.integers(0, header - 1))
    with pytest.raises(RpcError):
        ProxyReq.decode(wire[:cut])


@given(st.binary(max_size=200))
@example(struct.pack("<I", c.RPC_PROXY_REQ) + struct.pack("<I", c.FLAG_HAS_AD_TAG) + bytes(52))
@example(struct.pack("<I", c.RPC_PROXY_REQ) + struct.pack("<I", 4) + bytes(48) + b"\xff" * 4)
def test_garbage_raises_only_rpc_error(data: bytes) -> None:
    for decoder in (parse_message, ProxyReq.decode, Nonce.decode, Handshake.decode):
        with contextlib.suppress(RpcError):
            decoder(data)


@given(st.binary(max_size=120).map(lambda b: struct.pack("<I", c.RPC_PROXY_REQ) + b))
def test_garbage_proxy_req_raises_only_rpc_error(data: bytes) -> None:
    with contextlib.suppress(RpcError):
        ProxyReq.decode(data)


def test_proxy_req_exact_layout_with_ad_tag() -> None:
    tag = bytes(range(16))
    payload = bytes(range(40))
    req = ProxyReq(
        flags=c.FLAG_MAGIC | c.FLAG_HAS_AD_TAG,
        conn_id=0x0102030405060708,
        remote_ip=ip_address("1.2.3.4"),
        remote_port=5678,
        our_ip=ip_address("2001:db8::1"),
        our_port=443,
        payload=payload,
        ad_tag=tag,
    )
    expected = (
        bytes.fromhex("eef1ce36")
        + bytes.fromhex("08100000")
        + bytes.fromhex("0807060504030201")
        + bytes(10)
        + b"\xff\xff"
        + bytes([1, 2, 3, 4])
        + (5678).to_bytes(4, "little")
        + IPv6Address("2001:db8::1").packed
        + (443).to_bytes(4, "little")
        + (24).to_bytes(4, "little")
        + bytes.fromhex("ae261edb")
        + b"\x10"
        + tag
        + bytes(3)
        + payload
    )
    assert req.encode() == expected


def test_fixed_message_layouts() -> None:
    assert CloseExt(1).encode() == bytes.fromhex("a234b65e") + (1).to_bytes(8, "little")
    assert CloseConn(2).encode() == bytes.fromhex("5d42cf1f") + (2).to_bytes(8, "little")
    assert Ping(3).encode() == bytes.fromhex("dfa23057") + (3).to_bytes(8, "little")
    assert Pong(3).encode() == bytes.fromhex("a7ea3084") + (3).to_bytes(8, "little")
    assert (
        SimpleAck(4, b"wxyz").encode()
        == bytes.fromhex("9b40ac3b") + bytes([4, 0, 0, 0, 0, 0, 0, 0]) + b"wxyz"
    )
    assert (
        ProxyAns(8, 5, b"data").encode()
        == bytes.fromhex("0dda0344") + bytes([8, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]) + b"data"
    )
    nonce = Nonce(key_select=0xCAFAF9C4, crypto_ts=0x11223344, nonce=bytes(range(16)))
    assert nonce.encode() == bytes.fromhex("aa87cb7a c4f9faca 01000000 44332211") + bytes(range(16))
    hs = Handshake(
        flags=c.RPCF_USE_CRC32C,
        sender_pid=ProcessId(ip=0x0A000001, port=0, pid=0x1234, utime=7),
        peer_pid=ProcessId(ip=0, port=8888, pid=0, utime=0),
    )
    assert hs.encode() == bytes.fromhex(
        "f5ee8276 00080000 0100000a 0000 3412 07000000 00000000 b822 0000 00000000"
    )
    err = HandshakeError(error_code=-4, sender_pid=ProcessId())
    assert err.encode() == bytes.fromhex("dabe276a fcffffff") + bytes(12)


@given(any_ip)
def test_ip16_round_trip(ip: IPv4Address | IPv6Address) -> None:
    raw = encode_ip16(ip)
    assert len(raw) == 16
    assert decode_ip16(raw) == ip


def test_v4_mapped_ipv6_is_normalized_to_ipv4() -> None:
    req = ProxyReq(
        flags=0,
        conn_id=1,
        remote_ip=ip_address("::ffff:10.0.0.1"),
        remote_port=1,
        our_ip=ip_address("10.0.0.2"),
        our_port=2,
        payload=b"",
    )
    assert req.remote_ip == IPv4Address("10.0.0.1")
    assert ProxyReq.decode(req.encode()) == req


@given(st.binary(max_size=600))
@example(b"x" * 253)
@example(b"x" * 254)
def test_tl_string_round_trip(data: bytes) -> None:
    wire = encode_tl_string(data)
    assert len(wire) % 4 == 0
    assert decode_tl_string(wire + b"tail") == (data, len(wire))
    if len(data) < 254:
        assert wire[0] == len(data)
    else:
        assert wire[:4] == b"\xfe" + len(data).to_bytes(3, "little")


def test_invalid_fields_raise_value_error() -> None:
    with pytest.raises(ValueError):
        ProxyReq(
            flags=c.FLAG_HAS_AD_TAG,
            conn_id=1,
            remote_ip=IPv4Address(1),
            remote_port=1,
            our_ip=IPv4Address(2),
            our_port=2,
            payload=b"",
        )
    with pytest.raises(ValueError):
        ProxyReq(
            flags=0,
            conn_id=1,
            remote_ip=IPv4Address(1),
            remote_port=1,
            our_ip=IPv4Address(2),
            our_port=2,
            payload=b"abc",
        ).encode()
    with pytest.raises(ValueError):
        Ping(-1)
    with pytest.raises(ValueError):
        Nonce(key_select=1, crypto_ts=1, nonce=b"short")
    assert not issubclass(ValueError, RpcError)
    assert issubclass(RpcError, ProtocolError)


# --- flags ----------------------------------------------------------------------------


@given(
    st.sampled_from(ClientFraming),
    st.integers(0, 2**64 - 1) | st.just(0),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_proxy_req_flags(
    framing: ClientFraming, key_id: int, quickack: bool, tag: bool, forward_pad: bool
) -> None:
    flags = proxy_req_flags(
        framing, auth_key_id=key_id, quickack=quickack, has_ad_tag=tag, forward_pad=forward_pad
    )
    expected = 0x1000 | 0x20000
    expected |= {"abridged": 0x40000000}.get(framing.value, 0x20000000)
    expected |= 0x8000000 if framing.value == "padded" and forward_pad else 0
    expected |= 0x2 if key_id == 0 else 0
    expected |= 0x80000000 if quickack else 0
    expected |= 0x8 if tag else 0
    assert flags == expected


def test_proxy_req_flags_examples() -> None:
    # Official padded client: MEDIUM | EXTMODE2 | MAGIC, PAD masked out.
    assert proxy_req_flags(ClientFraming.PADDED, auth_key_id=5) == 0x20021000
    assert proxy_req_flags(ClientFraming.ABRIDGED, auth_key_id=0, has_ad_tag=True) == 0x4002100A


def test_unencrypted_packet_filter() -> None:
    def packet(function: int, inner_len: int = 20, size: int = 40) -> bytes:
        head = bytes(8) + (123).to_bytes(8, "little") + struct.pack("<iI", inner_len, function)
        return head + bytes(size - len(head))

    assert unencrypted_packet_allowed(packet(0x60469778))
    assert unencrypted_packet_allowed(packet(0xBE7E8EF1, inner_len=20, size=40))
    assert not unencrypted_packet_allowed(packet(0x12345678))
    assert not unencrypted_packet_allowed(packet(0x60469778, inner_len=21, size=40))
    assert not unencrypted_packet_allowed(packet(0x60469778, inner_len=19))
    assert not unencrypted_packet_allowed(packet(0x60469778)[:26])
    assert packet_auth_key_id(packet(1)) == 0
    assert packet_auth_key_id(b"\x01" + bytes(7)) == 1
    assert packet_auth_key_id(b"1234567") is None


# --- key derivation ---------------------------------------------------------------------


def reference_keys(
    ns: bytes,
    nc: bytes,
    ts: int,
    srv: str,
    sport: int,
    clt: str,
    cport: int,
    secret: bytes,
    purpose: bytes,
) -> tuple[bytes, bytes]:
    """docs/protocol.md §8.4 written out again, IPv4 as host-order u32 little-endian."""
    sa, ca = ip_address(srv), ip_address(clt)
    v6 = isinstance(sa, IPv6Address)
    s = (
        struct.pack(
            "<16s16sIIH6sIH",
            ns,
            nc,
            ts,
            0 if v6 else int(sa),
            cport,
            purpose,
            0 if v6 else int(ca),
            sport,
        )
        + secret
        + ns
        + (ca.packed + sa.packed if v6 else b"")
        + nc
    )
    return hashlib.md5(s[1:]).digest()[:12] + hashlib.sha1(s).digest(), hashlib.md5(s[2:]).digest()


key_inputs = st.fixed_dictionaries(
    {
        "ns": st.binary(min_size=16, max_size=16),
        "nc": st.binary(min_size=16, max_size=16),
        "ts": u32,
        "sport": ports,
        "cport": ports,
        "secret": st.binary(min_size=32, max_size=256),
    }
)


@given(key_inputs, st.booleans(), st.data())
def test_derive_keys_matches_independent_formula(
    args: dict[str, object], v6: bool, data: st.DataObject
) -> None:
    family = ipv6 if v6 else ipv4
    srv, clt = str(data.draw(family)), str(data.draw(family))
    ns, nc, ts = args["ns"], args["nc"], args["ts"]
    sport, cport, secret = args["sport"], args["cport"], args["secret"]
    assert isinstance(ns, bytes) and isinstance(nc, bytes) and isinstance(secret, bytes)
    assert isinstance(ts, int) and isinstance(sport, int) and isinstance(cport, int)
    client = derive_keys(
        nonce_srv=ns,
        nonce_clt=nc,
        clt_ts=ts,
        srv_ip=srv,
        srv_port=sport,
        clt_ip=clt,
        clt_port=cport,
        secret=secret,
    )
    server = derive_keys(
        nonce_srv=ns,
        nonce_clt=nc,
        clt_ts=ts,
        srv_ip=srv,
        srv_port=sport,
        clt_ip=clt,
        clt_port=cport,
        secret=secret,
        am_client=False,
    )
    want_client = reference_keys(ns, nc, ts, srv, sport, clt, cport, secret, b"CLIENT")
    want_server = reference_keys(ns, nc, ts, srv, sport, clt, cport, secret, b"SERVER")
    assert (client.write_key, client.write_iv) == want_client
    assert (client.read_key, client.read_iv) == want_server
    assert server == RpcKeys(client.read_key, client.read_iv, client.write_key, client.write_iv)
    # The fake middle-end's separate implementation agrees too.
    fake = me_side_keys(
        nonce_srv=ns,
        nonce_clt=nc,
        clt_ts=ts,
        server=(srv, sport),
        client=(clt, cport),
        secret=secret,
    )
    assert fake == server


def test_key_material_ipv4_field_order() -> None:
    s = key_material(
        purpose=b"CLIENT",
        nonce_srv=b"S" * 16,
        nonce_clt=b"C" * 16,
        clt_ts=0x01020304,
        srv_ip="149.154.175.50",
        srv_port=8888,
        clt_ip="1.2.3.4",
        clt_port=0xABCD,
        secret=b"K" * 32,
    )
    assert s[32:36] == bytes([4, 3, 2, 1])  # ts little-endian
    assert s[36:40] == bytes([50, 175, 154, 149])  # ME ip, host order little-endian
    assert s[40:42] == bytes([0xCD, 0xAB])
    assert s[42:48] == b"CLIENT"
    assert s[48:52] == bytes([4, 3, 2, 1])
    assert s[52:54] == (8888).to_bytes(2, "little")
    assert s[54:] == b"K" * 32 + b"S" * 16 + b"C" * 16


def test_key_material_ipv6_layout() -> None:
    s = key_material(
        purpose=b"SERVER",
        nonce_srv=b"S" * 16,
        nonce_clt=b"C" * 16,
        clt_ts=1,
        srv_ip="2001:db8::d",
        srv_port=80,
        clt_ip="2001:db8::1",
        clt_port=1,
        secret=b"K" * 32,
    )
    assert s[36:40] == bytes(4) and s[48:52] == bytes(4)
    tail = s[54 + 32 + 16 :]
    assert tail == IPv6Address("2001:db8::1").packed + IPv6Address("2001:db8::d").packed + b"C" * 16


def test_key_material_rejects_mixed_families() -> None:
    with pytest.raises(ValueError):
        derive_keys(
            nonce_srv=bytes(16),
            nonce_clt=bytes(16),
            clt_ts=0,
            srv_ip="::1",
            srv_port=1,
            clt_ip="1.2.3.4",
            clt_port=1,
            secret=bytes(32),
        )


# --- codec --------------------------------------------------------------------------------

KEYS_C = RpcKeys(bytes(range(32)), bytes(range(16)), bytes(range(32, 64)), bytes(range(16, 32)))
KEYS_S = RpcKeys(KEYS_C.read_key, KEYS_C.read_iv, KEYS_C.write_key, KEYS_C.write_iv)


def handshaken_pair(crc32c_on: bool = False) -> tuple[RpcCodec, RpcCodec]:
    """A client and a server codec past the nonce exchange, encryption on."""
    client, server = RpcCodec(), RpcCodec()
    assert server.feed(client.encode(b"NNNN" * 8)) == [b"NNNN" * 8]
    assert server.awaiting_keys
    assert client.feed(server.encode(b"MMMM" * 8)) == [b"MMMM" * 8]
    client.start_encryption(KEYS_C)
    server.start_encryption(KEYS_S)
    client.set_crc32c(crc32c_on)
    server.set_crc32c(crc32c_on)
    return client, server


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(nonempty_aligned, min_size=1, max_size=12),
    st.lists(st.booleans(), min_size=12, max_size=12),
    st.lists(st.integers(0, 5000), max_size=20),
    st.booleans(),
)
def test_codec_round_trip_any_split(
    payloads: list[bytes], flush_after: list[bool], cuts: list[int], crc32c_on: bool
) -> None:
    client, server = handshaken_pair(crc32c_on)
    stream = bytearray()
    for payload, flush in zip(payloads, flush_after, strict=False):
        stream += client.encode(payload)
        if flush:
            stream += client.flush()
    stream += client.flush()
    assert len(stream) % 16 == 0
    received: list[bytes] = []
    for chunk in split(bytes(stream), cuts):
        received += server.feed(chunk)
    assert received == payloads
    assert server.buffered == 0
    assert server.in_seq == len(payloads) - 1  # the first encrypted frame is seq -1
    # and back
    answer = server.encode_flush(*payloads)
    assert client.feed(answer) == payloads


@given(st.lists(nonempty_aligned, min_size=1, max_size=6), st.lists(st.integers(0, 800)))
def test_plaintext_frames_layout_and_split(payloads: list[bytes], cuts: list[int]) -> None:
    codec, peer = RpcCodec(), RpcCodec()
    frames = [codec.encode(p) for p in payloads]
    for seq, (frame, payload) in enumerate(zip(frames, payloads, strict=True), start=-2):
        head = struct.pack("<ii", len(payload) + 12, seq)
        assert frame == head + payload + struct.pack("<I", zlib.crc32(head + payload))
    assert codec.flush() == b""  # no padding before encryption
    out: list[bytes] = []
    for chunk in split(b"".join(frames), cuts):
        out += peer.feed(chunk)
    assert out == payloads[:1]  # parsing stops after the nonce frame until keys are set
    assert peer.awaiting_keys


def test_encrypted_stream_is_one_cbc_chain_with_padding_words() -> None:
    client, _ = handshaken_pair()
    payloads = [b"a" * 4, b"b" * 8, b"c" * 20]
    wire = client.encode(payloads[0]) + client.flush() + client.encode_flush(*payloads[1:])
    plain = Cipher(algorithms.AES(KEYS_C.write_key), modes.CBC(KEYS_C.write_iv)).decryptor()
    clear = plain.update(wire) + plain.finalize()
    frame0 = struct.pack("<ii", 16, -1) + payloads[0]
    frame0 += struct.pack("<I", zlib.crc32(frame0))
    assert clear[:16] == frame0  # 16 bytes exactly: no padding needed
    rest = clear[16:]
    frame1 = struct.pack("<ii", 20, 0) + payloads[1]
    frame1 += struct.pack("<I", zlib.crc32(frame1))
    frame2 = struct.pack("<ii", 32, 1) + payloads[2]
    frame2 += struct.pack("<I", zlib.crc32(frame2))
    assert rest == frame1 + frame2 + b"\x04\x00\x00\x00" * 3


def test_crc32c_applies_from_seq_zero_only() -> None:
    codec = RpcCodec()
    codec.set_crc32c()
    nonce = codec.encode(b"1234")
    handshake = codec.encode(b"5678")
    data = codec.encode(b"9abc")
    assert struct.unpack("<I", nonce[-4:])[0] == zlib.crc32(nonce[:-4])
    assert struct.unpack("<I", handshake[-4:])[0] == zlib.crc32(handshake[:-4])
    assert struct.unpack("<I", data[-4:])[0] == crc32c(data[:-4])


def test_reader_skips_padding_words_in_plaintext() -> None:
    codec, peer = RpcCodec(), RpcCodec()
    frame = codec.encode(b"zzzz")
    assert peer.feed(c.PADDING_WORD * 3 + frame[:5]) == []
    assert peer.feed(frame[5:]) == [b"zzzz"]


@given(st.data())
def test_corrupted_byte_is_detected(data: st.DataObject) -> None:
    codec, peer = RpcCodec(), RpcCodec(max_frame_len=4096)
    payload = data.draw(nonempty_aligned)
    frame = bytearray(codec.encode(payload))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(RpcError):
        result = peer.feed(bytes(frame))
        # A corrupted length may just ask for more bytes; once they come, the CRC fails.
        assert result == []
        peer.feed(bytes(8192))


def test_crc_mismatch_message() -> None:
    codec, peer = RpcCodec(), RpcCodec()
    frame = bytearray(codec.encode(b"abcd"))
    frame[9] ^= 1
    with pytest.raises(RpcError, match="CRC mismatch"):
        peer.feed(bytes(frame))


@pytest.mark.parametrize("length", [0, -16, 6, 8, 12, (1 << 24) + 4, 0x7FFFFFFC])
def test_bad_lengths_are_rejected(length: int) -> None:
    with pytest.raises(RpcError):
        RpcCodec().feed(struct.pack("<i", length) + bytes(28))


def test_max_frame_len_is_enforced_both_ways() -> None:
    codec = RpcCodec(max_frame_len=64)
    with pytest.raises(ValueError):
        codec.encode(bytes(56))
    big = RpcCodec().encode(bytes(56))
    with pytest.raises(RpcError):
        codec.feed(big)


def test_sequence_mismatch_is_rejected() -> None:
    sender, peer = RpcCodec(), RpcCodec()
    sender.encode(b"lost")
    with pytest.raises(RpcError, match="seq -1, expected -2"):
        peer.feed(sender.encode(b"next"))


def test_failed_codec_stays_failed() -> None:
    codec = RpcCodec()
    with pytest.raises(RpcError):
        codec.feed(struct.pack("<i", 7))
    with pytest.raises(RpcError, match="already failed"):
        codec.feed(b"")
    with pytest.raises(RpcError):
        codec.encode(b"abcd")


def test_payload_must_be_aligned_and_nonempty() -> None:
    codec = RpcCodec()
    for bad in (b"", b"abc", b"abcde"):
        with pytest.raises(ValueError):
            codec.encode(bad)
    assert codec.out_seq == -2


def test_sequence_wraps_like_c_int() -> None:
    assert _next_seq(-2) == -1
    assert _next_seq(2**31 - 1) == -(2**31)


def test_ciphertext_after_nonce_in_same_read_is_held() -> None:
    client, server = RpcCodec(), RpcCodec()
    nonce = client.encode(b"NNNN")
    server_nonce = server.encode(b"MMMM")
    client.feed(server_nonce)
    client.start_encryption(KEYS_C)
    hs = client.encode_flush(b"HHHH" * 8)
    assert server.feed(nonce + hs[:7]) == [b"NNNN"]
    assert server.feed(hs[7:]) == []
    assert server.buffered == len(hs)
    server.start_encryption(KEYS_S)
    assert server.feed(b"") == [b"HHHH" * 8]


@given(st.binary(max_size=300), st.booleans())
def test_garbage_into_codec_raises_only_rpc_error(data: bytes, encrypted: bool) -> None:
    if encrypted:
        _, codec = handshaken_pair()
    else:
        codec = RpcCodec()
    with contextlib.suppress(RpcError):
        codec.feed(data)


# --- client state machine -------------------------------------------------------------------

SECRET = bytes.fromhex("c4f9faca") + bytes(range(100, 160))
NOW = 1_700_000_000


class MiniServer:
    """Server side for the client tests: the codec plus the fake's key code."""

    def __init__(self, now: int = NOW, key_select: int | None = None, schema: int = 1) -> None:
        self.codec = RpcCodec()
        self.now = now
        self.key_select = int.from_bytes(SECRET[:4], "little") if key_select is None else key_select
        self.schema = schema
        self.nonce = bytes(range(200, 216))

    def answer_nonce(self, wire: bytes) -> bytes:
        [payload] = self.codec.feed(wire)
        theirs = Nonce.decode(payload)
        reply = self.codec.encode(
            Nonce(self.key_select, self.now, self.nonce, crypto_schema=self.schema).encode()
        )
        self.codec.start_encryption(
            me_side_keys(
                nonce_srv=self.nonce,
                nonce_clt=theirs.nonce,
                clt_ts=theirs.crypto_ts,
                server=("149.154.175.50", 8888),
                client=("203.0.113.7", 40000),
                secret=SECRET,
            )
        )
        return reply

    def read_handshake(self, wire: bytes) -> Handshake:
        [payload] = self.codec.feed(wire)
        return Handshake.decode(payload)


def new_client(**kwargs: object) -> RpcClient:
    params: dict[str, object] = {
        "secret": SECRET,
        "local": ("10.0.0.5", 40000),
        "remote": ("149.154.175.50", 8888),
        "public_ip": "203.0.113.7",
        "now": NOW,
        "pid": 0x4321,
    }
    params.update(kwargs)
    return RpcClient(**params)  # type: ignore[arg-type]


def run_handshake(client: RpcClient, server: MiniServer, reply: Handshake | HandshakeError) -> None:
    client.receive(server.answer_nonce(client.initiate()))
    hs = server.read_handshake(client.data_to_send())
    assert hs.sender_pid == ProcessId(ip=0x0A000005, port=0, pid=0x4321, utime=NOW)
    assert hs.peer_pid == ProcessId(ip=0x959AAF32, port=8888)
    client.receive(server.codec.encode_flush(reply.encode()))


def good_reply(flags: int = 0) -> Handshake:
    return Handshake(
        flags=flags,
        sender_pid=ProcessId(ip=0x959AAF32, port=8888, pid=1, utime=2),
        peer_pid=ProcessId(ip=0x0A000005, port=0, pid=0x4321, utime=NOW),
    )


@pytest.mark.parametrize("crc", [False, True])
def test_client_handshake_then_traffic(crc: bool) -> None:
    client, server = new_client(request_crc32c=crc), MiniServer()
    run_handshake(client, server, good_reply(c.RPCF_USE_CRC32C if crc else 0))
    assert client.ready and client.crc32c is crc
    server.codec.set_crc32c(crc)
    client.send(CloseConn(9))
    assert server.codec.feed(client.data_to_send()) == [CloseConn(9).encode()]
    got = client.receive(server.codec.encode_flush(Ping(5).encode(), CloseExt(9).encode()))
    assert got == [Ping(5), CloseExt(9)]
    assert server.codec.feed(client.data_to_send()) == [Pong(5).encode()]


@pytest.mark.parametrize(
    ("server", "match"),
    [
        (MiniServer(key_select=0x01020304), "key_select"),
        (MiniServer(schema=0), "schema"),
        (MiniServer(now=NOW + 31), "clock"),
        (MiniServer(now=NOW - 31), "clock"),
    ],
)
def test_client_rejects_bad_nonce_reply(server: MiniServer, match: str) -> None:
    client = new_client()
    with pytest.raises(RpcError, match=match):
        client.receive(server.answer_nonce(client.initiate()))
    assert client.state is RpcClientState.FAILED


def test_client_accepts_skew_of_30_seconds() -> None:
    client = new_client()
    run_handshake(client, MiniServer(now=NOW - 30), good_reply())
    assert client.ready


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (HandshakeError(error_code=-4, sender_pid=ProcessId()), "error -4"),
        (good_reply(c.RPCF_USE_CRC32C), "without being asked"),
        (good_reply(0x1), "unsupported flags"),
        (
            Handshake(0, ProcessId(), ProcessId(ip=0x0A000005, pid=0x9999)),
            "another process",
        ),
    ],
)
def test_client_rejects_bad_handshake_reply(reply: Handshake | HandshakeError, match: str) -> None:
    client = new_client()
    with pytest.raises(RpcError, match=match):
        run_handshake(client, MiniServer(), reply)
    assert not client.ready


def test_client_with_wrong_public_ip_cannot_talk() -> None:
    client, server = new_client(public_ip="10.0.0.5"), MiniServer()
    client.receive(server.answer_nonce(client.initiate()))
    with pytest.raises(RpcError):
        server.read_handshake(client.data_to_send())


def test_client_refuses_to_send_before_ready() -> None:
    client = new_client()
    with pytest.raises(ValueError):
        client.send(Ping(1))
    with pytest.raises(ValueError):
        client.receive(b"")
