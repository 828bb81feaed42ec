"""Drains that hold: a stop signal delivered to the whole process group (systemd's
control-group kill, ``kill -TERM -- -PGID``) or twice at once (``timeout``) drains;
only a genuine second signal, later, forces."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from fakes import FakeDC, packet_echo_handler

from mtproxy.ops.runtime import REPEAT_WINDOW
from ops.helpers import ProxyProc, closed_by_proxy, connect, echo_ok


async def echoes_for(stream: object, seconds: float) -> int:
    """Echo round trips for ``seconds``; every one must succeed."""
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await echo_ok(stream, timeout=5), f"echo {count} failed"  # type: ignore[arg-type]
        count += 1
        await asyncio.sleep(0.1)
    return count


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout_s(90)
async def test_group_sigterm_drains_and_a_later_signal_forces(
    tmp_path: Path, workers: int
) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--workers", str(workers), "--shutdown-grace", "60", dc_port=dc.port
        )
        try:
            assert os.getpgid(proxy.pid) == proxy.pid  # its own group: supervisor + workers
            session = await connect(proxy)
            assert await echo_ok(session)
            os.killpg(proxy.pid, signal.SIGTERM)
            await proxy.wait_stat("draining", 1)
            # Well past the repeat window the session still relays: nobody forced.
            assert await echoes_for(session, REPEAT_WINDOW + 1.5) >= 5
            assert proxy.proc.returncode is None
            assert "closing" not in proxy.log() and "now" not in proxy.log().split("stopping")[-1]
            # The operator's genuine second signal, to the group again: everything closes.
            started = time.monotonic()
            os.killpg(proxy.pid, signal.SIGTERM)
            assert await closed_by_proxy(session, timeout=10)
            assert await proxy.wait(15) == 0
            assert time.monotonic() - started < 10  # not the 60 s grace
            assert "sessions now" in proxy.log()
        finally:
            await proxy.kill()


@pytest.mark.timeout_s(60)
async def test_a_signal_delivered_twice_at_once_is_one_stop(tmp_path: Path) -> None:
    """``timeout`` signals its child, then the child's group: two SIGTERMs microseconds apart."""
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--shutdown-grace", "60", dc_port=dc.port)
        try:
            session = await connect(proxy)
            assert await echo_ok(session)
            proxy.signal(signal.SIGTERM)
            await asyncio.sleep(0.005)
            proxy.signal(signal.SIGTERM)
            await proxy.wait_stat("draining", 1)
            assert await echoes_for(session, REPEAT_WINDOW + 1.0) >= 5
            assert "sessions now" not in proxy.log()
            proxy.signal(signal.SIGINT)  # later: a real second signal (Ctrl-C counts too)
            assert await closed_by_proxy(session, timeout=10)
            assert await proxy.wait(15) == 0
            assert "second stop signal: closing 1 sessions now" in proxy.log()
        finally:
            await proxy.kill()


@pytest.mark.timeout_s(60)
async def test_a_worker_never_forces_on_its_own_signals(tmp_path: Path) -> None:
    """SIGTERM straight to a worker drains that worker; more of them change nothing."""
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--workers", "2", "--shutdown-grace", "60", dc_port=dc.port
        )
        try:
            session = await connect(proxy)
            assert await echo_ok(session)
            stats = await proxy.stats()
            owner = next(
                int(stats[f"worker.{i}.pid"]) for i in (0, 1)
                if stats.get(f"worker.{i}.connections_active") == "1"
            )  # fmt: skip
            for _ in range(3):
                os.kill(owner, signal.SIGTERM)
                await asyncio.sleep(REPEAT_WINDOW)
            assert await echoes_for(session, 1.0) >= 3
            assert "sessions now" not in proxy.log()
        finally:
            session.close()
            await proxy.stop()
            await proxy.kill()
