"""--workers 2: one port, shared replay cache, summed stats, exact limits, restarts."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from fakes import (
    TAG_INTERMEDIATE,
    FakeDC,
    ObfsStream,
    open_faketls,
    open_obfs2,
    packet_echo_handler,
)

from ops.helpers import ALICE, SECRET, ProxyProc, closed_by_proxy, connect, echo_ok, user_toml

ATTEMPTS = 40  # P(40 connections all hashed to one of 2 workers) = 2**-39


async def worker_counts(proxy: ProxyProc, key: str) -> list[int]:
    stats = await proxy.stats()
    return [int(stats.get(f"worker.{i}.{key}", "0") or 0) for i in range(2)]


async def which_worker(proxy: ProxyProc, key: str, before: list[int]) -> int:
    """The worker whose ``key`` counter moved since ``before`` (waits for it)."""
    for _ in range(200):
        now = await worker_counts(proxy, key)
        moved = [i for i in range(2) if now[i] > before[i]]
        if moved:
            assert len(moved) == 1, (before, now)
            return moved[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no worker counted {key}")


@pytest.mark.timeout_s(120)
async def test_a_replay_sent_to_the_other_worker_is_rejected(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--workers", "2", dc_port=dc.port)
        try:
            before = await worker_counts(proxy, "handshakes_ok")
            original = await connect(proxy)
            assert await echo_ok(original)
            first = await which_worker(proxy, "handshakes_ok", before)
            other_worker_rejected = False
            replays: list[ObfsStream] = []
            for _ in range(ATTEMPTS):
                before = await worker_counts(proxy, "handshakes_rejected")
                replay = await open_obfs2("127.0.0.1", proxy.port, SECRET, TAG_INTERMEDIATE, 2,
                                          header=original.header)  # fmt: skip
                replays.append(replay)
                if await which_worker(proxy, "handshakes_rejected", before) != first:
                    other_worker_rejected = True
                    break
            assert other_worker_rejected, "every replay landed on the original worker"
            stats = await proxy.stats()
            assert stats["handshakes_any_replay"] == str(len(replays))
            assert len(dc.connections) == 1  # no replay ever reached a DC
            assert await echo_ok(original)
            for stream in (original, *replays):
                stream.close()
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(120)
async def test_a_replayed_tls_hello_sent_to_the_other_worker_is_rejected(tmp_path: Path) -> None:
    domain = "replay.example.com"
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--workers", "2", "--tls-domain", domain,
                                      dc_port=dc.port)  # fmt: skip
        try:
            before = await worker_counts(proxy, "handshakes_ok")
            original = await open_faketls("127.0.0.1", proxy.port, SECRET, domain,
                                          TAG_INTERMEDIATE, 2)  # fmt: skip
            assert await echo_ok(original)
            assert original.handshake is not None
            first = await which_worker(proxy, "handshakes_ok", before)
            landed_elsewhere = False
            attempts = 0
            while attempts < ATTEMPTS:
                attempts += 1
                before = await worker_counts(proxy, "handshakes_rejected")
                _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
                writer.write(original.handshake.hello)
                await writer.drain()
                worker = await which_worker(proxy, "handshakes_rejected", before)
                writer.close()
                if worker != first:
                    landed_elsewhere = True
                    break
            assert landed_elsewhere, "every replay landed on the original worker"
            assert await proxy.stat("handshakes_any_tls_replay") == attempts
            assert len(dc.connections) == 1
            original.close()
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(120)
async def test_a_killed_worker_is_restarted_and_totals_are_kept(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--workers", "2", dc_port=dc.port)
        try:
            sessions: list[ObfsStream] = []
            for _ in range(ATTEMPTS):
                sessions.append(await connect(proxy))
                assert await echo_ok(sessions[-1])
                if min(await worker_counts(proxy, "connections_active")) > 0:
                    break
            stats = await proxy.stats()
            per_worker = await worker_counts(proxy, "connections_active")
            assert min(per_worker) > 0, "all sessions landed on one worker"
            assert stats["total_special_connections"] == str(sum(per_worker)) == str(len(sessions))
            accepted = int(stats["inbound_connections_accepted"])
            victim = int(stats["worker.0.pid"])

            os.kill(victim, signal.SIGKILL)
            await proxy.wait_stat("worker.0.restarts", 1, timeout=30)
            await proxy.wait_stat("worker.0.up", 1)
            stats = await proxy.stats()
            assert int(stats["worker.0.pid"]) != victim
            alive = [await echo_ok(s, timeout=2) for s in sessions]
            assert sum(alive) == per_worker[1]  # the other worker's sessions never noticed
            # Totals do not go backwards when a worker's own counters vanish with it.
            assert int(stats["inbound_connections_accepted"]) >= accepted

            served_by_new = False
            for _ in range(ATTEMPTS):
                stream = await connect(proxy)
                assert await echo_ok(stream)
                sessions.append(stream)
                if (await worker_counts(proxy, "connections_total"))[0] > 0:
                    served_by_new = True
                    break
            assert served_by_new
            for stream in sessions:
                stream.close()
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(120)
async def test_a_user_limit_holds_across_workers(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--workers", "2", "-C", "50", dc_port=dc.port,
                                      config=user_toml("alice", ALICE, max_connections=1))
        try:
            assert (await proxy.stats())["total_max_special_connections"] == "100"
            before = await worker_counts(proxy, "handshakes_ok")
            holder = await connect(proxy, ALICE)
            assert await echo_ok(holder)
            home = await which_worker(proxy, "handshakes_ok", before)
            refused_elsewhere = False
            for _ in range(ATTEMPTS):
                before = await worker_counts(proxy, "handshakes_refused")
                extra = await connect(proxy, ALICE)
                assert await closed_by_proxy(extra)
                if await which_worker(proxy, "handshakes_refused", before) != home:
                    refused_elsewhere = True
                    break
            assert refused_elsewhere, "every attempt landed on the holder's worker"
            assert await echo_ok(holder)
            holder.close()
            await proxy.wait_stat("user.alice.connections_active", 0)
            assert await echo_ok(await connect(proxy, ALICE))
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(120)
async def test_a_quota_is_shared_by_the_workers(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--workers", "2", dc_port=dc.port,
                                      config=user_toml("alice", ALICE, quota=4000))
        try:
            by_worker: dict[int, ObfsStream] = {}
            for _ in range(ATTEMPTS):
                before = await worker_counts(proxy, "handshakes_ok")
                stream = await connect(proxy, ALICE)
                worker = await which_worker(proxy, "handshakes_ok", before)
                if worker in by_worker:
                    stream.close()
                else:
                    by_worker[worker] = stream
                if len(by_worker) == 2:
                    break
            assert len(by_worker) == 2, "every session landed on one worker"
            first, second = by_worker[0], by_worker[1]
            assert await echo_ok(first, bytes(1000))  # 1004 bytes each way on worker 0
            await asyncio.sleep(1.0)  # a few quota exchanges with the supervisor
            # Worker 1 alone would allow 4000 bytes; with worker 0's 2008 counted it allows
            # 1992: the upload (1004) passes, the echo back (2008) does not.
            assert not await echo_ok(second, bytes(1000), timeout=5)
            assert await closed_by_proxy(second)
            stats = await proxy.stats()
            assert stats["user.alice.quota_closed"] == "1"
            assert int(stats["user.alice.quota_used"]) <= 4000 + 1004
            first.close()
        finally:
            assert await proxy.stop() == 0


@pytest.mark.timeout_s(60)
async def test_workers_leave_when_their_supervisor_dies(tmp_path: Path) -> None:
    proxy = await ProxyProc.start(tmp_path, "--workers", "2")
    stats = await proxy.stats()
    pids = [int(stats[f"worker.{i}.pid"]) for i in range(2)]
    try:
        os.kill(proxy.pid, signal.SIGKILL)
        await proxy.wait(10)
        async with asyncio.timeout(20):
            while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
                await asyncio.sleep(0.1)
        with pytest.raises(OSError):  # nobody listens any more
            await connect(proxy)
    finally:
        await proxy.kill()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
