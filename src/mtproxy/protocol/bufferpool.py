"""A few big reusable buffers for decoders that assemble messages split across reads.

Allocating a fresh megabyte for every big packet costs page faults, which on a
typical VM cost more than encrypting that megabyte. Keeping one spare buffer per
connection would instead pin a megabyte per idle client. So decoders of one event
loop share a small pool: they take a buffer while a message is being assembled and
give it back as soon as its consumer is done with it.
"""

from __future__ import annotations


class BufferPool:
    """At most ``keep`` idle buffers; :meth:`take` prefers the smallest that fits."""

    __slots__ = ("_free", "keep")

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._free: list[bytearray] = []

    @property
    def idle(self) -> int:
        """Bytes held by idle buffers."""
        return sum(len(buf) for buf in self._free)

    def take(self, size: int) -> bytearray:
        """A buffer of at least ``size`` bytes (its contents are garbage)."""
        best = -1
        for index, buf in enumerate(self._free):
            if len(buf) >= size and (best < 0 or len(buf) < len(self._free[best])):
                best = index
        if best >= 0:
            return self._free.pop(best)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        """Return a buffer nobody uses any more; the smallest is dropped when full."""
        self._free.append(buf)
        if len(self._free) > self.keep:
            self._free.remove(min(self._free, key=len))
