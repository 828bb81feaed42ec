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
debt is paid and enough tokens are back for one read of every session.

Sharing among the sessions of a user is by turns, not left to the event loop: a
loop may serve many reads of one socket before it looks at the next (uvloop's
libuv reads a socket again and again while each read fills the buffer), so the
first session resumed would take all the tokens, round after round. Reads of a
shaped direction are cut to a sixteenth of a second of its rate
(:attr:`Bucket.chunk`), the mark comes at least every half chunk, and a session that
moved a chunk in the current turn, and would leave too few tokens for one read of
each session still to have its turn, holds itself until the next turn: the next
release from debt, or ``chunk / rate`` seconds later when the others are idle. The
release resumes the sessions least recently served first (sessions that had a turn
go to the back of the queue), so that when more sessions wait than the burst serves
at once, each gets its turn in a round. The achieved rate is exact over seconds,
bursty below.

With several workers each worker shapes its own share (the rate divided by the
number of workers; see ``ops/server.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
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

    #: This session's bytes from the client (up) and to it (down).
    bytes_in: int
    bytes_out: int

    def throttle(self, direction: int, on: bool) -> None: ...
    def cut_reads(self, up: int, down: int) -> None:
        """Read at most this much at once each way (0: no cut)."""


def _moved(session: Shaped, direction: int) -> int:
    return session.bytes_in if direction == UP else session.bytes_out


class Bucket:
    """One direction of one user, and the turn its sessions are in."""

    __slots__ = ("burst", "chunk", "done", "rate", "seen", "stamp", "starts",
                 "throttled_seconds", "throttled_since", "tokens", "turn_end")  # fmt: skip

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
        #: Each session's byte counter when the current turn began, the sessions
        #: that had their turn, and the timer that starts the next turn if no
        #: release from debt comes first.
        self.starts: dict[Shaped, int] = {}
        self.done: set[Shaped] = set()
        self.turn_end: asyncio.TimerHandle | None = None

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

    def new_turn(self, sessions: Iterable[Shaped], direction: int) -> set[Shaped]:
        """Start a turn for ``sessions``; the sessions the turn that ends held."""
        if self.turn_end is not None:
            self.turn_end.cancel()
            self.turn_end = None
        held, self.done = self.done, set()
        self.starts = {session: _moved(session, direction) for session in sessions}
        return held


class UserShaper:
    """The buckets of one user in this process, and the sessions they hold back."""

    __slots__ = ("down", "loop", "sessions", "timer", "up", "user")

    def __init__(self, user: UserCounters, loop: asyncio.AbstractEventLoop) -> None:
        self.user = user
        self.loop = loop
        self.up: Bucket | None = None
        self.down: Bucket | None = None
        #: The queue releases resume them in (a dict keeps the order): a session that
        #: had its turn goes to the back.
        self.sessions: dict[Shaped, None] = {}
        self.timer: asyncio.TimerHandle | None = None

    def set_rates(self, up: float | None, down: float | None) -> None:
        """New limits (start, or a reload); a bucket keeps its state if its rate stays."""
        now = self.loop.time()
        user = self.user
        for direction, rate, counter in ((UP, up, user.bytes_from_client),
                                         (DOWN, down, user.bytes_to_client)):  # fmt: skip
            bucket = self._bucket(direction)
            if rate is None:
                if bucket is not None:
                    self._release(direction, bucket, now)
                self._set_bucket(direction, None)
            elif bucket is None:
                self._set_bucket(direction, Bucket(rate, now, counter))
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
        self.sessions[session] = None
        session.cut_reads(self.up.chunk if self.up else 0, self.down.chunk if self.down else 0)
        for direction, bucket in ((UP, self.up), (DOWN, self.down)):
            if bucket is not None:
                bucket.starts[session] = _moved(session, direction)
                if bucket.throttled_since is not None:
                    session.throttle(direction, True)
        if len(self.sessions) == 2:
            self._settle(self.loop.time())  # now there is sharing: marks come closer

    def leave(self, session: Shaped) -> None:
        self.sessions.pop(session, None)
        for bucket in (self.up, self.down):
            if bucket is not None:
                bucket.starts.pop(session, None)
                bucket.done.discard(session)

    def charge(self, session: Shaped | None = None) -> None:
        """The relay crossed the user's mark (in ``session``): account, throttle, end
        the session's turn if it had its share, set the next mark."""
        now = self.loop.time()
        self._settle(now)
        if session is not None and len(self.sessions) > 1 and session in self.sessions:
            self._take_turn(session, now)

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

    def _bucket(self, direction: int) -> Bucket | None:
        return self.up if direction == UP else self.down

    def _set_bucket(self, direction: int, bucket: Bucket | None) -> None:
        if direction == UP:
            self.up = bucket
        else:
            self.down = bucket

    def _settle(self, now: float) -> None:
        user = self.user
        room = float(1 << 62)
        wait = 0.0
        several = len(self.sessions) > 1
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
                # With others to share with, look at least every half read, so that
                # a session's turn ends after a read or two whatever the loop does.
                room = min(room, tokens, bucket.chunk // 2) if several else min(room, tokens)
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

    def _take_turn(self, session: Shaped, now: float) -> None:
        for direction, bucket in ((UP, self.up), (DOWN, self.down)):
            if bucket is None or session in bucket.done:
                continue
            moved = _moved(session, direction)
            if moved - bucket.starts.setdefault(session, moved) < bucket.chunk:
                continue
            # Go on while the tokens left cover another read of this session and one of
            # every session still to have its turn (a burst is not cut short for
            # sessions that are idle); hold once they do not.
            waiting = len(self.sessions) - len(bucket.done) - 1
            if bucket.tokens >= bucket.chunk * (1 + waiting):
                continue
            bucket.done.add(session)
            # To the back of the queue: the next release serves the others first.
            del self.sessions[session]
            self.sessions[session] = None
            if bucket.throttled_since is not None:
                continue  # all held already, until the release from debt
            session.throttle(direction, True)
            if bucket.turn_end is None:
                bucket.turn_end = self.loop.call_at(
                    now + bucket.chunk / bucket.rate, self._turn_over, direction
                )

    def _turn_over(self, direction: int) -> None:
        """A turn's time passed without a release from debt (the others were idle)."""
        bucket = self._bucket(direction)
        if bucket is None:
            return
        bucket.turn_end = None
        if bucket.throttled_since is not None:
            return  # the release from debt starts the next turn
        held = bucket.new_turn(self.sessions, direction)
        for session in list(self.sessions):  # queue order, as the release
            if session in held:
                session.throttle(direction, False)

    def _release(self, direction: int, bucket: Bucket, now: float) -> None:
        since = bucket.throttled_since
        if since is not None:
            bucket.throttled_seconds += now - since
        bucket.throttled_since = None
        held = bucket.new_turn(self.sessions, direction)
        if since is None and not held:
            return
        for session in list(self.sessions):
            session.throttle(direction, False)
