"""The shared replay cache: as the in-process one, across processes, after crashes."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtproxy.ops.replay_shared import HEADER_SIZE, SharedReplayCache, create_region
from mtproxy.protocol.replay import ReplayCache

ROOT = Path(__file__).resolve().parents[2]

ops = st.lists(
    st.tuples(st.integers(0, 11), st.floats(0, 30, allow_nan=False)), min_size=1, max_size=300
)


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 9), window=st.floats(1, 100), steps=ops)
def test_matches_the_in_process_cache(
    capacity: int, window: float, steps: list[tuple[int, float]]
) -> None:
    fd = create_region(capacity, window)
    shared = SharedReplayCache(fd)
    local = ReplayCache(capacity, window)
    now = 1000.0
    try:
        for key_id, dt in steps:
            now += dt
            key = key_id.to_bytes(16, "big")
            assert shared.seen(key, now) == local.seen(key, now)
            assert shared.horizon == local.horizon
            assert len(shared) == len(local)
    finally:
        shared.close()
        os.close(fd)


def test_a_key_recorded_by_another_process_is_a_replay() -> None:
    fd = create_region(1000, 600.0)
    cache = SharedReplayCache(fd)
    key = os.urandom(16)
    child = (
        "import sys; from mtproxy.ops.replay_shared import SharedReplayCache as C; "
        f"c = C({fd}); print(c.seen(bytes.fromhex(sys.argv[1]), 5000.0))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    try:
        out = subprocess.run(
            [sys.executable, "-c", child, key.hex()], pass_fds=(fd,), env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert out.stdout.strip() == "False"  # first sighting, in the child
        assert cache.seen(key, 5001.0)  # the parent sees the child's entry
        again = subprocess.run(
            [sys.executable, "-c", child, key.hex()], pass_fds=(fd,), env=env,
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert again.stdout.strip() == "True"
    finally:
        cache.close()
        os.close(fd)


def test_a_holder_that_died_mid_update_cannot_let_replays_through() -> None:
    fd = create_region(100, 600.0)
    cache = SharedReplayCache(fd)
    try:
        for i in range(10):
            assert not cache.seen(bytes([i]) * 16, 100.0 + i)
        # What a worker killed between "dirty" and "clean" leaves behind.
        with open(f"/proc/self/fd/{fd}", "r+b") as fh:
            fh.seek(8 + 4 * 4)
            fh.write(struct.pack("<I", 1))
        assert not cache.seen(b"n" * 16, 200.0)  # the cache was cleared...
        assert cache.horizon == 109.0  # ...and nothing from before the crash is accepted
        assert len(cache) == 1
    finally:
        cache.close()
        os.close(fd)


def test_eviction_moves_the_horizon_and_keeps_probing_correct() -> None:
    fd = create_region(64, 1e9)
    cache = SharedReplayCache(fd)
    try:
        keys = [os.urandom(16) for _ in range(1000)]
        for i, key in enumerate(keys):
            assert not cache.seen(key, float(i))
        assert len(cache) == 64
        assert cache.horizon == 1000 - 64 - 1
        for key in keys[-64:]:
            assert cache.seen(key, 2000.0)
    finally:
        cache.close()
        os.close(fd)


def test_rejects_a_region_that_is_not_one() -> None:
    fd = os.memfd_create("junk")
    os.ftruncate(fd, HEADER_SIZE * 4)
    try:
        with pytest.raises(ValueError):
            SharedReplayCache(fd)
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        create_region(0, 1.0)
