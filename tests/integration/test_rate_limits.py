"""Per-user rate limits over real sockets: achieved rates (loosely), sharing, metrics.

Rates are measured over a window that starts after a second of traffic (so the
bucket's initial burst and the kernel's buffers have filled) and are checked
within +-30 %: shaping, not timing, is under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fakes import (
    TAG_INTERMEDIATE,
    DcConn,
    FakeDC,
    ObfsStream,
    endless_source_handler,
    open_faketls,
    open_obfs2,
)

from integration.harness import DOMAIN, dc_flags, new_secret
from mtproxy.config.settings import load_settings, with_users
from mtproxy.config.users import UserConfig
from mtproxy.ops.server import OpsServer
from mtproxy.ops.snapshot import take
from mtproxy.protocol.secret import ClientSecret, Mode

KIB = 1024
RATE = 1024 * KIB
#: Seconds of traffic before the measured window, and the window itself.
WARMUP, WINDOW = 1.0, 3.0


class Counting:
    """A DC handler that swallows bytes and counts them."""

    def __init__(self) -> None:
        self.received = 0

    async def sink(self, conn: DcConn) -> None:
        while True:
            data = await conn.read(256 * KIB)
            if not data:
                return
            self.received += len(data)


@asynccontextmanager
async def ops_proxy(
    tmp: Path, dc: FakeDC, users: list[UserConfig], **options: Any
) -> AsyncIterator[OpsServer]:
    cli: dict[str, Any] = {
        "listen": ["127.0.0.1:0"], "secrets": [new_secret().hex()],
        "dc": dc_flags({2: (dc.host, dc.port)}), "tls_domains": [DOMAIN], "mask": "off",
        "data_dir": str(tmp), "stats": "off", "modes": "classic,secure,tls",
    }  # fmt: skip
    cli.update(options)
    settings = with_users(load_settings(cli), tuple(users))
    server = OpsServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def user(name: str, **limits: Any) -> tuple[UserConfig, bytes]:
    key = new_secret()
    return UserConfig(name, ClientSecret(key, Mode.CLASSIC), **limits), key


async def client(server: OpsServer, key: bytes, tls: bool = False) -> ObfsStream:
    host, port = server.addresses[0]
    if tls:
        return await open_faketls(host, port, key, DOMAIN, TAG_INTERMEDIATE, 2)
    return await open_obfs2(host, port, key, TAG_INTERMEDIATE, 2)


async def drain_for(streams: list[ObfsStream], seconds: float) -> list[int]:
    """Read every stream for ``seconds``; the bytes each got."""
    counts = [0] * len(streams)
    deadline = time.monotonic() + seconds

    async def one(i: int) -> None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(streams[i].read(256 * KIB), left)
            except TimeoutError:
                return
            if not data:
                return
            counts[i] += len(data)

    await asyncio.gather(*(one(i) for i in range(len(streams))))
    return counts


def within(value: float, want: float, slack: float = 0.3) -> bool:
    return want * (1 - slack) <= value <= want * (1 + slack)


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize("tls", [False, True], ids=["classic", "tls"])
async def test_download_rate_is_shaped_and_shared(
    loop_impl: str, tls: bool, tmp_path: Path
) -> None:
    alice, alice_key = user("alice", rate_down=RATE)
    bob, bob_key = user("bob")
    async with (
        FakeDC(endless_source_handler) as dc,
        ops_proxy(tmp_path, dc, [alice, bob]) as proxy,
    ):
        streams = [await client(proxy, alice_key, tls) for _ in range(2)]
        free = await client(proxy, bob_key, tls)
        await drain_for([*streams, free], WARMUP)
        counts = await drain_for([*streams, free], WINDOW)
        shared = sum(counts[:2]) / WINDOW
        assert within(shared, RATE), (shared, counts)
        # Both sessions of the user get a part of it, the unlimited user far more.
        assert min(counts[:2]) >= 0.25 * sum(counts[:2]), counts
        assert counts[2] / WINDOW > 3 * RATE, counts
        snap = take(proxy)["users"]
        assert snap["alice"]["throttled_down"] > 0.5 and snap["alice"]["throttled_up"] == 0
        assert snap["bob"]["throttled_down"] == 0
        for stream in [*streams, free]:
            stream.close()


@pytest.mark.timeout_s(60)
async def test_upload_rate_is_shaped(loop_impl: str, tmp_path: Path) -> None:
    alice, alice_key = user("alice", rate_up=RATE)
    fake = Counting()
    async with FakeDC(fake.sink) as dc, ops_proxy(tmp_path, dc, [alice]) as proxy:
        stream = await client(proxy, alice_key)
        block = bytes(64 * KIB)
        stop = asyncio.Event()

        async def push() -> None:
            while not stop.is_set():
                stream.write(block)
                await stream.drain()

        task = asyncio.ensure_future(push())
        await asyncio.sleep(WARMUP)
        before = fake.received
        await asyncio.sleep(WINDOW)
        rate = (fake.received - before) / WINDOW
        stop.set()
        stream.close()
        await asyncio.gather(task, return_exceptions=True)
        assert within(rate, RATE), rate
        assert take(proxy)["users"]["alice"]["throttled_up"] > 0.5


@pytest.mark.timeout_s(60)
async def test_a_limit_set_and_cleared_by_reload_applies_to_live_sessions(
    loop_impl: str, tmp_path: Path
) -> None:
    alice, alice_key = user("alice")
    async with FakeDC(endless_source_handler) as dc, ops_proxy(tmp_path, dc, [alice]) as proxy:
        stream = await client(proxy, alice_key)
        await drain_for([stream], 0.3)
        low = RATE // 4
        proxy.apply(with_users(proxy.settings, (dataclasses.replace(alice, rate_down=low),)))
        await drain_for([stream], WARMUP)
        (shaped,) = await drain_for([stream], WINDOW)
        assert within(shaped / WINDOW, low), shaped / WINDOW
        proxy.apply(with_users(proxy.settings, (alice,)))
        assert proxy.registry.states["alice"].stats.shaper is None
        (session,) = proxy.sessions
        assert not session.held_out and not session.held_in
        await drain_for([stream], 0.3)
        (free,) = await drain_for([stream], 1.0)
        assert free > 2 * low, free  # loosely: even a busy machine moves far more
        stream.close()


@pytest.mark.timeout_s(60)
async def test_each_worker_shapes_its_share(tmp_path: Path) -> None:
    alice, alice_key = user("alice", rate_down=RATE)
    async with (
        FakeDC(endless_source_handler) as dc,
        ops_proxy(tmp_path, dc, [alice], workers=2) as proxy,
    ):
        # This process is one of two workers: it shapes half the user's rate.
        stream = await client(proxy, alice_key)
        await drain_for([stream], WARMUP)
        (got,) = await drain_for([stream], WINDOW)
        assert within(got / WINDOW, RATE / 2), got / WINDOW
        stream.close()
