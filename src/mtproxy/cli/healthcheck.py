"""``mtproxy healthcheck``: exit 0 while the proxy serves, 1 when it does not.

The image's HEALTHCHECK and the Kubernetes probes run it inside the container, where
there is no shell, curl or wget. It asks the stats port for ``/stats``: the page is
served by the same event loop that accepts clients (by the supervisor with workers), so
an answer says that loop is alive; the page's ``draining`` (set from the first SIGTERM,
when the listener closes) and ``worker.N.up`` say whether clients are still accepted.
With the stats port turned off it falls back to a TCP connect to the client port.

Where to ask comes from ``--stats``/``--listen``; else from the command line of the
container's main process (``/proc/1/cmdline``: ``mtproxy entrypoint ...`` or ``mtproxy
run ...``) read the way that command reads it, with this process's environment (Docker
and Kubernetes give a health check the container's); else ``mtproxy run``'s defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from mtproxy.config import convert as cv
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, add_arguments, load_settings
from mtproxy.protocol.dc import Endpoint, format_endpoint

DEFAULT_TIMEOUT = 3.0
#: A wildcard address is asked on loopback, which the stats port always allows.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "healthcheck", help="exit 0 if the running proxy accepts clients (for HEALTHCHECK)",
        description="Ask the running proxy's stats port whether it serves (not draining, a "
        "worker up); without a stats port, connect to the client port. Exit 0: healthy, "
        "1: not. Without options the addresses come from the container's main command.",
    )
    parser.add_argument("--stats", metavar="HOST:PORT", help="the proxy's stats address")
    parser.add_argument("--listen", metavar="HOST:PORT", help="the proxy's client address")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for an answer (default {DEFAULT_TIMEOUT:g})")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    stats, listen = _addresses(args)
    healthy, why = check(stats, listen, args.timeout)
    print(f"{'healthy' if healthy else 'unhealthy'}: {why}", flush=True)
    return 0 if healthy else 1


def check(stats: Endpoint | None, listen: Endpoint | None, timeout: float) -> tuple[bool, str]:
    """(healthy, one line saying why) for a proxy with these addresses."""
    if stats is not None:
        return _ask_stats(_local(stats), timeout)
    if listen is not None:
        host, port = _local(listen)
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            return False, f"client port {format_endpoint((host, port))}: {exc.strerror or exc}"
        return True, f"client port {format_endpoint((host, port))} accepts connections"
    return False, "no stats port and no client port to ask"


def _local(endpoint: Endpoint) -> Endpoint:
    host, port = endpoint
    return _LOOPBACK.get(host, host), port


def _ask_stats(endpoint: Endpoint, timeout: float) -> tuple[bool, str]:
    where = f"stats port {format_endpoint(endpoint)}"
    conn = http.client.HTTPConnection(endpoint[0], endpoint[1], timeout=timeout)
    try:
        conn.request("GET", "/stats")
        reply = conn.getresponse()
        body = reply.read(1 << 20).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
        return False, f"{where}: {reason}"
    finally:
        conn.close()
    if reply.status != 200:
        return False, f"{where} answered {reply.status} {reply.reason}"
    page = dict(line.split("\t", 1) for line in body.splitlines() if "\t" in line)
    if page.get("draining", "0") != "0":
        return False, f"{where}: draining, no new clients accepted"
    ups = [v for k, v in page.items() if k.startswith("worker.") and k.endswith(".up")]
    if ups and "1" not in ups:
        return False, f"{where}: no worker is up"
    workers = f"{ups.count('1')} of {len(ups)} workers up" if ups else "one process"
    return True, f"{where} answered; accepting clients ({workers}, uptime {page.get('uptime')}s)"


def _addresses(args: argparse.Namespace) -> tuple[Endpoint | None, Endpoint | None]:
    try:
        stats = cv.optional_endpoint(2398)(args.stats) if args.stats is not None else None
        listen = cv.endpoint(args.listen) if args.listen is not None else None
    except ValueError as exc:
        raise ConfigError("--stats/--listen", str(exc)) from None
    if args.stats is not None or args.listen is not None:
        return stats, listen
    settings = main_process_settings(_main_command(), os.environ)
    return settings.stats, settings.listen[0] if settings.listen else None


def _main_command() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def main_process_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """The settings ARGV (a command line of ``mtproxy``) runs with, as far as addresses go.

    Anything that is not an ``mtproxy entrypoint``/``run`` command, or does not parse,
    gives ``mtproxy run``'s defaults.
    """
    for index, word in enumerate(argv[1:], 1):
        if os.path.basename(argv[index - 1]) == "mtproxy" and word in ("entrypoint", "run"):
            rest = list(argv[index + 1:])
            break
    else:
        return Settings()
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            return _entrypoint_settings(rest, env) if word == "entrypoint" else _run_settings(rest)
    except (SystemExit, ConfigError, ValueError, OSError):
        return Settings()


def _entrypoint_settings(args: list[str], env: Mapping[str, str]) -> Settings:
    from mtproxy.cli.entrypoint import command, flags, variables
    from mtproxy.cli.entrypoint.choices import Choices
    from mtproxy.cli.entrypoint.contract import Fatal

    try:
        req = flags.parse_run_mode(args[1:]) if args[:1] == ["run"] else flags.parse_official(args)
        choices = Choices(req, env)
        variables.ports(choices)
        variables.stats(choices)
    except Fatal:
        return Settings()
    wanted = {k: v for k, v in choices.options.items() if k in ("listen", "stats")}
    return load_settings(command.run_options(wanted), req.config_path)


def _run_settings(args: list[str]) -> Settings:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    ns, _ = parser.parse_known_args(args)
    cli = {k: v for k, v in vars(ns).items() if k in ("listen", "stats")}
    return load_settings(cli, ns.config)
