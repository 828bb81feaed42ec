"""Watch the mask host from start-up on: reachable or not, and its TLS 1.3 profile.

A mask host that is down is an operator error a prober can see (the proxy accepts
TCP, then closes, where the site would have answered), so it is said loudly: a
WARNING that names the host and the fix, repeated while it lasts, and the
``mask_up`` gauge on the stats port.

The measured profile shapes the fake ServerHello (see
:mod:`mtproxy.protocol.tlsprofile`). It is kept in the data directory, so a restart
while the site is unreachable still answers like the site did; with no profile ever
measured, one plausible size is drawn once, stored, and used until one is (never a
fresh size per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtproxy.mask.probe import MaskUnreachable, probe
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.protocol.faketls import ServerHelloShape
from mtproxy.protocol.tlsprofile import TlsProfile, drawn_profile
from mtproxy.state import atomic_write

log = logging.getLogger("mtproxy.mask")

PROFILE_FILE = "mask-profile.json"
#: How often a WARNING about a mask host that stays down is repeated.
REPEAT_WARNING = 3600.0


@dataclass
class MaskHealth:
    """What the stats port shows about the mask host."""

    #: 1 reachable, 0 not, -1 not checked yet (or no mask host).
    up: int = -1
    checked: float = 0.0
    #: Where the fake ServerHello's shape comes from: fetched, cached, drawn.
    profile_source: str = ""
    #: Size of the fake answer's application-data record.
    record_bytes: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {"up": self.up, "checked": self.checked, "profile_source": self.profile_source,
                "record_bytes": self.record_bytes}  # fmt: skip


#: Record sizes that differ by this much count as the same (ECDSA signatures vary).
SIZE_SLACK = 8


def _alike(a: TlsProfile, b: TlsProfile) -> bool:
    return (
        (a.extension_order, a.cipher_suite, a.key_share_group) ==
        (b.extension_order, b.cipher_suite, b.key_share_group)
        and len(a.records) == len(b.records)
        and all(abs(x - y) <= SIZE_SLACK for x, y in zip(a.records, b.records, strict=True))
    )


class MaskMonitor:
    def __init__(
        self,
        mask: Endpoint | None,
        sni: str | None,
        data_dir: Path,
        apply: Callable[[ServerHelloShape], None],
        *,
        interval: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        self.mask = mask
        self.sni = sni
        self.path = data_dir / PROFILE_FILE
        self.apply = apply
        self.interval = interval
        self.timeout = timeout
        self.health = MaskHealth()
        self.profile: TlsProfile | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned_at = float("-inf")
        self._drawn_warned = False
        self._candidate: TlsProfile | None = None

    @property
    def mask_name(self) -> str:
        return format_endpoint(self.mask) if self.mask is not None else "off"

    # -- the stored profile --------------------------------------------------------------

    def load(self) -> None:
        """Use the stored profile of this mask host and name, else draw one (unsaved yet)."""
        stored = self._read()
        if stored is not None:
            self._use(stored, "cached" if stored.source == "fetched" else "drawn")
        else:
            self._use(drawn_profile(time.time(), self.mask_name, self.sni or ""), "drawn")
            if self.mask is None or self.sni is None:
                self._store(self.profile)

    def _read(self) -> TlsProfile | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s); measuring the mask host again", self.path, exc)
            return None
        try:
            profile = TlsProfile.from_json(raw)
        except ValueError as exc:
            log.warning("%s is not a usable profile (%s); it will be replaced", self.path, exc)
            return None
        if (profile.mask, profile.sni) != (self.mask_name, self.sni or ""):
            return None  # measured for another mask host or name
        return profile

    def _store(self, profile: TlsProfile | None) -> None:
        if profile is None:
            return
        try:
            atomic_write(self.path, profile.to_json(), 0o644)
        except OSError as exc:
            log.warning("cannot save the mask profile to %s: %s", self.path, exc.strerror or exc)

    def _use(self, profile: TlsProfile, source: str) -> None:
        self.profile = profile
        shape = profile.shape()
        self.health.profile_source = source
        self.health.record_bytes = shape.appdata_len
        self.apply(shape)

    # -- checking ------------------------------------------------------------------------

    def start(self) -> None:
        if self.mask is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        """Stop checking (a reload replaced this watcher)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self.check()
            # A little jitter, so that workers and restarts do not check in step.
            await asyncio.sleep(self.interval * random.uniform(0.9, 1.1))

    async def check(self) -> None:
        """One check: reachability, and the profile when fake TLS needs it."""
        if self.mask is None:
            return
        now = time.time()
        was = self.health.up
        try:
            result = await probe(self.mask, self.sni, self.timeout)
        except MaskUnreachable as exc:
            self.health.up, self.health.checked = 0, now
            self._unreachable(str(exc), now)
            return
        self.health.up, self.health.checked = 1, now
        if was == 0:
            log.warning("mask host %s is reachable again", self.mask_name)
        elif was == -1:
            log.info("mask host %s is reachable", self.mask_name)
        if result.profile is not None:
            measured = dataclasses.replace(
                result.profile, source="fetched", mask=self.mask_name, sni=self.sni or "",
                time=now,
            )  # fmt: skip
            self._adopt(measured)
        elif result.problem is not None and self.sni is not None:
            log.warning(
                "mask host %s answers a browser's TLS 1.3 hello for %s, but %s; fake-TLS "
                "replies cannot look like it (they keep the %s shape); fix: choose a --mask "
                "site that speaks TLS 1.3 for your --tls-domain",
                self.mask_name, self.sni, result.problem, self.health.profile_source,
            )
            self._keep_drawn()

    def _adopt(self, measured: TlsProfile) -> None:
        """Use a measurement; a change is taken only once two checks in a row agree.

        A flight read on a busy machine can end early at a pause, and an ECDSA
        signature varies by a byte or two: neither should change the fake answer.
        """
        current = self.profile
        if current is not None and current.source == "fetched" and _alike(current, measured):
            self._candidate = None
            self._use(current, "fetched")
            return
        first = current is None or current.source != "fetched"
        if not first and (self._candidate is None or not _alike(self._candidate, measured)):
            self._candidate = measured
            return
        self._candidate = None
        log.info("mask host %s: %s", self.mask_name, measured.describe())
        self._store(measured)
        self._use(measured, "fetched")

    def _unreachable(self, reason: str, now: float) -> None:
        if self.health.up == 0 and now - self._warned_at < REPEAT_WARNING and self._warned_at > 0:
            log.debug("mask host %s still unreachable: %s", self.mask_name, reason)
            return
        self._warned_at = now
        log.warning(
            "mask host %s is unreachable: %s. Connections that fail the handshake (a "
            "prober's) are reset instead of being shown the site, which a censor can tell; "
            "fix: start the site, or point --mask at a reachable web site (HOST:PORT)",
            self.mask_name, reason,
        )
        self._keep_drawn()

    def _keep_drawn(self) -> None:
        """No measurement yet: the drawn profile becomes the stored one, said once."""
        if self.health.profile_source != "drawn" or self._drawn_warned:
            return
        self._drawn_warned = True
        if self.profile is not None and self.profile.source == "drawn":
            self._store(self.profile)
        log.warning(
            "no TLS profile of %s has been measured yet, nor is one stored in %s; fake-TLS "
            "replies use one fixed record size drawn once (%d B) until the site can be measured",
            self.mask_name, self.path.parent, self.health.record_bytes,
        )
