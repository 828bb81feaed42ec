"""``mtproxy run``: start the proxy, zero-config by default, and print its links."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mtproxy.cli import CliError
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, add_arguments, load_settings
from mtproxy.middle import MiddleConfigError
from mtproxy.ops.runtime import StopSignal, local_stats, run_until_stopped
from mtproxy.ops.server import OpsServer
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.protocol.secret import ClientSecret, Mode, links_for
from mtproxy.proxy.server import ProxyServer
from mtproxy.proxy.sockets import ListenError, listen_error, listening_socket
from mtproxy.publicip import detect_public_ip, local_outbound_ip
from mtproxy.state import StateError, load_or_create_secrets

if TYPE_CHECKING:
    from mtproxy.ops.workers import WorkerLink

log = logging.getLogger("mtproxy")
FALLBACK_PORT = 8443
MAX_USER_LINKS = 20


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run", help="run the proxy (zero-config: generates a secret and prints links)",
        description="Run the proxy. With no options it listens on port 443 (8443 when 443 "
        "is not allowed), keeps its secret in the data directory and prints tg:// and "
        "t.me links. Command-line options override the TOML --config file.",
    )
    add_arguments(parser)
    # How the supervisor of --workers N starts its workers (they get their settings from it).
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "proxy_config_file", nargs="?", metavar="PROXY_CONFIG",
        help="Telegram's proxy list file, as the official server takes it (same as "
        "--proxy-config; pair it with --aes-pwd FILE)",
    )
    parser.set_defaults(handler=main)


def setup_logging(level: str, worker: int | None = None) -> None:
    tag = "" if worker is None else f" [worker {worker}]"
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
        stream=sys.stderr,
    )


def main(args: argparse.Namespace) -> int:
    worker_index: int | None = getattr(args, "worker_index", None)
    if worker_index is not None:
        from mtproxy.ops.workers import run_worker

        return run_worker(worker_index)
    cli = dict(vars(args))
    positional = cli.pop("proxy_config_file", None)
    if positional is not None and cli.get("proxy_config") is None:
        cli["proxy_config"] = positional
    settings = load_settings(cli, args.config)
    setup_logging(settings.log_level)
    if settings.tag_problem is not None:
        log.warning("%s", settings.tag_problem)
    if settings.middle_mode and settings.download_passthrough:
        log.warning("--download-passthrough does nothing in middle-proxy mode (answers are "
                    "re-framed for each client); drop it or the tag")
    settings = ensure_secrets(settings)

    def reloader() -> Settings:
        return ensure_secrets(load_settings(cli, args.config))

    return run_until_signal(serve(settings, reloader=reloader), settings.event_loop)


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
        raise CliError(str(exc)) from None
    if created:
        log.info("generated a new secret in %s", settings.data_dir / "secret")
    return replace(settings, secrets=tuple(ClientSecret(k, Mode.CLASSIC) for k in keys))


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


async def link_host(settings: Settings) -> str:
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
    if worker is None and settings.workers > 1:
        from mtproxy.ops.workers import supervise

        return await supervise(settings, stopper, reloader=reloader, ready=ready, links=links)
    if worker is None:
        try:
            socks = bind_listeners(settings)
        except ListenError as exc:
            raise CliError(str(exc)) from None
    else:
        await worker.connect()
        socks = worker.sockets
    server = OpsServer(
        settings,
        listen_sockets=socks,
        replay=worker.replay if worker else None,
        ledger=worker.ledger if worker else None,
        worker_index=worker.spec.index if worker else None,
    )
    try:
        await server.start()
    except MiddleConfigError as exc:
        for sock in socks:
            sock.close()
        raise CliError(str(exc)) from None
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
