"""Shared setup for the middle-proxy tests: files, settings, a running proxy, clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fakes.clients import open_faketls, open_obfs2
from fakes.obfs import ObfsStream

from mtproxy.config.settings import load_settings
from mtproxy.middle import MiddleOptions, MiddleUpstreams
from mtproxy.proxy.server import ProxyServer

#: The proxy secret (getProxySecret); its first four bytes give key_select 0xcafaf9c4.
PROXY_SECRET = bytes.fromhex("c4f9faca") + hashlib.sha256(b"proxy secret").digest() * 4
CLIENT_SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
AD_TAG = bytes.fromhex("0123456789abcdef0123456789abcdef")
TLS_DOMAIN = "www.example.com"

#: Short timers so failure paths finish quickly; the logic is the production one.
FAST = MiddleOptions(
    ping_interval=0.5,
    silence_timeout=5.0,
    connect_timeout=3.0,
    backoff_base=0.05,
    backoff_max=0.4,
)


def config_text(
    rows: Mapping[int, Sequence[tuple[str, int]]], default: int | None = None
) -> str:
    """A getProxyConfig-style file for the given DC -> addresses map."""
    lines = ["# written by the test"]
    if default is not None:
        lines.append(f"default {default};")
    for dc, targets in rows.items():
        for host, port in targets:
            shown = f"[{host}]" if ":" in host else host
            lines.append(f"proxy_for {dc} {shown}:{port};")
    return "\n".join(lines) + "\n"


def write_inputs(
    directory: Path,
    rows: Mapping[int, Sequence[tuple[str, int]]],
    default: int | None = None,
    secret: bytes = PROXY_SECRET,
) -> tuple[Path, Path]:
    """Write a proxy list and a proxy secret file; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "proxy-multi.conf"
    config.write_text(config_text(rows, default))
    secret_path = directory / "proxy-secret"
    secret_path.write_bytes(secret)
    return config, secret_path


def middle_settings(
    data_dir: Path, config: str | Path, secret: str | Path, **extra: Any
) -> dict[str, Any]:
    cli: dict[str, Any] = {
        "listen": ["127.0.0.1:0"],
        "secrets": [CLIENT_SECRET.hex()],
        "tls_domains": [TLS_DOMAIN],
        "mask": "off",
        # Every mode (mtproxy run's default is tls alone); these tests drive them all.
        "modes": "classic,secure,tls",
        "data_dir": str(data_dir),
        "ip_services": [],
        "proxy_config": str(config),
        "proxy_secret": str(secret),
        "middle_proxy": True,
        "middle_min_connections": "1",
        "middle_max_connections": "4",
    }
    cli.update(extra)
    return cli


@contextlib.asynccontextmanager
async def running_proxy(
    cli: Mapping[str, Any],
    options: MiddleOptions = FAST,
    overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[ProxyServer]:
    """The proxy in this process with the given settings (a dict of option values);
    ``overrides`` replace Settings fields past validation (e.g. a 0.2 s refresh)."""
    settings = replace(load_settings(cli), **(overrides or {}))
    server = ProxyServer(settings, upstreams=lambda s: MiddleUpstreams(s, options=options))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def upstreams(server: ProxyServer) -> MiddleUpstreams:
    assert isinstance(server.upstreams, MiddleUpstreams)
    return server.upstreams


def port_of(server: ProxyServer) -> int:
    return server.addresses[0][1]


def packet(size: int = 64, key: bytes = b"\x01" * 8) -> bytes:
    """An 'encrypted' MTProto packet: a non-zero auth_key_id and random bytes."""
    assert size % 4 == 0 and size >= 56
    return key + os.urandom(size - 8)


async def open_client(
    server: ProxyServer, tag: bytes, dc_id: int = 2, *, tls: bool = False
) -> ObfsStream:
    port = port_of(server)
    if tls:
        return await open_faketls("127.0.0.1", port, CLIENT_SECRET, TLS_DOMAIN, tag, dc_id)
    return await open_obfs2("127.0.0.1", port, CLIENT_SECRET, tag, dc_id)


async def wait_for(predicate: Any, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate()`` (a cheap check) until true; AssertionError on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def closes(stream: ObfsStream, timeout: float = 5.0) -> bool:
    """True if the proxy closes the stream within ``timeout`` (data before EOF is skipped)."""
    try:
        async with asyncio.timeout(timeout):
            while await stream.read(65536):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True
    return True
