"""Many clients over few connections, failures, routing, refreshes, NAT and slow clients."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from fakes.middle_end import FakeMiddleEnd
from fakes.obfs import TAG_ABRIDGED, TAG_INTERMEDIATE, TAG_PADDED, TAGS, ObfsStream

from mtproxy.proxy.server import ProxyServer

from .harness import (
    FAST,
    PROXY_SECRET,
    closes,
    config_text,
    middle_settings,
    open_client,
    packet,
    running_proxy,
    upstreams,
    wait_for,
    write_inputs,
)
from .webserver import ConfigWebServer, Reply


async def echo_ok(stream: ObfsStream, data: bytes | None = None) -> bytes:
    data = packet(64) if data is None else data
    stream.send_packet(data)
    await stream.drain()
    async with asyncio.timeout(5):
        assert await stream.recv_packet() == data
    return data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.timeout_s(90)
async def test_200_clients_multiplexed_over_the_pool(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(
            tmp_path / "data", config, secret,
            middle_min_connections="2", middle_max_connections="4",
        )
        async with running_proxy(cli) as server:
            await me.wait_ready_connections(2)
            clients: list[ObfsStream] = []
            for batch in range(10):
                clients += await asyncio.gather(
                    *(open_client(server, TAGS[(batch + i) % 3], tls=i % 2 == 0)
                      for i in range(20))
                )
            payloads = await asyncio.gather(*(echo_ok(c) for c in clients))
            requests = await me.wait_requests(200)
            assert {r.payload for r in requests} == set(payloads)
            conn_ids = {r.ext_conn_id for r in requests}
            assert len(conn_ids) == 200
            used = {r.connection for r in requests}
            assert 2 <= len(me.connections) <= 4
            assert 2 <= len(used) <= 4
            per_connection = [sum(1 for r in requests if r.connection == c) for c in used]
            assert max(per_connection) <= 200 - len(used) + 1
            assert min(per_connection) >= 10, per_connection  # load is spread
            stats = server.stats
            assert stats.me_clients_active == 200
            assert stats.me_connections_active == len(me.ready_connections())
            assert stats.me_targets == stats.me_targets_ready == 1
            # A second round on the same sessions, all at once.
            await asyncio.gather(*(echo_ok(c) for c in clients))
            for client in clients:
                client.close()
            await me.wait_until(lambda: set(me.close_conns) == conn_ids, timeout=10)
            await wait_for(lambda: stats.me_clients_active == 0)
            assert len(me.connections) <= 4  # no connection per client


@pytest.mark.timeout_s(60)
async def test_killed_connection_closes_only_its_clients(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(
            tmp_path / "data", config, secret,
            middle_min_connections="2", middle_max_connections="2",
        )
        async with running_proxy(cli) as server:
            await me.wait_ready_connections(2)
            clients = [await open_client(server, TAGS[i % 3]) for i in range(20)]
            sent = [await echo_ok(c) for c in clients]
            where = {r.payload: r.connection for r in await me.wait_requests(20)}
            victim_conn = where[sent[0]]
            doomed = [c for c, p in zip(clients, sent, strict=True) if where[p] == victim_conn]
            spared = [c for c, p in zip(clients, sent, strict=True) if where[p] != victim_conn]
            assert doomed and spared
            # Mid-stream: each doomed client has a request in flight when the ME dies.
            for client in doomed:
                client.send_packet(packet(256))
            await asyncio.gather(*(c.drain() for c in doomed))
            await me.kill_connection(victim_conn)
            results = await asyncio.gather(*(closes(c) for c in doomed))
            assert all(results)
            await asyncio.gather(*(echo_ok(c) for c in spared))
            assert server.stats.me_disconnects == 1
            # The pool reconnects (after a short backoff) and new clients work.
            await me.wait_ready_connections(2)
            fresh = [await open_client(server, TAG_PADDED) for _ in range(4)]
            await asyncio.gather(*(echo_ok(c) for c in fresh))
            await asyncio.gather(*(echo_ok(c) for c in spared))
            for client in spared + fresh:
                client.close()


async def test_next_address_when_one_is_down(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        dead = ("127.0.0.1", closed_port())
        config, secret = write_inputs(tmp_path / "in", {2: [dead, me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            clients = [await open_client(server, TAG_INTERMEDIATE) for _ in range(8)]
            await asyncio.gather(*(echo_ok(c) for c in clients))
            assert server.stats.me_connect_failures >= 1
            assert server.stats.me_targets == 2 and server.stats.me_targets_ready == 1
            for client in clients:
                client.close()


async def test_missing_dc_goes_to_default(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me_a, FakeMiddleEnd(PROXY_SECRET) as me_b:
        config, secret = write_inputs(
            tmp_path / "in", {2: [me_a.address], -2: [me_a.address], 4: [me_b.address]}, default=4
        )
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            for dc, me in ((2, me_a), (-2, me_a), (4, me_b), (3, me_b), (-5, me_b), (203, me_b)):
                client = await open_client(server, TAG_ABRIDGED, dc_id=dc)
                data = await echo_ok(client)
                assert me.requests[-1].payload == data, dc
                client.close()


async def test_refresh_moves_a_dc_without_dropping_its_clients(
    tmp_path: Path, loop_impl: str
) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me_a, FakeMiddleEnd(PROXY_SECRET) as me_b:
        config, secret = write_inputs(tmp_path / "in", {1: [me_b.address], 2: [me_a.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            old = await open_client(server, TAG_INTERMEDIATE)
            await echo_ok(old)
            assert len(me_a.requests) == 1
            config.write_text(config_text({1: [me_b.address], 2: [me_b.address]}))
            assert await upstreams(server).refresh()
            assert not await upstreams(server).refresh()  # unchanged now
            new = await open_client(server, TAG_INTERMEDIATE)
            data = await echo_ok(new)
            assert me_b.requests[-1].payload == data
            # The established client still talks to the old middle-end.
            data = await echo_ok(old)
            assert me_a.requests[-1].payload == data
            assert server.stats.me_targets == 1
            old.close()
            # Its address left the list: once its last client is gone, so is the connection.
            await me_a.wait_until(lambda: not me_a.ready_connections())
            await echo_ok(new)
            new.close()


async def test_periodic_refresh_from_url(tmp_path: Path) -> None:
    async with (
        FakeMiddleEnd(PROXY_SECRET) as me_a,
        FakeMiddleEnd(PROXY_SECRET) as me_b,
        ConfigWebServer() as web,
    ):
        web.routes["/config"] = Reply(config_text({2: [me_a.address]}).encode())
        web.routes["/secret"] = Reply(PROXY_SECRET)
        cli = middle_settings(tmp_path / "data", web.url("/config"), web.url("/secret"))
        async with running_proxy(cli, overrides={"proxy_config_refresh": 0.2}) as server:
            client = await open_client(server, TAG_INTERMEDIATE)
            await echo_ok(client)
            web.routes["/config"] = Reply(b"<html>maintenance</html>")  # refused, kept
            await wait_for(lambda: web.hits["/config"] >= 3, what="refreshes")
            assert server.stats.me_config_failures >= 1
            web.routes["/config"] = Reply(config_text({2: [me_b.address]}).encode())
            await wait_for(lambda: bool(me_b.ready_connections()), what="switch to B")
            fresh = await open_client(server, TAG_INTERMEDIATE)
            data = await echo_ok(fresh)
            assert me_b.requests[-1].payload == data
            await echo_ok(client)
            client.close()
            fresh.close()


async def test_unreachable_config_url_with_cached_copy(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        async with ConfigWebServer() as web:
            web.routes["/config"] = Reply(config_text({2: [me.address]}).encode())
            web.routes["/secret"] = Reply(PROXY_SECRET)
            cli = middle_settings(data_dir, web.url("/config"), web.url("/secret"))
            async with running_proxy(cli) as server:
                client = await open_client(server, TAG_INTERMEDIATE)
                await echo_ok(client)
                client.close()
        # Telegram is unreachable now; a restart runs on the cached copies.
        port = closed_port()
        cli = middle_settings(
            data_dir, f"http://127.0.0.1:{port}/config", f"http://127.0.0.1:{port}/secret"
        )
        async with running_proxy(cli) as server:
            client = await open_client(server, TAG_ABRIDGED)
            await echo_ok(client)
            assert server.stats.me_config_failures == 2
            client.close()


async def test_nat_info_gives_the_keys_the_public_address(tmp_path: Path) -> None:
    public = "203.0.113.7"
    async with FakeMiddleEnd(PROXY_SECRET, public_client_ip=public) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(
            tmp_path / "data", config, secret, nat_info=[f"127.0.0.1:{public}"]
        )
        async with running_proxy(cli) as server:
            client = await open_client(server, TAG_INTERMEDIATE)
            await echo_ok(client)
            assert me.requests[0].our_ip == IPv4Address(public)  # nat_translate_ip
            assert me.requests[0].remote_ip == IPv4Address("127.0.0.1")
            client.close()


async def test_without_nat_info_the_middle_end_refuses(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET, public_client_ip="203.0.113.7") as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        options = replace(FAST, connect_timeout=1.0)
        async with running_proxy(
            middle_settings(tmp_path / "data", config, secret), options
        ) as server:
            client = await open_client(server, TAG_INTERMEDIATE)
            client.send_packet(packet())
            assert await closes(client)
            failures = await me.wait_failures(1)
            assert "keys differ" in failures[0]
            assert server.stats.me_connect_failures >= 1
            assert me.requests == []


async def test_wrong_proxy_secret_is_refused(tmp_path: Path) -> None:
    other = bytes.fromhex("c4f9faca") + os.urandom(124)  # same key selector, other bytes
    async with FakeMiddleEnd(other) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        options = replace(FAST, connect_timeout=1.0)
        async with running_proxy(
            middle_settings(tmp_path / "data", config, secret), options
        ) as server:
            await me.wait_failures(1)
            assert not me.ready_connections()
            await wait_for(lambda: server.stats.me_connect_failures >= 1)


@pytest.mark.timeout_s(60)
async def test_slow_client_is_dropped_alone(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(
            tmp_path / "data", config, secret,
            middle_min_connections="1", middle_max_connections="1",
        )
        options = replace(FAST, client_queue_limit=256 * 1024)
        async with running_proxy(cli, options) as server:
            slow = await open_client(server, TAG_INTERMEDIATE)
            sock = slow.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            fast = await open_client(server, TAG_ABRIDGED, tls=True)
            slow_data = await echo_ok(slow)
            await echo_ok(fast)
            (slow_id,) = {r.ext_conn_id for r in me.requests if r.payload == slow_data}
            chunk = os.urandom(64 * 1024)
            pushed = 0
            while slow_id not in me.close_conns and pushed < 200:  # at most 12.5 MiB
                await me.send_proxy_ans(slow_id, chunk)
                pushed += 1
                if pushed % 16 == 0:
                    await echo_ok(fast)  # the shared connection keeps flowing
            assert slow_id in me.close_conns, f"not dropped after {pushed} answers"
            assert server.stats.me_slow_clients_dropped == 1
            assert len(me.connections) == 1 and me.ready_connections()  # link untouched
            await echo_ok(fast)
            # The proxy closed the slow session (reading its backlog through a 4 KiB
            # window would take long, so look at the proxy's side).
            await wait_for(lambda: len(server.sessions) == 1, what="slow session closed")
            slow.close()
            fast.close()


async def test_stats_gauges_follow_the_pool(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, middle_min_connections="3")
        server: ProxyServer
        async with running_proxy(cli) as server:
            await wait_for(lambda: server.stats.me_connections_active == 3)
            assert server.stats.me_connects == 3
            assert server.stats.me_targets_ready == 1
        assert server.stats.me_targets == 0


async def test_ipv6_list_with_prefer_ipv6(tmp_path: Path) -> None:
    """Keys over IPv6 mix in both 16-byte addresses; the v6 list wins with --prefer-ipv6."""
    async with (
        FakeMiddleEnd(PROXY_SECRET, host="::1") as me6,
        FakeMiddleEnd(PROXY_SECRET) as me4,
    ):
        config, secret = write_inputs(tmp_path / "in", {2: [me4.address]})
        config_v6 = tmp_path / "in" / "proxy-multi-v6.conf"
        config_v6.write_text(config_text({2: [me6.address]}))
        cli = middle_settings(
            tmp_path / "data", config, secret, proxy_config_v6=str(config_v6), prefer_ipv6=True
        )
        async with running_proxy(cli) as server:
            await me6.wait_ready_connections(1)
            await me4.wait_ready_connections(1)
            clients = [await open_client(server, TAG_INTERMEDIATE, dc_id=2) for _ in range(6)]
            for client in clients:
                data = await echo_ok(client)
                assert me6.requests[-1].payload == data
            assert not me4.requests
            assert server.stats.me_targets == 2  # both lists' addresses have pools
            await me6.stop()  # the IPv6 side goes away: IPv4 takes over
            async with asyncio.timeout(10):  # once the proxy has seen its links go
                while server.stats.me_disconnects < 1:
                    await asyncio.sleep(0.02)
            fallback = await open_client(server, TAG_INTERMEDIATE, dc_id=2)
            data = await echo_ok(fallback)
            assert me4.requests[-1].payload == data
            for client in [*clients, fallback]:
                client.close()


async def test_a_middle_end_that_comes_up_late_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    config, secret = write_inputs(tmp_path / "in", {2: [("127.0.0.1", port)]})
    with caplog.at_level(logging.INFO, logger="mtproxy.middle"):
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            await wait_for(lambda: server.stats.me_connect_failures >= 2, what="failed attempts")
            assert server.stats.me_targets_ready == 0
            async with FakeMiddleEnd(PROXY_SECRET, port=port) as me:
                client = await open_client(server, TAG_INTERMEDIATE)
                data = await echo_ok(client)  # waits for the pool's next attempt
                assert me.requests[-1].payload == data
                client.close()
    assert "connected again after" in caplog.text


async def test_dropping_a_target_that_is_down_stops_its_retries(tmp_path: Path) -> None:
    dead = ("127.0.0.1", closed_port())
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [dead], 4: [me.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            await wait_for(lambda: server.stats.me_connect_failures >= 2, what="failed attempts")
            config.write_text(config_text({2: [me.address], 4: [me.address]}))
            assert await upstreams(server).refresh()
            failures = server.stats.me_connect_failures
            await asyncio.sleep(1.0)  # more than two backoff periods of FAST
            assert server.stats.me_connect_failures <= failures + 1  # one may be in flight
            assert server.stats.me_targets == 1
            client = await open_client(server, TAG_ABRIDGED, dc_id=2)
            await echo_ok(client)
            client.close()
