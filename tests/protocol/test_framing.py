"""Properties of the abridged / intermediate / padded framings (docs/protocol.md §3).

The expected wire bytes are spelled out here from the protocol notes rather than
taken from the encoder, so an encoder and reader that agree on a wrong layout fail.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.errors import FramingError
from mtproxy.protocol.framing import (
    MAX_PACKET,
    Framing,
    Packet,
    PacketReader,
    encode_packet,
    encode_quickack,
)

FRAMINGS = list(Framing)

#: Payloads are whole 32-bit words; 1..700 words spans the abridged 1-/4-byte boundary.
words_payloads = st.integers(1, 700).flatmap(
    lambda words: st.binary(min_size=4 * words, max_size=4 * words)
)
packets_st = st.lists(st.tuples(words_payloads, st.booleans()), min_size=1, max_size=6)
cuts_st = st.lists(st.integers(0, 1 << 16), max_size=12)
#: Seeded generators: cheap for Hypothesis to draw, reproducible from the seed.
rngs = st.integers(0, 2**64).map(random.Random)


def feed_split(reader: PacketReader, data: bytes, cuts: list[int]) -> list[Packet]:
    """Feed ``data`` cut at the given points (taken modulo its length)."""
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    out: list[Packet] = []
    prev = 0
    for point in points:
        out += reader.feed(data[prev:point])
        prev = point
    return out


def seeded(rnd: random.Random) -> Callable[[int], bytes]:
    return rnd.randbytes


def abridged_head(length: int, quickack: bool = False) -> bytes:
    words = length // 4
    flag = 0x80 if quickack else 0
    if words <= 0x7E:
        return bytes([words | flag])
    return bytes([0x7F | flag]) + words.to_bytes(3, "little")


@given(st.sampled_from(FRAMINGS), packets_st, cuts_st, rngs)
def test_round_trip_under_arbitrary_splits(
    framing: Framing, packets: list[tuple[bytes, bool]], cuts: list[int], rnd: random.Random
) -> None:
    wire = b"".join(
        encode_packet(framing, p, quickack=q, random_bytes=seeded(rnd)) for p, q in packets
    )
    reader = PacketReader(framing)
    got = feed_split(reader, wire, cuts)
    assert got == [Packet(p, q) for p, q in packets]
    assert reader.buffered == 0


@given(words_payloads, st.booleans())
def test_abridged_wire_layout(payload: bytes, quickack: bool) -> None:
    assert encode_packet(Framing.ABRIDGED, payload, quickack=quickack) == (
        abridged_head(len(payload), quickack) + payload
    )


@given(words_payloads, st.booleans())
def test_intermediate_wire_layout(payload: bytes, quickack: bool) -> None:
    head = len(payload) | (0x80000000 if quickack else 0)
    wire = encode_packet(Framing.INTERMEDIATE, payload, quickack=quickack)
    assert wire == struct.pack("<I", head) + payload


@pytest.mark.parametrize("quickack", [False, True])
@pytest.mark.parametrize(
    ("words", "head"),
    [(1, b"\x01"), (0x7E, b"\x7e"), (0x7F, b"\x7f\x7f\x00\x00"), (0x80, b"\x7f\x80\x00\x00"),
     (0x12345, b"\x7f\x45\x23\x01")],
)
def test_abridged_length_boundary(words: int, head: bytes, quickack: bool) -> None:
    """0x7e words still fit the 1-byte form; 0x7f words need the 0x7f + 3-byte form."""
    payload = bytes(range(256)) * (words * 4 // 256) + bytes(words * 4 % 256)
    expected_head = bytes([head[0] | (0x80 if quickack else 0)]) + head[1:]
    wire = encode_packet(Framing.ABRIDGED, payload, quickack=quickack)
    assert wire[: len(expected_head)] == expected_head
    assert PacketReader(Framing.ABRIDGED).feed(wire) == [Packet(payload, quickack)]


@pytest.mark.parametrize("pad_byte", [0x00, 0x01, 0x02, 0x03, 0xFC, 0xFF])
@pytest.mark.parametrize("quickack", [False, True])
def test_padded_tail_is_zero_to_three_bytes(pad_byte: int, quickack: bool) -> None:
    calls: list[int] = []

    def stub(n: int) -> bytes:
        calls.append(n)
        return bytes([pad_byte]) if len(calls) == 1 else b"\xaa" * n

    payload = b"\x01\x02\x03\x04" * 5
    wire = encode_packet(Framing.PADDED, payload, quickack=quickack, random_bytes=stub)
    pad = pad_byte & 3
    (field,) = struct.unpack_from("<I", wire)
    assert field & 0x7FFFFFFF == len(payload) + pad
    assert bool(field & 0x80000000) == quickack
    assert wire[4:] == payload + b"\xaa" * pad
    assert PacketReader(Framing.PADDED).feed(wire) == [Packet(payload, quickack)]


@given(st.integers(4, 3000), st.booleans(), st.data())
def test_padded_reader_truncates_to_length_and_not_3(
    length: int, quickack: bool, data: st.DataObject
) -> None:
    body = data.draw(st.binary(min_size=length, max_size=length))
    head = struct.pack("<I", length | (0x80000000 if quickack else 0))
    assert PacketReader(Framing.PADDED).feed(head + body) == [
        Packet(body[: length & ~3], quickack)
    ]


def test_padded_payload_at_the_limit_stays_within_it() -> None:
    """The padding must not push a maximal packet over the reader's limit."""
    payload = bytes(MAX_PACKET)
    wire = encode_packet(Framing.PADDED, payload, random_bytes=lambda n: b"\x03" * n)
    assert int.from_bytes(wire[:4], "little") <= MAX_PACKET
    assert PacketReader(Framing.PADDED).feed(wire) == [Packet(payload)]


REJECTED_HEADERS: list[tuple[Framing, bytes]] = [
    (Framing.ABRIDGED, b"\x00"),
    (Framing.ABRIDGED, b"\x80"),
    (Framing.ABRIDGED, b"\x7f\x00\x00\x00"),
    (Framing.ABRIDGED, b"\xff\x00\x00\x00"),
    (Framing.ABRIDGED, b"\x7f\x01\x00\x40"),  # 0x400001 words: over MAX_PACKET
    (Framing.INTERMEDIATE, struct.pack("<I", 0)),
    (Framing.INTERMEDIATE, struct.pack("<I", 0x80000000)),
    (Framing.INTERMEDIATE, struct.pack("<I", 0x40000004)),
    (Framing.INTERMEDIATE, struct.pack("<I", 0xC0000004)),
    (Framing.INTERMEDIATE, struct.pack("<I", 6)),
    (Framing.INTERMEDIATE, struct.pack("<I", 0x80000001)),
    (Framing.INTERMEDIATE, struct.pack("<I", MAX_PACKET + 4)),
    (Framing.PADDED, struct.pack("<I", 0)),
    (Framing.PADDED, struct.pack("<I", 3)),
    (Framing.PADDED, struct.pack("<I", 0x40000010)),
    (Framing.PADDED, struct.pack("<I", MAX_PACKET + 1)),
]


@pytest.mark.parametrize(("framing", "head"), REJECTED_HEADERS)
def test_bad_length_fields_are_rejected_from_the_header_alone(
    framing: Framing, head: bytes
) -> None:
    """No body is needed to refuse a bad length, so nothing huge is buffered first."""
    with pytest.raises(FramingError):
        PacketReader(framing).feed(head)


@pytest.mark.parametrize("framing", [Framing.INTERMEDIATE, Framing.PADDED])
@pytest.mark.parametrize("field", [0x40000004, 0xC0000004, 0x40000000])
def test_reserved_bit_is_refused_whatever_the_limit(framing: Framing, field: int) -> None:
    with pytest.raises(FramingError):
        PacketReader(framing, max_packet=1 << 32).feed(struct.pack("<I", field))


@pytest.mark.parametrize("framing", FRAMINGS)
def test_custom_limit(framing: Framing) -> None:
    ok = encode_packet(framing, bytes(1024), random_bytes=lambda n: bytes(n))
    assert PacketReader(framing, max_packet=1024).feed(ok) == [Packet(bytes(1024))]
    too_big = encode_packet(framing, bytes(1028), random_bytes=lambda n: bytes(n))
    with pytest.raises(FramingError):
        PacketReader(framing, max_packet=1024).feed(too_big[:4])


@given(st.sampled_from(FRAMINGS), st.binary(max_size=600), cuts_st)
def test_garbage_only_raises_framing_error_and_ignores_splits(
    framing: Framing, garbage: bytes, cuts: list[int]
) -> None:
    """Arbitrary bytes give packets or FramingError, the same however they are cut."""
    whole: list[Packet] | None
    try:
        whole = PacketReader(framing).feed(garbage)
    except FramingError:
        whole = None
    reader = PacketReader(framing)
    try:
        pieces: list[Packet] | None = feed_split(reader, garbage, cuts)
    except FramingError:
        pieces = None
    assert whole == pieces
    for packet in whole or []:
        assert packet.payload and len(packet.payload) % 4 == 0


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("length", [0, 1, 2, 3, 5, MAX_PACKET + 4])
def test_encoder_refuses_what_no_reader_accepts(framing: Framing, length: int) -> None:
    with pytest.raises(FramingError):
        encode_packet(framing, bytes(length))


@given(st.binary(min_size=4, max_size=4))
def test_quickack_confirm_encoding(confirm: bytes) -> None:
    # Abridged: byte-swapped, so a confirm with the top bit set starts with 0x80+.
    assert encode_quickack(Framing.ABRIDGED, confirm) == confirm[::-1]
    value = int.from_bytes(confirm, "little") | 0x80000000
    for framing in (Framing.INTERMEDIATE, Framing.PADDED):
        wire = encode_quickack(framing, confirm)
        assert wire == struct.pack("<I", value)
        assert wire[3] & 0x80


@pytest.mark.parametrize("confirm", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_quickack_confirm_must_be_four_bytes(confirm: bytes) -> None:
    for framing in FRAMINGS:
        with pytest.raises(FramingError):
            encode_quickack(framing, confirm)


def test_tags_and_partial_buffering() -> None:
    assert Framing.from_tag(b"\xef" * 4) is Framing.ABRIDGED
    assert Framing.from_tag(b"\xee" * 4) is Framing.INTERMEDIATE
    assert Framing.from_tag(b"\xdd" * 4) is Framing.PADDED
    assert Framing.from_tag(b"\xef\xef\xef\xee") is None
    reader = PacketReader(Framing.INTERMEDIATE)
    wire = encode_packet(Framing.INTERMEDIATE, b"abcdefgh")
    assert reader.feed(wire[:7]) == []
    assert reader.buffered == 7
    assert reader.feed(wire[7:] + wire[:2]) == [Packet(b"abcdefgh")]
    assert reader.buffered == 2
