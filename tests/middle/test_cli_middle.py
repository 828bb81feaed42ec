"""``mtproxy run`` as a process, driven the way other tools (and the official form) drive it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fakes.clients import open_obfs2
from fakes.middle_end import FakeMiddleEnd
from fakes.obfs import TAG_PADDED

from .harness import AD_TAG, CLIENT_SECRET, PROXY_SECRET, packet, write_inputs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_args(port: int, data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "mtproxy", "run", "--listen", f"127.0.0.1:{port}",
        "--secret", CLIENT_SECRET.hex(), "--mask", "off", "--public-host", "127.0.0.1",
        "--modes", "classic,secure,tls",
        "--data-dir", str(data_dir), "--ip-service", "http://127.0.0.1:9/",
    ]


@contextlib.asynccontextmanager
async def proxy_process(args: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_until(proc: asyncio.subprocess.Process, marker: str, timeout: float = 20) -> str:
    """stderr lines up to and including the first containing ``marker``."""
    assert proc.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError(f"process ended before {marker!r}: {''.join(seen)}")
            seen.append(line)
            if marker in line:
                return "".join(seen)


@pytest.mark.timeout_s(60)
async def test_official_form_positional_list_aes_pwd_and_tag(tmp_path: Path) -> None:
    async with FakeMiddleEnd(PROXY_SECRET) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        port = free_port()
        args = [
            *base_args(port, tmp_path / "data"),
            "-P", AD_TAG.hex(), "--aes-pwd", str(secret), "--middle-min-connections", "1",
            str(config),
        ]
        async with proxy_process(args) as proc:
            log = await read_until(proc, "listening on")
            assert "via Telegram's middle-proxies with ad tag" in log
            client = await open_obfs2("127.0.0.1", port, CLIENT_SECRET, TAG_PADDED, 2)
            data = packet(96)
            client.send_packet(data)
            assert await asyncio.wait_for(client.recv_packet(), 10) == data
            assert me.requests[0].ad_tag == AD_TAG
            client.close()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0


@pytest.mark.timeout_s(60)
async def test_bad_tag_warns_and_runs_direct(tmp_path: Path) -> None:
    port = free_port()
    args = [*base_args(port, tmp_path / "data"), "--tag", "not-a-tag"]
    async with proxy_process(args) as proc:
        log = await read_until(proc, "listening on")
        assert "not 32 hex characters; running without it" in log
        assert "direct to DCs" in log
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


@pytest.mark.timeout_s(60)
async def test_no_proxy_list_anywhere_is_one_clear_line(tmp_path: Path) -> None:
    """With the direct fallback off (it is on by default: tests/middle/test_fallback.py)."""
    port, dead = free_port(), free_port()
    args = [
        *base_args(port, tmp_path / "data"),
        "--middle-proxy", "--no-middle-fallback",
        "--proxy-config", f"http://127.0.0.1:{dead}/getProxyConfig",
        "--proxy-secret", f"http://127.0.0.1:{dead}/getProxySecret",
    ]
    async with proxy_process(args) as proc:
        assert await asyncio.wait_for(proc.wait(), 30) == 1
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
    last = err.strip().splitlines()[-1]
    assert last.startswith("mtproxy: error: cannot get Telegram's proxy secret")
    assert "Traceback" not in err
