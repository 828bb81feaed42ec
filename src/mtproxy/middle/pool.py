"""Connections to the middle-proxies: a small pool per address, and routing by DC.

Each middle-proxy address in Telegram's list gets a :class:`TargetPool` that keeps
``min`` connections open, grows to ``max`` under load, and reconnects with
exponential backoff and jitter. :class:`MePools` maps a client's DC to the
addresses listed for it (the ``default`` DC's when it has none), tries them from a
random start so clients spread, and applies a refreshed list without touching
established clients: an address that left the list keeps its connections until
their last client is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine, Sequence
from ipaddress import IPv4Address
from typing import Any

from mtproxy.middle.addresses import AddressMap, parse_ip
from mtproxy.middle.config_source import MiddleConfig
from mtproxy.middle.link import MeLink
from mtproxy.middle.options import MiddleOptions
from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.proxy_config import ProxyTarget
from mtproxy.protocol.rpc import IPAddress, RpcError
from mtproxy.proxy.stats import ProxyStats
from mtproxy.publicip import detect_public_ip

log = logging.getLogger("mtproxy.middle.pool")


class NoRouteError(Exception):
    """No middle-proxy is listed for a DC (and there is no default)."""


def backoff_delay(failures: int, options: MiddleOptions, rng: random.Random | None = None) -> float:
    """Delay before reconnect attempt ``failures`` (>= 1): doubling, capped, jittered."""
    base = min(options.backoff_max, options.backoff_base * 2 ** max(0, failures - 1))
    spread = options.backoff_jitter
    factor = (rng or random).uniform(1 - spread, 1 + spread)
    return float(base * factor)


class TargetPool:
    """The connections to one middle-proxy address."""

    def __init__(self, owner: MePools, target: ProxyTarget) -> None:
        self.owner = owner
        self.target = target
        self.label = f"middle-proxy {target}"
        self.links: list[MeLink] = []
        self.pending = 0
        self.failures = 0
        self.last_error = ""
        self.retired = False
        self.closed = False
        #: Loop time since when the address has had no ready connection although we
        #: tried (None while one is ready, or before the first attempt ended).
        self.down_since: float | None = None
        #: Connections that became ready after the pool lost one or failed to connect.
        self.reconnects = 0
        self._troubled = False
        self._retry: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def __repr__(self) -> str:
        return f"<TargetPool {self.target} links={len(self.links)} pending={self.pending}>"

    # -- health --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(not link.closed for link in self.links)

    def health(self) -> dict[str, object]:
        """Plain data for /stats and /metrics."""
        now = self.owner.loop.time()
        rtts = [link.rtt for link in self.links if link.rtt is not None]
        return {
            "target": str(self.target),
            "ready": int(self.ready),
            "connections": len(self.links),
            "clients": sum(len(link.clients) for link in self.links),
            "reconnects": self.reconnects,
            "failures": self.failures,
            "rtt": max(rtts) if rtts else None,
            "queued": sum(link.queued for link in self.links),
            "down_seconds": now - self.down_since if self.down_since is not None else 0.0,
        }

    def _mark_down(self, reason: str) -> None:
        if self.down_since is None and not self.ready and not (self.closed or self.retired):
            self.down_since = self.owner.loop.time()
            log.info("%s is down: %s", self.label, reason)

    def _mark_up(self) -> None:
        if self.down_since is not None:
            log.info("%s is up again after %.0f s", self.label,
                     self.owner.loop.time() - self.down_since)
            self.down_since = None

    def probe(self) -> None:
        """Try a connection now if none is open, on the way or waiting for its backoff
        (a DC whose clients go direct still has to notice its middle-proxies return)."""
        if self.closed or self.retired or self.links or self.pending or self._retry:
            return
        self._spawn()

    # -- choosing a connection -----------------------------------------------------------

    def pick(self) -> MeLink | None:
        """The least loaded ready connection; opens another one if all are busy."""
        best: MeLink | None = None
        best_key = (True, 0)
        for link in self.links:
            if link.closed:
                continue
            key = (link.write_paused, len(link.clients))
            if best is None or key < best_key:
                best, best_key = link, key
        busy = self.owner.options.clients_per_connection
        if (
            best is not None
            and not self.retired
            and self.pending == 0
            and len(self.links) < self.owner.max_connections
            and (best.write_paused or len(best.clients) >= busy)
        ):
            self._spawn()
        return best

    def wait_ready(self) -> asyncio.Future[None]:
        """A future that completes when a connection becomes ready (or the pool gives up)."""
        waiter: asyncio.Future[None] = self.owner.loop.create_future()
        if self.closed or self.retired:
            waiter.set_result(None)
            return waiter
        self._waiters = [w for w in self._waiters if not w.done()]
        self._waiters.append(waiter)
        if not self.links and self.pending == 0 and self._retry is None:
            self._spawn()
        return waiter

    # -- keeping connections ---------------------------------------------------------------

    def maintain(self) -> None:
        """Open connections until ``min`` are ready or on the way (not during a backoff)."""
        if self.retired or self.closed or self._retry is not None:
            return
        for _ in range(self.owner.min_connections - len(self.links) - self.pending):
            self._spawn()

    def _spawn(self) -> None:
        self.pending += 1
        self.owner.spawn(self._connect())

    async def _connect(self) -> None:
        owner = self.owner
        options = owner.options
        owner.stats.me_connects += 1
        link: MeLink | None = None
        try:
            async with asyncio.timeout(options.connect_timeout):
                _, link = await owner.loop.create_connection(
                    lambda: MeLink(
                        self,
                        options=options,
                        stats=owner.stats,
                        keepalive=owner.keepalive,
                        label=self.label,
                    ),
                    self.target.host,
                    self.target.port,
                )
                await self._start(link)
                ready = await link.ready
            if not ready or link.closed:
                raise ConnectionError(link.failure or "connection lost during the handshake")
        except (OSError, TimeoutError, RpcError, ValueError) as exc:
            self.pending -= 1
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no handshake within {options.connect_timeout:g} s"
            if link is not None:
                link.abort(reason)
            self._failed(reason)
            return
        except asyncio.CancelledError:
            self.pending -= 1
            if link is not None:
                link.abort("cancelled")
            raise
        self.pending -= 1
        if self.closed or self.retired:
            link.close()
            return
        if self.failures:
            log.info("%s: connected again after %d failed attempts", self.label, self.failures)
        if self._troubled or self.failures:
            self.reconnects += 1
        self._troubled = False
        self.failures = 0
        self.links.append(link)
        self._mark_up()
        owner.stats.me_connections_active += 1
        owner.recount()
        self._wake()

    async def _start(self, link: MeLink) -> None:
        transport = link.transport
        assert transport is not None
        local = transport.get_extra_info("sockname")
        remote = transport.get_extra_info("peername")
        local_ip = parse_ip(str(local[0])) if local else None
        remote_ip = parse_ip(str(remote[0])) if remote else None
        if local_ip is None or remote_ip is None or type(local_ip) is not type(remote_ip):
            raise ConnectionError(f"unusable socket addresses {local!r} -> {remote!r}")
        public_ip = await self.owner.public_ip(local_ip)
        config = self.owner.config
        assert config is not None
        link.start(
            secret=config.secret,
            local=(local_ip, int(local[1])),
            remote=(remote_ip, int(remote[1])),
            public_ip=public_ip,
            request_crc32c=self.owner.options.request_crc32c,
            buffer_pool=self.owner.buffer_pool,
        )

    def _failed(self, reason: str) -> None:
        self.failures += 1
        self.last_error = reason
        self.owner.stats.me_connect_failures += 1
        if self.closed or self.retired:
            return
        self._mark_down(reason)
        delay = backoff_delay(self.failures, self.owner.options)
        # Loud on the first failure and then at powers of two, quiet in between.
        level = logging.WARNING if self.failures & (self.failures - 1) == 0 else logging.DEBUG
        log.log(level, "%s: %s (attempt %d; retrying in %.1f s)",
                self.label, reason, self.failures, delay)
        self._schedule(delay)
        self._wake()

    def _schedule(self, delay: float) -> None:
        if self._retry is None:
            self._retry = self.owner.loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self.maintain()
        if not self.links and self.pending == 0 and any(not w.done() for w in self._waiters):
            self._spawn()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- LinkOwner ---------------------------------------------------------------------------

    def link_lost(self, link: MeLink) -> None:
        if link not in self.links:
            return  # failed before it was ready; _connect handles that
        self.links.remove(link)
        stats = self.owner.stats
        stats.me_connections_active -= 1
        stats.me_disconnects += 1
        self.owner.recount()
        if self.closed:
            return
        if self.retired:
            if not self.links:
                self.owner.pool_drained(self)
            return
        reason = link.failure or "closed by the peer"
        log.info("%s: connection lost (%s)", self.label, reason)
        self._troubled = True
        if not self.ready:
            self._mark_down(f"its last connection was lost ({reason})")
        self._schedule(backoff_delay(self.failures + 1, self.owner.options))

    def link_idle(self, link: MeLink) -> None:
        if self.retired and not link.closed:
            link.close()

    # -- lifecycle -------------------------------------------------------------------------------

    def retire(self) -> None:
        """The address left the list: no new clients or connections; drain the rest."""
        self.retired = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for link in list(self.links):
            if not link.clients:
                link.close()
        self._wake()
        if not self.links:
            self.owner.pool_drained(self)

    def close(self) -> None:
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for link in list(self.links):
            link.abort("proxy stopping")
        self._wake()


class MePools:
    """All target pools, the proxy list they come from, and DC routing."""

    def __init__(
        self,
        *,
        options: MiddleOptions,
        stats: ProxyStats,
        addresses: AddressMap,
        ip_services: Sequence[str] = (),
        prefer_ipv6: bool = False,
        min_connections: int | None = None,
        max_connections: int | None = None,
        keepalive: int = 0,
        buffer_pool: BufferPool | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.buffer_pool = buffer_pool
        self.options = options
        self.stats = stats
        self.addresses = addresses
        self.ip_services = tuple(ip_services)
        self.prefer_ipv6 = prefer_ipv6
        self.keepalive = keepalive
        self._min_override = min_connections
        self._max_override = max_connections
        self.config: MiddleConfig | None = None
        self.pools: dict[ProxyTarget, TargetPool] = {}
        self.draining: set[TargetPool] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._detection: asyncio.Task[str | None] | None = None
        self._detection_warned = False

    # -- sizes -----------------------------------------------------------------------------

    @property
    def min_connections(self) -> int:
        if self._min_override is not None:
            return self._min_override
        return self.config.config.min_connections if self.config else 0

    @property
    def max_connections(self) -> int:
        if self._max_override is not None:
            return max(self._max_override, 1)
        return self.config.config.max_connections if self.config else 1

    # -- the list -------------------------------------------------------------------------------

    def targets_for(self, dc: int) -> list[list[ProxyTarget]]:
        """Addresses for ``dc`` in tiers of preference (IPv6, then IPv4 with prefer_ipv6)."""
        config = self.config
        if config is None:
            return []
        v4 = list(config.config.lookup(dc))
        if not self.prefer_ipv6 or config.config_v6 is None:
            return [v4] if v4 else []
        v6 = list(config.config_v6.lookup(dc))
        tiers = [v6, [t for t in v4 if t not in v6]]
        return [tier for tier in tiers if tier]

    def _all_targets(self, config: MiddleConfig) -> list[ProxyTarget]:
        lists = [config.config]
        if self.prefer_ipv6 and config.config_v6 is not None:
            lists.insert(0, config.config_v6)
        seen: dict[ProxyTarget, None] = {}
        for table in lists:
            for _, targets in table.clusters:
                for target in targets:
                    seen.setdefault(target, None)
        return list(seen)

    def apply(self, config: MiddleConfig) -> None:
        """Use a new list: open pools for new addresses, drain pools of removed ones."""
        self.config = config
        wanted = self._all_targets(config)
        for target in wanted:
            if target not in self.pools:
                self.pools[target] = TargetPool(self, target)
        for target in [t for t in self.pools if t not in set(wanted)]:
            pool = self.pools.pop(target)
            log.info("%s left the proxy list; its clients stay until they leave", pool.label)
            self.draining.add(pool)
            pool.retire()
        self.stats.me_targets = len(self.pools)
        self.recount()
        for pool in self.pools.values():
            pool.maintain()

    def recount(self) -> None:
        self.stats.me_targets_ready = sum(1 for pool in self.pools.values() if pool.links)

    def health(self) -> list[dict[str, object]]:
        """Per middle-proxy address: state, connections, reconnects, ping RTT, queue."""
        return [pool.health() for pool in self.pools.values()]

    def dc_down_for(self, dc: int) -> float | None:
        """Seconds every middle-proxy of ``dc`` has been unreachable (None while one is
        ready or still being tried for the first time). Probes them meanwhile."""
        pools = [self.pools[t] for tier in self.targets_for(dc) for t in tier if t in self.pools]
        if not pools:
            return None
        since = 0.0
        for pool in pools:
            if pool.down_since is None:
                return None
            since = max(since, pool.down_since)
        for pool in pools:
            pool.probe()
        return self.loop.time() - since

    def pool_drained(self, pool: TargetPool) -> None:
        self.draining.discard(pool)

    # -- routing -------------------------------------------------------------------------------

    async def acquire(self, dc: int, timeout: float) -> MeLink:
        """A ready connection for a client of ``dc``; NoRouteError or TimeoutError."""
        deadline = self.loop.time() + timeout
        while True:
            # Within a tier, start at a random address so that clients spread out.
            ordered: list[TargetPool] = []
            for tier in self.targets_for(dc):
                pools = [self.pools[t] for t in tier if t in self.pools]
                if pools:
                    start = random.randrange(len(pools))
                    ordered += pools[start:] + pools[:start]
            if not ordered:
                raise NoRouteError(f"the proxy list has no middle-proxy for DC {dc} nor a default")
            for pool in ordered:
                link = pool.pick()
                if link is not None:
                    return link
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                errors = "; ".join(f"{p.target}: {p.last_error or 'connecting'}" for p in ordered)
                raise TimeoutError(f"no middle-proxy for DC {dc} ready ({errors})")
            waiters = [pool.wait_ready() for pool in ordered]
            try:
                await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.cancel()

    # -- our public address ------------------------------------------------------------------

    async def public_ip(self, local: IPAddress) -> IPAddress:
        """Our address as a middle-proxy sees it, detecting it once if only that helps."""
        addresses = self.addresses
        if addresses.wants_detection(local) and addresses.detected is None:
            if self._detection is None:
                self._detection = self.loop.create_task(detect_public_ip(self.ip_services))
            found = await asyncio.shield(self._detection)
            ip = parse_ip(found) if found else None
            if isinstance(ip, IPv4Address):
                if addresses.detected is None:
                    log.info("middle-proxies will see us as %s (detected; --nat-info wins)", ip)
                addresses.detected = ip
            elif not self._detection_warned:
                self._detection_warned = True
                log.warning(
                    "our address %s is private and the public one could not be detected; "
                    "middle-proxies will refuse us unless you pass --nat-info %s:PUBLIC_IP",
                    local, local,
                )
        return addresses.public(local)

    def forget_detection(self) -> None:
        """Detect again next time (after a refresh), in case the first attempt failed."""
        detection = self._detection
        if self.addresses.detected is None and detection is not None and detection.done():
            self._detection = None
            self._detection_warned = False

    # -- tasks and shutdown ----------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for pool in [*self.pools.values(), *self.draining]:
            pool.close()
        self.pools.clear()
        self.draining.clear()
        tasks = list(self._tasks)
        if self._detection is not None:
            tasks.append(self._detection)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.stats.me_targets = 0
        self.stats.me_targets_ready = 0
        await asyncio.sleep(0)
