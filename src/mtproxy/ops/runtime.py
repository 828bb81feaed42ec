"""Life of a serving process after start: signals, reload, draining, the stats port.

- SIGHUP re-reads the configuration; a bad file is logged and the old one kept.
- SIGTERM (and SIGINT) stop accepting and let sessions drain for up to
  ``shutdown_grace`` seconds; a second one, a second or more later, closes what is
  left at once (see :class:`StopSignal` for why a quicker repeat does not).
- In a single process the stats port is served here; under a supervisor the
  supervisor serves it and this process answers its questions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from mtproxy.config.settings import Settings
from mtproxy.ops.api import ApiServer, Backend, load_token
from mtproxy.ops.server import LocalLedger, OpsServer
from mtproxy.ops.snapshot import take
from mtproxy.ops.stats_server import DEFAULT_ALLOW, StatsServer, StatsView
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.publicip import link_host
from mtproxy.state import StateError

log = logging.getLogger("mtproxy")

Reloader = Callable[[], Settings]


def reload_now(server: OpsServer, reloader: Reloader) -> bool:
    """Apply a freshly read configuration; False (and a log line) if it is unusable."""
    try:
        settings = reloader()
    except Exception as exc:  # a reload must never kill a serving process
        log.error("reload failed, keeping the running configuration: %s", exc)
        return False
    notes = server.apply(settings)
    log.info("configuration reloaded%s", "".join(f"; {n}" for n in notes))
    return True


#: A stop signal repeated within this many seconds of the first is the same stop.
REPEAT_WINDOW = 1.0


class StopSignal:
    """SIGTERM/SIGINT handler, installed before anything starts.

    First signal: drain. A later one: ``force`` (close every session now, or in a
    supervisor order the workers to). Two deliveries of one stop must not force:
    ``kill -TERM -- -PGID`` (systemd's control-group kill, ``timeout``) reaches the
    supervisor and every worker at once, and ``timeout`` signals its child twice. So a
    repeat within :data:`REPEAT_WINDOW` seconds counts as the first, and a worker never
    forces on a signal at all: only its supervisor's explicit order does.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.requested = asyncio.Event()
        self.force: Callable[[], None] | None = None
        self.signals: list[int] = []
        self.worker = False
        self.clock = clock
        self.first_at = 0.0

    def install(self, loop: asyncio.AbstractEventLoop, *, worker: bool = False) -> None:
        """A worker leaves SIGINT (Ctrl-C reaches the whole group) and SIGHUP (the
        supervisor re-reads the configuration and sends it) to its supervisor."""
        self.worker = worker
        self.signals = [signal.SIGTERM] if worker else [signal.SIGTERM, signal.SIGINT]
        if worker:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for sig in self.signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self)
        if not worker:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, _too_early)

    def __call__(self) -> None:
        now = self.clock()
        if not self.requested.is_set():
            self.first_at = now
            self.requested.set()
            return
        if self.worker:
            log.debug("stop signal again: still draining (only the supervisor forces a stop)")
            return
        if now - self.first_at < REPEAT_WINDOW:
            log.info("stop signal repeated within %gs: the same stop, still draining",
                     REPEAT_WINDOW)
            return
        if self.force is not None:
            self.force()


def _too_early() -> None:
    log.warning("SIGHUP before start-up finished; send it again to reload")


def force_close(server: OpsServer) -> Callable[[], None]:
    def force() -> None:
        log.info("second stop signal: closing %d sessions now", len(server.sessions))
        for client in list(server.sessions):
            client.close(abort=True)

    return force


class LocalBackend:
    """The management API's view of a single serving process."""

    def __init__(self, server: OpsServer, reloader: Reloader | None) -> None:
        self.server = server
        self.reloader = reloader

    @property
    def settings(self) -> Settings:
        return self.server.settings

    @property
    def addresses(self) -> list[Endpoint]:
        return list(self.server.addresses)

    async def view(self) -> StatsView:
        snap = take(self.server)
        ledger = self.server.ledger
        if isinstance(ledger, LocalLedger):
            for name, user in snap["users"].items():
                if user["quota"] is not None:
                    user["quota_used"] = ledger.ledger.used(name)
        return StatsView(snap, os.getpid(), self.server.stats.started)

    async def apply(self, settings: Settings) -> int:
        notes = self.server.apply(settings)
        log.info("configuration changed through the API%s", "".join(f"; {n}" for n in notes))
        return 1

    async def reset_quota(self, name: str) -> None:
        ledger = self.server.ledger
        assert isinstance(ledger, LocalLedger)
        ledger.ledger.reset(name)
        self.server._refresh_quotas(self.server.ledger_sync_now())
        ledger.save()

    async def reread(self) -> str | None:
        if self.reloader is None:
            return "this proxy was started without a configuration to reload"
        try:
            settings = self.reloader()
        except Exception as exc:  # a reload must never kill a serving process
            return str(exc)
        await self.apply(settings)
        return None

    async def link_host(self) -> str:
        return await link_host(self.settings)


async def start_api(settings: Settings, backend: Backend) -> ApiServer | None:
    """The management API when configured; a failure to start it is logged, not fatal."""
    if settings.api is None:
        return None
    try:
        api = ApiServer(settings.api, load_token(settings), backend)
        await api.start()
    except (OSError, StateError) as exc:
        log.error("cannot serve the management API on %s: %s", format_endpoint(settings.api),
                  getattr(exc, "strerror", None) or exc)  # fmt: skip
        return None
    host, port = api.address
    log.info("management API on http://%s/api/", format_endpoint((host, port)))
    return api


def local_stats(server: OpsServer) -> StatsServer | None:
    endpoint = server.settings.stats
    if endpoint is None:
        return None

    async def source() -> StatsView:
        return StatsView(take(server), os.getpid(), server.stats.started)

    return StatsServer(endpoint, source, server.settings.stats_allow)


async def run_until_stopped(
    server: OpsServer,
    stopper: StopSignal,
    *,
    reloader: Reloader | None,
    stats: StatsServer | None = None,
    lost: asyncio.Event | None = None,
) -> int:
    """Serve until a stop signal (or ``lost``: the supervisor went away), then drain."""
    loop = asyncio.get_running_loop()
    stopper.force = force_close(server)
    if lost is None:  # not a worker: SIGHUP is ours

        def on_hup() -> None:
            if reloader is None:
                log.warning("SIGHUP: this proxy was started without a configuration to reload")
            elif reload_now(server, reloader) and stats is not None:
                stats.allow = tuple(server.settings.stats_allow) or DEFAULT_ALLOW

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
    if stats is not None:
        try:
            await stats.start()
        except OSError as exc:
            log.error("cannot serve stats on %s: %s", stats.endpoint, exc.strerror or exc)
            stats = None
        else:
            host, port = stats.address
            log.info("stats on http://%s/stats and /metrics", f"{host}:{port}")
    api = await start_api(server.settings, LocalBackend(server, reloader)) if lost is None else None
    waiters = [loop.create_task(stopper.requested.wait())]
    if lost is not None:
        waiters.append(loop.create_task(lost.wait()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    grace = server.settings.shutdown_grace
    log.info(
        "stopping: no new clients; %d sessions may drain for up to %gs",
        len(server.sessions), grace,
    )
    await server.stop(grace)
    if stats is not None:
        await stats.close()
    if api is not None:
        await api.close()
    for sig in (*stopper.signals, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    return 0
