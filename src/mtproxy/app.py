"""The program's assembly: what ``mtproxy run`` (and the container) start.

The command line (``cli/``) parses and validates; this module puts the pieces
together — listening sockets, the server with the upstreams the settings ask for
(direct or middle-proxy), workers under a supervisor, signals, links — and runs
them. It is the only module that knows every layer: ``cli`` -> ``app`` -> ``ops``,
``middle``, ``proxy`` -> ``protocol``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings
from mtproxy.errors import FatalError
from mtproxy.middle import MiddleConfigError, MiddleUpstreams
from mtproxy.ops.fds import raise_limit
from mtproxy.ops.runtime import Reloader, StopSignal, local_stats, run_until_stopped
from mtproxy.ops.server import OpsServer
from mtproxy.ops.workers import ENV, Supervisor, WorkerLink, WorkerSpec
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.protocol.secret import ClientSecret, Mode, links_for
from mtproxy.proxy.direct import DirectUpstreams
from mtproxy.proxy.server import ProxyServer
from mtproxy.proxy.sockets import ListenError, listen_error, listening_socket
from mtproxy.proxy.upstream import UpstreamsFactory
from mtproxy.publicip import link_host
from mtproxy.state import StateError, load_or_create_secrets

log = logging.getLogger("mtproxy")
FALLBACK_PORT = 8443
MAX_USER_LINKS = 20


def setup_logging(level: str, worker: int | None = None) -> None:
    tag = "" if worker is None else f" [worker {worker}]"
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
        stream=sys.stderr,
    )


def raise_fd_limit(*, quiet: bool = False) -> None:
    """The soft descriptor limit up to the hard one, said in the log when it moved."""
    raised = raise_limit()
    if raised.problem is not None:
        log.warning("cannot raise the descriptor limit from %d to the hard limit %d: %s",
                    raised.before, raised.hard, raised.problem)  # fmt: skip
    elif raised.soft != raised.before and not quiet:
        log.info("descriptor limit raised from %d to %d (the hard limit)",
                 raised.before, raised.soft)  # fmt: skip


def ensure_secrets(settings: Settings) -> Settings:
    """Use the configured secrets, else the stored ones, else generate and store one.

    Named users of the configuration bring their own secrets; then nothing is generated
    (users added through the management API do not replace the stored secret).
    """
    if settings.secrets or settings.file_users:
        return settings
    try:
        keys, created = load_or_create_secrets(settings.data_dir)
    except StateError as exc:
        raise FatalError(str(exc)) from None
    if created:
        log.info("generated a new secret in %s", settings.data_dir / "secret")
    return replace(settings, secrets=tuple(ClientSecret(k, Mode.CLASSIC) for k in keys))


def upstreams_for(settings: Settings) -> UpstreamsFactory:
    """Middle-proxy mode when the settings ask for it (an ad tag does), else direct."""
    return MiddleUpstreams if settings.middle_mode else DirectUpstreams


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (or demanded), else the standard loop."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "--event-loop", "uvloop is not installed; pip install uvloop, or use auto"
            ) from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_until_signal(main: Coroutine[Any, Any, int], loop: str = "auto") -> int:
    try:
        factory = event_loop_factory(loop)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def bind_listeners(settings: Settings, *, reuse_port: bool = False) -> list[socket.socket]:
    """Bind the configured addresses; the defaults degrade gracefully.

    With no --listen given: a host without IPv6 just skips [::], and when port 443
    needs privileges we do not have, 8443 is used instead (said loudly).
    """

    def bind(endpoint: Endpoint) -> socket.socket:
        return listening_socket(
            endpoint, backlog=settings.backlog, keepalive=settings.keepalive,
            reuse_port=reuse_port,
        )

    socks: list[socket.socket] = []
    endpoint: Endpoint = ("", 0)
    try:
        for endpoint in settings.listen:
            try:
                socks.append(bind(endpoint))
            except OSError as exc:
                if settings.listen_given:
                    raise
                if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) and ":" in endpoint[0]:
                    log.info("IPv6 unavailable, not listening on %s", format_endpoint(endpoint))
                    continue
                if not (isinstance(exc, PermissionError) and endpoint[1] < 1024):
                    raise
                wanted, endpoint = endpoint, (endpoint[0], FALLBACK_PORT)
                log.warning(
                    "no permission to use port %d; listening on %s instead (run as root "
                    "or pass --listen to choose)", wanted[1], format_endpoint(endpoint)
                )
                socks.append(bind(endpoint))
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise listen_error(endpoint, exc) from None
    if not socks:
        raise ListenError("no address could be bound; pass --listen HOST:PORT")
    return socks


def format_links(settings: Settings, host: str, port: int) -> str:
    lines: list[str] = []
    for index, secret in enumerate(settings.secrets, 1):
        lines.append(f"secret {index}: {secret.key.hex()}")
        for link in links_for(host, port, secret.key, settings.modes, list(settings.tls_domains)):
            lines.append(f"  {link.secret.mode.value:<7} {link.tg}")
            lines.append(f"  {'':<7} {link.https}")
    if len(settings.users) > MAX_USER_LINKS:
        lines.append(f"{len(settings.users)} users from the configuration (links not printed)")
        return "\n".join(lines)
    for user in settings.users:
        lines.append(f"user {user.name}: {user.secret.key.hex()}")
        for link in links_for(host, port, user.secret.key, settings.modes,
                              list(settings.tls_domains)):
            lines.append(f"  {link.secret.mode.value:<7} {link.tg}")
    return "\n".join(lines)


async def serve(
    settings: Settings,
    *,
    ready: Callable[[ProxyServer], None] | None = None,
    links: bool = True,
    reloader: Callable[[], Settings] | None = None,
    worker: WorkerLink | None = None,
) -> int:
    """Run until SIGINT/SIGTERM; ``links=False`` when the caller has printed them already.

    With ``settings.workers > 1`` this process becomes the supervisor of that many
    workers (``ready`` then gets the supervisor, which has ``addresses`` too);
    ``worker`` is set in a worker, which gets its sockets and peers from there.
    """
    loop = asyncio.get_running_loop()
    # Signals are caught from the start: a stop during start-up still ends cleanly.
    stopper = StopSignal()
    stopper.install(loop, worker=worker is not None)
    # Before any socket: the budget of clients is made from the raised limit (workers
    # inherit the supervisor's, and raise their own if they can).
    raise_fd_limit(quiet=worker is not None)
    if worker is None and settings.workers > 1:
        return await supervise(settings, stopper, reloader=reloader, ready=ready, links=links)
    if worker is None:
        try:
            socks = bind_listeners(settings)
        except ListenError as exc:
            raise FatalError(str(exc)) from None
    else:
        await worker.connect()
        socks = worker.sockets
    server = OpsServer(
        settings,
        listen_sockets=socks,
        replay=worker.replay if worker else None,
        ledger=worker.ledger if worker else None,
        worker_index=worker.spec.index if worker else None,
        upstreams=upstreams_for(settings),
    )
    try:
        await server.start()
    except MiddleConfigError as exc:
        for sock in socks:
            sock.close()
        raise FatalError(str(exc)) from None
    addresses = server.addresses
    modes = ", ".join(m.value for m in Mode if m in settings.modes)
    if settings.middle_mode:
        route = "via Telegram's middle-proxies" + (" with ad tag" if settings.ad_tag else "")
    elif server.passthrough:
        route = "direct to DCs, download pass-through"
    else:
        route = "direct to DCs"
    log.log(
        logging.INFO if worker is None else logging.DEBUG,
        "listening on %s (modes: %s; %s; %s loop)",
        ", ".join(format_endpoint(a) for a in addresses),
        modes,
        route,
        type(loop).__module__.split(".")[0],
    )
    if links and worker is None:
        host = await link_host(settings)
        print(format_links(settings, host, addresses[0][1]), flush=True)
    if worker is not None:
        worker.started(server)
    if ready is not None:
        ready(server)
    return await run_until_stopped(
        server,
        stopper,
        reloader=reloader,
        stats=local_stats(server) if worker is None else None,
        lost=worker.lost if worker is not None else None,
    )


def run_worker(index: int) -> int:
    """``mtproxy run --worker-index I``: settings, sockets and peers come from the supervisor."""
    try:
        spec = WorkerSpec.decode(index, os.environ.get(ENV, ""))
        link = WorkerLink(spec)
        settings = link.read_settings()
    except (ValueError, OSError) as exc:
        raise FatalError(f"--worker-index is for the supervisor's use only ({exc})") from None
    setup_logging(settings.log_level, index)
    return run_until_signal(serve(settings, worker=link), settings.event_loop)


async def supervise(
    settings: Settings,
    stopper: StopSignal,
    *,
    reloader: Reloader | None = None,
    ready: Callable[[Any], None] | None = None,
    links: bool = True,
) -> int:
    """The supervisor's whole life (``serve`` with ``workers > 1``)."""
    try:
        socks = bind_listeners(settings, reuse_port=True)
    except ListenError as exc:
        raise FatalError(str(exc)) from None
    supervisor = Supervisor(settings, reloader, socks)
    try:
        await supervisor.start(stopper)
    except RuntimeError as exc:
        await supervisor.shutdown()
        raise FatalError(str(exc)) from None
    log.info(
        "%d workers listening on %s",
        len(supervisor.workers), ", ".join(format_endpoint(e) for e in supervisor.endpoints),
    )
    if links:
        host = await link_host(settings)
        print(format_links(settings, host, supervisor.endpoints[0][1]), flush=True)
    if ready is not None:
        ready(supervisor)
    return await supervisor.run(stopper)
