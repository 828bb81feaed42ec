"""Per-user rate limits: token buckets that pause reading instead of dropping bytes.

The relay path already compares every read's running total with
``UserStats.bytes_limit`` (the quota check). A user with a rate limit gets that
mark set a little ahead of where the byte counters are, so the shaper runs only
once per few kilobytes of that user's traffic, and a user without limits pays
nothing beyond the comparison that was already there.

Each direction has a bucket (``rate`` bytes per second, ``burst`` bytes deep). When
the relay crosses the mark, :meth:`UserShaper.charge` takes the bytes moved since the
last charge out of the buckets. A bucket in debt throttles its direction for all of
the user's sessions in this process at once: uploads by pausing the client sockets,
downloads by pausing the upstream sockets (in middle-proxy mode, where an upstream
is shared, by pausing the client's requests instead). A timer resumes them when the
debt is paid and enough tokens are back for one read of every session: they pause and
resume together, their reads are cut to a size that suits the rate
(:attr:`Bucket.chunk`), and each gets its turn in the event loop's next round, so
they share the rate. The achieved rate is exact over seconds, bursty below.

With several workers each worker shapes its own share (the rate divided by the
number of workers; see ``ops/server.py``).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: Seconds of traffic a full bucket holds (never less than MIN_BURST bytes).
BURST_SECONDS = 0.25
MIN_BURST = 16 * 1024
#: At most this many bytes pass between two charges of a user that has tokens left.
MIN_STEP = 8 * 1024
#: Reads of a shaped direction are cut to a sixteenth of a second of its rate, within
#: these bounds.
MIN_CHUNK, MAX_CHUNK = 4 * 1024, 64 * 1024

UP, DOWN = 1, 2


class UserCounters(Protocol):
    """What the shaper uses of a user's stats (UserStats)."""

    bytes_from_client: int
    bytes_to_client: int
    rate_mark: int

    def rearm(self) -> None: ...


class Shaped(Protocol):
    """A session the shaper can hold (ClientConnection)."""

    def throttle(self, direction: int, on: bool) -> None: ...
    def cut_reads(self, up: int, down: int) -> None:
        """Read at most this much at once each way (0: no cut)."""


class Bucket:
    """One direction of one user."""

    __slots__ = ("burst", "chunk", "rate", "seen", "stamp", "throttled_seconds",
                 "throttled_since", "tokens")  # fmt: skip

    def __init__(self, rate: float, now: float, seen: int) -> None:
        self.rate = rate
        self.burst = self.chunk = 0
        self.set_rate(rate)
        self.tokens = float(self.burst)
        self.stamp = now
        self.seen = seen
        #: Loop time the current throttle began (None while flowing), and the sum of
        #: the throttles that ended.
        self.throttled_since: float | None = None
        self.throttled_seconds = 0.0

    def set_rate(self, rate: float) -> None:
        self.rate = rate
        self.burst = int(max(rate * BURST_SECONDS, MIN_BURST))
        self.chunk = int(min(max(rate / 16, MIN_CHUNK), MAX_CHUNK))

    def charge(self, now: float, counter: int) -> float:
        """Refill for the time passed, take what moved; the tokens left (negative: debt)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        tokens -= counter - self.seen
        self.tokens, self.stamp, self.seen = tokens, now, counter
        return tokens

    def throttled_total(self, now: float) -> float:
        since = self.throttled_since
        return self.throttled_seconds + (now - since if since is not None else 0.0)


class UserShaper:
    """The buckets of one user in this process, and the sessions they hold back."""

    __slots__ = ("down", "loop", "sessions", "timer", "up", "user")

    def __init__(self, user: UserCounters, loop: asyncio.AbstractEventLoop) -> None:
        self.user = user
        self.loop = loop
        self.up: Bucket | None = None
        self.down: Bucket | None = None
        self.sessions: set[Shaped] = set()
        self.timer: asyncio.TimerHandle | None = None

    def set_rates(self, up: float | None, down: float | None) -> None:
        """New limits (start, or a reload); a bucket keeps its state if its rate stays."""
        now = self.loop.time()
        user = self.user
        for attr, rate, counter in (("up", up, user.bytes_from_client),
                                    ("down", down, user.bytes_to_client)):  # fmt: skip
            bucket: Bucket | None = getattr(self, attr)
            if rate is None:
                if bucket is not None and bucket.throttled_since is not None:
                    self._release(UP if attr == "up" else DOWN, bucket, now)
                setattr(self, attr, None)
            elif bucket is None:
                setattr(self, attr, Bucket(rate, now, counter))
            elif bucket.rate != rate:
                bucket.set_rate(rate)
                bucket.tokens = min(bucket.tokens, bucket.burst)
        for session in self.sessions:
            session.cut_reads(self.up.chunk if self.up else 0,
                              self.down.chunk if self.down else 0)  # fmt: skip
        self._settle(now)

    @property
    def limited(self) -> bool:
        return self.up is not None or self.down is not None

    def join(self, session: Shaped) -> None:
        """A session of this user started: it follows the throttles in force."""
        self.sessions.add(session)
        session.cut_reads(self.up.chunk if self.up else 0, self.down.chunk if self.down else 0)
        for direction, bucket in ((UP, self.up), (DOWN, self.down)):
            if bucket is not None and bucket.throttled_since is not None:
                session.throttle(direction, True)

    def leave(self, session: Shaped) -> None:
        self.sessions.discard(session)

    def charge(self) -> None:
        """The relay crossed the user's mark: account, throttle, set the next mark."""
        self._settle(self.loop.time())

    def throttled_seconds(self) -> tuple[float, float]:
        """Seconds spent throttled so far, (up, down)."""
        now = self.loop.time()
        return (self.up.throttled_total(now) if self.up is not None else 0.0,
                self.down.throttled_total(now) if self.down is not None else 0.0)  # fmt: skip

    def close(self) -> None:
        """Limits removed: release every session, forget the timer."""
        self.set_rates(None, None)
        for session in self.sessions:
            session.cut_reads(0, 0)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- internals -----------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        user = self.user
        room = float(1 << 62)
        wait = 0.0
        for direction, bucket, counter in ((UP, self.up, user.bytes_from_client),
                                           (DOWN, self.down, user.bytes_to_client)):  # fmt: skip
            if bucket is None:
                continue
            tokens = bucket.charge(now, counter)
            if bucket.throttled_since is not None:
                # Let go once every session can have a read's worth.
                floor = min(bucket.burst, bucket.chunk * max(1, len(self.sessions)))
            else:
                floor = 0
            if tokens < floor:
                if bucket.throttled_since is None:
                    bucket.throttled_since = now
                    floor = min(bucket.burst, bucket.chunk * max(1, len(self.sessions)))
                    for session in list(self.sessions):
                        session.throttle(direction, True)
                needed = (floor - tokens) / bucket.rate
                wait = needed if wait == 0.0 or needed < wait else wait
            else:
                if bucket.throttled_since is not None:
                    self._release(direction, bucket, now)
                room = min(room, tokens)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if wait:
            self.timer = self.loop.call_at(now + wait + 0.001, self.charge)
        step = max(MIN_STEP, int(room)) if room < (1 << 62) else MIN_STEP
        if not self.limited:
            step = 1 << 62
        user.rate_mark = user.bytes_from_client + user.bytes_to_client + step
        user.rearm()

    def _release(self, direction: int, bucket: Bucket, now: float) -> None:
        since = bucket.throttled_since
        if since is not None:
            bucket.throttled_seconds += now - since
        bucket.throttled_since = None
        for session in list(self.sessions):
            session.throttle(direction, False)
