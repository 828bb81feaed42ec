"""The replay cache's saved form and its store: round trips, damage, clean and unclean stops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.ops.replay_shared import SharedReplayCache, create_region
from mtproxy.ops.replay_store import REPLAY_FILE, ReplayStore
from mtproxy.protocol.replay import ReplayCache, Snapshot, decode_snapshot, encode_snapshot

NOW = 1_700_000_000.0
keys = st.binary(min_size=16, max_size=16)
entries_st = st.lists(st.tuples(keys, st.floats(NOW - 1000, NOW, allow_nan=False)), max_size=50)


@given(entries_st, st.floats(allow_nan=False, allow_infinity=True), st.booleans(),
       st.integers(1, 60))
@settings(max_examples=60)
def test_the_saved_form_round_trips_and_keeps_the_newest(
    entries: list[tuple[bytes, float]], horizon: float, clean: bool, limit: int
) -> None:
    data = encode_snapshot(Snapshot(entries, horizon), NOW, clean)
    back = decode_snapshot(data, limit)
    assert back.entries == entries[-limit:] if entries else back.entries == []
    assert back.clean is clean and back.saved_at == NOW
    assert back.horizon == horizon or (math.isinf(horizon) and back.horizon == horizon)
    assert len(data) == 32 + 24 * len(entries) + 16  # bounded: 24 bytes an entry


@given(entries_st, st.integers(0, 10_000), st.integers(1, 255))
@settings(max_examples=60)
def test_any_damage_is_refused(entries: list[tuple[bytes, float]], pos: int, flip: int) -> None:
    data = bytearray(encode_snapshot(Snapshot(entries, NOW - 5), NOW, True))
    data[pos % len(data)] ^= flip
    with pytest.raises(ValueError):
        decode_snapshot(bytes(data), 100)
    with pytest.raises(ValueError):
        decode_snapshot(bytes(data[: pos % len(data)]), 100)


def test_a_clean_stop_restores_entries_and_nothing_more(tmp_path: Path) -> None:
    cache = ReplayCache(100, 720.0)
    assert not cache.seen(b"a" * 16, NOW - 10)
    store = ReplayStore(cache, tmp_path, 100)
    assert store.save(clean=True)
    fresh = ReplayCache(100, 720.0)
    ReplayStore(fresh, tmp_path, 100).load(NOW)
    assert fresh.seen(b"a" * 16, NOW)  # still a replay
    assert fresh.horizon == float("-inf")  # nothing else refused


def test_an_unclean_file_or_none_refuses_hellos_from_before_the_start(tmp_path: Path) -> None:
    cache = ReplayCache(100, 720.0)
    cache.seen(b"b" * 16, NOW - 10)
    ReplayStore(cache, tmp_path, 100).save()  # periodic: not clean
    after_crash = ReplayCache(100, 720.0)
    ReplayStore(after_crash, tmp_path, 100).load(NOW + 0.5)
    assert after_crash.seen(b"b" * 16, NOW)
    assert after_crash.horizon == math.floor(NOW + 0.5) - 1
    first_start = ReplayCache(100, 720.0)
    ReplayStore(first_start, tmp_path / "empty", 100).load(NOW)
    assert first_start.horizon == NOW - 1


def test_a_damaged_file_is_said_and_treated_as_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / REPLAY_FILE).write_bytes(b"not a cache")
    cache = ReplayCache(10, 720.0)
    ReplayStore(cache, tmp_path, 10).load(NOW)
    assert cache.horizon == NOW - 1
    assert "unusable" in caplog.text


def test_entries_outside_the_window_are_not_restored(tmp_path: Path) -> None:
    cache = ReplayCache(100, 720.0)
    cache.seen(b"old" + bytes(13), NOW - 700)
    cache.seen(b"new" + bytes(13), NOW - 10)
    ReplayStore(cache, tmp_path, 100).save(clean=True)
    later = ReplayCache(100, 720.0)
    ReplayStore(later, tmp_path, 100).load(NOW + 100)
    assert len(later) == 1


def test_a_periodic_save_skips_an_unchanged_cache(tmp_path: Path) -> None:
    cache = ReplayCache(100, 720.0)
    cache.seen(b"c" * 16, NOW)
    store = ReplayStore(cache, tmp_path, 100)
    assert store.save()
    assert not store.save()
    cache.seen(b"d" * 16, NOW)
    assert store.save()
    assert store.save(clean=True)  # a stop always writes, marked clean


def test_the_shared_region_loads_once_and_exports_in_order(tmp_path: Path) -> None:
    fd = create_region(50, 720.0)
    first, second = SharedReplayCache(fd), SharedReplayCache(fd)
    try:
        saved = Snapshot([(bytes([i]) * 16, NOW - 100 + i) for i in range(10)], NOW - 500)
        assert first.restore(saved, NOW)
        assert not second.restore(Snapshot([(b"z" * 16, NOW)], NOW), NOW)
        assert second.seen(bytes([3]) * 16, NOW) and not second.seen(b"z" * 16, NOW)
        exported = first.export()
        assert exported.entries[:10] == saved.entries and exported.horizon == NOW - 500
        assert exported.entries[10][0] == b"z" * 16
    finally:
        first.close()
        second.close()
