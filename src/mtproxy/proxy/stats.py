"""Counters the sessions bump; readers (logs, /stats, /metrics) only look.

Plain integer attributes: the relay path adds to them on every read, so they must
cost no more than an attribute increment.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mtproxy.proxy.shaping import UserShaper

#: ``UserStats.quota_limit`` of a user without a quota.
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
    quota_limit: int = NO_LIMIT
    #: Where the shaper wants to look next (NO_LIMIT without rate limits).
    rate_mark: int = NO_LIMIT
    #: The one mark the relay path compares the byte total with: the smaller of the
    #: two above, so limits cost users without any nothing more than that comparison.
    bytes_limit: int = NO_LIMIT
    quota_closed: int = 0
    #: Rate limits of this user in this process (None: unlimited).
    shaper: UserShaper | None = None

    def rearm(self) -> None:
        """Recompute :attr:`bytes_limit` after either mark changed."""
        self.bytes_limit = min(self.quota_limit, self.rate_mark)


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
    #: Times this process found no file descriptor left: accepting paused, or an
    #: upstream or mask connection not opened.
    fd_exhausted: int = 0
    proxy_protocol_errors: int = 0
    quota_closed: int = 0
    #: (mode or "-", outcome) -> count; outcome is "ok" or a rejection reason.
    handshakes: Counter[tuple[str, str]] = field(default_factory=Counter)
    users: list[UserStats] = field(default_factory=list)
    # -- middle-proxy mode (all zero in direct mode) --------------------------------------
    #: Gauges: middle-proxy addresses in the current proxy list, how many of them have
    #: at least one ready RPC connection, ready RPC connections, clients multiplexed now.
    me_targets: int = 0
    me_targets_ready: int = 0
    me_connections_active: int = 0
    me_clients_active: int = 0
    #: Counters: RPC connection attempts, attempts that failed before the handshake
    #: finished, and ready connections that were lost afterwards.
    me_connects: int = 0
    me_connect_failures: int = 0
    me_disconnects: int = 0
    #: Counters: RPC_PROXY_REQ sent, RPC_PROXY_ANS and RPC_SIMPLE_ACK delivered,
    #: RPC_CLOSE_EXT received, client packets not forwarded (the official server's
    #: filter), clients dropped because they did not read their answers.
    me_requests: int = 0
    me_answers: int = 0
    me_quickacks: int = 0
    me_closed_by_telegram: int = 0
    me_packets_dropped: int = 0
    me_slow_clients_dropped: int = 0
    #: Counters: proxy list / secret downloads that were used, and that were refused or
    #: failed (the previous copy stays in use).
    me_config_loads: int = 0
    me_config_failures: int = 0

    def uptime(self) -> float:
        return time.time() - self.started
