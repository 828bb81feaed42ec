"""Signals and the stats port of a serving process, in-process: a real OpsServer on
loopback and real signals sent to this test process (handlers removed afterwards)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, open_obfs2, packet_echo_handler

from mtproxy.config.settings import load_settings
from mtproxy.ops.runtime import REPEAT_WINDOW, StopSignal, local_stats, run_until_stopped
from mtproxy.ops.server import OpsServer

SECRET = bytes(range(16))


@asynccontextmanager
async def ops_server(tmp: str, dc_port: int = 9, **options: object) -> AsyncIterator[OpsServer]:
    cli: dict[str, object] = {
        "listen": ["127.0.0.1:0"], "secrets": [SECRET.hex()], "mask": "off",
        "dc": [f"2=127.0.0.1:{dc_port}"], "data_dir": tmp, "stats": "off",
        "shutdown_grace": "30", "modes": "classic,secure,tls",
    }  # fmt: skip
    cli.update(options)
    server = OpsServer(load_settings(cli))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_second_stop_signal_forces_and_first_only_requests() -> None:
    clock = Clock()
    stopper = StopSignal(clock)
    forced: list[int] = []
    stopper()
    assert stopper.requested.is_set() and forced == []
    clock.now += REPEAT_WINDOW + 0.1
    stopper()  # no force installed yet: nothing to do
    stopper.force = lambda: forced.append(1)
    stopper()
    stopper()
    assert forced == [1, 1]


async def test_sighup_before_start_up_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    stopper = StopSignal()
    stopper.install(loop)
    try:
        with caplog.at_level(logging.WARNING, logger="mtproxy"):
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if "before start-up finished" in caplog.text:
                    break
                await asyncio.sleep(0.01)
        assert "SIGHUP before start-up finished; send it again" in caplog.text
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stopper.requested.wait(), 5)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def test_a_worker_leaves_interrupt_and_reload_to_its_supervisor() -> None:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP)}
    loop = asyncio.new_event_loop()
    try:
        stopper = StopSignal()
        stopper.install(loop, worker=True)
        assert stopper.signals == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        loop.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def test_no_stats_port_when_it_is_off(tmp_path: Path) -> None:
    async with ops_server(str(tmp_path)) as server:
        assert local_stats(server) is None


async def test_a_taken_stats_port_is_logged_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with ops_server(str(tmp_path), stats=f"127.0.0.1:{port}") as server:
            stats = local_stats(server)
            assert stats is not None
            stopper = StopSignal()
            with caplog.at_level(logging.INFO, logger="mtproxy"):
                task = asyncio.create_task(run_until_stopped(server, stopper, reloader=None,
                                                             stats=stats))
                for _ in range(200):
                    if "cannot serve stats" in caplog.text:
                        break
                    await asyncio.sleep(0.01)
                assert f"cannot serve stats on ('127.0.0.1', {port})" in caplog.text
                # SIGHUP with nothing to reload from is a warning, not a crash.
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(200):
                    if "without a configuration to reload" in caplog.text:
                        break
                    await asyncio.sleep(0.01)
                assert "SIGHUP: this proxy was started without a configuration" in caplog.text
                stopper()
                assert await asyncio.wait_for(task, 10) == 0


async def test_second_stop_closes_draining_sessions_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        FakeDC(packet_echo_handler) as dc,
        ops_server(str(tmp_path), dc_port=dc.port) as server,
    ):
        host, port = server.addresses[0]
        client = await open_obfs2(host, port, SECRET, TAG_INTERMEDIATE, 2)
        client.send_packet(b"ping")
        await client.drain()
        assert await asyncio.wait_for(client.recv_packet(), 10) == b"ping"
        clock = Clock()
        stopper = StopSignal(clock)
        with caplog.at_level(logging.INFO, logger="mtproxy"):
            task = asyncio.create_task(run_until_stopped(server, stopper, reloader=None))
            await asyncio.sleep(0.05)
            stopper()  # drain: the session may stay for the 30 s grace ...
            await asyncio.sleep(0.2)
            assert not task.done()
            clock.now += REPEAT_WINDOW + 0.1
            stopper()  # ... until a second signal (not a repeat of the first)
            assert await asyncio.wait_for(task, 10) == 0
        assert "second stop signal: closing 1 sessions now" in caplog.text
        assert await asyncio.wait_for(client.read(100), 10) == b""
        client.close()
