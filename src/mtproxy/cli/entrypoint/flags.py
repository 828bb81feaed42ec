"""The two command lines the entrypoint takes, read into one :class:`Request`.

The official server's flags (``-H 443 -p 2398 -S ...``, what the image's CMD passes) and
``run [mtproxy run options]`` both end up as option values keyed by the field names of
``mtproxy run``'s Option rows, plus what only the start-up steps use (flag secrets,
ports, Telegram's files given on the command line).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from mtproxy.cli.entrypoint.contract import EXIT_CONFIG, Fatal, count, hex32, port, say
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import OPTIONS, add_arguments, read_toml
from mtproxy.protocol.secret import Mode


class _OfficialParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        say(f"[F] Bad command line: {message} (see mtproxy entrypoint --help).")
        sys.exit(EXIT_CONFIG)


#: Official flags that are accepted for compatibility but change nothing here.
_NO_EFFECT_SWITCHES: tuple[tuple[str, ...], ...] = (
    ("--allow-skip-dh",), ("--force-dh",), ("--http-stats",), ("--crc32c",),
    ("--disable-tcp",),
)
_NO_EFFECT_VALUES: tuple[tuple[str, ...], ...] = (
    ("-l", "--log"), ("-c", "--connections"), ("-W", "--window-clamp"),
    ("-T", "--ping-interval"), ("--nice",), ("--cpu-threads",), ("--io-threads",),
    ("--tcp-cpu-threads",), ("--tcp-iothreads",), ("--max-accept-rate",),
    ("--max-dh-accept-rate",), ("--msg-buffers-size",),
)
_NO_EFFECT_OPTIONAL: tuple[tuple[str, ...], ...] = (("-d", "--daemonize"), ("--multithread",))


def official_parser() -> argparse.ArgumentParser:
    p = _OfficialParser(
        prog="mtproxy entrypoint",
        description="Start the proxy the way the official telegrammessenger/proxy container "
        "does: environment variables SECRET, SECRET_COUNT, TAG, WORKERS, DEBUG, PORT, "
        "STATS_PORT, EXTERNAL_IP, INTERNAL_IP... (docs/entrypoint.md), plus the official "
        "server's flags. A variable wins over the flag for the same setting, because the "
        "image's CMD supplies the flags as defaults. 'mtproxy entrypoint run [OPTIONS]' "
        "takes mtproxy run's options instead; 'mtproxy entrypoint links' prints the links.",
    )
    p.add_argument("-H", "--http-ports", metavar="PORTS",
                   help="comma-separated client ports (default 443)")
    p.add_argument("-p", "--port", metavar="PORT", help="stats port")
    p.add_argument("-S", "--mtproto-secret", action="append", dest="secrets", metavar="HEX32",
                   help="client secret (repeatable)")
    p.add_argument("-P", "--proxy-tag", dest="tag", metavar="HEX32", help="ad tag from @MTProxybot")
    p.add_argument("-M", "--slaves", dest="workers", metavar="N", help="worker processes")
    p.add_argument("-C", "--max-special-connections", dest="max_connections", metavar="N",
                   help="client connection limit")
    p.add_argument("-D", "--domain", action="append", dest="domains", metavar="DOMAIN",
                   help="fake-TLS domain; only fake-TLS clients are accepted (repeatable)")
    p.add_argument("--aes-pwd", metavar="FILE", help="Telegram's proxy secret file")
    p.add_argument("--nat-info", action="append", metavar="LOCAL:GLOBAL",
                   help="address translation for the middle proxies (repeatable)")
    p.add_argument("--address", metavar="ADDR", help="bind the client ports to this address only")
    p.add_argument("-6", "--ipv6", action="store_true", help="also listen on IPv6")
    p.add_argument("-b", "--backlog", metavar="N", help="listen backlog")
    p.add_argument("-v", "--verbosity", action="count", default=0, help="verbose logging")
    p.add_argument("-u", "--user", help=argparse.SUPPRESS)
    for flags in _NO_EFFECT_SWITCHES:
        p.add_argument(*flags, action="store_true", help=argparse.SUPPRESS)
    for flags in _NO_EFFECT_VALUES:
        p.add_argument(*flags, help=argparse.SUPPRESS)
    for flags in _NO_EFFECT_OPTIONAL:
        p.add_argument(*flags, nargs="?", const="", help=argparse.SUPPRESS)
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="Telegram's proxy config file (default: downloaded)")
    ext = p.add_argument_group("mtproxy additions")
    ext.add_argument("--dc", action="append", metavar="ID=HOST:PORT",
                     help="override a DC address (repeatable)")
    ext.add_argument("--mask", metavar="HOST:PORT",
                     help="where clients that fail the handshake are relayed, or 'off' "
                     "(default $MASK, else the first -D domain on port 443)")
    ext.add_argument("--data-dir", metavar="DIR",
                     help="data directory (default $DATA_DIR or /data)")
    ext.add_argument("--dry-run", action="store_true",
                     help="do every check and print the configuration, then exit")
    return p


def _no_effect(ns: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for flags in (*_NO_EFFECT_SWITCHES, *_NO_EFFECT_VALUES, *_NO_EFFECT_OPTIONAL):
        dest = flags[-1].lstrip("-").replace("-", "_")
        value = getattr(ns, dest)
        if value not in (None, False):
            out.append(flags[-1] if value in (True, "") else f"{flags[-1]} {value}")
    return out


@dataclass
class Request:
    """One start-up request: run-option values from the command line, plus extras.

    ``options`` maps Option field names to raw values as ``mtproxy run``'s parser would
    produce them. In ``run`` mode ``given`` names the fields the user set with options
    or in the config file: the environment does not override those.
    """

    run_mode: bool
    options: dict[str, Any] = field(default_factory=dict)
    given: set[str] = field(default_factory=set)
    file_options: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    flag_secrets: list[str] = field(default_factory=list)
    flag_tag: str | None = None
    ports: list[int] = field(default_factory=list)
    address: str | None = None
    ipv6: bool = False
    stats_port: int | None = None
    proxy_config_file: str | None = None
    proxy_secret_file: str | None = None
    data_dir: str | None = None
    dry_run: bool = False
    no_effect: list[str] = field(default_factory=list)
    user: str | None = None


def parse_official(argv: Sequence[str]) -> Request:
    ns = official_parser().parse_args(list(argv))
    req = Request(run_mode=False, dry_run=ns.dry_run, data_dir=ns.data_dir)
    req.flag_secrets = [hex32(s, "-S") for s in ns.secrets or []]
    req.flag_tag = hex32(ns.tag, "-P") if ns.tag is not None else None
    if ns.http_ports is not None:
        req.ports = [port(item, "-H") for item in ns.http_ports.split(",")]
    req.address = ns.address
    req.ipv6 = ns.ipv6
    req.stats_port = port(ns.port, "-p") if ns.port is not None else None
    if ns.workers is not None:
        # -M 0 is the official single-process mode.
        req.options["workers"] = str(max(1, int(count(ns.workers, "-M"))))
    if ns.max_connections is not None:
        req.options["max_connections"] = count(ns.max_connections, "-C", 1)
    if ns.domains:
        # Official meaning: a domain turns fake TLS on and every other transport off.
        req.options["tls_domains"] = list(ns.domains)
        req.options["modes"] = Mode.TLS.value
    if ns.backlog is not None:
        req.options["backlog"] = count(ns.backlog, "-b", 1)
    if ns.verbosity:
        req.options["log_level"] = "DEBUG"
    if ns.nat_info:
        req.options["nat_info"] = list(ns.nat_info)
    if ns.dc:
        req.options["dc"] = list(ns.dc)
    if ns.mask is not None:
        req.options["mask"] = ns.mask
    req.proxy_secret_file = ns.aes_pwd
    req.proxy_config_file = ns.config
    req.no_effect = _no_effect(ns)
    req.user = ns.user
    return req


def parse_run_mode(argv: Sequence[str]) -> Request:
    parser = _OfficialParser(
        prog="mtproxy entrypoint run",
        description="mtproxy run with the container's environment variables filling in "
        "whatever these options and the --config file leave unset.",
    )
    add_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="do every check and print the configuration, then exit")
    ns = parser.parse_args(list(argv))
    req = Request(run_mode=True, dry_run=ns.dry_run, config_path=ns.config)
    for opt in OPTIONS:
        value = getattr(ns, opt.field, None)
        if value is not None:
            req.options[opt.field] = value
            req.given.add(opt.field)
    if ns.config is not None:
        by_key = {opt.key: opt.field for opt in OPTIONS}
        try:
            data = read_toml(Path(ns.config))
        except ConfigError as exc:
            raise Fatal(EXIT_CONFIG, str(exc)) from None
        req.file_options = {by_key[k]: v for k, v in data.items() if k in by_key}
        req.given |= set(req.file_options)
    return req
