"""``mtproxy healthcheck``: exit 0 while the proxy serves, 1 when it does not.

The image's HEALTHCHECK and the Kubernetes probes run it inside the container, where
there is no shell, curl or wget. It asks the stats port for ``/stats``: the page is
served by the same event loop that accepts clients (by the supervisor with workers), so
an answer says that loop is alive; the page's ``draining`` (set from the first SIGTERM,
when the listener closes) and ``worker.N.up`` say whether clients are still accepted.
With the stats port turned off it falls back to a TCP connect to the client port.

Where to ask comes from ``--stats``/``--listen``; else from the command line of the
container's main process (``/proc/1/cmdline``: ``mtproxy entrypoint ...`` or ``mtproxy
run ...``) with this process's environment (Docker and Kubernetes give a health check the
container's), read by the rules of those commands for the stats and client addresses only;
else ``mtproxy run``'s defaults. It runs every few seconds, so it imports neither the
server nor the configuration table (those imports cost ten times the check itself); the
tests hold its reading to what the entrypoint really starts.
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from mtproxy.protocol.dc import DcSpecError, Endpoint, format_endpoint, parse_endpoint

DEFAULT_TIMEOUT = 3.0
MAX_REPLY = 1 << 20
#: ``mtproxy run``'s defaults (Settings.stats, the first of Settings.listen).
DEFAULT_STATS: Endpoint = ("127.0.0.1", 2398)
DEFAULT_LISTEN: Endpoint = ("0.0.0.0", 443)
#: The official entrypoint's: client port 443, stats on STATS_HOST (all addresses).
ENTRYPOINT_STATS_HOST = "0.0.0.0"
#: A wildcard address is asked on loopback, which the stats port always allows.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}
_OFF = ("", "off", "none", "no")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stats", metavar="HOST:PORT", help="the proxy's stats address")
    parser.add_argument("--listen", metavar="HOST:PORT", help="the proxy's client address")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for an answer (default {DEFAULT_TIMEOUT:g})")


DESCRIPTION = ("Ask the running proxy's stats port whether it serves (not draining, a worker "
               "up); without a stats port, connect to the client port. Exit 0: healthy, 1: "
               "not. Without options the addresses come from the container's main command.")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "healthcheck", help="exit 0 if the running proxy accepts clients (for HEALTHCHECK)",
        description=DESCRIPTION,
    )
    configure(parser)
    parser.set_defaults(handler=run)


def main(argv: Sequence[str]) -> int:
    """The command without the rest of the CLI (what HEALTHCHECK runs every few seconds)."""
    parser = argparse.ArgumentParser(prog="mtproxy healthcheck", description=DESCRIPTION)
    configure(parser)
    return run(parser.parse_args(list(argv)))


def run(args: argparse.Namespace) -> int:
    try:
        stats, listen = _addresses(args)
    except ValueError as exc:
        print(f"mtproxy healthcheck: error: {exc}", flush=True)
        return 2
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
    """GET /stats over a plain socket (http.client would triple the imports)."""
    where = f"stats port {format_endpoint(endpoint)}"
    reply = b""
    try:
        with socket.create_connection(endpoint, timeout=timeout) as sock:
            sock.sendall(b"GET /stats HTTP/1.1\r\nHost: healthcheck\r\n"
                         b"Connection: close\r\n\r\n")
            while len(reply) < MAX_REPLY and (chunk := sock.recv(65536)):
                reply += chunk
    except TimeoutError:
        return False, f"{where}: no answer in time"
    except OSError as exc:
        return False, f"{where}: {exc.strerror or exc}"
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/"):
        return False, f"{where}: not an HTTP answer"
    if status[1] != "200":
        return False, f"{where} answered {' '.join(status[1:])}"
    page = dict(line.split("\t", 1) for line in body.decode("utf-8", "replace").splitlines()
                if "\t" in line)
    if page.get("draining", "0") != "0":
        return False, f"{where}: draining, no new clients accepted"
    ups = [v for k, v in page.items() if k.startswith("worker.") and k.endswith(".up")]
    if ups and "1" not in ups:
        return False, f"{where}: no worker is up"
    workers = f"{ups.count('1')} of {len(ups)} workers up" if ups else "one process"
    return True, f"{where} answered; accepting clients ({workers}, uptime {page.get('uptime')}s)"


def _endpoint(text: str, default_port: int | None = None) -> Endpoint:
    try:
        return parse_endpoint(text, default_port)
    except DcSpecError as exc:
        raise ValueError(f"{exc}; write HOST:PORT") from None


def _stats(text: str) -> Endpoint | None:
    return None if text.strip().lower() in _OFF else _endpoint(text, DEFAULT_STATS[1])


def _addresses(args: argparse.Namespace) -> tuple[Endpoint | None, Endpoint | None]:
    if args.stats is not None or args.listen is not None:
        stats = _stats(args.stats) if args.stats is not None else None
        listen = _endpoint(args.listen) if args.listen is not None else None
        return stats, listen
    return addresses_of(_main_command(), os.environ)


def _main_command() -> list[str]:
    try:
        with open("/proc/1/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def addresses_of(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Endpoint | None,
                                                                         Endpoint | None]:
    """(stats, client) addresses that ARGV, a command line running mtproxy, serves on.

    Anything that is not ``mtproxy entrypoint ...`` or ``mtproxy run ...``, or does not
    read, gives ``mtproxy run``'s defaults.
    """
    for index, word in enumerate(argv[1:], 1):
        if os.path.basename(argv[index - 1]) == "mtproxy" and word in ("entrypoint", "run"):
            rest = list(argv[index + 1:])
            break
    else:
        return DEFAULT_STATS, DEFAULT_LISTEN
    try:
        if word == "entrypoint" and rest[:1] != ["run"]:
            return _official(rest, env)
        if word == "entrypoint":
            return _run(rest[1:], env)
        return _run(rest, {})
    except (ValueError, OSError, tomllib.TOMLDecodeError):
        return DEFAULT_STATS, DEFAULT_LISTEN


def _var(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def _official(args: list[str], env: Mapping[str, str]) -> tuple[Endpoint | None, Endpoint]:
    """The official flags: a variable wins over the flag (docs/entrypoint.md)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-p", "--port")
    parser.add_argument("-H", "--http-ports")
    parser.add_argument("--address")
    ns, _ = parser.parse_known_args(args)
    stats_port = _var(env, "STATS_PORT") or ns.port
    stats = DEFAULT_STATS
    if stats_port is not None:
        stats = (_var(env, "STATS_HOST") or ENTRYPOINT_STATS_HOST, int(stats_port))
    port = _var(env, "PORT") or (ns.http_ports.split(",")[0] if ns.http_ports else "443")
    return stats, (ns.address or "0.0.0.0", int(port))


def _run(args: list[str], env: Mapping[str, str]) -> tuple[Endpoint | None, Endpoint]:
    """``mtproxy run``'s options, over its --config file, over the entrypoint's variables."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--stats")
    parser.add_argument("--listen", "-l", action="append")
    parser.add_argument("--config", "-c")
    ns, _ = parser.parse_known_args(args)
    stats: Endpoint | None = DEFAULT_STATS
    listen = DEFAULT_LISTEN
    file: dict[str, Any] = {}
    if ns.config is not None:
        with open(ns.config, "rb") as fh:
            file = tomllib.load(fh)
    if ns.stats is not None:
        stats = _stats(ns.stats)
    elif "stats" in file:
        stats = _stats(str(file["stats"]))
    elif _var(env, "STATS_PORT") is not None:
        stats = (_var(env, "STATS_HOST") or ENTRYPOINT_STATS_HOST, int(str(env["STATS_PORT"])))
    listens = ns.listen or file.get("listen")
    if listens:
        first = listens[0] if isinstance(listens, list) else listens
        listen = _endpoint(str(first))
    elif _var(env, "PORT") is not None:
        listen = ("0.0.0.0", int(str(env["PORT"])))
    return stats, listen
