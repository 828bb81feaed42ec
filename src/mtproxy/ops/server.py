"""The proxy server with the operator's features wired into the core's hooks.

- users and their limits (``user_for``/``admit``/``session_closed``; quotas also on
  the relay path through ``UserStats.bytes_limit``), rate limits (``proxy/shaping.py``,
  each worker shaping its share);
- the per-worker connection cap, by default what the descriptor budget allows
  (``ops/fds.py``; the listeners refuse past it, see ``proxy/accept.py``);
- the upstream SOCKS5 proxy (``connect_upstream``);
- live reconfiguration (:meth:`OpsServer.apply`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, cast

from mtproxy.config.settings import Settings
from mtproxy.mask.monitor import MaskMonitor
from mtproxy.ops.bound import write_bound
from mtproxy.ops.fds import Budget, middle_links, open_fds, plan, soft_limit
from mtproxy.ops.limits import Ledger, UserRegistry, UserState, load_usage, refusal, save_usage
from mtproxy.ops.replay_store import ReplayStore, SavableReplay
from mtproxy.ops.socks import Socks5
from mtproxy.protocol.dc import Endpoint
from mtproxy.protocol.faketls import ServerHelloShape
from mtproxy.protocol.handshake import Accepted, HandshakePolicy
from mtproxy.protocol.replay import ReplayGuard
from mtproxy.protocol.secret import Mode
from mtproxy.proxy.accept import careful_from
from mtproxy.proxy.client import ClientConnection
from mtproxy.proxy.server import ProxyServer
from mtproxy.proxy.shaping import UserShaper
from mtproxy.proxy.stats import NO_LIMIT, UserStats
from mtproxy.proxy.upstream import UpstreamsFactory

log = logging.getLogger("mtproxy.ops")

#: How often workers exchange byte counts for quotas (bounds the overshoot across workers).
QUOTA_SYNC = 0.25
#: How often usage is written to the data directory.
SAVE_EVERY = 10.0
#: Settings that only a restart can change.
RESTART_ONLY = (
    "listen", "workers", "stats", "buffer_size", "backlog", "data_dir", "api", "api_token"
)


class LedgerClient(Protocol):
    """The server's view of the :class:`Ledger`: in this process, or in the supervisor."""

    local: bool

    def acquire_now(
        self, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None: ...
    async def acquire(
        self, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None: ...
    def release(self, user: str, ip: str) -> None: ...
    async def sync(self, usage: dict[str, int]) -> dict[str, int]: ...
    def save(self) -> None: ...


class LocalLedger:
    """One process: the ledger is right here, and this process keeps the usage file."""

    local = True

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ledger = Ledger(load_usage(data_dir))

    def acquire_now(
        self, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None:
        return self.ledger.acquire(0, user, ip, max_connections, max_ips)

    async def acquire(
        self, user: str, ip: str, max_connections: int | None, max_ips: int | None
    ) -> str | None:
        return self.acquire_now(user, ip, max_connections, max_ips)

    def release(self, user: str, ip: str) -> None:
        self.ledger.release(0, user, ip)

    async def sync(self, usage: dict[str, int]) -> dict[str, int]:
        return self.ledger.report(0, usage)

    def save(self) -> None:
        if self.ledger.dirty:
            self.ledger.dirty = False
            save_usage(self.data_dir, self.ledger.totals())


class OpsServer(ProxyServer):
    def __init__(
        self,
        settings: Settings,
        *,
        replay: ReplayGuard | None = None,
        listen_sockets: Sequence[socket.socket] = (),
        ledger: LedgerClient | None = None,
        worker_index: int | None = None,
        upstreams: UpstreamsFactory | None = None,
    ) -> None:
        super().__init__(
            settings, replay=replay, listen_sockets=listen_sockets, upstreams=upstreams
        )
        self.worker_index = worker_index
        self.registry = UserRegistry()
        self.ledger: LedgerClient = ledger or LocalLedger(settings.data_dir)
        #: Sessions counted in the ledger, and those waiting for its verdict.
        self._held: dict[ClientConnection, UserState] = {}
        self._pending: dict[ClientConnection, UserState] = {}
        self.refused: Counter[str] = Counter()
        self.draining = False
        self.reloads = 0
        self.socks: Socks5 | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.mask_monitor = self._mask_monitor(settings)
        self.replay_store = ReplayStore(
            cast(SavableReplay, self.replay), settings.data_dir, settings.replay_cache_size,
            periodic=worker_index in (None, 0),
        )  # fmt: skip
        #: Descriptors open before any client (listeners, the loop, logs, a worker's
        #: channel): the budget keeps them aside.
        self.fds_at_start = open_fds()
        self.fd_budget = self.plan_fds()
        self._install(settings)

    # -- configuration -------------------------------------------------------------------

    def plan_fds(self) -> Budget:
        """The descriptor budget, and the cap it gives unless --max-connections says."""
        settings = self.settings
        links = 0
        if settings.middle_mode:
            links = middle_links(self.stats.me_targets, settings.middle_max_connections)
        budget = plan(
            soft_limit(), middle=settings.middle_mode, mask=settings.mask is not None,
            links=links, in_use=self.fds_at_start,
        )  # fmt: skip
        self.max_clients = settings.max_connections or budget.clients
        self.careful_from = careful_from(min(self.max_clients, budget.clients))
        return budget

    def announce_budget(self) -> None:
        """One line on what the descriptor limit allows (a warning if the cap asks more)."""
        budget = self.fd_budget
        wanted = self.settings.max_connections
        if wanted > budget.clients:
            log.warning(
                "--max-connections %d is more than the descriptor limit (%d) has room for "
                "(%d clients: %s); past that, clients wait while the process is out of "
                "descriptors. Raise the limit (LimitNOFILE=, ulimit -n, --ulimit nofile=) "
                "or lower --max-connections",
                wanted, budget.limit, budget.clients, budget.describe(),
            )  # fmt: skip
            return
        why = (f"--max-connections; the descriptor limit {budget.limit} has room for "
               f"{budget.clients}" if wanted else
               f"what the descriptor limit {budget.limit} has room for")  # fmt: skip
        log.log(
            logging.INFO if not self.worker_index else logging.DEBUG,
            "up to %d client connections%s (%s: %s)",
            self.max_clients, "" if self.worker_index is None else " per worker",
            why, budget.describe(),
        )  # fmt: skip

    def _install(self, settings: Settings) -> tuple[list[str], list[str]]:
        added, removed = self.registry.load(settings.secrets, settings.users)
        self.policy = dataclasses.replace(
            self.policy,
            secrets=self.registry.table,
            modes=settings.modes,
            tls_domains=frozenset(settings.tls_domains),
            tls_max_past=settings.replay_window,
            tls_max_future=settings.tls_max_future,
        )
        self.stats.users = [state.stats for state in self.registry.live()]
        self._shape(settings)
        self.socks = Socks5(settings.socks5) if settings.socks5 else None
        for state in self.registry.states.values():
            self._schedule_expiry(state)
            if state.config is not None and state.config.disabled and not state.removed:
                self._close_all(state, "disabled")
        return added, removed

    def _mask_monitor(self, settings: Settings) -> MaskMonitor:
        """The mask host's watcher; the name it is measured with is the clients' SNI."""
        tls = Mode.TLS in settings.modes and settings.tls_domains
        sni = settings.tls_domains[0] if tls else None
        return MaskMonitor(
            settings.mask, sni, settings.data_dir, self._use_server_hello,
            interval=settings.mask_check_interval, timeout=settings.connect_timeout,
        )  # fmt: skip

    def _use_server_hello(self, shape: ServerHelloShape) -> None:
        self.policy = dataclasses.replace(self.policy, server_hello=shape)

    def _shape(self, settings: Settings) -> None:
        """Rate limits: each worker shapes an equal share of a user's rate.

        Clients land on workers by the kernel's SO_REUSEPORT hash, and an app's 3-8
        connections spread over them, so equal shares add up to the user's rate when
        the user is busy everywhere. A user busy on one worker alone gets that
        worker's share: the limit is never exceeded, at the price of under-using it.
        """
        share = max(1, settings.workers)
        for state in self.registry.states.values():
            config = state.config
            stats = state.stats
            up = config.rate_up if config is not None and not state.removed else None
            down = config.rate_down if config is not None and not state.removed else None
            if up is None and down is None:
                if stats.shaper is not None:
                    stats.shaper.close()
                    stats.shaper = None
                    stats.rate_mark = NO_LIMIT
                    stats.rearm()
                continue
            if stats.shaper is None:
                stats.shaper = UserShaper(stats, self.loop)
                for client in state.sessions:
                    stats.shaper.join(client)
            stats.shaper.set_rates(
                up / share if up is not None else None, down / share if down is not None else None
            )

    def apply(self, settings: Settings) -> list[str]:
        """Switch to new settings (SIGHUP): new sessions follow them, live ones go on."""
        notes = [
            f"{name} changed; restart to apply it"
            for name in RESTART_ONLY
            if getattr(settings, name) != getattr(self.settings, name)
        ]
        keep = {name: getattr(self.settings, name) for name in RESTART_ONLY}
        settings = dataclasses.replace(settings, **keep)
        self.settings = settings
        self.upstreams.reconfigure(settings)
        self.passthrough = settings.download_passthrough and self.upstreams.supports_passthrough
        added, removed = self._install(settings)
        monitor = self._mask_monitor(settings)
        if (monitor.mask, monitor.sni, monitor.interval) != (
            self.mask_monitor.mask, self.mask_monitor.sni, self.mask_monitor.interval
        ):
            self.mask_monitor.cancel()
            self.mask_monitor = monitor
            monitor.load()
            monitor.start()
        self.reloads += 1
        self.fd_budget = self.plan_fds()
        if added:
            notes.append(f"users added: {', '.join(added)}")
        if removed:
            notes.append(f"users removed (their sessions go on): {', '.join(removed)}")
        if self.ledger.local:
            self._refresh_quotas(self.ledger_sync_now())
        return notes

    def _schedule_expiry(self, state: UserState) -> None:
        if state.expiry_timer is not None:
            state.expiry_timer.cancel()
            state.expiry_timer = None
        config = state.config
        if config is None or config.expires is None or state.removed:
            return
        delay = config.expires - time.time()
        if delay > 0:
            state.expiry_timer = self.loop.call_later(delay, self._expire, state)

    def _expire(self, state: UserState) -> None:
        state.expiry_timer = None
        self._close_all(state, "expired")

    def _close_all(self, state: UserState, why: str) -> None:
        if state.sessions:
            log.info("user %s %s; closing %d sessions", state.name, why, len(state.sessions))
        for client in list(state.sessions):
            client.close()

    # -- hooks ---------------------------------------------------------------------------

    def user_for(self, secret_index: int, policy: HandshakePolicy | None = None) -> UserStats:
        table = policy.secrets if policy is not None else None
        return self.registry.owner(secret_index, table).stats

    def admit(self, client: ClientConnection, user: UserStats) -> bool:
        state = self.registry.by_stats(user)
        reason = refusal(state, time.time())
        config = state.config
        ip = client.peername[0]
        if reason is None and config is not None and config.limited:
            if self.ledger.local:
                reason = self.ledger.acquire_now(
                    state.name, ip, config.max_connections, config.max_ips
                )
                if reason is None:
                    self._held[client] = state
            else:
                self._pending[client] = state
        if reason is not None:
            self._count_refusal(state, reason)
            log.info("client %s: user %s refused (%s)", client.peername, state.name, reason)
            return False
        state.ips[ip] += 1
        state.sessions.add(client)
        return True

    def _count_refusal(self, state: UserState, reason: str) -> None:
        state.refused[reason] += 1
        self.refused[reason] += 1

    def open_upstream(self, client: ClientConnection, accepted: Accepted) -> asyncio.Task[None]:
        state = self._pending.get(client)
        if state is None:
            return super().open_upstream(client, accepted)
        return self.loop.create_task(self._admit_then_open(client, accepted, state))

    async def _admit_then_open(
        self, client: ClientConnection, accepted: Accepted, state: UserState
    ) -> None:
        config = state.config
        assert config is not None
        try:
            reason = await self.ledger.acquire(
                state.name, client.peername[0], config.max_connections, config.max_ips
            )
        except ConnectionError:
            reason = "unavailable"  # the supervisor is gone; this worker is stopping
        self._pending.pop(client, None)
        if reason is None and client.closed:
            self.ledger.release(state.name, client.peername[0])
            return
        if reason is not None:
            self._count_refusal(state, reason)
            log.info("client %s: user %s refused (%s)", client.peername, state.name, reason)
            client.refuse()
            return
        self._held[client] = state
        await super().open_upstream(client, accepted)

    def session_closed(self, client: ClientConnection) -> None:
        self._pending.pop(client, None)
        user = client.user
        if user is None:
            return
        state = self.registry.states.get(user.name)
        if state is None or client not in state.sessions:
            return
        state.sessions.discard(client)
        ip = client.peername[0]
        state.ips[ip] -= 1
        if state.ips[ip] <= 0:
            del state.ips[ip]
        if self._held.pop(client, None) is not None:
            self.ledger.release(state.name, ip)

    async def connect_upstream(
        self, factory: Callable[[], asyncio.BaseProtocol], endpoint: Endpoint
    ) -> None:
        if self.socks is None:
            await super().connect_upstream(factory, endpoint)
            return
        sock = await self.socks.connect(endpoint, self.settings.connect_timeout)
        try:
            await self.loop.create_connection(factory, sock=sock)
        except BaseException:
            sock.close()
            raise

    # -- quotas --------------------------------------------------------------------------

    def usage(self) -> dict[str, int]:
        return {state.name: state.relayed for state in self.registry.named()}

    def ledger_sync_now(self) -> dict[str, int]:
        """Single process only: the ledger answers at once."""
        assert isinstance(self.ledger, LocalLedger)
        return self.ledger.ledger.report(0, self._mark_reported())

    def _mark_reported(self) -> dict[str, int]:
        usage = self.usage()
        for name, count in usage.items():
            self.registry.states[name].reported = count
        return usage

    def _refresh_quotas(self, totals: dict[str, int]) -> None:
        for name, total in totals.items():
            state = self.registry.states.get(name)
            if state is None:
                continue
            state.quota_used = total
            config = state.config
            if config is not None and config.quota is not None and not state.removed:
                others = total - state.reported
                state.stats.quota_limit = config.quota - others
                state.stats.rearm()

    async def sync_quotas(self) -> None:
        """One exchange with the ledger: report our bytes, learn everyone's."""
        totals = await self.ledger.sync(self._mark_reported())
        self._refresh_quotas(totals)

    async def _sync_loop(self) -> None:
        last_save = self.loop.time()
        while True:
            quick = any(s.config and s.config.quota for s in self.registry.named())
            await asyncio.sleep(QUOTA_SYNC if quick else 2.0)
            if not self.registry.named():
                continue
            try:
                await self.sync_quotas()
            except (ConnectionError, OSError) as exc:
                log.debug("quota sync failed: %s", exc)
            if self.loop.time() - last_save >= SAVE_EVERY:
                last_save = self.loop.time()
                self.ledger.save()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.registry.named():
            await self.sync_quotas()
        self.mask_monitor.load()
        self.replay_store.load()
        await super().start()
        # Middle-proxy mode knows its addresses (so its connections) only now.
        self.fd_budget = self.plan_fds()
        self.announce_budget()
        if self.worker_index is None:  # under a supervisor, the supervisor records them
            write_bound(self.settings.data_dir, self.addresses)
        self._sync_task = self.loop.create_task(self._sync_loop())
        self.mask_monitor.start()
        self.replay_store.start()

    async def stop(self, grace: float = 0.0) -> None:
        self.draining = True
        await self.mask_monitor.stop()
        try:
            await super().stop(grace)
        finally:
            if self._sync_task is not None:
                self._sync_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sync_task
                self._sync_task = None
            for state in self.registry.states.values():
                if state.expiry_timer is not None:
                    state.expiry_timer.cancel()
                    state.expiry_timer = None
            if self.registry.named():
                with contextlib.suppress(ConnectionError, OSError):
                    await self.sync_quotas()
            self.ledger.save()
            await self.replay_store.stop()
