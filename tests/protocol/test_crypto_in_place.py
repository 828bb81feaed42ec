"""in_place: the same bytes as a fresh update, with or without spare room after the data
(the compat run checks it with cryptography 38, whose update_into wants that room)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.crypto import aes_ctr, in_place

KEY, IV = bytes(range(32)), bytes(range(16, 32))


@given(st.lists(st.binary(max_size=300), max_size=6), st.booleans())
def test_in_place_matches_a_copying_update(chunks: list[bytes], as_view: bool) -> None:
    reference = aes_ctr(KEY, IV)
    ctx = aes_ctr(KEY, IV)
    for chunk in chunks:
        buf = bytearray(chunk)
        in_place(ctx, memoryview(buf) if as_view else buf)
        assert bytes(buf) == reference.update(chunk)


def test_in_place_on_a_slice_leaves_its_neighbours_alone() -> None:
    buf = bytearray(b"A" * 10 + b"B" * 100 + b"C" * 10)
    in_place(aes_ctr(KEY, IV), memoryview(buf)[10:110])
    assert buf[:10] == b"A" * 10 and buf[110:] == b"C" * 10
    assert bytes(buf[10:110]) == aes_ctr(KEY, IV).update(b"B" * 100)
