"""ReplayCache against a naive model: same answers, bounded size, horizon rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.replay import ReplayCache, ReplayGuard


class Model:
    """The documented behaviour, written as plainly as possible (lists, O(n))."""

    def __init__(self, max_entries: int, window: float) -> None:
        self.max_entries = max_entries
        self.window = window
        self.entries: list[tuple[bytes, float]] = []
        self.horizon = float("-inf")

    def seen(self, key: bytes, now: float) -> bool:
        self.entries = [(k, t) for k, t in self.entries if t >= now - self.window]
        if any(k == key for k, _ in self.entries):
            return True
        self.entries.append((key, now))
        if len(self.entries) > self.max_entries:
            _, evicted = self.entries.pop(0)
            self.horizon = max(self.horizon, evicted)
        return False


keys = st.sampled_from([bytes([i]) * 16 for i in range(12)])
steps = st.lists(st.tuples(keys, st.floats(0, 40, allow_nan=False)), max_size=80)


@given(st.integers(1, 10), st.floats(1, 100), steps)
def test_matches_the_model_and_stays_bounded(
    max_entries: int, window: float, ops: list[tuple[bytes, float]]
) -> None:
    cache = ReplayCache(max_entries, window)
    model = Model(max_entries, window)
    now = 1000.0
    for key, advance in ops:
        now += advance
        assert cache.seen(key, now) == model.seen(key, now)
        assert len(cache) == len(model.entries) <= max_entries
        assert cache.horizon == model.horizon


def test_window_expiry() -> None:
    cache = ReplayCache(10, 60)
    assert not cache.seen(b"a", 100)
    assert cache.seen(b"a", 130)
    assert cache.seen(b"a", 160)  # exactly one window later: still remembered
    assert not cache.seen(b"a", 160.5)  # forgotten, recorded again
    assert cache.seen(b"a", 161)
    assert cache.horizon == float("-inf")  # expiry never moves the horizon


def test_expired_entries_are_dropped_not_just_ignored() -> None:
    cache = ReplayCache(1000, 10)
    for i in range(100):
        cache.seen(i.to_bytes(16, "big"), float(i))
    assert len(cache) == 11  # entries from the last 10 seconds, inclusive
    cache.seen(b"late", 1000.0)
    assert len(cache) == 1


def test_horizon_moves_on_capacity_eviction_only() -> None:
    cache = ReplayCache(3, 1000)
    for i, t in enumerate((10.0, 20.0, 30.0)):
        assert not cache.seen(bytes([i]), t)
    assert cache.horizon == float("-inf")
    assert not cache.seen(b"x", 40)  # full: the entry from t=10 goes
    assert cache.horizon == 10.0 and len(cache) == 3
    assert not cache.seen(bytes([0]), 41)  # the evicted key is unknown again
    assert cache.horizon == 20.0
    assert cache.seen(b"x", 42)
    assert cache.horizon == 20.0  # a hit evicts nothing


def test_a_hit_does_not_refresh_the_entry() -> None:
    cache = ReplayCache(10, 10)
    cache.seen(b"k", 0)
    assert cache.seen(b"k", 9)
    assert not cache.seen(b"k", 10.5)


@pytest.mark.parametrize(("max_entries", "window"), [(0, 10), (-1, 10), (1, 0), (1, -5)])
def test_bad_parameters(max_entries: int, window: float) -> None:
    with pytest.raises(ValueError):
        ReplayCache(max_entries, window)


def test_is_a_replay_guard() -> None:
    guard: ReplayGuard = ReplayCache(1, 1)
    assert not guard.seen(b"k", 0) and guard.seen(b"k", 0)
    assert guard.horizon == float("-inf")
