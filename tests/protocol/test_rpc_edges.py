"""The middle-end RPC modules refuse what they must (docs/protocol.md §8.2 to §8.9).

Bad bytes from the peer are an RpcError, never a crash or a silent misread, on the copying
path and on the relay's view path alike; wrong arguments from our own code are a
ValueError. The frames below are built by hand from the layouts in the notes.
"""

from __future__ import annotations

import struct
import zlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from test_rpc import NOW, SECRET, MiniServer, good_reply, new_client, run_handshake

from mtproxy.protocol.rpc import (
    HandshakeError,
    Ping,
    ProcessId,
    ProxyAns,
    ProxyReq,
    RpcClient,
    RpcClientState,
    RpcCodec,
    RpcError,
    RpcKeys,
    SimpleAck,
    decode_ip16,
    decode_tl_string,
    derive_keys,
    encode_tl_string,
    key_material,
    parse_message,
)
from mtproxy.protocol.rpc import constants as c

KEYS_C = RpcKeys(bytes(range(32)), bytes(range(16)), bytes(range(32, 64)), bytes(range(16, 32)))
KEYS_S = RpcKeys(KEYS_C.read_key, KEYS_C.read_iv, KEYS_C.write_key, KEYS_C.write_iv)
FILLER = b"\x04\x00\x00\x00"


def frame(payload: bytes, seq: int, *, length: int | None = None, crc: int | None = None) -> bytes:
    """One frame as docs/protocol.md §8.2 lays it out; ``length``/``crc`` override."""
    size = len(payload) + 12 if length is None else length
    head = struct.pack("<ii", size, seq) + payload
    return head + struct.pack("<I", zlib.crc32(head) if crc is None else crc)


def encrypted_receiver() -> tuple[RpcCodec, Cipher[modes.CBC]]:
    """A codec past its nonce, and the CBC cipher its peer would write with."""
    receiver = RpcCodec()
    receiver.feed(RpcCodec().encode(b"NNNN" * 8))
    receiver.start_encryption(KEYS_S)
    return receiver, Cipher(algorithms.AES(KEYS_C.write_key), modes.CBC(KEYS_C.write_iv))


def pad16(data: bytes) -> bytes:
    return data + FILLER * ((-len(data) % 16) // 4)


BAD_STREAMS = {
    "length not a multiple of 4": frame(b"abcd", -1, length=18),
    "length zero": struct.pack("<ii", 0, -1) + bytes(8),
    "negative length": struct.pack("<ii", -32, -1) + bytes(8),
    "length below a frame": struct.pack("<ii", 8, -1) + bytes(8),
    "length above the limit": struct.pack("<ii", (1 << 24) + 16, -1) + bytes(8),
    "wrong sequence number": frame(b"abcd", 3),
    "wrong CRC": frame(b"abcd", -1, crc=0x12345678),
}


@pytest.mark.parametrize("split", [None, 2, 16])
@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_view_path_refuses_what_the_copying_path_refuses(name: str, split: int | None) -> None:
    wire = pad16(BAD_STREAMS[name]) + pad16(frame(b"next", 0))
    errors = []
    for use_views in (False, True):
        receiver, cipher = encrypted_receiver()
        ciphertext = cipher.encryptor().update(wire)
        chunks = [ciphertext] if split is None else [ciphertext[:split], ciphertext[split:]]
        feed = receiver.feed_views if use_views else receiver.feed
        with pytest.raises(RpcError) as caught:
            for chunk in chunks:
                feed(chunk)
        errors.append(str(caught.value))
        with pytest.raises(RpcError, match="already failed"):
            feed(b"")
    assert errors[0] == errors[1]


def test_filler_words_are_skipped_on_both_paths() -> None:
    wire = FILLER * 4 + pad16(frame(b"data", -1)) + FILLER * 4 + pad16(frame(b"more", 0))
    for use_views in (False, True):
        receiver, cipher = encrypted_receiver()
        ciphertext = cipher.encryptor().update(wire)
        feed = receiver.feed_views if use_views else receiver.feed
        got = [bytes(p) for chunk in (ciphertext[:16], ciphertext[16:]) for p in feed(chunk)]
        assert got == [b"data", b"more"] and receiver.buffered == 0


def test_plain_feed_after_a_split_view_frame_is_a_usage_error() -> None:
    receiver, cipher = encrypted_receiver()
    ciphertext = cipher.encryptor().update(pad16(frame(b"x" * 64, -1)))
    assert receiver.feed_views(ciphertext[:32]) == []
    with pytest.raises(ValueError, match="keep to feed_views"):
        receiver.feed(ciphertext[32:])


def test_codec_argument_checks() -> None:
    with pytest.raises(ValueError, match="max_frame_len"):
        RpcCodec(max_frame_len=12)
    codec = RpcCodec()
    for bad in (
        RpcKeys(bytes(31), bytes(16), bytes(32), bytes(16)),
        RpcKeys(bytes(32), bytes(15), bytes(32), bytes(16)),
        RpcKeys(bytes(32), bytes(16), bytes(33), bytes(16)),
        RpcKeys(bytes(32), bytes(16), bytes(32), bytes(17)),
    ):
        with pytest.raises(ValueError, match="must be"):
            codec.start_encryption(bad)
    codec.start_encryption(KEYS_C)
    with pytest.raises(ValueError, match="already started"):
        codec.start_encryption(KEYS_C)
    # Half a plaintext frame that is not the nonce: keys now would garble it.
    early = RpcCodec()
    assert early.feed(RpcCodec().encode(b"abcd")[:6]) == []
    with pytest.raises(ValueError, match="unparsed plaintext"):
        early.start_encryption(KEYS_C)


def test_encode_parts_checks_and_matches_encode_in_plaintext() -> None:
    small = RpcCodec(max_frame_len=32)
    for parts in ([b""], [b"ab", b"c"]):
        with pytest.raises(ValueError, match="multiple of 4"):
            small.encode_parts(parts)
    with pytest.raises(ValueError, match="exceeds the limit"):
        small.encode_parts([bytes(12), bytes(12)])
    assert small.out_seq == -2
    whole, parted = RpcCodec(), RpcCodec()
    pieces = parted.encode_parts([b"NN", memoryview(b"NN" * 7)])
    assert b"".join(pieces) == whole.encode(b"NNNN" * 4)


# --- client ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"secret": b"abc"}, "too short"),
        ({"public_ip": "2001:db8::1"}, "same family"),
        ({"remote": ("2001:db8::2", 8888)}, "same family"),
        ({"nonce": bytes(15)}, "16 bytes"),
    ],
)
def test_client_argument_checks(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        new_client(**kwargs)


def test_client_over_ipv6_uses_the_raw_addresses_in_its_keys() -> None:
    client = RpcClient(
        secret=SECRET, local=("2001:db8::5", 40000), remote=("2001:db8::d", 80), now=NOW,
        nonce=bytes(16),
    )  # fmt: skip
    assert client.keys is None
    server = MiniServer()
    client.receive(server.answer_nonce(client.initiate()))
    expected = derive_keys(
        nonce_srv=server.nonce, nonce_clt=bytes(16), clt_ts=NOW,
        srv_ip=IPv6Address("2001:db8::d"), srv_port=80,
        clt_ip=IPv6Address("2001:db8::5"), clt_port=40000, secret=SECRET,
    )  # fmt: skip
    assert client.keys == expected
    assert client.sender_pid.ip == 0 and client.expected_peer_pid.ip == 0


def test_client_states_are_enforced() -> None:
    client = new_client()
    first = client.initiate()
    assert first and client.state is RpcClientState.NONCE_SENT
    with pytest.raises(ValueError, match="once"):
        client.initiate()
    with pytest.raises(ValueError, match="cannot send in state nonce-sent"):
        client.send_payloads(Ping(1).encode())
    with pytest.raises(ValueError, match="cannot send in state nonce-sent"):
        client.send_parts([Ping(1).encode()])


def test_client_refuses_a_data_message_in_place_of_the_handshake_reply() -> None:
    client, server = new_client(), MiniServer()
    client.receive(server.answer_nonce(client.initiate()))
    server.read_handshake(client.data_to_send())
    with pytest.raises(RpcError, match="expected RPC_HANDSHAKE, got Ping"):
        client.receive(server.codec.encode_flush(Ping(7).encode()))
    assert client.state is RpcClientState.FAILED
    assert client.data_to_send() == b""  # a failed client pads nothing more


def test_client_raw_path_fails_on_bad_bytes_and_stays_failed() -> None:
    client, server = new_client(), MiniServer()
    run_handshake(client, server, good_reply())
    wire = bytearray(server.codec.encode_flush(ProxyAns(0, 1, b"abcd" * 8).encode()))
    wire[-20] ^= 0x40
    with pytest.raises(RpcError):
        client.receive_raw(bytes(wire))
    assert client.state is RpcClientState.FAILED


def test_client_raw_path_during_the_handshake_drops_pings_it_answered() -> None:
    client, server = new_client(), MiniServer()
    client.receive(server.answer_nonce(client.initiate()))
    server.read_handshake(client.data_to_send())
    reply = server.codec.encode_flush(good_reply().encode(), Ping(3).encode(), c_ans())
    views = client.receive_raw(reply)
    assert [bytes(v) for v in views] == [c_ans()]
    assert client.ready


def c_ans() -> bytes:
    return SimpleAck(5, b"\x80\x00\x00\x01").encode()


# --- keys ----------------------------------------------------------------------------------


def key_args(**changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "purpose": b"CLIENT", "nonce_srv": bytes(16), "nonce_clt": bytes(16), "clt_ts": 1,
        "srv_ip": "149.154.175.50", "srv_port": 8888, "clt_ip": "203.0.113.7",
        "clt_port": 40000, "secret": SECRET,
    }  # fmt: skip
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"purpose": b"client"}, "purpose"),
        ({"nonce_srv": bytes(15)}, "nonces"),
        ({"nonce_clt": bytes(17)}, "nonces"),
        ({"srv_port": 65536}, "srv_port"),
        ({"clt_port": -1}, "clt_port"),
        ({"clt_ip": "2001:db8::1"}, "same family"),
    ],
)
def test_key_material_argument_checks(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        key_material(**key_args(**changes))  # type: ignore[arg-type]


def test_key_material_accepts_address_objects_like_strings() -> None:
    as_text = key_material(**key_args())  # type: ignore[arg-type]
    objects = key_args(srv_ip=IPv4Address("149.154.175.50"), clt_ip=IPv4Address("203.0.113.7"))
    as_objects = key_material(**objects)  # type: ignore[arg-type]
    assert as_text == as_objects
    # The IPv4 fields hold the reversed octets (host order, stored little-endian).
    assert as_text[36:40] == bytes([50, 175, 154, 149])


# --- messages ------------------------------------------------------------------------------


def test_address_and_process_id_fields_have_fixed_sizes() -> None:
    with pytest.raises(RpcError, match="16 bytes"):
        decode_ip16(bytes(4))
    with pytest.raises(RpcError, match="12 bytes"):
        ProcessId.decode(bytes(11))
    assert ProcessId.ip_field("::ffff:127.0.0.1") == 0
    assert ProcessId.ip_field("::ffff:10.0.0.5") == 0x0A000005


def test_tl_strings_short_long_and_broken() -> None:
    assert encode_tl_string(b"") == bytes(4)
    long = encode_tl_string(b"x" * 300)
    assert long[:4] == b"\xfe" + (300).to_bytes(3, "little") and len(long) % 4 == 0
    assert decode_tl_string(long) == (b"x" * 300, len(long))
    with pytest.raises(ValueError, match="too long"):
        encode_tl_string(bytes(1 << 24))
    for raw, match in (
        (b"", "missing"),
        (b"\xfe\x01", "truncated"),
        (b"\xff\x00\x00\x00", "0xff"),
        (b"\x08abc", "runs past"),
    ):
        with pytest.raises(RpcError, match=match):
            decode_tl_string(raw)


def proxy_req(**changes: object) -> ProxyReq:
    fields: dict[str, object] = {
        "flags": c.FLAG_MAGIC, "conn_id": 7, "remote_ip": IPv4Address("198.51.100.1"),
        "remote_port": 5000, "our_ip": IPv4Address("203.0.113.7"), "our_port": 443,
        "payload": b"abcd" * 2,
    }  # fmt: skip
    fields.update(changes)
    return ProxyReq(**fields)  # type: ignore[arg-type]


def test_proxy_req_encoder_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="HTTP_QUERY_INFO"):
        proxy_req(flags=c.FLAG_HTTP_QUERY_INFO).encode()
    with pytest.raises(ValueError, match="multiple of 4"):
        proxy_req(payload=b"abc").encode()
    with pytest.raises(ValueError, match="too long"):
        proxy_req(flags=c.FLAG_HAS_AD_TAG, ad_tag=bytes(c.MAX_PROXY_EXTRA_BYTES)).encode()


def test_proxy_req_decoder_refuses_broken_layouts() -> None:
    good = proxy_req().encode()
    head = struct.calcsize("<IIQ16si16si")
    port_at = struct.calcsize("<IIQ16s")
    bad_port = good[:port_at] + struct.pack("<i", 70000) + good[port_at + 4 :]
    with_extra = struct.pack("<II", c.RPC_PROXY_REQ, c.FLAG_HAS_AD_TAG) + good[8:head]
    cases = {
        "truncated": good[:40],
        "port 70000 out of range": bad_port,
        "extra block length missing": with_extra,
        "extra block length 6 invalid": with_extra + struct.pack("<i", 6),
        "runs past the message": with_extra + struct.pack("<i", 64) + bytes(8),
        "does not start with TL_PROXY_TAG": with_extra + struct.pack("<i", 8) + bytes(8),
        "payload is not a multiple of 4": good + b"x",
    }
    for match, raw in cases.items():
        with pytest.raises(RpcError, match=match):
            ProxyReq.decode(raw)


def test_http_query_info_extra_is_skipped_when_decoding() -> None:
    good = proxy_req().encode()
    head = struct.calcsize("<IIQ16si16si")
    extra = struct.pack("<I", c.TL_HTTP_QUERY_INFO) + bytes(12)
    raw = (
        struct.pack("<II", c.RPC_PROXY_REQ, c.FLAG_HTTP_QUERY_INFO)
        + good[8:head]
        + struct.pack("<i", len(extra))
        + extra
        + good[head:]
    )
    decoded = ProxyReq.decode(raw)
    assert decoded.payload == b"abcd" * 2 and decoded.ad_tag is None


def test_small_messages_check_their_sizes() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        ProxyAns(0, 1, b"abc").encode()
    with pytest.raises(RpcError, match="truncated"):
        ProxyAns.decode(struct.pack("<II", c.RPC_PROXY_ANS, 0))
    with pytest.raises(ValueError, match="4 bytes"):
        SimpleAck(1, b"abc")
    with pytest.raises(RpcError, match="no opcode"):
        parse_message(b"ab")
    with pytest.raises(RpcError, match="expected RPC_PING"):
        Ping.decode(struct.pack("<IQ", c.RPC_PONG, 1))
    assert isinstance(parse_message(HandshakeError(-4, ProcessId()).encode()), HandshakeError)
