"""The stats port: ``/stats`` (the official server's TSV page) and ``/metrics`` (Prometheus).

A tiny HTTP/1.1 server on the event loop: one request per connection, GET or HEAD
only, and only for addresses on the allow-list (loopback and private networks
unless configured). ``/metrics`` is rendered by ``prometheus_client`` from a
collector built for each request out of a snapshot; no global registry is touched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from mtproxy import __version__
from mtproxy.config.settings import IPNetwork
from mtproxy.ops.http import REQUEST_TIMEOUT, LocalHttp, response
from mtproxy.ops.snapshot import NO_MASK, Snapshot, render_tsv
from mtproxy.protocol.dc import Endpoint

log = logging.getLogger("mtproxy.stats")

DEFAULT_ALLOW: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
        "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip
MAX_REQUEST = 8192


@dataclass
class StatsView:
    """What one request shows: the (summed) snapshot and who serves it."""

    snapshot: Snapshot
    pid: int
    started: float
    #: One entry per worker process (empty with a single process).
    workers: list[dict[str, Any]] = field(default_factory=list)


Source = Callable[[], Awaitable[StatsView]]


def allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


class StatsServer(LocalHttp):
    label = "stats port"

    def __init__(
        self, endpoint: Endpoint, source: Source, allow: Sequence[IPNetwork] = ()
    ) -> None:
        super().__init__(endpoint, log)
        self.source = source
        self.allow: Sequence[IPNetwork] = tuple(allow) or DEFAULT_ALLOW

    async def respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            return None
        if len(head) > MAX_REQUEST:
            return None
        # The request is read first even when refused: closing with unread bytes
        # would reset the connection before the client sees the 403.
        peer = writer.get_extra_info("peername")
        if not peer or not allowed(peer[0], self.allow):
            return response(403, "text/plain", b"forbidden\n")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return response(405, "text/plain", b"only GET\n")
        path = parts[1].split(b"?", 1)[0]
        if path == b"/stats":
            view = await self.source()
            body = render_tsv(
                view.snapshot, pid=view.pid, started=view.started, workers=view.workers
            ).encode()
            kind = "text/plain; charset=utf-8"
        elif path == b"/metrics":
            view = await self.source()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(MetricsCollector(view))
            body = generate_latest(registry)
            kind = CONTENT_TYPE_LATEST
        else:
            return response(404, "text/plain", b"try /stats or /metrics\n")
        return response(200, kind, b"" if parts[0] == b"HEAD" else body, length=len(body))


# -- Prometheus ------------------------------------------------------------------------------

_COUNTERS = {
    "connections_total": "Client connections accepted",
    "upstream_connects": "Connection attempts towards Telegram",
    "upstream_failures": "Sessions whose upstream could not be reached",
    "masked": "Failed handshakes relayed to the mask host",
    "accept_refused": "Client connections closed at accept: the per-worker cap was reached",
    "fd_exhausted": "Times a process found no file descriptor left (accepting paused, or "
    "a connection not opened)",
    "proxy_protocol_errors": "Connections dropped for a missing or bad PROXY header",
    "quota_closed": "Sessions closed because their user ran out of quota",
}
_GAUGES = {
    "connections_active": "Client connections open now",
    "sessions_active": "Sessions relaying to an upstream now",
    "open_fds": "File descriptors open now (summed over workers)",
    "fd_limit": "Soft file descriptor limit (summed over workers)",
}
_SKIP = {"bytes_from_clients", "bytes_to_clients"}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


class MetricsCollector(Collector):
    """Metric families for one :class:`StatsView` (built per scrape)."""

    def __init__(self, view: StatsView) -> None:
        self.view = view

    def collect(self) -> Iterable[Any]:
        view = self.view
        snap = view.snapshot
        counters: dict[str, int] = snap["counters"]
        yield InfoMetricFamily("mtproxy_build", "Proxy version", {"version": __version__})
        yield GaugeMetricFamily("mtproxy_start_time_seconds", "Start time", view.started)
        yield GaugeMetricFamily("mtproxy_workers", "Worker processes", len(view.workers) or 1)
        yield GaugeMetricFamily(
            "mtproxy_max_connections", "Client connection cap over all workers (0: none)",
            snap["max_connections"],
        )  # fmt: skip
        yield GaugeMetricFamily("mtproxy_draining", "1 while shutting down", snap["draining"])
        yield CounterMetricFamily("mtproxy_reloads", "Configuration reloads", snap["reloads"])
        data = CounterMetricFamily(
            "mtproxy_bytes", "Payload bytes relayed", labels=["direction"]
        )
        data.add_metric(["from_client"], counters.get("bytes_from_clients", 0))
        data.add_metric(["to_client"], counters.get("bytes_to_clients", 0))
        yield data
        for name, value in sorted(counters.items()):
            metric = "mtproxy_" + _BAD.sub("_", name)
            if name in _SKIP:
                continue
            if name in _COUNTERS:
                yield CounterMetricFamily(
                    metric.removesuffix("_total"), _COUNTERS[name], value
                )
            else:
                yield GaugeMetricFamily(metric, _GAUGES.get(name, name.replace("_", " ")), value)
        hs = CounterMetricFamily(
            "mtproxy_handshakes", "Client handshakes by mode and outcome",
            labels=["mode", "outcome"],
        )
        for key, n in sorted(snap["handshakes"].items()):
            mode, outcome = key.split("|", 1)
            hs.add_metric(["any" if mode == "-" else mode, outcome], n)
        yield hs
        refused = CounterMetricFamily(
            "mtproxy_refused", "Sessions refused by a user limit", labels=["reason"]
        )
        for reason, n in sorted(snap["refused"].items()):
            refused.add_metric([reason], n)
        yield refused
        yield from _user_metrics(snap["users"])
        yield from _worker_metrics(view.workers)
        yield from _middle_metrics(snap.get("middle") or {})
        yield from _mask_metrics(snap.get("mask") or NO_MASK)


def _mask_metrics(mask: dict[str, Any]) -> Iterable[Any]:
    yield GaugeMetricFamily(
        "mtproxy_mask_up", "1 if the mask host answered the last check, 0 if it did not, "
        "-1 before the first check or with no mask host", mask["up"],
    )  # fmt: skip
    yield GaugeMetricFamily(
        "mtproxy_mask_last_check_time_seconds", "When the mask host was last checked",
        mask["checked"],
    )  # fmt: skip
    yield InfoMetricFamily(
        "mtproxy_mask_profile", "Where the fake ServerHello's shape comes from (fetched from "
        "the mask host, cached from an earlier run, or drawn once)",
        {"source": mask["profile_source"] or "none"},
    )  # fmt: skip
    yield GaugeMetricFamily(
        "mtproxy_faketls_record_bytes", "Size of the fake ServerHello's encrypted record",
        mask["record_bytes"],
    )  # fmt: skip


def _user_metrics(users: dict[str, Any]) -> Iterable[Any]:
    active = GaugeMetricFamily("mtproxy_user_connections_active", "Open sessions", labels=["user"])
    total = CounterMetricFamily("mtproxy_user_connections", "Sessions started", labels=["user"])
    data = CounterMetricFamily(
        "mtproxy_user_bytes", "Payload bytes relayed", labels=["user", "direction"]
    )
    ips = GaugeMetricFamily(
        "mtproxy_user_unique_ips", "Distinct client addresses now", labels=["user"]
    )
    refused = CounterMetricFamily(
        "mtproxy_user_refused", "Sessions refused by a limit", labels=["user", "reason"]
    )
    quota = GaugeMetricFamily("mtproxy_user_quota_bytes", "Data quota", labels=["user"])
    used = GaugeMetricFamily(
        "mtproxy_user_quota_used_bytes", "Bytes counted against the quota", labels=["user"]
    )
    expires = GaugeMetricFamily(
        "mtproxy_user_expires_timestamp_seconds", "When the user expires", labels=["user"]
    )
    rate = GaugeMetricFamily(
        "mtproxy_user_rate_limit_bytes_per_second", "Rate limit, all workers together",
        labels=["user", "direction"],
    )
    throttled = CounterMetricFamily(
        "mtproxy_user_throttled_seconds", "Time a rate limit held the user's sessions back "
        "(summed over workers)", labels=["user", "direction"],
    )
    for name in sorted(users):
        user = users[name]
        active.add_metric([name], user["connections_active"])
        total.add_metric([name], user["connections_total"])
        data.add_metric([name, "from_client"], user["bytes_from_client"])
        data.add_metric([name, "to_client"], user["bytes_to_client"])
        ips.add_metric([name], len(user["ips"]))
        for reason, n in sorted(user["refused"].items()):
            refused.add_metric([name, reason], n)
        if user["quota"] is not None:
            quota.add_metric([name], user["quota"])
            used.add_metric([name], user["quota_used"] or 0)
        if user["expires"] is not None:
            expires.add_metric([name], user["expires"])
        for direction, key in (("from_client", "up"), ("to_client", "down")):
            if user.get(f"rate_{key}") is not None:
                rate.add_metric([name, direction], user[f"rate_{key}"])
                throttled.add_metric([name, direction], user.get(f"throttled_{key}", 0.0))
    yield from (active, total, data, ips, refused, quota, used, expires, rate, throttled)


def _worker_metrics(workers: list[dict[str, Any]]) -> Iterable[Any]:
    if not workers:
        return
    up = GaugeMetricFamily("mtproxy_worker_up", "1 while the worker runs", labels=["worker"])
    restarts = CounterMetricFamily(
        "mtproxy_worker_restarts", "Times the worker was restarted", labels=["worker"]
    )
    conns = GaugeMetricFamily(
        "mtproxy_worker_connections_active", "Client connections open now", labels=["worker"]
    )
    for index, worker in enumerate(workers):
        label = [str(index)]
        up.add_metric(label, worker.get("up", 0))
        restarts.add_metric(label, worker.get("restarts", 0))
        conns.add_metric(label, worker.get("connections_active", 0))
    yield from (up, restarts, conns)


def _middle_metrics(middle: dict[str, Any]) -> Iterable[Any]:
    """Middle-proxy health per address, and the DCs served directly (middle/fallback.py)."""
    if not middle:
        return
    label = ["target"]
    up = GaugeMetricFamily(
        "mtproxy_middle_target_up", "1 while the address has a ready RPC connection", labels=label
    )
    conns = GaugeMetricFamily(
        "mtproxy_middle_target_connections", "Ready RPC connections", labels=label
    )
    clients = GaugeMetricFamily(
        "mtproxy_middle_target_clients", "Clients multiplexed over them", labels=label
    )
    reconnects = CounterMetricFamily(
        "mtproxy_middle_target_reconnects", "Connections made again after a loss or failure",
        labels=label,
    )
    failures = GaugeMetricFamily(
        "mtproxy_middle_target_failed_attempts", "Connection attempts failed in a row",
        labels=label,
    )
    rtt = GaugeMetricFamily(
        "mtproxy_middle_target_rtt_seconds", "RPC_PING to RPC_PONG, worst ready connection",
        labels=label,
    )
    queued = GaugeMetricFamily(
        "mtproxy_middle_target_queue_bytes", "Bytes waiting to be sent to the middle-proxy",
        labels=label,
    )
    down = GaugeMetricFamily(
        "mtproxy_middle_target_down_seconds", "How long the address has been unreachable",
        labels=label,
    )
    for target in middle.get("targets", []):
        name = [target["target"]]
        up.add_metric(name, target["ready"])
        conns.add_metric(name, target["connections"])
        clients.add_metric(name, target["clients"])
        reconnects.add_metric(name, target["reconnects"])
        failures.add_metric(name, target["failures"])
        if target["rtt"] is not None:
            rtt.add_metric(name, target["rtt"])
        queued.add_metric(name, target["queued"])
        down.add_metric(name, target["down_seconds"])
    yield from (up, conns, clients, reconnects, failures, rtt, queued, down)
    yield GaugeMetricFamily(
        "mtproxy_middle_no_config", "1 while there is no proxy list (clients go direct)",
        middle.get("no_config", 0),
    )
    direct = GaugeMetricFamily(
        "mtproxy_middle_dc_direct", "1 while the DC's new clients go direct", labels=["dc"]
    )
    for dc in middle.get("direct_dcs", []):
        direct.add_metric([str(dc)], 1)
    yield direct
    served = CounterMetricFamily(
        "mtproxy_middle_direct_clients", "Clients served directly because no middle-proxy "
        "could be had (no ad tag shown)", labels=["dc"],
    )
    for dc, n in sorted(middle.get("served", {}).items()):
        served.add_metric([str(dc)], n)
    yield served


__all__ = ["DEFAULT_ALLOW", "MetricsCollector", "StatsServer", "StatsView", "allowed"]
