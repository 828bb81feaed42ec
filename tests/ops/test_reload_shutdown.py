"""SIGHUP under live connections, and SIGTERM draining."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from fakes import FakeDC, packet_echo_handler

from ops.helpers import ALICE, BOB, CAROL, ProxyProc, closed_by_proxy, connect, echo_ok, user_toml


async def wait_log(proxy: ProxyProc, text: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while text not in proxy.log():
            await asyncio.sleep(0.05)


async def refused_at_handshake(proxy: ProxyProc, secret: bytes, key: str, before: int) -> bool:
    """A removed user's new connection: its secret is unknown, so no session starts."""
    stream = await connect(proxy, secret)
    try:
        await proxy.wait_stat(key, before + 1)
        return not await echo_ok(stream, timeout=1)
    finally:
        stream.close()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout_s(90)
async def test_sighup_adds_and_removes_users_under_live_connections(
    tmp_path: Path, workers: int
) -> None:
    config = tmp_path / "mtproxy.toml"
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--workers", str(workers), dc_port=dc.port,
            config=user_toml("alice", ALICE) + user_toml("bob", BOB),
        )  # fmt: skip
        try:
            alice, bob = await connect(proxy, ALICE), await connect(proxy, BOB)
            assert await echo_ok(alice) and await echo_ok(bob)
            bad = await proxy.stat("handshakes_any_bad_secret")
            assert await refused_at_handshake(proxy, CAROL, "handshakes_any_bad_secret", bad)

            config.write_text(user_toml("alice", ALICE) + user_toml("carol", CAROL))
            proxy.signal(signal.SIGHUP)
            await proxy.wait_stat("reloads", 1)

            carol = await connect(proxy, CAROL)
            assert await echo_ok(carol)  # added: works at once
            assert await echo_ok(bob) and await echo_ok(alice)  # established sessions go on
            bad = await proxy.stat("handshakes_any_bad_secret")
            assert await refused_at_handshake(proxy, BOB, "handshakes_any_bad_secret", bad)
            stats = await proxy.stats()
            assert stats["user.bob.removed"] == "1"
            assert stats["user.bob.connections_active"] == "1"

            # A broken file is refused and the running configuration stays.
            config.write_text("[[users]]\nname = 'x'\n")
            proxy.signal(signal.SIGHUP)
            await wait_log(proxy, "reload failed")
            assert await echo_ok(await connect(proxy, CAROL))
            assert await proxy.stat("reloads") == 1
        finally:
            assert await proxy.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout_s(90)
async def test_sigterm_drains_then_exits(tmp_path: Path, workers: int) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(
            tmp_path, "--workers", str(workers), "--shutdown-grace", "30", dc_port=dc.port
        )
        try:
            staying = await connect(proxy)
            assert await echo_ok(staying)
            proxy.signal(signal.SIGTERM)
            await proxy.wait_stat("draining", 1)
            with pytest.raises(OSError):  # no new clients
                await connect(proxy)
            for _ in range(5):  # the live session keeps working while it drains
                assert await echo_ok(staying)
                await asyncio.sleep(0.1)
            assert proxy.proc.returncode is None
            started = time.monotonic()
            staying.close()  # the last session ends: the process exits well before the grace
            assert await proxy.wait(15) == 0
            assert time.monotonic() - started < 10
        finally:
            await proxy.kill()


@pytest.mark.timeout_s(60)
async def test_grace_period_ends_sessions_that_do_not_finish(tmp_path: Path) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        proxy = await ProxyProc.start(tmp_path, "--shutdown-grace", "1", dc_port=dc.port)
        try:
            stubborn = await connect(proxy)
            assert await echo_ok(stubborn)
            started = time.monotonic()
            proxy.signal(signal.SIGTERM)
            assert await closed_by_proxy(stubborn, timeout=10)
            assert await proxy.wait(10) == 0
            assert 0.9 < time.monotonic() - started < 8
        finally:
            await proxy.kill()
