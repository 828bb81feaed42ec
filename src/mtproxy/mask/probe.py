"""One look at the mask host: resolve it, connect, and (for fake TLS) measure its answer.

The ClientHello is :func:`mtproxy.protocol.tlsprofile.build_probe_hello`'s; the
server's first flight is read until it pauses (it then waits for our Finished, which
never comes), and the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass

from mtproxy.protocol.dc import Endpoint
from mtproxy.protocol.tlsprofile import (
    MAX_FLIGHT,
    ProfileError,
    TlsProfile,
    build_probe_hello,
    parse_flight,
)

#: Bounds of the quiet time that ends the site's first flight; in between, 4 round trips.
MIN_PAUSE, MAX_PAUSE = 0.5, 2.0


class MaskUnreachable(Exception):
    """The mask host could not be resolved or connected to; the message says which."""


@dataclass(frozen=True)
class ProbeResult:
    #: The measured profile, or None when none was asked for or the answer was unusable.
    profile: TlsProfile | None
    #: Why the answer could not be used as a profile (the host itself is up).
    problem: str | None = None


async def probe(endpoint: Endpoint, sni: str | None, timeout: float) -> ProbeResult:
    """Reach ``endpoint``; with ``sni``, also measure its TLS 1.3 profile.

    Raises :class:`MaskUnreachable` when the host does not resolve or accept.
    """
    host, port = endpoint
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise MaskUnreachable(f"cannot resolve {host}: {_why(exc)}") from None
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise MaskUnreachable(
            f"no answer to a connection attempt within {timeout:g}s ({len(infos)} "
            "address(es); black-holed or filtered)"
        ) from None
    except OSError as exc:
        raise MaskUnreachable(f"cannot connect: {_why(exc)}") from None
    rtt = time.monotonic() - started
    try:
        if sni is None:
            return ProbeResult(None)
        writer.write(build_probe_hello(sni))
        data = await _read_flight(reader, timeout, min(MAX_PAUSE, max(MIN_PAUSE, 4 * rtt)))
        try:
            profile = parse_flight(data)
        except ProfileError as exc:
            return ProbeResult(None, str(exc))
        return ProbeResult(profile)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1):
                await writer.wait_closed()


async def _read_flight(reader: asyncio.StreamReader, timeout: float, pause: float) -> bytes:
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            data += await reader.read(65536)
    except (OSError, TimeoutError):
        return bytes(data)
    while data and len(data) < MAX_FLIGHT:
        try:
            async with asyncio.timeout(pause):
                chunk = await reader.read(65536)
        except (OSError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
