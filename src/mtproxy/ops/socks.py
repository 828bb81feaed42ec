"""Reaching Telegram through an upstream SOCKS5 proxy (direct mode).

``python-socks`` does the SOCKS5 exchange on a socket it connects itself; the
connected socket is then handed to the event loop like any other.
"""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import unquote, urlsplit

from python_socks import ProxyError, ProxyType
from python_socks.async_.asyncio import Proxy

from mtproxy.protocol.dc import Endpoint


class Socks5:
    """One configured SOCKS5 upstream; ``connect`` returns a socket tunnelled to the target."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"{url!r} is not socks5://[user:pass@]host:port")
        self.host = parts.hostname
        self.port = parts.port
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        #: socks5h: the proxy resolves host names (DC addresses are IPs, so rarely matters).
        self.remote_dns = parts.scheme.lower() == "socks5h"

    def __repr__(self) -> str:
        return f"Socks5({self.host}:{self.port})"

    async def connect(self, endpoint: Endpoint, timeout: float) -> socket.socket:
        """A connected, non-blocking socket to ``endpoint``; OSError/TimeoutError on failure."""
        proxy = Proxy(
            ProxyType.SOCKS5,
            self.host,
            self.port,
            self.username,
            self.password,
            rdns=self.remote_dns,
            loop=asyncio.get_running_loop(),
        )
        try:
            sock: socket.socket = await proxy.connect(endpoint[0], endpoint[1], timeout=timeout)
        except ProxyError as exc:
            raise OSError(f"SOCKS5 proxy {self.host}:{self.port} refused: {exc}") from None
        return sock
