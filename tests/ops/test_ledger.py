"""The cross-worker ledger and the stats plumbing, without processes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.config.convert import network
from mtproxy.ops.limits import Ledger, load_usage, save_usage
from mtproxy.ops.snapshot import merge, render_tsv
from mtproxy.ops.stats_server import DEFAULT_ALLOW, MetricsCollector, StatsView, allowed


def test_connection_and_address_caps_count_every_worker() -> None:
    ledger = Ledger()
    assert ledger.acquire(0, "a", "1.1.1.1", 3, 2) is None
    assert ledger.acquire(1, "a", "1.1.1.1", 3, 2) is None
    assert ledger.acquire(1, "a", "2.2.2.2", 3, 2) is None
    assert ledger.acquire(0, "a", "1.1.1.1", 3, 2) == "max_connections"
    ledger.release(1, "a", "2.2.2.2")
    assert ledger.acquire(0, "a", "3.3.3.3", None, 2) is None
    assert ledger.acquire(0, "a", "4.4.4.4", None, 2) == "max_ips"
    assert ledger.acquire(0, "a", "1.1.1.1", None, 2) is None  # a known address is fine
    assert ledger.acquire(0, "b", "4.4.4.4", 1, 1) is None  # users are separate
    ledger.release(1, "a", "9.9.9.9")  # unknown releases are harmless


def test_a_dead_worker_takes_its_sessions_but_not_its_bytes(tmp_path: Path) -> None:
    ledger = Ledger({"a": 100})
    assert ledger.acquire(0, "a", "1.1.1.1", 1, None) is None
    assert ledger.report(0, {"a": 50}) == {"a": 150}
    assert ledger.report(1, {"a": 7}) == {"a": 157}
    ledger.drop_worker(0)
    assert ledger.acquire(1, "a", "1.1.1.1", 1, None) is None
    assert ledger.used("a") == 157
    assert ledger.report(0, {"a": 1}) == {"a": 158}  # the replacement starts from zero
    save_usage(tmp_path, ledger.totals())
    assert load_usage(tmp_path) == {"a": 158}
    (tmp_path / "usage.json").write_text("not json")
    assert load_usage(tmp_path) == {}


def snap(pid: int, conns: int, hs: int, user_bytes: int) -> dict[str, object]:
    return {
        "pid": pid, "started": 100.0 + pid,
        "counters": {"connections_active": conns, "connections_total": conns * 2,
                     "bytes_from_clients": 10, "bytes_to_clients": 20, "ready_targets": 3},
        "extra": {}, "handshakes": {"tls|ok": hs, "-|bad_secret": 1}, "refused": {"max_ips": 1},
        "max_connections": 50, "reloads": 1, "draining": 0,
        "users": {"alice": {
            "connections_active": conns, "connections_total": conns, "bytes_from_client":
            user_bytes, "bytes_to_client": user_bytes, "quota_closed": 0,
            "ips": {f"10.0.0.{pid}": 1}, "refused": {}, "removed": False, "quota": 1000,
            "quota_used": 10 * pid, "expires": None, "max_connections": None, "max_ips": 2}},
    }  # fmt: skip


def test_snapshots_of_workers_add_up() -> None:
    total = merge([snap(1, 2, 5, 100), snap(2, 3, 7, 50)])
    assert total["counters"]["connections_active"] == 5
    assert total["counters"]["ready_targets"] == 6
    assert total["handshakes"] == {"tls|ok": 12, "-|bad_secret": 2}
    assert total["max_connections"] == 100
    alice = total["users"]["alice"]
    assert alice["bytes_from_client"] == 150 and alice["ips"] == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert alice["quota_used"] == 20  # a global figure: the freshest, not the sum
    tsv = dict(
        line.split("\t", 1)
        for line in render_tsv(total, pid=9, started=100.0, workers=[{"pid": 1}, {"pid": 2}])
        .splitlines()
    )
    assert tsv["total_special_connections"] == "5"
    assert tsv["total_max_special_connections"] == "100"
    assert tsv["ready_targets"] == tsv["total_ready_targets"] == "6"
    assert tsv["handshakes_tls_ok"] == "12" and tsv["handshakes_any_bad_secret"] == "2"
    assert tsv["user.alice.ips"] == "10.0.0.1,10.0.0.2"
    assert tsv["workers"] == "2" and tsv["worker.1.pid"] == "2"
    view = StatsView(total, 9, 100.0, [{"pid": 1, "up": 1}, {"pid": 2, "up": 0}])
    families = {f.name: f for f in text_string_to_metric_families(
        _render(MetricsCollector(view)))}  # fmt: skip
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}  # fmt: skip
    assert samples[("mtproxy_handshakes_total", (("mode", "tls"), ("outcome", "ok")))] == 12
    assert samples[("mtproxy_user_unique_ips", (("user", "alice"),))] == 2
    assert samples[("mtproxy_worker_up", (("worker", "1"),))] == 0
    assert samples[("mtproxy_ready_targets", ())] == 6


def _render(collector: MetricsCollector) -> str:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def test_allow_list() -> None:
    nets = [network("10.0.0.0/8"), network("::1")]
    assert allowed("10.1.2.3", nets) and allowed("::1", nets)
    assert allowed("::ffff:10.0.0.1", nets)  # IPv4 through a dual-stack socket
    assert not allowed("11.0.0.1", nets) and not allowed("garbage", nets)
    # With no list configured: loopback and private networks (pods, compose networks).
    for ok in ("127.0.0.1", "::1", "10.2.3.4", "172.20.0.5", "192.168.1.1", "fd00::5"):
        assert allowed(ok, DEFAULT_ALLOW), ok
    for public in ("8.8.8.8", "2001:4860::8888", "172.32.0.1"):
        assert not allowed(public, DEFAULT_ALLOW), public


def test_usage_file_that_is_not_a_mapping_or_cannot_be_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "usage.json").write_text("[1, 2]\n")
    assert load_usage(tmp_path) == {}
    (tmp_path / "usage.json").write_text('{"a": 5, "b": -1, "c": "x"}\n')
    assert load_usage(tmp_path) == {"a": 5}
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="mtproxy"):
        save_usage(blocked, {"a": 1})  # its data dir is a file: logged, not raised
    assert f"cannot save quota usage in {blocked}" in caplog.text
