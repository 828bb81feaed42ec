"""Life of a serving process after start: signals, reload, draining, the stats port.

- SIGHUP re-reads the configuration; a bad file is logged and the old one kept.
- SIGTERM (and SIGINT) stop accepting and let sessions drain for up to
  ``shutdown_grace`` seconds; a second one closes what is left at once.
- In a single process the stats port is served here; under a supervisor the
  supervisor serves it and this process answers its questions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from mtproxy.config.settings import Settings
from mtproxy.ops.server import OpsServer
from mtproxy.ops.snapshot import take
from mtproxy.ops.stats_server import DEFAULT_ALLOW, StatsServer, StatsView

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


class StopSignal:
    """SIGTERM/SIGINT handler, installed before anything starts.

    First signal: drain. Second: ``force`` (close every session now, or in a supervisor
    tell the workers the same).
    """

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.force: Callable[[], None] | None = None
        self.signals: list[int] = []

    def install(self, loop: asyncio.AbstractEventLoop, *, worker: bool = False) -> None:
        """A worker leaves SIGINT (Ctrl-C reaches the whole group) and SIGHUP (the
        supervisor re-reads the configuration and sends it) to its supervisor."""
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
        if not self.requested.is_set():
            self.requested.set()
        elif self.force is not None:
            self.force()


def _too_early() -> None:
    log.warning("SIGHUP before start-up finished; send it again to reload")


def force_close(server: OpsServer) -> Callable[[], None]:
    def force() -> None:
        log.info("second stop signal: closing %d sessions now", len(server.sessions))
        for client in list(server.sessions):
            client.close(abort=True)

    return force


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
    for sig in (*stopper.signals, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    return 0
