"""The proxy server: listeners, the set of live sessions, and what they share.

The server is also the listeners' accept policy (see ``proxy/accept.py``): the cap on
client connections (``max_clients``, which the ops layer derives from the descriptor
budget), and what happens when a client is refused or the process runs out of
descriptors: counted, and logged once per period rather than once per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

from mtproxy.config.settings import Settings
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.protocol.handshake import Accepted, HandshakePolicy
from mtproxy.protocol.replay import ReplayCache, ReplayGuard
from mtproxy.proxy.accept import Listener, careful_from, out_of_fds
from mtproxy.proxy.buffers import SharedBuffers
from mtproxy.proxy.client import ClientConnection
from mtproxy.proxy.direct import DirectUpstreams
from mtproxy.proxy.peer import MaskConnection
from mtproxy.proxy.sockets import listen_error, listening_socket
from mtproxy.proxy.stats import ProxyStats, UserStats
from mtproxy.proxy.upstream import Upstreams, UpstreamsFactory
from mtproxy.throttled_log import ThrottledLog

log = logging.getLogger("mtproxy.server")
#: Seconds the listeners keep to the careful accept path after a descriptor shortage.
CALM_AFTER_SHORTAGE = 10.0


class ProxyServer:
    def __init__(
        self,
        settings: Settings,
        *,
        replay: ReplayGuard | None = None,
        listen_sockets: Sequence[socket.socket] = (),
        upstreams: UpstreamsFactory | None = None,
    ) -> None:
        """``upstreams`` builds the strategy that opens each session's upstream (direct
        mode when omitted; ``mtproxy.app`` passes middle-proxy mode's when configured)."""
        if not settings.secret_keys:
            raise ValueError("ProxyServer needs at least one secret")
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.stats = ProxyStats()
        self.stats.users = [
            UserStats(f"secret{i + 1}") for i in range(len(settings.secrets))
        ]
        self.buffers = SharedBuffers(settings.buffer_size)
        # Entries must outlive every timestamp the time check accepts, which reaches
        # tls_max_future past a hello's arrival plus replay_window after it.
        window = settings.replay_window + settings.tls_max_future
        # "is not None": a shared cache that is still empty is falsy (its len() is 0).
        self.replay = (
            replay if replay is not None else ReplayCache(settings.replay_cache_size, window)
        )
        self.policy = HandshakePolicy(
            secrets=settings.secret_keys,
            modes=settings.modes,
            tls_domains=frozenset(settings.tls_domains),
            replay=self.replay,
            tls_max_past=settings.replay_window,
            tls_max_future=settings.tls_max_future,
        )
        if upstreams is None:
            if settings.middle_mode:
                raise ValueError("middle-proxy mode needs its upstreams (see mtproxy.app)")
            upstreams = DirectUpstreams
        self.upstreams: Upstreams = upstreams(self)
        self.passthrough = settings.download_passthrough and self.upstreams.supports_passthrough
        self.sessions: set[ClientConnection] = set()
        self.failures = ThrottledLog(logging.getLogger("mtproxy.client"))
        #: Refusals at the cap and descriptor shortages (one line per kind per period).
        self.shortages = ThrottledLog(log)
        #: Client connections at once (0: no cap); beyond it they are closed at accept.
        self.max_clients = settings.max_connections
        #: The listeners' policy: where our careful accept path takes over from the
        #: loop's own, and until when it keeps it after a descriptor shortage.
        self.careful_from = careful_from(self.max_clients)
        self.calm_until = 0.0
        self.listeners: list[Listener] = []
        #: Local addresses of our connections to the mask host (see MaskConnection).
        self.mask_sources: set[tuple[str, int]] = set()
        self._given_sockets = list(listen_sockets)
        self._sweeper: asyncio.Task[None] | None = None

    # -- hooks for sessions ------------------------------------------------------------

    def user_for(self, secret_index: int, policy: HandshakePolicy | None = None) -> UserStats:
        """The user behind a secret index of ``policy`` (the one the handshake ran under)."""
        return self.stats.users[secret_index]

    def admit(self, client: ClientConnection, user: UserStats) -> bool:
        """Whether a client that passed its handshake may open an upstream."""
        return True

    def open_upstream(self, client: ClientConnection, accepted: Accepted) -> asyncio.Task[None]:
        return self.upstreams.open(client, accepted, self.passthrough)

    async def connect_upstream(
        self, factory: Callable[[], asyncio.BaseProtocol], endpoint: Endpoint
    ) -> None:
        """Open a TCP connection towards Telegram (a subclass may go through a proxy)."""
        await self.loop.create_connection(factory, *endpoint)

    def connection_factory(self) -> asyncio.BaseProtocol:
        """The protocol for one accepted client socket."""
        return ClientConnection(self)

    # -- the listeners' policy ---------------------------------------------------------

    def connections(self) -> int:
        return self.stats.connections_active

    def full(self, pending: int) -> bool:
        cap = self.max_clients
        return cap > 0 and self.stats.connections_active + pending >= cap

    def note_refusal(self) -> None:
        self.stats.accept_refused += 1
        self.shortages.log(
            logging.WARNING, "cap",
            f"{self.max_clients} client connections open, the most this process takes: "
            "refusing new ones until some leave (see --max-connections in "
            "docs/operations.md)",
        )  # fmt: skip

    def note_shortage(self, exc: OSError) -> None:
        self.out_of_fds("accepting clients paused", exc)

    def out_of_fds(self, where: str, exc: OSError) -> None:
        """The process ran out of descriptors (or memory for a socket): counted, logged
        once per period, and the listeners accept carefully for a while."""
        self.stats.fd_exhausted += 1
        self.calm_until = self.loop.time() + CALM_AFTER_SHORTAGE
        for listener in self.listeners:
            listener.be_careful()
        self.shortages.log(
            logging.WARNING, f"fds {where}",
            f"out of file descriptors ({exc.strerror or exc}; {self.stats.connections_active} "
            f"clients open): {where}; raise the descriptor limit or lower "
            "--max-connections (see docs/operations.md)",
        )  # fmt: skip

    def open_mask(self, client: ClientConnection, raw: bytes) -> asyncio.Task[None]:
        return self.loop.create_task(self._connect_mask(client, raw))

    async def _connect_mask(self, client: ClientConnection, raw: bytes) -> None:
        mask = self.settings.mask
        assert mask is not None
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                await self.loop.create_connection(
                    lambda: MaskConnection(client, raw, self.mask_sources), *mask
                )
        except (OSError, TimeoutError) as exc:
            if out_of_fds(exc):
                assert isinstance(exc, OSError)
                self.out_of_fds("no connection to the mask host", exc)
            else:
                log.debug("mask host %s unreachable: %s", format_endpoint(mask), exc)
            client.mask_failed()

    def session_closed(self, client: ClientConnection) -> None:
        """Called once per closed client connection."""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        await self.upstreams.start()
        try:
            socks = self._given_sockets or [self._bind(ep) for ep in settings.listen]
            for sock in socks:
                listener = Listener(self.loop, sock, self, backlog=settings.backlog)
                self.listeners.append(listener)
                await listener.start()
        except BaseException:
            for listener in self.listeners:
                listener.close()
            await self.upstreams.stop()
            raise
        self._sweeper = self.loop.create_task(self._sweep_idle())

    def _bind(self, endpoint: Endpoint) -> socket.socket:
        try:
            return listening_socket(
                endpoint, backlog=self.settings.backlog, keepalive=self.settings.keepalive
            )
        except OSError as exc:
            raise listen_error(endpoint, exc) from None

    @property
    def addresses(self) -> list[Endpoint]:
        out: list[Endpoint] = []
        for listener in self.listeners:
            if not listener.closed:
                name = listener.sock.getsockname()
                out.append((name[0], name[1]))
        return out

    async def _sweep_idle(self) -> None:
        timeout = self.settings.idle_timeout
        period = min(timeout / 4, 15.0)
        ticks_needed = max(1, round(timeout / period))
        while True:
            await asyncio.sleep(period)
            for client in list(self.sessions):
                if client.handshake_pending:
                    continue
                client.check_paused()
                if client.active:
                    client.active = False
                    client.idle_ticks = 0
                    continue
                client.idle_ticks += 1
                if client.idle_ticks >= ticks_needed:
                    client.close()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop accepting; let sessions finish for up to ``grace`` seconds; close the rest."""
        for listener in self.listeners:
            listener.close()
        if grace > 0 and self.sessions:
            deadline = self.loop.time() + grace
            while self.sessions and self.loop.time() < deadline:
                await asyncio.sleep(min(0.1, grace))
        for client in list(self.sessions):
            client.close(abort=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for listener in self.listeners:
            await listener.wait_closed()
        await self.upstreams.stop()
        await asyncio.sleep(0)

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
