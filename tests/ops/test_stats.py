"""/stats and /metrics after known traffic, and who may read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, open_faketls, open_obfs2, packet_echo_handler
from prometheus_client.parser import text_string_to_metric_families

from ops.helpers import ALICE, ProxyProc, connect, echo_ok, user_toml

DOMAIN = "stats.example.com"


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.timeout_s(60)
async def test_stats_and_metrics_count_known_traffic(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--tls-domain", DOMAIN, config=user_toml("alice", ALICE), dc_port=dc.port
        )
        try:
            classic = await connect(proxy, ALICE)
            for _ in range(3):
                assert await echo_ok(classic, os.urandom(100))  # 104 bytes each way each
            tls = await open_faketls("127.0.0.1", proxy.port, ALICE, DOMAIN, TAG_INTERMEDIATE, 2)
            assert await echo_ok(tls, b"x" * 96)  # 100 more
            stranger = await open_obfs2("127.0.0.1", proxy.port, os.urandom(16),
                                        TAG_INTERMEDIATE, 2)  # fmt: skip
            await proxy.wait_stat("handshakes_any_bad_secret", 1)
            stats = await proxy.stats()
            assert stats["handshakes_classic_ok"] == "1"
            assert stats["handshakes_tls_ok"] == "1"
            assert stats["inbound_connections_accepted"] == "3"
            assert stats["total_special_connections"] == "3"
            assert stats["user.alice.connections_active"] == "2"
            assert stats["user.alice.bytes_from_client"] == str(3 * 104 + 100)
            assert stats["user.alice.bytes_to_client"] == str(3 * 104 + 100)
            assert stats["bytes_from_clients"] == str(3 * 104 + 100)
            assert stats["user.alice.ips"] == "127.0.0.1"
            assert stats["workers"] == "1" and stats["pid"] == str(proxy.pid)
            assert int(stats["uptime"]) >= 0 and "ready_targets" in stats
            assert "total_max_special_connections" in stats

            status, text = await proxy.get("/metrics")
            assert status == 200
            m = metric_values(text)
            user = (("direction", "from_client"), ("user", "alice"))
            assert m[("mtproxy_user_bytes_total", user)] == 3 * 104 + 100
            assert m[("mtproxy_handshakes_total", (("mode", "tls"), ("outcome", "ok")))] == 1
            bad = (("mode", "any"), ("outcome", "bad_secret"))
            assert m[("mtproxy_handshakes_total", bad)] == 1
            assert m[("mtproxy_connections_active", ())] == 3
            assert m[("mtproxy_user_connections_active", (("user", "alice"),))] == 2

            for stream in (classic, tls, stranger):
                stream.close()
            await proxy.wait_stat("total_special_connections", 0)
            assert (await proxy.get("/nothing"))[0] == 404
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_the_allow_list_keeps_other_scrapers_out(tmp_path: Path) -> None:
    proxy = await ProxyProc.start(
        tmp_path, "--stats-allow", "127.0.0.2/32", "--stats-allow", "10.0.0.0/8",
        stats_host="0.0.0.0",
    )  # fmt: skip
    try:
        assert (await proxy.get("/stats", source="127.0.0.1"))[0] == 403
        assert (await proxy.get("/metrics", source="127.0.0.3"))[0] == 403
        status, body = await proxy.get("/stats", source="127.0.0.2")
        assert status == 200 and "total_special_connections\t0" in body
    finally:
        assert await proxy.stop() == 0
