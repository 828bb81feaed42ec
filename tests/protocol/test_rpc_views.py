"""The relay's copy-saving codec paths agree byte for byte with the plain ones."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rpc import MiniServer, good_reply, new_client, run_handshake

from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.rpc import CloseExt, Ping, Pong, ProxyAns, RpcCodec, RpcError, RpcKeys

KEYS_C = RpcKeys(bytes(range(32)), bytes(range(16)), bytes(range(32, 64)), bytes(range(16, 32)))
KEYS_S = RpcKeys(KEYS_C.read_key, KEYS_C.read_iv, KEYS_C.write_key, KEYS_C.write_iv)

payloads = st.lists(
    st.tuples(st.integers(1, 600), st.integers(0, 255)).map(
        lambda t: bytes((t[1] + i) & 0xFF for i in range(t[0] * 4))
    ),
    min_size=1,
    max_size=10,
)


def pair(crc32c_on: bool, pool: BufferPool | None = None) -> tuple[RpcCodec, RpcCodec]:
    client, server = RpcCodec(pool=pool), RpcCodec(pool=pool)
    server.feed(client.encode(b"NNNN" * 8))
    client.feed(server.encode(b"MMMM" * 8))
    client.start_encryption(KEYS_C)
    server.start_encryption(KEYS_S)
    client.set_crc32c(crc32c_on)
    server.set_crc32c(crc32c_on)
    return client, server


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(payloads, st.lists(st.integers(0, 2400), max_size=6), st.lists(st.booleans(), max_size=10),
       st.booleans())
def test_encode_parts_equals_encode(
    messages: list[bytes], cut_points: list[int], flushes: list[bool], crc32c_on: bool
) -> None:
    plain, _ = pair(crc32c_on)
    parted, _ = pair(crc32c_on)
    want, got = bytearray(), bytearray()
    for i, message in enumerate(messages):
        cuts = [c % (len(message) + 1) for c in cut_points]
        parts = [memoryview(p) for p in split(message, cuts)]
        want += plain.encode(message)
        got += b"".join(parted.encode_parts(parts))
        if i < len(flushes) and flushes[i]:
            want += plain.flush()
            got += parted.flush()
    want += plain.flush()
    got += parted.flush()
    assert got == want


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(payloads, st.lists(st.integers(0, 30000), max_size=25), st.lists(st.booleans(), max_size=10),
       st.booleans())
def test_feed_views_equals_feed(
    messages: list[bytes], cuts: list[int], flushes: list[bool], crc32c_on: bool
) -> None:
    sender, receiver_a = pair(crc32c_on)
    pool = BufferPool(keep=2)
    scribbler_tx, scribbler = pair(False, pool)
    _, receiver_b = pair(crc32c_on, pool)
    stream = bytearray()
    for i, message in enumerate(messages):
        stream += sender.encode(message)
        if i < len(flushes) and flushes[i]:
            stream += sender.flush()  # filler words land anywhere relative to the cuts
    stream += sender.flush()
    a: list[bytes] = []
    b: list[bytes] = []
    junk = scribbler_tx.encode_flush(b"\xee" * 3000)
    for chunk in split(bytes(stream), cuts):
        a += receiver_a.feed(chunk)
        b += [bytes(view) for view in receiver_b.feed_views(chunk)]
        receiver_b.release()
        # Another connection sharing the pool overwrites whatever was given back.
        scribbler.feed_views(junk[:1000])
        scribbler.feed_views(junk[1000:])
        scribbler.release()
        junk = scribbler_tx.encode_flush(b"\xee" * 3000)
    assert a == b == messages
    assert receiver_b.buffered == 0
    assert receiver_b.in_seq == receiver_a.in_seq


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=100)
@given(payloads, st.lists(st.integers(0, 30000), max_size=25), st.integers(0, 25))
def test_switching_from_feed_to_feed_views(
    messages: list[bytes], cuts: list[int], switch_at: int
) -> None:
    """RpcClient reads the handshake with feed() and the rest with feed_views()."""
    sender, receiver = pair(False)
    stream = b"".join(sender.encode(m) for m in messages) + sender.flush()
    got: list[bytes] = []
    for i, chunk in enumerate(split(stream, cuts)):
        if i < switch_at:
            got += receiver.feed(chunk)
        else:
            got += [bytes(view) for view in receiver.feed_views(chunk)]
    assert got == messages and receiver.buffered == 0


def test_feed_views_detects_corruption_and_stays_failed() -> None:
    sender, receiver = pair(False)
    wire = bytearray(sender.encode_flush(ProxyAns(0, 7, b"x" * 64).encode()))
    wire[40] ^= 1
    with pytest.raises(RpcError):
        receiver.feed_views(bytes(wire))
    with pytest.raises(RpcError):
        receiver.feed_views(b"")


def test_feed_views_before_encryption_falls_back() -> None:
    client, server = RpcCodec(), RpcCodec()
    views = server.feed_views(client.encode(b"NNNN" * 8))
    assert [bytes(v) for v in views] == [b"NNNN" * 8] and server.awaiting_keys


def test_client_receive_raw_answers_nothing_itself() -> None:
    """After the handshake receive_raw hands pings to the caller instead of answering."""
    client, server = new_client(), MiniServer()
    run_handshake(client, server, good_reply())
    views = client.receive_raw(server.codec.encode_flush(Ping(5).encode(), CloseExt(9).encode()))
    assert [bytes(v) for v in views] == [Ping(5).encode(), CloseExt(9).encode()]
    assert client.data_to_send() == b""
    client.send_parts([Pong(5).encode()[:4], memoryview(Pong(5).encode())[4:]])
    assert server.codec.feed(client.data_to_send()) == [Pong(5).encode()]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(payloads, st.lists(st.integers(0, 2400), max_size=6), st.lists(st.booleans(), max_size=10),
       st.booleans())
def test_batch_append_seal_equals_encode(
    messages: list[bytes], cut_points: list[int], seals: list[bool], crc32c_on: bool
) -> None:
    """The relay's batch (plaintext framed in place, encrypted at once) decodes to the
    same messages as encode(); padding may fall elsewhere, which the reader skips."""
    batched, _ = pair(crc32c_on)
    _, receiver = pair(crc32c_on)
    batch, fill, wire = bytearray(), 0, bytearray()
    for i, message in enumerate(messages):
        cuts = [c % (len(message) + 1) for c in cut_points]
        fill = batched.append(batch, fill, [memoryview(p) for p in split(message, cuts)])
        if i < len(seals) and seals[i]:
            wire += batch[: batched.seal(batch, fill)]
            fill = 0
    wire += batch[: batched.seal(batch, fill)]
    assert len(wire) % 16 == 0
    assert receiver.feed(bytes(wire)) == messages


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(payloads, st.lists(st.integers(0, 30000), max_size=25), st.booleans())
def test_feed_frames_with_shared_scratch(
    messages: list[bytes], cuts: list[int], crc32c_on: bool
) -> None:
    """Whole writable frames decrypted into one scratch buffer that another connection
    also uses between calls."""
    sender, receiver = pair(crc32c_on)
    other_tx, other = pair(False)
    stream = b"".join(sender.encode(m) for m in messages) + sender.flush()
    scratch = bytearray(40000)
    got: list[bytes] = []
    for chunk in split(stream, cuts):
        for frame in receiver.feed_frames(chunk, scratch):
            assert not frame.readonly
            got.append(bytes(frame[8:-4]))
            frame[8:12] = b"\xff" * 4  # consumers may scribble on their frame
        receiver.release()
        other.feed_frames(other_tx.encode_flush(b"\xee" * 400), scratch)
    assert got == messages
    assert receiver.buffered == 0


def test_frames_after_the_handshake_reply_use_the_agreed_crc32c() -> None:
    """A middle-end's handshake reply agreeing to CRC32C and its first messages in one
    read: those are checked with CRC32C, and a ping among them is answered."""
    client, server = new_client(request_crc32c=True), MiniServer()
    client.receive(server.answer_nonce(client.initiate()))
    server.read_handshake(client.data_to_send())
    wire = server.codec.encode(good_reply(0x800).encode())
    server.codec.set_crc32c(True)
    wire += server.codec.encode_flush(Ping(7).encode(), CloseExt(9).encode())
    frames = client.receive_frames(wire)
    assert client.ready and client.crc32c
    assert [bytes(f[8:-4]) for f in frames] == [CloseExt(9).encode()]
    assert server.codec.feed(client.data_to_send()) == [Pong(7).encode()]
