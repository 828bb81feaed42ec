"""Replay protection: remember handshake nonces for a time window, in bounded memory.

A prober that records a real client's handshake and sends it again must be told
apart from the client. Every check is O(1); when the cache is full the oldest entry
goes, and the cache remembers how recent the newest evicted entry was so that a
fake-TLS timestamp older than that can be refused outright (the official server's
rule): under a flood the accepted window shrinks instead of replays getting through.

What is remembered and for how long: docs/protocol.md §5.
"""

from __future__ import annotations

from collections import OrderedDict
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
