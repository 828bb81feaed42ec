"""PacketSplitter cuts the same packets as PacketReader, however the stream is split."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.protocol.errors import FramingError
from mtproxy.protocol.framing import Framing, PacketReader, PacketSplitter, encode_packet

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
)
def test_same_packets_as_packet_reader(
    framing: Framing, packets: list[tuple[int, bool]], cuts: list[int], seed: int
) -> None:
    bodies = [bytes((seed + i + j) & 0xFF for j in range(size)) for i, (size, _) in
              enumerate(packets)]
    stream = b"".join(
        encode_packet(framing, body, quickack=ack)
        for body, (_, ack) in zip(bodies, packets, strict=True)
    )
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    splitter, reader = PacketSplitter(framing), PacketReader(framing)
    got: list[tuple[bytes, bool]] = []
    expected: list[tuple[bytes, bool]] = []
    for start, end in itertools.pairwise(bounds):
        buffer = bytearray(stream[start:end])
        for payload, ack in splitter.feed(memoryview(buffer)):
            got.append((bytes(payload), ack))  # copy before the buffer is reused
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer
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
