"""The record cutter: TLS 1.3-shaped sizes, order kept, no byte lost or added."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.faketls import RecordReader
from mtproxy.protocol.tlsrecords import (
    FULL_HEADER,
    FULL_RECORD,
    MIN_RECORD,
    header,
    record_pieces,
    record_sizes,
    wrapped_size,
)


def test_constants_are_tls13s() -> None:
    assert FULL_RECORD == 2**14 + 1 + 16
    assert MIN_RECORD == 1 + 1 + 16
    assert b"\x17\x03\x03" + FULL_RECORD.to_bytes(2, "big") == FULL_HEADER
    assert header(18) == b"\x17\x03\x03\x00\x12"


@given(st.integers(0, 10 * FULL_RECORD))
def test_sizes_are_legal_and_add_up(total: int) -> None:
    sizes = record_sizes(total)
    if total < MIN_RECORD:
        assert sizes == []
        return
    assert sum(sizes) == total
    assert all(MIN_RECORD <= size <= FULL_RECORD for size in sizes)
    # Full records first: only the last two may be short.
    assert all(size == FULL_RECORD for size in sizes[:-2])
    assert len(sizes) == -(-total // FULL_RECORD)
    assert wrapped_size(total) == total + 5 * len(sizes)


@given(st.binary(max_size=MIN_RECORD - 1), st.binary(max_size=3 * FULL_RECORD + 40))
def test_pieces_carry_held_then_data_in_records(held: bytes, data: bytes) -> None:
    total = len(held) + len(data)
    if total < MIN_RECORD:
        return
    wire = b"".join(record_pieces(held, memoryview(data), total))
    assert len(wire) == wrapped_size(total)
    reader = RecordReader()
    buf = bytearray(wire)
    n = reader.unwrap(memoryview(buf), len(buf))
    assert bytes(buf[:n]) == held + data
    pos, sizes = 0, []
    while pos < len(wire):
        size = int.from_bytes(wire[pos + 3 : pos + 5], "big")
        sizes.append(size)
        pos += 5 + size
    assert sizes == record_sizes(total)
