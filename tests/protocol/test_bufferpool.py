"""BufferPool keeps a few big buffers and hands out the smallest that fits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.bufferpool import BufferPool


def test_take_prefers_the_smallest_fitting_buffer() -> None:
    pool = BufferPool(keep=3)
    small, big = bytearray(100), bytearray(1000)
    pool.give(big)
    pool.give(small)
    assert pool.take(50) is small
    assert pool.take(50) is big
    fresh = pool.take(50)
    assert fresh is not small and fresh is not big and len(fresh) == 50


def test_too_small_buffers_are_not_handed_out() -> None:
    pool = BufferPool()
    pool.give(bytearray(10))
    assert len(pool.take(11)) == 11
    assert pool.idle == 10


@given(st.lists(st.integers(min_value=1, max_value=10_000), max_size=30),
       st.integers(min_value=1, max_value=5))
def test_at_most_keep_buffers_and_the_biggest_stay(sizes: list[int], keep: int) -> None:
    pool = BufferPool(keep=keep)
    for size in sizes:
        pool.give(bytearray(size))
    assert pool.idle == sum(sorted(sizes, reverse=True)[:keep])
