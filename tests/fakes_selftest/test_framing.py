"""The framings and the fake-TLS record layer round-trip and reject what a server rejects."""

from __future__ import annotations

import struct

import pytest
from fakes.obfs import (
    TAG_ABRIDGED,
    TAG_INTERMEDIATE,
    TAG_PADDED,
    TAGS,
    FakeTlsError,
    FramingError,
    Packet,
    PacketDecoder,
    TlsRecordReader,
    encode_packet,
    encode_quickack_confirm,
    wrap_tls_records,
)
from hypothesis import given, settings
from hypothesis import strategies as st

payloads = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=700).map(lambda words: words * 4),
        st.booleans(),
    ),
    min_size=1,
    max_size=12,
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


@settings(max_examples=150, deadline=None)
@given(
    tag=st.sampled_from(TAGS),
    shapes=payloads,
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=20),
    data=st.data(),
)
def test_client_packets_round_trip_in_any_chunking(
    tag: bytes, shapes: list[tuple[int, bool]], cuts: list[int], data: st.DataObject
) -> None:
    packets = [Packet(data.draw(st.binary(min_size=n, max_size=n)), quick) for n, quick in shapes]
    wire = b"".join(encode_packet(tag, p.payload, p.quickack) for p in packets)
    decoder = PacketDecoder(tag, from_client=True)
    got: list[Packet] = []
    for piece in _split(wire, cuts):
        got.extend(decoder.feed_packets(piece))
    assert got == packets
    assert decoder.pending == b""


def test_abridged_length_boundaries() -> None:
    assert encode_packet(TAG_ABRIDGED, bytes(8)) == b"\x02" + bytes(8)
    assert encode_packet(TAG_ABRIDGED, bytes(8), quickack=True)[0] == 0x82
    # 0x7e words still fit one byte; 0x7f words need the long form.
    assert encode_packet(TAG_ABRIDGED, bytes(0x7E * 4))[:1] == b"\x7e"
    assert encode_packet(TAG_ABRIDGED, bytes(0x7F * 4))[:4] == b"\x7f\x7f\x00\x00"
    assert encode_packet(TAG_ABRIDGED, bytes(0x12345 * 4))[:4] == b"\x7f\x45\x23\x01"
    assert encode_packet(TAG_ABRIDGED, bytes(0x7F * 4), quickack=True)[:1] == b"\xff"


def test_intermediate_layout() -> None:
    assert encode_packet(TAG_INTERMEDIATE, b"abcd") == b"\x04\x00\x00\x00abcd"
    assert encode_packet(TAG_INTERMEDIATE, b"abcd", quickack=True)[:4] == b"\x04\x00\x00\x80"


def test_padded_tail_is_counted_and_dropped() -> None:
    tails = set()
    for _ in range(400):
        wire = encode_packet(TAG_PADDED, b"12345678")
        (length,) = struct.unpack_from("<I", wire)
        assert len(wire) == 4 + length
        tails.add(length - 8)
        assert PacketDecoder(TAG_PADDED).feed(wire) == [b"12345678"]
    assert tails == {0, 1, 2, 3}


@pytest.mark.parametrize("tag", TAGS)
def test_encoder_refuses_unaligned_or_empty(tag: bytes) -> None:
    for bad in (b"", b"abc", b"abcde"):
        with pytest.raises(FramingError):
            encode_packet(tag, bad)


@pytest.mark.parametrize(
    ("tag", "wire"),
    [
        (TAG_ABRIDGED, b"\x00"),
        (TAG_ABRIDGED, b"\x7f\x00\x00\x00"),
        (TAG_INTERMEDIATE, b"\x00\x00\x00\x00"),
        (TAG_INTERMEDIATE, b"\x06\x00\x00\x00"),
        (TAG_INTERMEDIATE, b"\x04\x00\x00\x40"),
        (TAG_PADDED, b"\x03\x00\x00\x00"),
        (TAG_PADDED, b"\x08\x00\x00\x40"),
    ],
)
def test_decoder_rejects_bad_lengths(tag: bytes, wire: bytes) -> None:
    with pytest.raises(FramingError):
        PacketDecoder(tag).feed(wire + bytes(16))


@pytest.mark.parametrize("tag", TAGS)
def test_decoder_enforces_max_len(tag: bytes) -> None:
    decoder = PacketDecoder(tag, max_len=1024)
    assert decoder.feed(encode_packet(tag, bytes(1020))) == [bytes(1020)]
    with pytest.raises(FramingError):
        decoder.feed(encode_packet(tag, bytes(1028))[:8])


def test_server_quickack_confirms() -> None:
    token = b"\x01\x02\x03\x04"
    abridged = encode_quickack_confirm(TAG_ABRIDGED, token)
    assert abridged == b"\x84\x03\x02\x01"  # byte-swapped so the flag leads
    inter = encode_quickack_confirm(TAG_INTERMEDIATE, token)
    assert inter == b"\x01\x02\x03\x84"
    for tag, confirm in ((TAG_ABRIDGED, abridged), (TAG_INTERMEDIATE, inter), (TAG_PADDED, inter)):
        decoder = PacketDecoder(tag, from_client=False)
        reply = encode_packet(tag, b"data")
        got = decoder.feed_packets(confirm[:2])
        got += decoder.feed_packets(confirm[2:] + reply)
        assert got[0] == Packet(confirm, True)
        assert got[1] == Packet(b"data", False)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40000), min_size=1, max_size=4),
    size=st.sampled_from([1, 1425, 16384]),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 18), max_size=10),
)
def test_tls_records_round_trip(chunks: list[bytes], size: int, cuts: list[int]) -> None:
    wire = b"\x14\x03\x03\x00\x01\x01".join(wrap_tls_records(c, size) for c in chunks)
    reader = TlsRecordReader()
    got = b"".join(reader.feed(piece) for piece in _split(wire, cuts))
    assert got == b"".join(chunks)
    assert reader.pending == 0


def test_tls_record_size_limits() -> None:
    reader = TlsRecordReader()
    big = b"\x17\x03\x03" + (16640).to_bytes(2, "big") + bytes(16640)
    assert reader.feed(big) == bytes(16640)
    with pytest.raises(FakeTlsError):
        TlsRecordReader().feed(b"\x17\x03\x03" + (16641).to_bytes(2, "big"))
    assert all(
        int.from_bytes(wrap_tls_records(bytes(40000))[i + 3 : i + 5], "big") <= 16384
        for i in (0, 16389, 32778)
    )


@pytest.mark.parametrize(
    "record",
    [b"\x15\x03\x03\x00\x02\x02\x28", b"\x16\x03\x03\x00\x01\x00", b"\x17\x02\x03\x00\x00"],
)
def test_tls_reader_refuses_alerts_and_strays(record: bytes) -> None:
    with pytest.raises(FakeTlsError):
        TlsRecordReader().feed(record)
