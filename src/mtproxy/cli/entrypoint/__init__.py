"""``mtproxy entrypoint``: the official container's start-up, as a translation layer.

The image's ENTRYPOINT. It reads what ``telegrammessenger/proxy`` reads (``SECRET``,
``SECRET_COUNT``, ``TAG``, ``WORKERS``, ``DEBUG``, ``/data/secret``...) and accepts the
official server's flags (``-H``, ``-p``, ``-S``, ``-P``, ``-M``...), turns both into the
option values of ``mtproxy run`` (the field names of its Option rows), prints the
official script's ``[+]``/``[*]`` lines, and then runs what ``mtproxy run`` runs.
Failures print one ``[F]`` line and exit with the official script's codes.

``mtproxy entrypoint run [OPTIONS]`` keeps ``mtproxy run``'s own option names (they win
over the variables); ``mtproxy entrypoint links|generate-secret ...`` runs that command
with the container's data directory.

Modules: ``contract`` (exit codes, defaults, value parsers), ``flags`` (the two command
lines), ``choices`` (who wins), the steps ``client_secrets``, ``variables``,
``downloads`` and ``addresses``, ``command`` (the resulting ``mtproxy run`` options and
the final report) and ``startup`` (the steps in the official order).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from mtproxy.cli.entrypoint.contract import (
    DEFAULT_DATA_DIR,
    DEFAULT_MODES,
    EXIT_CONFIG,
    Fatal,
    say,
)
from mtproxy.cli.entrypoint.flags import parse_official, parse_run_mode
from mtproxy.cli.entrypoint.startup import Prepared, Startup
from mtproxy.config.errors import ConfigError
from mtproxy.errors import FatalError
from mtproxy.protocol.dc import format_endpoint
from mtproxy.proxy.server import ProxyServer

__all__ = ["Fatal", "Prepared", "Startup", "main", "parse_official", "parse_run_mode"]

#: Commands run as they are (with the container's data directory), not translated.
PASSTHROUGH = ("links", "generate-secret", "--version")


def _started(port: int, explicit_port: bool) -> Callable[[ProxyServer], None]:
    def ready(server: ProxyServer) -> None:
        bound = server.addresses
        say(f"[+] Proxy started, listening on {', '.join(format_endpoint(a) for a in bound)}.")
        if port not in {a[1] for a in bound} and not explicit_port:
            say(f"[!] The links above say port {port}, but the proxy listens on port "
                f"{bound[0][1]}: use that port in the links.")

    return ready


def _passthrough(argv: list[str], env: Mapping[str, str]) -> int:
    """``links`` / ``generate-secret`` with the container's defaults filled in."""
    from mtproxy.cli import main as cli_main

    data_dir = env.get("DATA_DIR", "").strip() or DEFAULT_DATA_DIR
    os.environ.setdefault("MTPROXY_DATA_DIR", data_dir)
    args = list(argv)
    if args[0] == "links":
        external = env.get("EXTERNAL_IP", "").strip()
        port = env.get("EXTERNAL_PORT", "").strip() or env.get("PORT", "").strip()
        if external and not _has_flag(args, "--public-host"):
            args += ["--public-host", external]
        if port and not _has_flag(args, "--port"):
            args += ["--port", port]
        # The links of every mode the container serves (see DEFAULT_MODES).
        if not _has_flag(args, "--modes") and not _has_flag(args, "--config"):
            args += ["--modes", DEFAULT_MODES]
    return cli_main(args)


def _has_flag(args: Iterable[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    from mtproxy.app import run_until_signal, serve, setup_logging

    environ = os.environ if env is None else env
    args = list(argv)
    if args and args[0] in PASSTHROUGH:
        return _passthrough(args, environ)
    try:
        req = parse_run_mode(args[1:]) if args[:1] == ["run"] else parse_official(args)
        startup = Startup(req, environ)
        prepared = startup.prepare()
        if req.dry_run:
            say("[+] Dry run: not starting the proxy.")
            for path in startup.temporary:
                path.unlink(missing_ok=True)
            return 0
        say()
        say("[+] Starting proxy...")
        setup_logging(prepared.settings.log_level)
        ready = _started(prepared.link_port, startup.var("EXTERNAL_PORT") is not None)
        try:
            return run_until_signal(
                serve(prepared.settings, ready=ready, links=False), prepared.settings.event_loop
            )
        finally:
            for path in startup.temporary:
                path.unlink(missing_ok=True)
    except Fatal as exc:
        say(f"[F] {exc}")
        return exc.code
    except ConfigError as exc:
        say(f"[F] Bad setting: {exc}")
        return EXIT_CONFIG
    except FatalError as exc:
        say(f"[F] {exc}")
        return exc.code
    except KeyboardInterrupt:
        return 130
