"""Finding the address users should put in their links.

Several "what is my IP" services are asked at once, each with a short timeout; the
first plausible answer wins. Offline (or in tests) this gives up quickly and falls
back to the address of the interface that routes outwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import urllib.request
from collections.abc import Sequence

from mtproxy.config.settings import Settings

log = logging.getLogger("mtproxy")


def _fetch(url: str, timeout: float) -> str | None:
    request = urllib.request.Request(url, headers={"User-Agent": "curl/8.0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text: str = response.read(64).decode("ascii", "replace").strip()
    except (OSError, ValueError):
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def detect_public_ip(
    services: Sequence[str], *, timeout: float = 3.0, family: int = 4
) -> str | None:
    """The first valid IP of the wanted family any service returns, or None."""
    if not services:
        return None
    tasks = [asyncio.create_task(asyncio.to_thread(_fetch, url, timeout)) for url in services]
    try:
        for next_done in asyncio.as_completed(tasks, timeout=timeout + 1):
            with contextlib.suppress(TimeoutError):
                ip = await next_done
                if ip is not None and ipaddress.ip_address(ip).version == family:
                    return ip
    except TimeoutError:
        return None
    finally:
        for task in tasks:
            task.cancel()
    return None


def local_outbound_ip(family: int = socket.AF_INET) -> str | None:
    """The source address the kernel would use towards the internet (no packet is sent)."""
    target = ("192.0.2.1", 9) if family == socket.AF_INET else ("2001:db8::1", 9)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            host: str = sock.getsockname()[0]
            return host
    except OSError:
        return None


async def link_host(settings: Settings) -> str:
    """The host the links name: --public-host, else detected, else a local guess."""
    if settings.public_host:
        return settings.public_host
    detected = await detect_public_ip(settings.ip_services)
    if detected:
        return detected
    fallback = local_outbound_ip() or "127.0.0.1"
    log.warning(
        "could not detect the public IP address; links use %s (pass --public-host to set it)",
        fallback,
    )
    return fallback
