"""The seams between a client session and whatever it relays to.

The relay (``proxy/``) knows these interfaces only. Direct mode (``proxy/direct.py``)
and middle-proxy mode (``middle/``) implement :class:`Upstreams`; the program's
assembly (``mtproxy.app``) picks one and hands it to the server. So ``middle/`` may
import ``proxy/``, never the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from mtproxy.config.settings import Settings
from mtproxy.protocol.dc import Endpoint
from mtproxy.protocol.handshake import Accepted
from mtproxy.proxy.buffers import SharedBuffers
from mtproxy.proxy.stats import ProxyStats


class Upstream(Protocol):
    """One session's far side after the handshake: a DC, a middle-end link, the mask."""

    eof: bool
    #: pause_reading() holds back this session's data alone (False: the connection is
    #: shared, so a rate limit holds back the client's requests instead).
    pausable: bool

    def send(self, data: memoryview) -> None:
        """Client bytes (already decrypted); the upstream may transform them in place."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def cut_reads(self, size: int) -> None:
        """Read at most ``size`` bytes at once (0: as much as fits); rate limits use it."""

    def write_eof(self) -> None: ...
    def close(self, abort: bool = False) -> None: ...

    def was_reset(self) -> bool:
        """The far side reset the connection while we did not read from it."""


class SessionPort(Protocol):
    """What an upstream may do to the client session it serves."""

    buffers: SharedBuffers
    #: Client bytes that arrived before the upstream was ready (decrypted); an upstream
    #: may take them (and set this to b"") to send them with its first packet.
    early: bytes
    closed: bool

    @property
    def peername(self) -> tuple[str, int]: ...
    @property
    def sockname(self) -> tuple[str, int]: ...

    def peer_ready(self, peer: Upstream) -> None:
        """The upstream is connected: start relaying to it."""

    def upstream_failed(self, reason: str) -> None:
        """No upstream could be had; the session ends."""

    def peer_eof(self) -> None:
        """The upstream will send nothing more."""

    def peer_lost(self, exc: Exception | None) -> None:
        """The upstream is gone (``exc`` set when it failed)."""

    def send_plain(self, data: memoryview | bytes) -> None:
        """Upstream plaintext for the client: encrypted (and TLS-wrapped) on the way."""

    def send_obfs(self, data: memoryview | bytes) -> None:
        """Bytes already in the client's keystream (pass-through): only TLS-wrapped."""

    def send_raw(self, data: memoryview | bytes) -> None:
        """Bytes for the client's socket as they are (the mask host's answers)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def write_buffer_size(self) -> int:
        """Bytes queued towards the client and not yet sent."""

    def is_closing(self) -> bool:
        """The client's socket is closed or being closed."""

    def close(self, abort: bool = False) -> None: ...


class UpstreamHost(Protocol):
    """What an upstream strategy uses of the server that owns it."""

    settings: Settings
    stats: ProxyStats
    loop: asyncio.AbstractEventLoop

    async def connect_upstream(
        self, factory: Callable[[], asyncio.BaseProtocol], endpoint: Endpoint
    ) -> None:
        """Open a TCP connection towards Telegram (the operator may route it via SOCKS5)."""

    def out_of_fds(self, where: str, exc: OSError) -> None:
        """No descriptor was left for a connection: the process's shortage, not the
        far side's fault (counted and logged as such)."""


class Upstreams(Protocol):
    """How accepted sessions get their upstream: one strategy object per server."""

    #: Whether the DC's ciphertext can go to the client without re-encryption.
    supports_passthrough: bool

    def open(
        self, session: SessionPort, accepted: Accepted, passthrough: bool
    ) -> asyncio.Task[None]:
        """Start connecting; the task ends with ``peer_ready`` or ``upstream_failed``."""

    def reconfigure(self, settings: Settings) -> None:
        """New settings (a reload): new sessions follow them, live ones go on."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


#: Builds the strategy for a server (the server is its host).
UpstreamsFactory = Callable[[UpstreamHost], Upstreams]
