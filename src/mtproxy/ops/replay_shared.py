"""A replay cache shared by all worker processes.

Without it, a handshake recorded from a real client and replayed to another worker
is accepted (the official server and the Python alternative both have this hole).

Why shared memory with a lock, not an arbiter process: the handshake calls
``seen()`` synchronously in the event loop, so the answer must come without a round
trip; one lookup here costs two ``fcntl`` calls and a few struct operations.

Layout of the mapping (a memfd or an unlinked temporary file, inherited by every
worker):

- header: magic, ring capacity, table size, ring head and count, a dirty flag, the
  horizon, the window and a random hash salt;
- table: ``slots`` entries of (ring index + 1, 32-bit hash), open addressing with
  linear probing, load factor at most 1/2, deletion by backward shift (no
  tombstones, so probes stay short forever);
- ring: ``capacity`` entries of (16-byte key, time first seen) in insertion order,
  so the oldest entry is always at ``head``: expiry and eviction are O(1).

Semantics match :class:`mtproxy.protocol.replay.ReplayCache`: entries older than
the window are dropped, and when the ring is full the oldest entry is evicted and
the horizon moves up to its time. The lock is a POSIX record lock, which the
kernel drops if its holder dies; a holder that died half-way leaves the dirty flag
set, and the next one clears the cache and moves the horizon past everything it
held, so a crash can never let a replay through.

Across restarts the cache is saved to the data directory (:meth:`export`) and the
first worker to start loads it back (:meth:`restore`; a flag in the header makes
the others skip it).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import tempfile

from mtproxy.protocol.replay import Snapshot

log = logging.getLogger("mtproxy.replay")

MAGIC = b"MTPRPLY1"
_HEADER = struct.Struct("<8sIIIIIIdd16s")
_H_HEAD = 8 + 4 * 2
_COUNTS = struct.Struct("<III")  # head, count, dirty
_LOADED = struct.Struct("<I")  # set once a saved cache was loaded into the region
_H_LOADED = 8 + 4 * 5
_HORIZON = struct.Struct("<d")
_H_HORIZON = 8 + 4 * 6
_ENTRY = struct.Struct("<II")  # ring index + 1 (0 = empty), hash32
_RING = struct.Struct("<16sd")
HEADER_SIZE = 64
KEY_LEN = 16


def _table_slots(capacity: int) -> int:
    slots = 8
    while slots < 2 * capacity:
        slots *= 2
    return slots


def region_size(capacity: int) -> int:
    return HEADER_SIZE + _table_slots(capacity) * _ENTRY.size + capacity * _RING.size


def create_region(capacity: int, window: float) -> int:
    """A new zeroed, initialised region; returns its file descriptor (inheritable)."""
    if capacity < 1 or window <= 0:
        raise ValueError("replay cache needs capacity >= 1 and window > 0")
    size = region_size(capacity)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("mtproxy-replay", 0)
    else:  # pragma: no cover - non-Linux
        fd, path = tempfile.mkstemp(prefix="mtproxy-replay-")
        os.unlink(path)
    os.ftruncate(fd, size)
    with mmap.mmap(fd, size) as mem:
        _HEADER.pack_into(
            mem, 0, MAGIC, capacity, _table_slots(capacity), 0, 0, 0, 0,
            float("-inf"), window, os.urandom(16),
        )  # fmt: skip
    os.set_inheritable(fd, True)
    return fd


class SharedReplayCache:
    """:class:`ReplayGuard` over a region made by :func:`create_region`."""

    __slots__ = ("_fd", "_mask", "_mem", "_ring_at", "_salt", "capacity", "slots", "window")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        size = os.fstat(fd).st_size
        self._mem = mmap.mmap(fd, size)
        magic, capacity, slots, _h, _c, _d, _pad, _hz, window, salt = _HEADER.unpack_from(
            self._mem, 0
        )
        if magic != MAGIC or size != region_size(capacity):
            raise ValueError("not a replay cache region")
        self.capacity: int = capacity
        self.slots: int = slots
        self.window: float = window
        self._mask = slots - 1
        self._salt: bytes = salt
        self._ring_at = HEADER_SIZE + slots * _ENTRY.size

    def close(self) -> None:
        self._mem.close()

    def __len__(self) -> int:
        self._lock()
        try:
            return int(_COUNTS.unpack_from(self._mem, _H_HEAD)[1])
        finally:
            self._unlock()

    @property
    def horizon(self) -> float:
        mem = self._mem
        # Two equal reads in a row: never a half-written value.
        while True:
            first = _HORIZON.unpack_from(mem, _H_HORIZON)[0]
            if _HORIZON.unpack_from(mem, _H_HORIZON)[0] == first:
                return float(first)

    def _lock(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)

    def _unlock(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)

    def _hash(self, key: bytes) -> int:
        digest = hashlib.blake2b(key, digest_size=4, key=self._salt).digest()
        return int.from_bytes(digest, "little")

    def seen(self, key: bytes, now: float) -> bool:
        key = bytes(key[:KEY_LEN]).ljust(KEY_LEN, b"\0")
        h = self._hash(key)
        self._lock()
        try:
            return self._seen_locked(key, h, now)
        finally:
            self._unlock()

    def _seen_locked(self, key: bytes, h: int, now: float) -> bool:
        mem = self._mem
        head, count, dirty = _COUNTS.unpack_from(mem, _H_HEAD)
        if dirty:
            head, count = self._recover(head, count)
        _COUNTS.pack_into(mem, _H_HEAD, head, count, 1)
        head, count = self._expire(head, count, now - self.window)
        slot, found = self._find(key, h)
        if not found:
            if count == self.capacity:
                evicted = _RING.unpack_from(mem, self._ring_at + head * _RING.size)[1]
                head, count = self._drop_oldest(head, count)
                if evicted > self.horizon:
                    _HORIZON.pack_into(mem, _H_HORIZON, evicted)
                slot, _ = self._find(key, h)
            pos = (head + count) % self.capacity
            _RING.pack_into(mem, self._ring_at + pos * _RING.size, key, now)
            _ENTRY.pack_into(mem, HEADER_SIZE + slot * _ENTRY.size, pos + 1, h)
            count += 1
        _COUNTS.pack_into(mem, _H_HEAD, head, count, 0)
        return found

    def export(self) -> Snapshot:
        """Every live entry, oldest first, and the horizon; the lock is held for one copy."""
        mem = self._mem
        self._lock()
        try:
            head, count, dirty = _COUNTS.unpack_from(mem, _H_HEAD)
            ring = bytes(mem[self._ring_at : self._ring_at + self.capacity * _RING.size])
            horizon = self.horizon
        finally:
            self._unlock()
        if dirty:  # a worker died mid-update: nothing in it can be trusted
            return Snapshot([], horizon)
        entries = []
        for i in range(count):
            key, when = _RING.unpack_from(ring, ((head + i) % self.capacity) * _RING.size)
            entries.append((bytes(key), float(when)))
        return Snapshot(entries, horizon)

    def restore(self, snapshot: Snapshot, now: float) -> bool:
        """Load a saved cache once per region (False if another worker already did)."""
        mem = self._mem
        self._lock()
        try:
            if _LOADED.unpack_from(mem, _H_LOADED)[0]:
                return False
            for key, when in sorted(snapshot.entries, key=lambda e: e[1]):
                if when >= now - self.window:
                    key = bytes(key[:KEY_LEN]).ljust(KEY_LEN, b"\0")
                    self._seen_locked(key, self._hash(key), when)
            if snapshot.horizon > self.horizon:
                _HORIZON.pack_into(mem, _H_HORIZON, snapshot.horizon)
            _LOADED.pack_into(mem, _H_LOADED, 1)
            return True
        finally:
            self._unlock()

    def _find(self, key: bytes, h: int) -> tuple[int, bool]:
        """The slot holding ``key``, or the empty slot where it would go."""
        mem, mask, ring_at = self._mem, self._mask, self._ring_at
        slot = h & mask
        while True:
            ref, stored = _ENTRY.unpack_from(mem, HEADER_SIZE + slot * _ENTRY.size)
            if not ref:
                return slot, False
            if stored == h and mem[ring_at + (ref - 1) * _RING.size :][:KEY_LEN] == key:
                return slot, True
            slot = (slot + 1) & mask

    def _expire(self, head: int, count: int, cutoff: float) -> tuple[int, int]:
        mem, ring_at = self._mem, self._ring_at
        while count and _RING.unpack_from(mem, ring_at + head * _RING.size)[1] < cutoff:
            head, count = self._drop_oldest(head, count)
        return head, count

    def _drop_oldest(self, head: int, count: int) -> tuple[int, int]:
        mem, mask = self._mem, self._mask
        key = bytes(mem[self._ring_at + head * _RING.size :][:KEY_LEN])
        h = self._hash(key)
        slot = h & mask
        while _ENTRY.unpack_from(mem, HEADER_SIZE + slot * _ENTRY.size)[0] != head + 1:
            slot = (slot + 1) & mask
        self._delete(slot)
        return (head + 1) % self.capacity, count - 1

    def _delete(self, hole: int) -> None:
        """Backward-shift deletion: later entries of the probe run move up into the hole."""
        mem, mask = self._mem, self._mask
        j = hole
        while True:
            j = (j + 1) & mask
            ref, h = _ENTRY.unpack_from(mem, HEADER_SIZE + j * _ENTRY.size)
            if not ref:
                break
            home = h & mask
            if ((j - home) & mask) >= ((j - hole) & mask):
                _ENTRY.pack_into(mem, HEADER_SIZE + hole * _ENTRY.size, ref, h)
                hole = j
        _ENTRY.pack_into(mem, HEADER_SIZE + hole * _ENTRY.size, 0, 0)

    def _recover(self, head: int, count: int) -> tuple[int, int]:
        """A previous holder died mid-update: forget everything, but refuse its era."""
        mem = self._mem
        newest = float("-inf")
        for i in range(min(count, self.capacity)):
            pos = (head + i) % self.capacity
            newest = max(newest, _RING.unpack_from(mem, self._ring_at + pos * _RING.size)[1])
        if newest > self.horizon:
            _HORIZON.pack_into(mem, _H_HORIZON, newest)
        start = HEADER_SIZE
        mem[start : self._ring_at] = bytes(self._ring_at - start)
        log.warning("replay cache: a worker died while updating it; cache cleared")
        return 0, 0
