"""The replay cache across restarts: saved in the data directory, loaded at start.

A hello or an obfuscated2 header recorded before a restart must still be refused
after it. The cache is saved atomically (temporary file, fsync, rename) every
:data:`SAVE_EVERY` seconds while it changes and once more when the process stops;
the file is bounded by the cache size (24 bytes an entry).

What a restart cannot know is what arrived after the last save when the process
did not stop cleanly (a crash, a kill, a power cut), or when there is no usable file
at all (the first start, a damaged file, an older version): then fake-TLS hellos
whose timestamps are older than the start are refused, for as long as the time
window would accept them, which covers every hello seen before. obfuscated2 headers
carry no time; those of the last seconds before a crash are the one gap.

With several workers the cache is shared; the first worker loads it, worker 0 saves
it periodically, and every worker saves it when it stops. Saves take a lock file, so
the last one to save (with the most entries) is the one left on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from mtproxy.protocol.replay import ReplayGuard, Snapshot, decode_snapshot, encode_snapshot
from mtproxy.state import atomic_write

log = logging.getLogger("mtproxy.replay")

REPLAY_FILE = "replay-cache"
SAVE_EVERY = 10.0


class SavableReplay(ReplayGuard, Protocol):
    def export(self) -> Snapshot: ...
    def restore(self, snapshot: Snapshot, now: float) -> bool: ...


class ReplayStore:
    def __init__(
        self, guard: SavableReplay, data_dir: Path, max_entries: int, *, periodic: bool = True
    ) -> None:
        self.guard = guard
        self.path = data_dir / REPLAY_FILE
        self.max_entries = max_entries
        self.periodic = periodic
        self._signature: object = None
        self._task: asyncio.Task[None] | None = None

    def load(self, now: float | None = None) -> None:
        """Put the saved cache back; refuse older hellos when it may be incomplete."""
        now = time.time() if now is None else now
        # Hello timestamps are whole seconds: those of the second the start falls in pass
        # (one second a prober would have to hit), every earlier one is refused.
        before_start = math.floor(now) - 1
        snapshot = self._read()
        if snapshot is None:
            snapshot = Snapshot([], before_start)
            why = "no saved replay cache"
        elif not snapshot.clean:
            snapshot.horizon = max(snapshot.horizon, before_start)
            why = "the replay cache was last saved by a process that did not stop cleanly"
        else:
            why = ""
        if self.guard.restore(snapshot, now) and why:
            log.info(
                "%s; fake-TLS hellos with timestamps before the start are refused until they "
                "age out of the time window", why,
            )  # fmt: skip

    def _read(self) -> Snapshot | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc.strerror or exc)
            return None
        try:
            return decode_snapshot(data, self.max_entries)
        except ValueError as exc:
            log.warning("%s is unusable (%s); starting without it", self.path, exc)
            return None

    def save(self, *, clean: bool = False) -> bool:
        """Write the cache now (at a stop: ``clean``); False if unchanged or not written."""
        try:
            with self._locked():
                return self._write(self.guard.export(), clean)
        except OSError as exc:
            log.warning("cannot save the replay cache to %s: %s", self.path, exc.strerror or exc)
            return False

    def _write(self, snapshot: Snapshot, clean: bool) -> bool:
        entries = snapshot.entries
        signature = (len(entries), entries[:1], entries[-1:], snapshot.horizon)
        if not clean and signature == self._signature:
            return False
        try:
            atomic_write(self.path, encode_snapshot(snapshot, time.time(), clean))
        except OSError as exc:
            log.warning("cannot save the replay cache to %s: %s", self.path, exc.strerror or exc)
            return False
        self._signature = signature
        return True

    def _write_locked(self, snapshot: Snapshot) -> bool:
        try:
            with self._locked():
                return self._write(snapshot, False)
        except OSError as exc:
            log.warning("cannot save the replay cache to %s: %s", self.path, exc.strerror or exc)
            return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Saves of several workers one after another, so the last export is the last file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / f".{REPLAY_FILE}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def start(self) -> None:
        if self.periodic and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY)
            # The copy is taken here, in the loop; the disk write happens off it.
            await asyncio.to_thread(self._write_locked, self.guard.export())

    async def stop(self) -> None:
        """Stop saving periodically, then save once more, marked as a clean stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.save(clean=True)
