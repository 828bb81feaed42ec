"""Start the real proxy in-process, pointed at fakes, with settings spelled like the CLI."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from mtproxy.config.settings import load_settings
from mtproxy.proxy.server import ProxyServer

DOMAIN = "proxy-test.example.com"


def new_secret() -> bytes:
    return os.urandom(16)


def dc_flags(dcs: Mapping[int, tuple[str, int]]) -> list[str]:
    out = []
    for dc_id, (host, port) in dcs.items():
        addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out.append(f"{dc_id}={addr}")
    return out


@asynccontextmanager
async def running_proxy(
    secrets: list[bytes],
    dcs: Mapping[int, tuple[str, int]],
    *,
    listen: str = "127.0.0.1:0",
    **options: Any,
) -> AsyncIterator[ProxyServer]:
    """A ProxyServer on an ephemeral port; ``options`` use the CLI's raw string values."""
    cli: dict[str, Any] = {
        "listen": [listen],
        "secrets": [s.hex() for s in secrets],
        "dc": dc_flags(dcs),
        "tls_domains": [DOMAIN],
        "mask": "off",
        # Every mode unless a test says otherwise (mtproxy run's default is tls alone).
        "modes": "classic,secure,tls",
    }
    cli.update(options)
    settings = load_settings(cli)
    server = ProxyServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def address(server: ProxyServer) -> tuple[str, int]:
    host, port = server.addresses[0]
    return host, port
