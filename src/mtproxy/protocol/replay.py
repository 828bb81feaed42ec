"""Replay protection: remember handshake nonces for a time window, in bounded memory.

A prober that records a real client's handshake and sends it again must be told
apart from the client. Every check is O(1); when the cache is full the oldest entry
goes, and the cache remembers how recent the newest evicted entry was so that a
fake-TLS timestamp older than that can be refused outright (the official server's
rule): under a flood the accepted window shrinks instead of replays getting through.

The cache outlives the process through :func:`encode_snapshot` /
:func:`decode_snapshot`, the file format the data directory keeps it in (see
:mod:`mtproxy.ops.replay_store`).

What is remembered and for how long: docs/protocol.md §5.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol


class ReplayGuard(Protocol):
    """What the handshake needs; a cache shared between workers implements it too."""

    def seen(self, key: bytes, now: float) -> bool:
        """Record ``key``; True if it was already recorded (a replay)."""
        ...

    @property
    def horizon(self) -> float:
        """Time of the newest entry evicted early; older timestamps cannot be checked."""
        ...


class ReplayCache:
    """In-process :class:`ReplayGuard` (an ordered dict of key -> time first seen)."""

    __slots__ = ("_entries", "_horizon", "max_entries", "window")

    def __init__(self, max_entries: int, window: float) -> None:
        if max_entries < 1 or window <= 0:
            raise ValueError("replay cache needs max_entries >= 1 and window > 0")
        self.max_entries = max_entries
        self.window = window
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._horizon = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def horizon(self) -> float:
        return self._horizon

    def export(self) -> Snapshot:
        """Every live entry, oldest first, and the horizon (to be saved)."""
        return Snapshot(list(self._entries.items()), self._horizon)

    def restore(self, snapshot: Snapshot, now: float) -> bool:
        """Take saved entries back (those still inside the window) and the horizon."""
        entries = self._entries
        for key, when in sorted(snapshot.entries, key=lambda e: e[1]):
            if when >= now - self.window and key not in entries:
                entries[key] = when
                if len(entries) > self.max_entries:
                    _, evicted = entries.popitem(last=False)
                    self._horizon = max(self._horizon, evicted)
        self._horizon = max(self._horizon, snapshot.horizon)
        return True

    def seen(self, key: bytes, now: float) -> bool:
        entries = self._entries
        cutoff = now - self.window
        while entries:
            oldest_key, oldest_time = next(iter(entries.items()))
            if oldest_time >= cutoff:
                break
            del entries[oldest_key]
        if key in entries:
            return True
        entries[key] = now
        if len(entries) > self.max_entries:
            _, evicted_time = entries.popitem(last=False)
            self._horizon = max(self._horizon, evicted_time)
        return False


# -- the saved form ----------------------------------------------------------------------------

KEY_LEN = 16
MAGIC = b"MTPRSAV1"
_HEAD = struct.Struct("<8sIddI")
_ENTRY = struct.Struct("<16sd")
_SUM_LEN = 16
FLAG_CLEAN = 1


@dataclass
class Snapshot:
    """A cache's entries (key, time first seen), oldest first, and its horizon."""

    entries: list[tuple[bytes, float]] = field(default_factory=list)
    horizon: float = float("-inf")
    #: Written when the process stopped normally: nothing seen is missing from it.
    clean: bool = False
    saved_at: float = 0.0


def encode_snapshot(snapshot: Snapshot, saved_at: float, clean: bool) -> bytes:
    """The file form: a header, fixed-size entries, and a checksum of all of it."""
    entries = snapshot.entries
    out = bytearray(
        _HEAD.pack(MAGIC, FLAG_CLEAN if clean else 0, saved_at, snapshot.horizon, len(entries))
    )
    for key, when in entries:
        out += _ENTRY.pack(bytes(key[:KEY_LEN]).ljust(KEY_LEN, b"\0"), when)
    out += hashlib.blake2b(out, digest_size=_SUM_LEN).digest()
    return bytes(out)


def decode_snapshot(data: bytes, max_entries: int) -> Snapshot:
    """Parse a saved cache; ValueError with the reason if it is not a whole, valid one.

    Only the newest ``max_entries`` are kept (the cache may have been made smaller).
    """
    if len(data) < _HEAD.size + _SUM_LEN:
        raise ValueError("too short")
    body, digest = data[:-_SUM_LEN], data[-_SUM_LEN:]
    if hashlib.blake2b(body, digest_size=_SUM_LEN).digest() != digest:
        raise ValueError("checksum mismatch (cut short or damaged)")
    magic, flags, saved_at, horizon, count = _HEAD.unpack_from(body, 0)
    if magic != MAGIC:
        raise ValueError("not a saved replay cache")
    if len(body) != _HEAD.size + count * _ENTRY.size:
        raise ValueError("entry count does not match the size")
    if not math.isfinite(saved_at) or math.isnan(horizon):
        raise ValueError("bad times")
    first = max(0, count - max_entries)
    entries = [
        _ENTRY.unpack_from(body, _HEAD.size + i * _ENTRY.size) for i in range(first, count)
    ]
    if not all(math.isfinite(when) for _, when in entries):
        raise ValueError("bad entry times")
    return Snapshot(
        [(bytes(k), float(t)) for k, t in entries], float(horizon), bool(flags & FLAG_CLEAN),
        float(saved_at),
    )

