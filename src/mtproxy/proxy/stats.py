"""Counters the sessions bump; readers (logs, /stats, /metrics) only look.

Plain integer attributes: the relay path adds to them on every read, so they must
cost no more than an attribute increment.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

#: ``UserStats.bytes_limit`` of a user without a quota.
NO_LIMIT = 1 << 62


@dataclass(eq=False)
class UserStats:
    """Per-secret (per-user) traffic."""

    name: str
    connections_active: int = 0
    connections_total: int = 0
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    #: Sessions close once bytes_from_client + bytes_to_client exceeds this.
    bytes_limit: int = NO_LIMIT
    quota_closed: int = 0


@dataclass(eq=False)
class ProxyStats:
    started: float = field(default_factory=time.time)
    connections_active: int = 0
    connections_total: int = 0
    sessions_active: int = 0
    bytes_from_clients: int = 0
    bytes_to_clients: int = 0
    upstream_connects: int = 0
    upstream_failures: int = 0
    masked: int = 0
    #: Client connections closed at accept because the per-worker cap was reached.
    accept_refused: int = 0
    proxy_protocol_errors: int = 0
    quota_closed: int = 0
    #: (mode or "-", outcome) -> count; outcome is "ok" or a rejection reason.
    handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)
    users: list[UserStats] = field(default_factory=list)

    def uptime(self) -> float:
        return time.time() - self.started
