"""Stats as plain data: taken from one server, summed over workers, rendered as TSV.

A snapshot is JSON-friendly (it crosses the worker -> supervisor channel). Every
integer field of :class:`ProxyStats` is carried generically, so counters other
parts of the proxy add (the middle-end's ``ready_targets``, ``active_targets``,
...) reach /stats and /metrics without this module knowing them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mtproxy import __version__
from mtproxy.ops.fds import open_fds

if TYPE_CHECKING:
    from mtproxy.ops.server import OpsServer

Snapshot = dict[str, Any]

_USER_SUMS = (
    "connections_active",
    "connections_total",
    "bytes_from_client",
    "bytes_to_client",
    "quota_closed",
)
#: Seconds a rate limit held the user back, per direction (floats, summed over workers).
_USER_THROTTLE = ("throttled_up", "throttled_down")


def take(server: OpsServer) -> Snapshot:
    stats = server.stats
    counters: dict[str, int] = {}
    extra: dict[str, int] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            counters[f.name] = value
        elif isinstance(value, Counter) and f.name != "handshakes":
            for key, count in value.items():
                label = "_".join(key) if isinstance(key, tuple) else str(key)
                extra[f"{f.name}_{label}"] = int(count)
    # Gauges of the descriptor budget (summed over workers, like the cap).
    counters["open_fds"] = open_fds()
    counters["fd_limit"] = server.fd_budget.limit
    users: dict[str, Any] = {}
    for state in server.registry.live():
        config = state.config
        entry: dict[str, Any] = {name: getattr(state.stats, name) for name in _USER_SUMS}
        shaper = state.stats.shaper
        up, down = shaper.throttled_seconds() if shaper is not None else (0.0, 0.0)
        entry.update(
            throttled_up=up,
            throttled_down=down,
            rate_up=config.rate_up if config else None,
            rate_down=config.rate_down if config else None,
            ips=dict(state.ips),
            refused=dict(state.refused),
            removed=state.removed,
            quota=config.quota if config else None,
            quota_used=state.quota_used if config and config.quota else None,
            expires=config.expires if config else None,
            max_connections=config.max_connections if config else None,
            max_ips=config.max_ips if config else None,
        )
        users[state.name] = entry
    return {
        "pid": os.getpid(),
        "started": stats.started,
        "counters": counters,
        "extra": extra,
        "handshakes": {f"{mode}|{outcome}": n for (mode, outcome), n in stats.handshakes.items()},
        "refused": dict(server.refused),
        "max_connections": server.max_clients,
        "reloads": server.reloads,
        "draining": int(server.draining),
        "users": users,
        "mask": server.mask_monitor.health.snapshot(),
        "middle": middle_health(server),
    }


def middle_health(server: OpsServer) -> dict[str, Any]:
    """Per middle-proxy address and per DC (empty in direct mode), see MiddleUpstreams."""
    health = getattr(server.upstreams, "health", None)
    return dict(health()) if callable(health) else {}


def merge_middle(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Workers each keep their own connections to the same addresses: sum what adds up,
    the worst RTT, the longest outage, ready if any worker is."""
    targets: dict[str, dict[str, Any]] = {}
    served: Counter[str] = Counter()
    direct: set[int] = set()
    no_config = 0
    for part in parts:
        if not part:
            continue
        no_config = max(no_config, int(part.get("no_config", 0)))
        direct.update(part.get("direct_dcs", []))
        served.update(part.get("served", {}))
        for target in part.get("targets", []):
            mine = targets.get(target["target"])
            if mine is None:
                targets[target["target"]] = dict(target)
                continue
            for key in ("connections", "clients", "reconnects", "failures", "queued"):
                mine[key] += target[key]
            mine["ready"] = max(mine["ready"], target["ready"])
            mine["down_seconds"] = max(mine["down_seconds"], target["down_seconds"])
            rtts = [r for r in (mine["rtt"], target["rtt"]) if r is not None]
            mine["rtt"] = max(rtts) if rtts else None
    if not targets and not served and not no_config:
        return {}
    return {
        "targets": [targets[name] for name in sorted(targets)],
        "no_config": no_config,
        "direct_dcs": sorted(direct),
        "served": dict(served),
    }


#: What a snapshot says about the mask host before any check (or without one).
NO_MASK: dict[str, Any] = {"up": -1, "checked": 0.0, "profile_source": "", "record_bytes": 0}


def _freshest_mask(parts: list[Snapshot]) -> dict[str, Any]:
    """The mask host as the most recent check saw it (a gone worker's view is older)."""
    views = [p.get("mask") or NO_MASK for p in parts]
    return dict(max(views, key=lambda v: (v["checked"], -v["up"]), default=NO_MASK))


def merge(parts: Iterable[Snapshot]) -> Snapshot:
    """Sum worker snapshots (gauges add up too: each worker holds its own share).

    The mask host's health is not summed: the most recent check wins.
    """
    parts = list(parts)
    out: Snapshot = {
        "started": float("inf"), "counters": Counter(), "extra": Counter(),
        "handshakes": Counter(), "refused": Counter(), "max_connections": 0,
        "reloads": 0, "draining": 0, "users": {},
    }  # fmt: skip
    for part in parts:
        out["started"] = min(out["started"], part["started"])
        for key in ("counters", "extra", "handshakes", "refused"):
            out[key].update(part[key])
        out["max_connections"] += part["max_connections"]
        out["reloads"] = max(out["reloads"], part["reloads"])
        out["draining"] = max(out["draining"], part["draining"])
        for name, user in part["users"].items():
            mine = out["users"].get(name)
            if mine is None:
                mine = out["users"][name] = dict(user, ips=Counter(), refused=Counter())
                for field in (*_USER_SUMS, *_USER_THROTTLE):
                    mine[field] = 0
            for field in _USER_SUMS:
                mine[field] += user[field]
            for field in _USER_THROTTLE:
                mine[field] += user.get(field, 0.0)
            mine["ips"].update(user["ips"])
            mine["refused"].update(user["refused"])
            mine["removed"] = mine["removed"] and user["removed"]
            if user["quota_used"] is not None:
                mine["quota_used"] = max(mine["quota_used"] or 0, user["quota_used"])
    out["mask"] = _freshest_mask(parts)
    if out["started"] == float("inf"):
        out["started"] = time.time()
    for key in ("counters", "extra", "handshakes", "refused"):
        out[key] = dict(out[key])
    for user in out["users"].values():
        user["ips"] = dict(user["ips"])
        user["refused"] = dict(user["refused"])
    out["middle"] = merge_middle(part.get("middle", {}) for part in parts)
    return out


def _mode(mode: str) -> str:
    return "any" if mode == "-" else mode


def render_tsv(snap: Snapshot, *, pid: int, started: float, workers: list[Snapshot]) -> str:
    """The official server's ``key\\tvalue`` page: its keys that mean something here, then ours.

    ``workers`` holds one small dict per worker process (empty with a single process).
    """
    now = time.time()
    c: dict[str, int] = snap["counters"]
    cap = snap["max_connections"]
    lines: list[tuple[str, object]] = [
        ("pid", pid),
        ("start_time", int(started)),
        ("current_time", int(now)),
        ("uptime", int(now - started)),
        ("version", f"mtproxy-{__version__}"),
        ("workers", len(workers) or 1),
        ("ready_targets", c.get("ready_targets", 0)),
        ("active_targets", c.get("active_targets", 0)),
        ("total_ready_targets", c.get("ready_targets", 0)),
        ("total_declared_targets", c.get("active_targets", 0)),
        ("total_special_connections", c.get("connections_active", 0)),
        ("total_max_special_connections", cap),
        ("inbound_connections_accepted", c.get("connections_total", 0)),
        ("accept_connection_limit_failed", c.get("accept_refused", 0)),
        ("draining", snap["draining"]),
        ("reloads", snap["reloads"]),
    ]
    known = {"connections_active", "connections_total", "accept_refused"}
    for name in sorted(c):
        if name not in known:
            lines.append((name, c[name]))
    for name in sorted(snap["extra"]):
        lines.append((name, snap["extra"][name]))
    hs: dict[str, int] = snap["handshakes"]
    for key in sorted(hs):
        mode, outcome = key.split("|", 1)
        lines.append((f"handshakes_{_mode(mode)}_{outcome}", hs[key]))
    for reason in sorted(snap["refused"]):
        lines.append((f"refused_{reason}", snap["refused"][reason]))
    for name in sorted(snap["users"]):
        user = snap["users"][name]
        prefix = f"user.{name}."
        for field in _USER_SUMS:
            lines.append((prefix + field, user[field]))
        lines.append((prefix + "unique_ips", len(user["ips"])))
        lines.append((prefix + "ips", ",".join(sorted(user["ips"]))))
        for key in ("max_connections", "max_ips", "quota", "quota_used", "rate_up",
                    "rate_down", "expires"):  # fmt: skip
            if user.get(key) is not None:
                value = user[key]
                lines.append((prefix + key, int(value)))
        if user.get("rate_up") is not None or user.get("rate_down") is not None:
            lines.append((prefix + "throttled_seconds_up", round(user["throttled_up"], 3)))
            lines.append((prefix + "throttled_seconds_down", round(user["throttled_down"], 3)))
        for reason in sorted(user["refused"]):
            lines.append((prefix + f"refused_{reason}", user["refused"][reason]))
        if user["removed"]:
            lines.append((prefix + "removed", 1))
    middle = snap.get("middle") or {}
    for target in middle.get("targets", []):
        prefix = f"middle.{target['target']}."
        for key in ("ready", "connections", "clients", "reconnects", "failures", "queued"):
            lines.append((prefix + key, target[key]))
        if target["rtt"] is not None:
            lines.append((prefix + "rtt_ms", round(target["rtt"] * 1000, 3)))
        lines.append((prefix + "down_seconds", int(target["down_seconds"])))
    if middle:
        lines.append(("middle_no_config", middle["no_config"]))
        lines.append(("middle_direct_dcs", ",".join(map(str, middle["direct_dcs"]))))
        for dc, n in sorted(middle["served"].items()):
            lines.append((f"middle_direct_clients.{dc}", n))
    mask = snap.get("mask") or NO_MASK
    lines.append(("mask_up", mask["up"]))
    lines.append(("mask_checked", int(mask["checked"])))
    lines.append(("mask_profile_source", mask["profile_source"] or "-"))
    lines.append(("faketls_record_bytes", mask["record_bytes"]))
    for index, worker in enumerate(workers):
        prefix = f"worker.{index}."
        for key in sorted(worker):
            lines.append((prefix + key, worker[key]))
    return "".join(f"{key}\t{value}\n" for key, value in lines)
