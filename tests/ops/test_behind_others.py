"""Behind a load balancer (PROXY v1/v2), through a SOCKS5 upstream, on IPv6."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, open_obfs2, packet_echo_handler

from mtproxy.ops.socks import Socks5
from mtproxy.protocol.proxy_protocol import build_v1, build_v2
from ops.helpers import ALICE, BOB, ProxyProc, closed_by_proxy, connect, echo_ok, user_toml
from ops.socks5_server import Socks5Server

LB = ("192.0.2.10", 443)


@pytest.mark.timeout_s(60)
async def test_proxy_protocol_addresses_reach_the_stats(tmp_path: Path) -> None:
    config = user_toml("alice", ALICE) + user_toml("bob", BOB)
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--proxy-protocol", config=config,
                                      dc_port=dc.port)  # fmt: skip
        try:
            v1 = await connect(proxy, ALICE, prefix=build_v1(("203.0.113.7", 51000), LB))
            v2 = await connect(proxy, ALICE, prefix=build_v2(("2001:db8::7", 52000),
                                                             ("2001:db8::1", 443)))  # fmt: skip
            local = await connect(proxy, BOB, prefix=build_v2(command="LOCAL"))
            assert await echo_ok(v1) and await echo_ok(v2) and await echo_ok(local)
            stats = await proxy.stats()
            assert stats["user.alice.ips"] == "2001:db8::7,203.0.113.7"
            assert stats["user.alice.unique_ips"] == "2"
            assert stats["user.bob.ips"] == "127.0.0.1"  # LOCAL: the socket's own address

            naked = await connect(proxy, ALICE)  # no header: dropped, never guessed
            assert await closed_by_proxy(naked)
            garbage = await connect(proxy, ALICE, prefix=b"PROXY TCP9 nonsense\r\n")
            assert await closed_by_proxy(garbage)
            assert await proxy.stat("proxy_protocol_errors") == 2
            assert len(dc.connections) == 3
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_a_header_split_over_several_reads(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--proxy-protocol", dc_port=dc.port,
                                      config=user_toml("alice", ALICE))  # fmt: skip
        try:
            header = build_v2(("198.51.100.9", 1234), LB)
            stream = await open_obfs2("127.0.0.1", proxy.port, ALICE, TAG_INTERMEDIATE, 2,
                                      coalesce_header=True)  # fmt: skip
            for i in range(0, len(header), 5):
                stream.writer.write(header[i : i + 5])
                await stream.writer.drain()
                await asyncio.sleep(0.02)
            stream.flush_pending()
            await stream.drain()
            assert await echo_ok(stream)
            assert (await proxy.stats())["user.alice.ips"] == "198.51.100.9"
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_dc_traffic_goes_through_the_socks5_upstream(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc, Socks5Server("tg", "p@ss") as socks:
        url = f"socks5://tg:p%40ss@127.0.0.1:{socks.port}"
        proxy = await ProxyProc.start(tmp_path, "--socks5", url, dc_port=dc.port)
        try:
            client = await connect(proxy, dc=2)
            for size in (10, 5000, 70000):
                assert await echo_ok(client, bytes(range(256)) * (size // 256) + b"end!")
            assert len(socks.tunnels) == 1
            tunnel = socks.tunnels[0]
            assert (tunnel.user, tunnel.host, tunnel.port) == ("tg", "127.0.0.1", dc.port)
            conns = await dc.wait_connections(1)
            assert conns[0].peer[1] == tunnel.out_port  # the DC was reached from the proxy
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_a_socks5_upstream_that_refuses_fails_the_session_cleanly(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc, Socks5Server("tg", "right") as socks:
        url = f"socks5://tg:wrong@127.0.0.1:{socks.port}"
        proxy = await ProxyProc.start(tmp_path, "--socks5", url, dc_port=dc.port)
        try:
            client = await connect(proxy)
            assert await closed_by_proxy(client)
            assert socks.auth_failures >= 1 and not dc.connections
            assert await proxy.stat("upstream_failures") == 1
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_ipv6_listener(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, listen="[::1]:0", dc_port=dc.port,
                                      config=user_toml("alice", ALICE))  # fmt: skip
        try:
            client = await connect(proxy, ALICE, host="::1")
            assert await echo_ok(client)
            assert (await proxy.stats())["user.alice.ips"] == "::1"
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_a_silent_connection_is_dropped_when_the_header_never_comes(tmp_path: Path) -> None:
    proxy = await ProxyProc.start(tmp_path, "--proxy-protocol", "--handshake-timeout", "1")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(build_v1(("203.0.113.1", 1), LB)[:10])  # a header that never ends
        async with asyncio.timeout(10):
            assert await reader.read() == b""
        writer.close()
        assert await proxy.stat("proxy_protocol_errors") == 1
    finally:
        assert await proxy.stop() == 0


def test_socks5_urls() -> None:
    with pytest.raises(ValueError, match=r"socks5://\[user:pass@\]host:port"):
        Socks5("socks5://proxy.example")
    upstream = Socks5("socks5h://u%40x:p%3Aw@127.0.0.1:1080")
    assert repr(upstream) == "Socks5(127.0.0.1:1080)"
    assert (upstream.username, upstream.password, upstream.remote_dns) == ("u@x", "p:w", True)
    anonymous = Socks5("socks5://[::1]:1080")
    assert (anonymous.host, anonymous.username, anonymous.remote_dns) == ("::1", None, False)
