"""Middle-proxy mode falling back to direct mode per DC and coming back, under load,
with every byte checked; list refreshes that lose no session; health in /metrics."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, packet_echo_handler
from fakes.middle_end import FakeMiddleEnd
from fakes.obfs import ObfsStream
from prometheus_client.parser import text_string_to_metric_families

from mtproxy.ops.snapshot import merge, render_tsv
from mtproxy.ops.stats_server import MetricsCollector, StatsView

from .harness import (
    FAST,
    PROXY_SECRET,
    middle_settings,
    open_client,
    packet,
    running_proxy,
    upstreams,
    wait_for,
    write_inputs,
)

#: Short timers: a DC goes direct after 0.3 s without a middle-proxy, a missing list
#: is tried again every 0.2 s.
QUICK = replace(FAST, config_retry=0.2, backoff_base=0.05, backoff_max=0.2)


async def echo_many(stream: ObfsStream, rounds: int, size: int = 1024) -> None:
    """``rounds`` packets in flight at once, each checked when it comes back."""
    sent = [packet(size) for _ in range(rounds)]
    for data in sent:
        stream.send_packet(data)
    await stream.drain()
    for data in sent:
        assert await asyncio.wait_for(stream.recv_packet(), 10) == data


async def load(streams: list[ObfsStream], rounds: int = 8) -> None:
    await asyncio.gather(*(echo_many(s, rounds, size=4 * (16 + i)) for i, s in enumerate(streams)))


async def open_many(server: object, count: int, dc: int = 2) -> list[ObfsStream]:
    return [await open_client(server, TAG_INTERMEDIATE, dc) for _ in range(count)]  # type: ignore[arg-type]


def close_all(streams: list[ObfsStream]) -> None:
    for stream in streams:
        stream.close()


@pytest.mark.timeout_s(60)
async def test_no_proxy_list_at_start_serves_directly_then_middle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No list and no cache at start: clients go direct; once the list can be read, new
    clients go through the middle-proxy, and the direct sessions keep running."""
    caplog.set_level(logging.INFO, logger="mtproxy")
    async with FakeDC(packet_echo_handler) as dc, FakeMiddleEnd(PROXY_SECRET) as me:
        config = tmp_path / "in" / "proxy-multi.conf"
        secret = tmp_path / "in" / "proxy-secret"
        cli = middle_settings(tmp_path / "data", config, secret, dc=[f"2=127.0.0.1:{dc.port}"])
        async with running_proxy(cli, QUICK) as server:
            assert upstreams(server).pools.config is None
            direct = await open_many(server, 4)
            await load(direct)
            assert len(dc.connections) == 4 and not me.requests
            assert upstreams(server).fallback.served[2] == 4
            assert sum("serving clients directly" in r.message for r in caplog.records) == 1

            write_inputs(tmp_path / "in", {2: [me.address]})
            await wait_for(lambda: upstreams(server).pools.config is not None, what="the list")
            await me.wait_ready_connections(1)
            middle = await open_many(server, 4)
            await asyncio.gather(load(middle), load(direct))  # both kinds at once
            assert len(dc.connections) == 4  # no new direct session
            assert len({r.ext_conn_id for r in me.requests}) == 4
            close_all(direct + middle)


@pytest.mark.timeout_s(60)
async def test_dc_goes_direct_while_its_middle_proxies_are_down_and_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under load: the middle-proxy dies, the DC's new clients go direct after the
    configured time (one WARNING), the middle-proxy returns, new clients use it again;
    direct sessions opened meanwhile are never dropped."""
    caplog.set_level(logging.INFO, logger="mtproxy")
    async with FakeDC(packet_echo_handler) as dc:
        me = FakeMiddleEnd(PROXY_SECRET)
        await me.start()
        port = me.port
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, dc=[f"2=127.0.0.1:{dc.port}"])
        overrides = {"middle_fallback_after": 0.3}
        async with running_proxy(cli, QUICK, overrides) as server:
            await me.wait_ready_connections(1)
            first = await open_many(server, 3)
            await load(first)
            assert not dc.connections

            await me.stop()  # every middle-proxy of DC 2 is gone
            fallback = upstreams(server).fallback
            await wait_for(lambda: fallback.bypass(2), timeout=10, what="the fallback")
            direct = await open_many(server, 5)
            await load(direct)
            assert len(dc.connections) == 5
            warnings = [r for r in caplog.records if "served directly" in r.message]
            assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
            assert any("is down" in r.message for r in caplog.records)

            back = FakeMiddleEnd(PROXY_SECRET, port=port)  # the same address answers again
            await back.start()
            try:
                await back.wait_ready_connections(1, timeout=10)
                await wait_for(lambda: not fallback.bypass(2), timeout=10, what="recovery")
                again = await open_many(server, 3)
                await asyncio.gather(load(again), load(direct))
                assert len(dc.connections) == 5  # the new ones went through the middle-proxy
                assert len({r.ext_conn_id for r in back.requests}) == 3
                assert any("is up again" in r.message for r in caplog.records)
                assert any("answers again" in r.message for r in caplog.records)
                assert upstreams(server).fallback.served[2] == 5
                close_all(first + direct + again)
            finally:
                await back.stop()


@pytest.mark.timeout_s(60)
async def test_without_fallback_clients_of_a_dead_middle_proxy_fail(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        me = FakeMiddleEnd(PROXY_SECRET)
        await me.start()
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, dc=[f"2=127.0.0.1:{dc.port}"])
        options = replace(QUICK, connect_timeout=0.5)
        overrides = {"middle_fallback": False, "middle_fallback_after": 0.0}
        async with running_proxy(cli, options, overrides) as server:
            await me.wait_ready_connections(1)
            await me.stop()
            await wait_for(lambda: upstreams(server).pools.dc_down_for(2) is not None,
                           what="the outage")
            await asyncio.sleep(0.3)
            client = await open_client(server, TAG_INTERMEDIATE, 2)
            client.send_packet(packet())
            await client.drain()
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await asyncio.wait_for(client.recv_packet(), 10)
            assert not dc.connections
            assert not upstreams(server).fallback.served


@pytest.mark.timeout_s(60)
async def test_list_refresh_loses_no_session_under_load(tmp_path: Path) -> None:
    """Clients keep exchanging while the list moves DC 2 to another middle-proxy and
    back: every packet comes back, old clients stay on their connection, new ones
    follow the list."""
    async with FakeMiddleEnd(PROXY_SECRET) as one, FakeMiddleEnd(PROXY_SECRET) as two:
        config, secret = write_inputs(tmp_path / "in", {2: [one.address]})
        async with running_proxy(middle_settings(tmp_path / "data", config, secret)) as server:
            await one.wait_ready_connections(1)
            old = await open_many(server, 6)
            stop = asyncio.Event()

            async def keep_busy(stream: ObfsStream) -> int:
                rounds = 0
                while not stop.is_set() and rounds < 200:
                    await echo_many(stream, 4, size=os.urandom(1)[0] % 64 * 4 + 64)
                    rounds += 1
                return rounds

            busy = [asyncio.create_task(keep_busy(s)) for s in old]
            for table in ({2: [two.address]}, {2: [one.address, two.address]}):
                write_inputs(tmp_path / "in", table)
                assert await upstreams(server).refresh()
                await asyncio.sleep(0.2)
            write_inputs(tmp_path / "in", {2: [two.address]})
            assert await upstreams(server).refresh()
            new = await open_many(server, 4)
            await load(new)
            stop.set()
            rounds = await asyncio.gather(*busy)
            assert all(r > 0 for r in rounds)
            old_ids = {r.ext_conn_id for r in one.requests}
            assert len(old_ids) == 6 and not one.close_conns  # nobody was dropped
            assert len({r.ext_conn_id for r in two.requests} - old_ids) == 4
            close_all(old + new)


@pytest.mark.timeout_s(60)
async def test_health_in_metrics_and_stats(tmp_path: Path) -> None:
    """Per middle-proxy: up, connections, clients, reconnects, ping RTT, queue; the
    DCs served directly and how many clients went so."""
    async with FakeDC(packet_echo_handler) as dc:
        me = FakeMiddleEnd(PROXY_SECRET)
        await me.start()
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, dc=[f"2=127.0.0.1:{dc.port}"])
        async with running_proxy(cli, QUICK, {"middle_fallback_after": 0.2}) as server:
            await me.wait_ready_connections(1)
            client = await open_client(server, TAG_INTERMEDIATE, 2)
            await echo_many(client, 2)
            link = upstreams(server).pools.pools[next(iter(upstreams(server).pools.pools))]
            await wait_for(lambda: any(x.rtt is not None for x in link.links), timeout=5,
                           what="a pong")
            up = scrape(server)
            name = f"127.0.0.1:{me.port}"
            assert up[("mtproxy_middle_target_up", name)] == 1
            assert up[("mtproxy_middle_target_connections", name)] >= 1
            assert up[("mtproxy_middle_target_clients", name)] == 1
            assert 0 < up[("mtproxy_middle_target_rtt_seconds", name)] < 5
            assert up[("mtproxy_middle_target_queue_bytes", name)] >= 0
            assert up[("mtproxy_middle_target_reconnects_total", name)] == 0

            await me.stop()
            await wait_for(lambda: upstreams(server).fallback.bypass(2), timeout=10,
                           what="the fallback")
            direct = await open_client(server, TAG_INTERMEDIATE, 2)
            await echo_many(direct, 2)
            down = scrape(server)
            assert down[("mtproxy_middle_target_up", name)] == 0
            assert down[("mtproxy_middle_target_down_seconds", name)] > 0
            assert down[("mtproxy_middle_dc_direct", "2")] == 1
            assert down[("mtproxy_middle_direct_clients_total", "2")] == 1
            tsv = render_tsv(snapshot(server), pid=1, started=0.0, workers=[])
            assert f"middle.{name}.ready\t0\n" in tsv
            assert "middle_direct_clients.2\t1\n" in tsv
            client.close()
            direct.close()


def snapshot(server: object) -> dict[str, object]:
    """A worker snapshot as ops/snapshot.take makes it, merged as the supervisor does."""
    part = {
        "started": 0.0, "counters": {}, "extra": {}, "handshakes": {}, "refused": {},
        "max_connections": 0, "reloads": 0, "draining": 0, "users": {},
        "middle": upstreams(server).health(),  # type: ignore[arg-type]
    }  # fmt: skip
    two = merge([part, part])  # as two workers with the same view: sums, maxima
    one = merge([part])
    for mine, both in zip(one["middle"]["targets"], two["middle"]["targets"], strict=True):
        assert both["clients"] == 2 * mine["clients"] and both["ready"] == mine["ready"]
        assert both["rtt"] == mine["rtt"]
    return one


def scrape(server: object) -> dict[tuple[str, str], float]:
    collector = MetricsCollector(StatsView(snapshot(server), pid=1, started=0.0))
    out: dict[tuple[str, str], float] = {}
    for family in collector.collect():
        for sample in family.samples:
            label = next(iter(sample.labels.values()), "")
            out[(sample.name, label)] = sample.value
    # The families render as Prometheus text, too.
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    assert list(text_string_to_metric_families(generate_latest(registry).decode()))
    return out
