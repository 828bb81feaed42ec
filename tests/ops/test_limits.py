"""Each limit hit: the client over it is refused (or cut off), the others carry on."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from fakes import FakeDC, packet_echo_handler

from mtproxy.protocol.proxy_protocol import build_v1
from ops.helpers import ALICE, BOB, SECRET, ProxyProc, closed_by_proxy, connect, echo_ok, user_toml


def from_ip(ip: str) -> bytes:
    return build_v1((ip, 40000), ("192.0.2.1", 443))


@pytest.mark.timeout_s(60)
async def test_max_connections_of_a_user(tmp_path: Path) -> None:
    config = user_toml("alice", ALICE, max_connections=2) + user_toml("bob", BOB)
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, config=config, dc_port=dc.port)
        try:
            a1, a2 = await connect(proxy, ALICE), await connect(proxy, ALICE)
            assert await echo_ok(a1) and await echo_ok(a2)
            a3 = await connect(proxy, ALICE)
            assert await closed_by_proxy(a3)
            b1 = await connect(proxy, BOB)
            assert await echo_ok(b1) and await echo_ok(a1) and await echo_ok(a2)
            stats = await proxy.stats()
            assert stats["user.alice.refused_max_connections"] == "1"
            assert stats["handshakes_classic_refused"] == "1"
            a1.close()
            await proxy.wait_stat("user.alice.connections_active", 1)
            a4 = await connect(proxy, ALICE)
            assert await echo_ok(a4)
            assert len(dc.connections) == 4  # the refused client never reached a DC
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_max_ips_of_a_user(tmp_path: Path) -> None:
    config = user_toml("alice", ALICE, max_ips=1) + user_toml("bob", BOB)
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--proxy-protocol", config=config,
                                      dc_port=dc.port)  # fmt: skip
        try:
            first = await connect(proxy, ALICE, prefix=from_ip("198.51.100.1"))
            again = await connect(proxy, ALICE, prefix=from_ip("198.51.100.1"))
            assert await echo_ok(first) and await echo_ok(again)
            other = await connect(proxy, ALICE, prefix=from_ip("198.51.100.2"))
            assert await closed_by_proxy(other)
            bob = await connect(proxy, BOB, prefix=from_ip("198.51.100.2"))
            assert await echo_ok(bob) and await echo_ok(first)
            stats = await proxy.stats()
            assert stats["user.alice.refused_max_ips"] == "1"
            assert stats["user.alice.ips"] == "198.51.100.1"
            first.close()
            again.close()
            await proxy.wait_stat("user.alice.connections_active", 0)
            now_ok = await connect(proxy, ALICE, prefix=from_ip("198.51.100.2"))
            assert await echo_ok(now_ok)
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_quota_cuts_a_running_session_and_survives_a_restart(tmp_path: Path) -> None:
    config = user_toml("alice", ALICE, quota=1000) + user_toml("bob", BOB)
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, config=config, dc_port=dc.port)
        try:
            alice, bob = await connect(proxy, ALICE), await connect(proxy, BOB)
            for _ in range(3):
                assert await echo_ok(alice, os.urandom(100))  # 3 x 104 bytes each way: 624
            # 304 more up is within the quota (928), the echo back is not (1232 > 1000):
            # the session is closed while it runs, before the reply reaches the client.
            assert not await echo_ok(alice, os.urandom(300))
            assert await closed_by_proxy(alice)
            assert await echo_ok(bob, os.urandom(2000))
            stats = await proxy.stats()
            assert stats["user.alice.quota_closed"] == "1" and stats["quota_closed"] == "1"
            assert int(stats["user.alice.quota_used"]) <= 1000 + 304
            late = await connect(proxy, ALICE)
            assert await closed_by_proxy(late)
            assert (await proxy.stats())["user.alice.refused_quota"] == "1"
        finally:
            assert await proxy.stop() == 0
        # The usage is kept in the data directory: a restart does not refill the quota.
        proxy = await ProxyProc.start(tmp_path, config=config, dc_port=dc.port)
        try:
            again = await connect(proxy, ALICE)
            assert await closed_by_proxy(again)
            assert await echo_ok(await connect(proxy, BOB))
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_expiry_refuses_and_ends_sessions(tmp_path: Path) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    config = user_toml("alice", ALICE, expires="2020-01-01") + user_toml(
        "bob", BOB, expires=soon.isoformat()
    )
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, config=config, dc_port=dc.port)
        try:
            assert await closed_by_proxy(await connect(proxy, ALICE))
            bob = await connect(proxy, BOB)
            assert await echo_ok(bob)
            assert await closed_by_proxy(bob, timeout=15)  # cut off at the expiry time
            assert await closed_by_proxy(await connect(proxy, BOB))
            stats = await proxy.stats()
            assert stats["user.alice.refused_expired"] == "1"
            assert stats["user.bob.refused_expired"] == "1"
            assert await echo_ok(await connect(proxy, SECRET))  # the anonymous secret: no expiry
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_connection_cap_per_worker(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--max-connections", "2", dc_port=dc.port)
        try:
            one, two = await connect(proxy), await connect(proxy)
            assert await echo_ok(one) and await echo_ok(two)
            three = await connect(proxy)
            assert await closed_by_proxy(three)
            assert await echo_ok(one) and await echo_ok(two)
            stats = await proxy.stats()
            assert stats["accept_connection_limit_failed"] == "1"
            assert stats["total_max_special_connections"] == "2"
            one.close()
            await proxy.wait_stat("total_special_connections", 1)
            assert await echo_ok(await connect(proxy))
        finally:
            assert await proxy.stop() == 0
