"""``mtproxy run``: start the proxy, zero-config by default, and print its links."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from mtproxy.app import ensure_secrets, run_until_signal, run_worker, serve, setup_logging
from mtproxy.config.settings import Settings, add_arguments, load_settings

log = logging.getLogger("mtproxy")


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


def main(args: argparse.Namespace) -> int:
    worker_index: int | None = getattr(args, "worker_index", None)
    if worker_index is not None:
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
