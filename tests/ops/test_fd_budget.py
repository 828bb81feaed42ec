"""File descriptors as a budget, over real sockets, on both event loops.

The proxy runs as a subprocess with its descriptor limit lowered (``preexec_fn``);
clients and the fake DC run here. Timing is never asserted against a constant: the
latency of sessions during a flood is compared with the same sessions before it,
with generous bounds, and CPU is read from /proc over a hold period.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, ObfsStream, open_obfs2, packet_echo_handler
from fakes.middle_end import FakeMiddleEnd
from fakes.obfs import TAG_PADDED
from middle.harness import CLIENT_SECRET, PROXY_SECRET, packet, write_inputs
from system_tools import soft_fd_limit

from mtproxy.ops.fds import RESERVE, Budget, middle_links, plan
from ops.helpers import SECRET, ProxyProc, connect, echo_ok
from ops.test_stats import metric_values

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def limits_of(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


@pytest.fixture(autouse=True)
def roomy_test_process() -> Iterator[None]:
    """This process holds the flood's clients and the fake DC's sockets."""
    with soft_fd_limit(4096, 16384, "the flood's clients"):
        yield


# -- the arithmetic ------------------------------------------------------------------------


def test_plan_counts_two_per_client_direct_and_one_in_middle_proxy_mode() -> None:
    direct = plan(1024, middle=False, mask=True, in_use=20)
    assert direct == Budget(1024, RESERVE + 20, 8)
    assert direct.clients == (1024 - RESERVE - 20) // 2
    assert direct.needs(direct.clients) <= 1024 < direct.needs(direct.clients + 1)
    middle = plan(1024, middle=True, mask=False, links=80, in_use=20)
    assert middle.clients == 1024 - RESERVE - 20 - 80
    masked = plan(1024, middle=True, mask=True, links=80, in_use=20)
    assert masked.clients == (1024 - RESERVE - 100) * 4 // 5
    assert plan(10, middle=False, mask=False).clients == 0
    assert middle_links(10, None) == 80 and middle_links(0, 4) == 4


# -- helpers -------------------------------------------------------------------------------


async def latencies(streams: list[ObfsStream], rounds: int) -> list[float]:
    """Round trips of one packet on each stream, ``rounds`` times, in seconds."""
    out: list[float] = []
    for _ in range(rounds):
        for stream in streams:
            start = time.perf_counter()
            assert await echo_ok(stream, b"prob" * 16), "a session in progress stopped"
            out.append(time.perf_counter() - start)
    return sorted(out)


def median(values: list[float]) -> float:
    return values[len(values) // 2]


async def flood(proxy: ProxyProc, count: int) -> list[ObfsStream | None]:
    """``count`` sessions that echo once and stay (None for those not served)."""
    gate = asyncio.Semaphore(100)

    async def one() -> ObfsStream | None:
        async with gate:
            try:
                stream = await open_obfs2("127.0.0.1", proxy.port, SECRET, TAG_INTERMEDIATE,
                                          2, coalesce_header=True, timeout=5)  # fmt: skip
            except (OSError, TimeoutError):
                return None
            if not await echo_ok(stream, b"helo", timeout=5):
                stream.close()
                return None
            return stream

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def silent_flood(proxy: ProxyProc, count: int) -> list[asyncio.StreamWriter]:
    """``count`` clients that connect and say nothing: one descriptor each in the proxy
    (the kernel completes the connection even while the proxy does not accept)."""
    gate = asyncio.Semaphore(100)

    async def one() -> asyncio.StreamWriter:
        async with gate:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", proxy.port), 5
            )
            return writer

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def cpu_over(pid: int, seconds: float) -> float:
    """The proxy's CPU seconds per second over a hold period."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def log_lines(proxy: ProxyProc) -> list[str]:
    return proxy.log().splitlines()


# -- the soft limit is raised at start -------------------------------------------------------


@pytest.mark.timeout_s(120)
async def test_soft_limit_1024_is_raised_and_more_sessions_than_it_allows_are_served(
    tmp_path: Path, loop_impl: str
) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--event-loop", loop_impl, "--log-level", "info",
            dc_port=dc.port, nofile=(1024, 4096),
        )  # fmt: skip
        sessions: list[ObfsStream | None] = []
        try:
            assert limits_of(proxy.pid) == (4096, 4096)
            assert "descriptor limit raised from 1024 to 4096" in proxy.log()
            stats = await proxy.stats()
            assert stats["fd_limit"] == "4096"
            cap = int(stats["total_max_special_connections"])
            # The default cap: two descriptors per client, the reserve and what was open.
            assert (4096 - RESERVE - 64) // 2 <= cap <= (4096 - RESERVE) // 2
            # 600 sessions are 1200 descriptors: more than the soft limit it started with.
            sessions = await flood(proxy, 600)
            assert sum(s is not None for s in sessions) == 600
            assert int((await proxy.stats())["open_fds"]) > 1200
            assert "Too many open files" not in proxy.log()
        finally:
            for stream in sessions:
                if stream is not None:
                    stream.close()
            assert await proxy.stop() == 0


# -- more clients than the hard limit allows ------------------------------------------------


@pytest.mark.timeout_s(150)
async def test_a_flood_past_the_hard_limit_is_refused_at_the_cap_and_nothing_else_suffers(
    tmp_path: Path, loop_impl: str
) -> None:
    """Hard limit 400: the default cap is about 160 clients; 500 more sessions come."""
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--event-loop", loop_impl, "--log-level", "info",
            dc_port=dc.port, nofile=(400, 400),
        )  # fmt: skip
        crowd: list[ObfsStream | None] = []
        probes = [await connect(proxy) for _ in range(3)]
        try:
            cap = int((await proxy.stats())["total_max_special_connections"])
            assert 100 < cap < 200
            calm = await latencies(probes, 20)
            lines_before = len(log_lines(proxy))

            crowd = await flood(proxy, cap + 500)
            served = sum(s is not None for s in crowd)
            assert cap - 20 <= served <= cap - 3  # the probes hold 3 places
            busy_cpu = await cpu_over(proxy.pid, 2.0)
            during = await latencies(probes, 20)
            stats = await proxy.stats()  # it answers (would raise otherwise)
            status, metrics = await proxy.get("/metrics")

            assert int(stats["accept_connection_limit_failed"]) >= 500 - 10
            assert stats["fd_exhausted"] == "0"
            assert int(stats["open_fds"]) <= 400
            assert busy_cpu < 0.3, f"the proxy spins at {busy_cpu:.0%} CPU"
            # Generous: latency may grow with the load, but not by orders of magnitude.
            assert median(during) < max(0.05, 20 * median(calm)), (calm, during)
            new_lines = log_lines(proxy)[lines_before:]
            assert len(new_lines) < 10, new_lines
            assert any("refusing new ones" in line for line in new_lines)
            assert status == 200
            m = metric_values(metrics)
            assert m[("mtproxy_accept_refused_total", ())] >= 490
            assert m[("mtproxy_fd_limit", ())] == 400
            assert 0 < m[("mtproxy_open_fds", ())] <= 400
        finally:
            for stream in [*crowd, *probes]:
                if stream is not None:
                    stream.close()
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(150)
async def test_out_of_descriptors_accepting_backs_off_and_stats_still_answer(
    tmp_path: Path, loop_impl: str
) -> None:
    """An explicit --max-connections past the budget: clients that never speak take every
    descriptor. Accepting pauses instead of spinning; /stats answers from its spare."""
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--event-loop", loop_impl, "--log-level", "info",
            "--max-connections", "2000", "--handshake-timeout", "120",
            dc_port=dc.port, nofile=(300, 300),
        )  # fmt: skip
        crowd: list[asyncio.StreamWriter] = []
        probes = [await connect(proxy) for _ in range(3)]
        try:
            assert "--max-connections 2000 is more than the descriptor limit" in proxy.log()
            calm = await latencies(probes, 20)
            lines_before = len(log_lines(proxy))

            crowd = await silent_flood(proxy, 500)
            async with asyncio.timeout(20):
                while int((await proxy.stats())["fd_exhausted"]) < 1:
                    await asyncio.sleep(0.1)
            hold_cpu = await cpu_over(proxy.pid, 3.0)
            during = await latencies(probes, 20)
            stats = await proxy.stats()

            assert int(stats["fd_exhausted"]) >= 1
            assert hold_cpu < 0.3, f"the proxy spins at {hold_cpu:.0%} CPU"
            assert median(during) < max(0.05, 20 * median(calm)), (calm, during)
            for _ in range(3):  # the spare comes back after each request
                assert (await proxy.stats())["fd_limit"] == "300"
            new_lines = log_lines(proxy)[lines_before:]
            assert len(new_lines) < 10, new_lines
            assert any("out of file descriptors" in line for line in new_lines)
            assert "Traceback" not in proxy.log()

            for writer in crowd:
                writer.close()
            crowd = []
            # Accepting resumes on its own once descriptors are free again.
            async with asyncio.timeout(20):
                while True:
                    fresh = await connect(proxy)
                    ok = await echo_ok(fresh, b"agai", timeout=3)
                    fresh.close()
                    if ok:
                        break
                    await asyncio.sleep(0.2)
        finally:
            for writer in crowd:
                writer.close()
            for stream in probes:
                stream.close()
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(120)
async def test_a_dc_connection_without_a_descriptor_is_our_shortage_not_the_dcs(
    tmp_path: Path, loop_impl: str
) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--event-loop", loop_impl, "--log-level", "info",
            "--max-connections", "2000", dc_port=dc.port, nofile=(200, 200),
        )  # fmt: skip
        crowd: list[ObfsStream | None] = []
        try:
            crowd = await flood(proxy, 300)
            served = sum(s is not None for s in crowd)
            assert 0 < served < 100
            stats = await proxy.stats()
            assert int(stats["fd_exhausted"]) >= 1
            assert int(stats["upstream_failures"]) >= 1
            text = proxy.log()
            assert "no file descriptor left to connect to DC 2" in text
            assert "unreachable" not in text
            assert len(text.splitlines()) < 20, text
        finally:
            for stream in crowd:
                if stream is not None:
                    stream.close()
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(90)
async def test_workers_each_get_the_budget(tmp_path: Path) -> None:
    proxy = await ProxyProc.start(tmp_path, "--workers", "2", nofile=(512, 1024))
    try:
        stats = await proxy.stats()
        caps = [int(stats[f"worker.{i}.max_connections"]) for i in (0, 1)]
        assert all(400 < cap < (1024 - RESERVE) // 2 + 1 for cap in caps), caps
        assert int(stats["total_max_special_connections"]) == sum(caps)
        assert stats["fd_limit"] == str(2 * 1024)
        assert limits_of(proxy.pid) == (1024, 1024)
    finally:
        assert await proxy.stop() == 0


@pytest.mark.timeout_s(120)
async def test_middle_proxy_clients_cost_one_descriptor(tmp_path: Path, loop_impl: str) -> None:
    """Hard limit 600: direct mode would take about 260 clients; middle-proxy mode takes
    more than 450, since they share the connections to the middle-proxy."""
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        proxy = await ProxyProc.start(
            tmp_path, "--event-loop", loop_impl, "--log-level", "info",
            "--middle-proxy", "--proxy-config", str(config), "--proxy-secret", str(secret),
            "--middle-min-connections", "1", "--middle-max-connections", "2",
            "--ip-service", "http://127.0.0.1:9/", "--secret", CLIENT_SECRET.hex(),
            secret=False, nofile=(600, 600),
        )  # fmt: skip
        clients: list[ObfsStream] = []
        try:
            assert "1 descriptor per client" in proxy.log()
            cap = int((await proxy.stats())["total_max_special_connections"])
            assert 600 - RESERVE - 2 - 64 <= cap <= 600 - RESERVE - 2
            gate = asyncio.Semaphore(50)

            async def one() -> ObfsStream:
                async with gate:
                    client = await open_obfs2("127.0.0.1", proxy.port, CLIENT_SECRET,
                                              TAG_PADDED, 2)  # fmt: skip
                    data = packet(96)
                    client.send_packet(data)
                    assert await asyncio.wait_for(client.recv_packet(), 10) == data
                    return client

            clients = list(await asyncio.gather(*(one() for _ in range(450))))
            stats = await proxy.stats()
            assert stats["total_special_connections"] == "450"
            assert int(stats["open_fds"]) < 600
        finally:
            for client in clients:
                client.close()
            assert await proxy.stop() == 0
