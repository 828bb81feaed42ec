"""A download limit in middle-proxy mode: the connection to the middle-proxy is shared,
so the user's requests are held back instead; answers then come at the user's rate."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from fakes import TAG_INTERMEDIATE, open_obfs2
from fakes.middle_end import FakeMiddleEnd

from mtproxy.config.settings import load_settings, with_users
from mtproxy.config.users import UserConfig
from mtproxy.middle.upstream import MiddleUpstreams
from mtproxy.ops.server import OpsServer
from mtproxy.ops.snapshot import take
from mtproxy.protocol.secret import ClientSecret, Mode

from .harness import AD_TAG, FAST, PROXY_SECRET, middle_settings, write_inputs

KEY = bytes.fromhex("a11ce000000000000000000000000001")
RATE = 512 * 1024
PACKET = 16 * 1024
WARMUP, WINDOW = 1.0, 3.0


async def test_download_limit_holds_requests(tmp_path: Path, loop_impl: str) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, tag=AD_TAG.hex())
        alice = UserConfig("alice", ClientSecret(KEY, Mode.CLASSIC), rate_down=RATE)
        settings = with_users(load_settings(cli), (alice,))
        server = OpsServer(settings, upstreams=lambda s: MiddleUpstreams(s, options=FAST))
        await server.start()
        try:
            host, port = server.addresses[0]
            stream = await open_obfs2(host, port, KEY, TAG_INTERMEDIATE, 2)
            received = 0
            stop = asyncio.Event()

            async def ask() -> None:
                # Echo requests, never more than 8 unanswered (like file parts in flight).
                while not stop.is_set():
                    if stream.bytes_out - received < 8 * PACKET:
                        stream.send_packet(os.urandom(PACKET))
                        await stream.drain()
                    else:
                        await asyncio.sleep(0.002)

            async def take_answers() -> None:
                nonlocal received
                while not stop.is_set():
                    received += len(await stream.recv_packet())

            tasks = [asyncio.ensure_future(ask()), asyncio.ensure_future(take_answers())]
            await asyncio.sleep(WARMUP)
            before = received
            await asyncio.sleep(WINDOW)
            rate = (received - before) / WINDOW
            stop.set()
            stream.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert 0.7 * RATE <= rate <= 1.3 * RATE, rate
            assert take(server)["users"]["alice"]["throttled_down"] > 0.5
            # Held back by reading less, not by dropping: nothing was cut off.
            assert server.stats.me_slow_clients_dropped == 0
        finally:
            await server.stop()
