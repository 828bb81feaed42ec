"""PacketSplitter cuts the same packets as PacketReader, however the stream is split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.errors import FramingError
from mtproxy.protocol.framing import (
    PACKET_OVERHEAD_MAX,
    Framing,
    PacketReader,
    PacketSplitter,
    encode_packet,
    encode_packet_into,
)

payloads = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=300).map(lambda words: words * 4),
        st.booleans(),
    ),
    min_size=0,
    max_size=12,
)


@settings(max_examples=300)
@given(
    framing=st.sampled_from(list(Framing)),
    packets=payloads,
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
    seed=st.integers(min_value=0, max_value=255),
    pooled=st.booleans(),
)
def test_same_packets_as_packet_reader(
    framing: Framing, packets: list[tuple[int, bool]], cuts: list[int], seed: int, pooled: bool
) -> None:
    bodies = [bytes((seed + i + j) & 0xFF for j in range(size)) for i, (size, _) in
              enumerate(packets)]
    stream = b"".join(
        encode_packet(framing, body, quickack=ack)
        for body, (_, ack) in zip(bodies, packets, strict=True)
    )
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    # A pool shared with another splitter that scribbles over whatever it is given.
    pool = BufferPool(keep=2) if pooled else None
    other = PacketSplitter(framing, pool=pool)
    splitter, reader = PacketSplitter(framing, pool=pool), PacketReader(framing)
    got: list[tuple[bytes, bool]] = []
    expected: list[tuple[bytes, bool]] = []
    for start, end in itertools.pairwise(bounds):
        buffer = bytearray(stream[start:end])
        for payload, ack in splitter.feed(memoryview(buffer)):
            got.append((bytes(payload), ack))  # copy before the buffer is reused
        splitter.release()
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
        if pool is not None:  # whatever went back to the pool gets overwritten
            junk = encode_packet(framing, b"\xee" * 2000)
            other.feed(junk[:1500])
            other.feed(junk[1500:])
            other.release()
        expected += [(p.payload, p.quickack) for p in reader.feed(stream[start:end])]
    assert got == expected
    assert got == [(body, ack) for body, (_, ack) in zip(bodies, packets, strict=True)]
    assert splitter.buffered == 0


def test_abridged_long_header_split_byte_by_byte() -> None:
    body = bytes(range(256)) * 2  # 512 bytes: 128 words, needs the 4-byte header
    wire = encode_packet(Framing.ABRIDGED, body, quickack=True)
    assert wire[0] == 0xFF
    splitter = PacketSplitter(Framing.ABRIDGED)
    out = []
    for i in range(len(wire)):
        out += splitter.feed(wire[i : i + 1])
    assert [(bytes(p), q) for p, q in out] == [(body, True)]


@pytest.mark.parametrize(
    ("framing", "wire"),
    [
        (Framing.INTERMEDIATE, (6).to_bytes(4, "little")),
        (Framing.INTERMEDIATE, (0x40000004).to_bytes(4, "little")),
        (Framing.PADDED, (2).to_bytes(4, "little")),
        (Framing.ABRIDGED, b"\x00"),
        (Framing.INTERMEDIATE, (1 << 21).to_bytes(4, "little")),
    ],
)
def test_bad_lengths_raise(framing: Framing, wire: bytes) -> None:
    splitter = PacketSplitter(framing, max_packet=1 << 20)
    with pytest.raises(FramingError):
        splitter.feed(wire)
    if len(wire) > 1:  # also when the bad header is completed by a later feed
        splitter = PacketSplitter(framing, max_packet=1 << 20)
        assert splitter.feed(wire[:1]) == []
        with pytest.raises(FramingError):
            splitter.feed(wire[1:])


@pytest.mark.parametrize("framing", list(Framing))
@pytest.mark.parametrize("first", [1, 3, 10, 5000, 60000])
def test_big_packet_trickling_in(framing: Framing, first: int) -> None:
    """A packet announced big but arriving slowly is assembled without reserving it all."""
    body = bytes(i * 7 & 0xFF for i in range(200_000))
    wire = encode_packet(framing, body) + encode_packet(framing, b"tail")
    splitter = PacketSplitter(framing)
    out = [(bytes(p), q) for p, q in splitter.feed(wire[:first])]
    assert out == [] and splitter.buffered == first
    for start in range(first, len(wire), 7000):
        out += [(bytes(p), q) for p, q in splitter.feed(wire[start : start + 7000])]
    assert out == [(body, False), (b"tail", False)]
    assert splitter.buffered == 0


@given(
    framing=st.sampled_from(list(Framing)),
    words=st.integers(min_value=1, max_value=2000),
    noise=st.binary(min_size=4, max_size=4),
)
def test_encode_packet_into_matches_encode_packet(
    framing: Framing, words: int, noise: bytes
) -> None:
    payload = bytes(i & 0xFF for i in range(words * 4))

    def rand(n: int) -> bytes:
        return (noise * 2)[:n]

    out = bytearray(b"\xaa" * (len(payload) + PACKET_OVERHEAD_MAX))
    size = encode_packet_into(framing, memoryview(payload), out, random_bytes=rand)
    assert bytes(out[:size]) == encode_packet(framing, payload, random_bytes=rand)
    with pytest.raises(ValueError):
        encode_packet_into(framing, payload, bytearray(len(payload)), random_bytes=rand)


def test_pooled_buffers_are_bounded_and_reused() -> None:
    pool = BufferPool(keep=2)
    body = bytes(300_000)
    wire = encode_packet(Framing.INTERMEDIATE, body)
    splitters = [PacketSplitter(Framing.INTERMEDIATE, pool=pool) for _ in range(10)]
    for splitter in splitters:  # ten clients, each sends one big packet in two reads
        assert splitter.feed(wire[:200_000]) == []
        [(payload, _)] = splitter.feed(wire[200_000:])
        assert len(payload) == len(body)
        splitter.release()
    # Idle clients hold nothing; the pool keeps at most two buffers.
    assert all(s.buffered == 0 for s in splitters)
    assert pool.idle <= 2 * (len(wire) + 16)
    taken = pool.take(len(wire))
    assert len(taken) >= len(wire)
