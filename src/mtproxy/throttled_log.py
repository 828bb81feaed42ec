"""Log lines that come in storms, summed up instead of repeated.

When a DC goes down, every client of it fails the same way within seconds; 4 000 lines
saying so bury everything else. The first line of a kind is logged at once; repeats
within ``period`` are counted and logged as one summary line when the period ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass


@dataclass
class _Kind:
    level: int
    message: str
    repeats: int = 0
    flush: asyncio.TimerHandle | None = None


class ThrottledLog:
    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self.logger = logger
        self.period = period
        self._kinds: dict[str, _Kind] = {}

    def log(self, level: int, key: str, message: str) -> None:
        """Log ``message`` unless a line of kind ``key`` went out less than a period ago."""
        kind = self._kinds.get(key)
        if kind is not None:
            kind.repeats += 1
            return
        self.logger.log(level, "%s", message)
        kind = self._kinds[key] = _Kind(level, message)
        kind.flush = asyncio.get_running_loop().call_later(self.period, self._flush, key)

    def _flush(self, key: str) -> None:
        kind = self._kinds.pop(key)
        if kind.repeats:
            self.logger.log(
                kind.level, "%s (and %d more times in %gs)", kind.message, kind.repeats,
                self.period,
            )  # fmt: skip

    def close(self) -> None:
        """Write the pending summaries now (at shutdown)."""
        for key, kind in list(self._kinds.items()):
            if kind.flush is not None:
                kind.flush.cancel()
            self._flush(key)
