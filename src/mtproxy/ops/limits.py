"""Per-user limits: who a secret belongs to, and the ledger that counts across workers.

:class:`UserRegistry` lives in every serving process and maps secret indices to
users; it survives reloads (a user keeps their counters while named in the config,
and sessions of removed users keep theirs). :class:`Ledger` holds what must be
exact across worker processes (connections and client addresses of capped users,
bytes against quotas); the supervisor owns it, or the single process does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

from mtproxy.config.users import UserConfig
from mtproxy.protocol.secret import ClientSecret
from mtproxy.proxy.stats import NO_LIMIT, UserStats
from mtproxy.state import StateError, atomic_write

if TYPE_CHECKING:
    from mtproxy.proxy.client import ClientConnection

log = logging.getLogger("mtproxy.limits")

USAGE_FILE = "usage.json"


@dataclass(eq=False)
class UserState:
    """One user in this process: configuration, counters, live sessions."""

    stats: UserStats
    config: UserConfig | None = None
    #: An entry of ``secrets`` (named secretN, no limits) rather than of [[users]].
    anonymous: bool = False
    removed: bool = False
    #: Active sessions per client address (this process only).
    ips: Counter[str] = field(default_factory=Counter)
    sessions: set[ClientConnection] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)
    expiry_timer: asyncio.TimerHandle | None = None
    #: Bytes this process had relayed at the last quota sync.
    reported: int = 0
    #: Bytes relayed by every worker (and earlier runs) at the last quota sync.
    quota_used: int = 0

    @property
    def name(self) -> str:
        return self.stats.name

    @property
    def relayed(self) -> int:
        return self.stats.bytes_from_client + self.stats.bytes_to_client


class SecretTable(Sequence[bytes]):
    """The handshake's secret list, which also knows whose each secret is.

    A handshake keeps the table it started with, so a reload that reorders the
    secrets cannot attribute a session to the wrong user.
    """

    def __init__(self, entries: list[tuple[bytes, UserState]]) -> None:
        self.keys = [key for key, _ in entries]
        self.owners = [owner for _, owner in entries]

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        return self.keys[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys)


class UserRegistry:
    """Users by name for one process, rebuilt from settings on start and on reload."""

    def __init__(self) -> None:
        self.states: dict[str, UserState] = {}
        self.table = SecretTable([])

    def load(
        self, secrets: Sequence[ClientSecret], users: Sequence[UserConfig]
    ) -> tuple[list[str], list[str]]:
        """Install a new configuration; returns the names added and removed."""
        entries: list[tuple[bytes, UserState]] = []
        current: set[str] = set()
        added: list[str] = []
        for index, secret in enumerate(secrets, 1):
            name = f"secret{index}"
            state = self._state(name, added)
            state.config = None
            state.anonymous = True
            state.stats.quota_limit = NO_LIMIT
            state.stats.rearm()
            entries.append((secret.key, state))
            current.add(name)
        for user in users:
            state = self._state(user.name, added)
            state.config = user
            state.anonymous = False
            if user.quota is None:
                state.stats.quota_limit = NO_LIMIT
            else:
                # Until the next exchange with the ledger, trust what it said last time.
                state.stats.quota_limit = user.quota - (state.quota_used - state.reported)
            state.stats.rearm()
            entries.append((user.secret.key, state))
            current.add(user.name)
        removed = []
        for name, state in self.states.items():
            if name not in current and not state.removed:
                state.removed = True
                removed.append(name)
        self.table = SecretTable(entries)
        return added, removed

    def _state(self, name: str, added: list[str]) -> UserState:
        state = self.states.get(name)
        if state is None or state.removed:
            if state is None:
                state = self.states[name] = UserState(UserStats(name))
            state.removed = False
            added.append(name)
        return state

    def owner(self, index: int, table: Sequence[bytes] | None) -> UserState:
        source = table if isinstance(table, SecretTable) else self.table
        return source.owners[index]

    def by_stats(self, stats: UserStats) -> UserState:
        return self.states[stats.name]

    def named(self) -> list[UserState]:
        """Users from [[users]] (not the anonymous secrets), including removed ones."""
        return [s for s in self.states.values() if not s.anonymous]

    def live(self) -> list[UserState]:
        return [s for s in self.states.values() if not s.removed or s.sessions]


def refusal(state: UserState, now: float) -> str | None:
    """Why a session of this user may not start, from what this process knows."""
    config = state.config
    if state.removed:
        return "removed"
    if config is None:
        return None
    if config.disabled:
        return "disabled"
    if config.expires is not None and now >= config.expires:
        return "expired"
    if config.quota is not None and state.relayed >= state.stats.quota_limit:
        return "quota"
    return None


class Ledger:
    """Cross-worker accounting; worker ids are small integers (0 for a single process).

    Connections and addresses are counted per worker so that a worker that dies
    takes exactly its own share with it.
    """

    def __init__(self, usage_base: dict[str, int] | None = None) -> None:
        self.conns: dict[int, dict[str, Counter[str]]] = {}
        #: Bytes from earlier runs and from workers that have exited.
        self.base: dict[str, int] = dict(usage_base or {})
        #: Latest cumulative byte count each worker reported, per user.
        self.reported: dict[int, dict[str, int]] = {}
        self.dirty = False

    def acquire(
        self, worker: int, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None:
        """Count one more session, or say which limit forbids it."""
        total = 0
        ips: set[str] = set()
        for by_user in self.conns.values():
            counts = by_user.get(user)
            if counts:
                total += sum(counts.values())
                ips.update(counts)
        if max_connections is not None and total >= max_connections:
            return "max_connections"
        if max_ips is not None and ip not in ips and len(ips) >= max_ips:
            return "max_ips"
        self.conns.setdefault(worker, {}).setdefault(user, Counter())[ip] += 1
        return None

    def release(self, worker: int, user: str, ip: str) -> None:
        counts = self.conns.get(worker, {}).get(user)
        if counts is None or counts[ip] <= 0:
            return
        counts[ip] -= 1
        if not counts[ip]:
            del counts[ip]

    def report(self, worker: int, usage: dict[str, int]) -> dict[str, int]:
        """Take a worker's cumulative byte counts; answer each user's total everywhere."""
        mine = self.reported.setdefault(worker, {})
        for user, count in usage.items():
            if mine.get(user) != count:
                mine[user] = count
                self.dirty = True
        return {user: self.used(user) for user in usage}

    def used(self, user: str) -> int:
        return self.base.get(user, 0) + sum(r.get(user, 0) for r in self.reported.values())

    def reset(self, user: str) -> None:
        """Start the user's quota over: what was relayed so far no longer counts.

        Workers report cumulative counts, so the base absorbs (negatively) what they
        reported; their next reports count from zero again.
        """
        self.base[user] = -sum(r.get(user, 0) for r in self.reported.values())
        self.dirty = True

    def drop_worker(self, worker: int) -> None:
        """A worker exited: its sessions are gone, its bytes stay counted."""
        self.conns.pop(worker, None)
        for user, count in self.reported.pop(worker, {}).items():
            self.base[user] = self.base.get(user, 0) + count

    def totals(self) -> dict[str, int]:
        names = set(self.base)
        for reported in self.reported.values():
            names.update(reported)
        return {name: self.used(name) for name in sorted(names)}


def load_usage(data_dir: Path) -> dict[str, int]:
    """Bytes each user relayed in earlier runs (quotas outlive restarts)."""
    path = data_dir / USAGE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and v >= 0}


def save_usage(data_dir: Path, totals: dict[str, int]) -> None:
    try:
        atomic_write(data_dir / USAGE_FILE, json.dumps(totals, indent=1).encode() + b"\n")
    except (OSError, StateError) as exc:
        log.warning("cannot save quota usage in %s: %s", data_dir, exc)
