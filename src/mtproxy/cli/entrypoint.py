"""``mtproxy entrypoint``: the official container's start-up, as a translation layer.

The image's ENTRYPOINT. It reads what ``telegrammessenger/proxy`` reads (``SECRET``,
``SECRET_COUNT``, ``TAG``, ``WORKERS``, ``DEBUG``, ``/data/secret``...) and accepts the
official server's flags (``-H``, ``-p``, ``-S``, ``-P``, ``-M``...), turns both into the
option dict of ``mtproxy run`` (the field names of its Option rows), prints the
official script's ``[+]``/``[*]`` lines, and then runs what ``mtproxy run`` runs.
Failures print one ``[F]`` line and exit with the official script's codes.

Options that this build does not have yet (``tag``, ``workers``, ``stats``...) are still
translated; they are passed on only when ``mtproxy run`` knows them, else one ``[!]``
line says what is not applied. So a build that gains an option needs no change here.

``mtproxy entrypoint run [OPTIONS]`` keeps ``mtproxy run``'s own option names (they win
over the variables); ``mtproxy entrypoint links|generate-secret ...`` runs that command
with the container's data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from mtproxy.config import convert as cv
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import (
    DEFAULT_IP_SERVICES,
    OPTIONS,
    Option,
    Settings,
    add_arguments,
    load_settings,
    read_toml,
)
from mtproxy.errors import FatalError
from mtproxy.protocol.dc import format_endpoint
from mtproxy.protocol.secret import ClientSecret, Mode, generate_secret, links_for
from mtproxy.proxy.server import ProxyServer
from mtproxy.publicip import detect_public_ip, local_outbound_ip
from mtproxy.state import SECRET_FILE, StateError, read_secrets, write_secrets
from mtproxy.telegram_config import (
    CONFIG_FILE,
    CONFIG_URL,
    SECRET_URL,
    FetchError,
    fetch_with_cache,
    validate_config,
    validate_secret,
)
from mtproxy.telegram_config import SECRET_FILE as PROXY_SECRET_FILE

# Exit codes of the official run script.
EXIT_BAD_SECRET = 1
EXIT_CONFIG = 2  # Telegram's config not available; also a bad flag or setting
EXIT_EXTERNAL_IP = 3
EXIT_INTERNAL_IP = 4
EXIT_SECRETS = 5  # SECRET_COUNT out of range; Telegram's proxy secret not available

DEFAULT_DATA_DIR = "/data"
DEFAULT_PORT = 443
DEFAULT_WORKERS = "2"
DEFAULT_STATS_HOST = "0.0.0.0"
DEFAULT_IP_TIMEOUT = 3.0
MAX_SECRETS = 16
#: Commands run as they are (with the container's data directory), not translated.
PASSTHROUGH = ("links", "generate-secret", "--version")

_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Fatal(Exception):
    """Stop before the server starts: printed as one ``[F]`` line, exit ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _say(line: str = "") -> None:
    print(line, flush=True)


# --- the official server's command line ------------------------------------------------


class _OfficialParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _say(f"[F] Bad command line: {message} (see mtproxy entrypoint --help).")
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


# --- small parsers ----------------------------------------------------------------------


def _port(text: str, what: str) -> int:
    try:
        port = int(text.strip())
    except ValueError:
        raise Fatal(EXIT_CONFIG, f"{what} {text!r} is not a port number.") from None
    if not 0 < port < 65536:
        raise Fatal(EXIT_CONFIG, f"{what} {port} is not a port from 1 to 65535.")
    return port


def _count(text: str, what: str, low: int = 0) -> str:
    try:
        number = int(text.strip())
    except ValueError:
        raise Fatal(EXIT_CONFIG, f"{what} {text!r} is not a number.") from None
    if number < low:
        raise Fatal(EXIT_CONFIG, f"{what} must be at least {low}, got {number}.")
    return str(number)


def _hex32(text: str, what: str) -> str:
    if not _HEX32.fullmatch(text.strip()):
        raise Fatal(EXIT_CONFIG, f"{what} {text!r} is not 32 hex characters.")
    return text.strip().lower()


def _ports(text: str) -> list[int]:
    return [_port(item, "-H") for item in text.split(",")]


def parse_secret_env(text: str) -> list[str]:
    """SECRET: 1 to 16 comma-separated 32-hex secrets, any case; lower-cased."""
    items = [item.strip() for item in text.strip().split(",")]
    if not 1 <= len(items) <= MAX_SECRETS or not all(_HEX32.fullmatch(i) for i in items):
        raise Fatal(
            EXIT_BAD_SECRET,
            "Bad SECRET: each secret must be 32 hex characters (16 bytes); give 1 to "
            f"{MAX_SECRETS} of them, comma-separated.",
        )
    return [item.lower() for item in items]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- what the user asked for -------------------------------------------------------------


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
    req.flag_secrets = [_hex32(s, "-S") for s in ns.secrets or []]
    req.flag_tag = _hex32(ns.tag, "-P") if ns.tag is not None else None
    req.ports = _ports(ns.http_ports) if ns.http_ports is not None else []
    req.address = ns.address
    req.ipv6 = ns.ipv6
    req.stats_port = _port(ns.port, "-p") if ns.port is not None else None
    if ns.workers is not None:
        # -M 0 is the official single-process mode.
        req.options["workers"] = str(max(1, int(_count(ns.workers, "-M"))))
    if ns.max_connections is not None:
        req.options["max_connections"] = _count(ns.max_connections, "-C", 1)
    if ns.domains:
        # Official meaning: a domain turns fake TLS on and every other transport off.
        req.options["tls_domains"] = list(ns.domains)
        req.options["modes"] = Mode.TLS.value
    if ns.backlog is not None:
        req.options["backlog"] = _count(ns.backlog, "-b", 1)
    if ns.verbosity:
        req.options["log_level"] = "DEBUG"
    if ns.nat_info:
        req.options["nat_info"] = list(ns.nat_info)
    if ns.dc:
        req.options["dc"] = list(ns.dc)
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


# --- start-up ------------------------------------------------------------------------------


@dataclass
class Prepared:
    settings: Settings
    options: dict[str, Any]
    link_host: str
    link_port: int


class Startup:
    """The official script's steps, in its order, printing its lines."""

    def __init__(self, req: Request, env: Mapping[str, str]) -> None:
        self.req = req
        self.env = env
        self.options: dict[str, Any] = dict(req.options)
        self.sources: dict[str, str] = {f: _flag(f) for f in req.options}
        self.debug = bool(self.var("DEBUG"))
        #: Files to delete when the proxy stops.
        self.temporary: list[Path] = []

    def var(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def given(self, name: str) -> Any:
        """In ``run`` mode: the value the user set by option or config file, else None."""
        if name not in self.req.given:
            return None
        return self.options.get(name, self.req.file_options.get(name))

    def put(self, name: str, value: Any, source: str) -> None:
        """Set an option from the environment unless the user set it in ``run`` mode."""
        if name in self.req.given:
            if not source.startswith("default"):
                _say(f"[*] {source} is not used: {_flag(name)} is set.")
            return
        self.options[name] = value
        self.sources[name] = source

    # steps

    def data_dir(self) -> Path:
        value = self.given("data_dir")
        if value is None:
            value = self.req.data_dir or self.var("DATA_DIR") or DEFAULT_DATA_DIR
        path = Path(str(value)).expanduser()
        if "data_dir" not in self.req.given:
            self.options["data_dir"] = str(path)
        return path

    def secrets(self, data_dir: Path) -> list[str]:
        path = data_dir / SECRET_FILE
        env_secret = self.var("SECRET")
        if "secrets" in self.req.given:
            if env_secret:
                _say("[*] SECRET is not used: --secret is set.")
            keys = self._run_mode_keys()
            _say(f"[+] Using the secrets set with --secret or --config: '{','.join(keys)}'.")
        elif env_secret is not None or self.req.flag_secrets:
            keys = parse_secret_env(env_secret) if env_secret is not None else []
            keys += [k for k in self.req.flag_secrets if k not in keys]
            if len(keys) > MAX_SECRETS:
                raise Fatal(EXIT_BAD_SECRET, f"{len(keys)} secrets given; at most {MAX_SECRETS}.")
            where = "SECRET" if env_secret is not None else "-S"
            if env_secret is not None and self.req.flag_secrets:
                where = "SECRET and -S"
            _say(f"[+] Using the secrets passed in {where}: '{','.join(keys)}'.")
            self.options["secrets"] = keys
        else:
            try:
                stored = read_secrets(data_dir)
            except StateError as exc:
                raise Fatal(EXIT_BAD_SECRET, str(exc)) from None
            if stored is not None:
                keys = [k.hex() for k in stored]
                _say(f"[+] Using the secrets stored in {path}: '{','.join(keys)}'.")
                self.options["secrets"] = keys
                return keys  # already saved; the volume may even be read-only
            count = self._secret_count()
            _say(f"[+] No secret given: generating {count} random one{'s' * (count > 1)}.")
            keys = [generate_secret().hex() for _ in range(count)]
            self.options["secrets"] = keys
        self._save_secrets(data_dir, keys)
        return keys

    def _save_secrets(self, data_dir: Path, keys: list[str]) -> None:
        """Store the secrets for the next start and for ``mtproxy links``."""
        wanted = [bytes.fromhex(k) for k in keys]
        try:
            if read_secrets(data_dir) == wanted:
                return  # nothing to do, and the volume may be read-only
        except StateError:
            pass  # unreadable or corrupt: replace it
        try:
            write_secrets(data_dir, wanted)
        except StateError as exc:
            _say(f"[!] {exc}; the secrets will not survive a restart.")

    def _run_mode_keys(self) -> list[str]:
        """The keys of the secrets set with --secret or in the config file."""
        cli = {"secrets": self.options["secrets"]} if "secrets" in self.options else {}
        try:
            settings = load_settings(cli, self.req.config_path)
        except ConfigError as exc:
            code = EXIT_BAD_SECRET if "secret" in exc.where else EXIT_CONFIG
            raise Fatal(code, f"Bad setting: {exc}") from None
        keys: list[str] = []
        for secret in settings.secrets:
            if secret.key.hex() not in keys:
                keys.append(secret.key.hex())
        return keys

    def _secret_count(self) -> int:
        text = self.var("SECRET_COUNT")
        if text is None:
            return 1
        try:
            count = int(text)
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_SECRETS:
            raise Fatal(
                EXIT_SECRETS,
                f"SECRET_COUNT must be a number from 1 to {MAX_SECRETS}, got {text!r}: that "
                "many secrets can be generated.",
            )
        return count

    def tag(self) -> str | None:
        given = self.given("tag")
        if given is not None:
            _say(f"[+] Using the ad tag set with --tag or --config: '{given}'.")
            if self.var("TAG") is not None:
                _say("[*] TAG is not used: --tag is set.")
            return str(given)
        text = self.var("TAG")
        if text is not None:
            _say(f"[+] Using the ad tag passed in TAG: '{text}'.")
            if _HEX32.fullmatch(text):
                self.put("tag", text.lower(), "TAG")
                return text.lower()
            _say("[!] Bad TAG: it must be 32 hex characters (16 bytes).")
            _say("[!] Continuing without a tag.")
        if self.req.flag_tag is not None:
            self.put("tag", self.req.flag_tag, "-P")
            return self.req.flag_tag
        return None

    def middle_mode(self, tag: str | None) -> bool:
        given = self.given("middle_proxy")
        if given is not None:
            return str(given).strip().lower() not in (*_FALSE, "", "auto")
        text = (self.var("MIDDLE_PROXY") or "auto").lower()
        if text in _TRUE:
            wanted = True
        elif text in _FALSE:
            wanted = False
        elif text == "auto":
            # The ad tag only works through Telegram's middle proxies.
            wanted = tag is not None
        else:
            raise Fatal(EXIT_CONFIG, f"MIDDLE_PROXY must be auto, on or off, got {text!r}.")
        if wanted:
            self.put("middle_proxy", True, "MIDDLE_PROXY" if text != "auto" else "TAG")
        return wanted

    def telegram_files(self, data_dir: Path) -> None:
        """Download (or reuse the saved copy of) Telegram's config and proxy secret."""
        self._telegram_file(
            data_dir, name="proxy_config", given_file=self.req.proxy_config_file,
            url=self.var("PROXY_CONFIG_URL") or CONFIG_URL, cache=data_dir / CONFIG_FILE,
            validate=validate_config, what="proxy configuration", code=EXIT_CONFIG,
        )
        self._telegram_file(
            data_dir, name="proxy_secret", given_file=self.req.proxy_secret_file,
            url=self.var("PROXY_SECRET_URL") or SECRET_URL, cache=data_dir / PROXY_SECRET_FILE,
            validate=validate_secret, what="proxy secret", code=EXIT_SECRETS,
        )

    def _telegram_file(
        self, data_dir: Path, *, name: str, given_file: str | None, url: str, cache: Path,
        validate: Any, what: str, code: int,
    ) -> None:
        if name in self.req.given:
            return
        if given_file is not None:
            try:
                validate(Path(given_file).read_bytes())
            except OSError as exc:
                msg = f"Cannot read the {what} file {given_file}: {exc.strerror}."
                raise Fatal(code, msg) from None
            except ValueError as exc:
                raise Fatal(code, f"The {what} file {given_file} is unusable: {exc}.") from None
            _say(f"[+] Using the {what} in {given_file}.")
            self.put(name, given_file, "the command line")
            return

        def stale(problem: str) -> None:
            _say(f"[!] Cannot download the {what} from Telegram ({problem}).")
            _say(f"[!] Using the copy saved in {cache}.")

        unsaved: list[str] = []
        try:
            data = fetch_with_cache(url, cache, validate, on_stale=stale,
                                    on_unsaved=unsaved.append)
        except FetchError as exc:
            raise Fatal(code, f"Cannot get the {what} from Telegram servers: {exc}.") from None
        if unsaved:
            path = _temporary_copy(cache.name, data, code, what)
            self.temporary.append(path)
            _say(f"[!] {unsaved[0]}; using the temporary copy {path} instead.")
            self.put(name, str(path), "download")
            return
        # The proxy downloads it again every hour from the URL and falls back to the
        # copy just saved in the data directory, so a static path is not passed on.
        self.put(name, url, "download")

    def external_ip(self) -> str:
        given_host = self.given("public_host")
        if given_host is not None:
            try:
                host = cv.host(given_host)
            except ValueError as exc:
                raise Fatal(EXIT_EXTERNAL_IP, f"--public-host: {exc}.") from None
            _say(f"[+] Using the external address set with --public-host: {host}.")
            return host
        given = self.var("EXTERNAL_IP")
        if given is not None:
            try:
                host = cv.host(given)
            except ValueError as exc:
                raise Fatal(EXIT_EXTERNAL_IP, f"EXTERNAL_IP: {exc}.") from None
            _say(f"[+] Using the external IP passed in EXTERNAL_IP: {host}.")
        else:
            services = self._ip_services()
            detected = asyncio.run(detect_public_ip(services, timeout=self._ip_timeout()))
            if detected is None:
                raise Fatal(
                    EXIT_EXTERNAL_IP,
                    f"Cannot determine the external IP address (asked {len(services)} "
                    "services); set EXTERNAL_IP.",
                )
            host = detected
            _say(f"[+] Detected the external IP: {host}.")
        self.put("public_host", host, "EXTERNAL_IP")
        return host

    def _ip_services(self) -> list[str]:
        text = self.var("IP_SERVICES")
        if text is None:
            given = self.given("ip_services")
            return [str(s) for s in given] if given else list(DEFAULT_IP_SERVICES)
        services = [s.strip() for s in text.split(",") if s.strip()]
        try:
            return [cv.url(s) for s in services]
        except ValueError as exc:
            raise Fatal(EXIT_CONFIG, f"IP_SERVICES: {exc}.") from None

    def _ip_timeout(self) -> float:
        text = self.var("IP_TIMEOUT")
        if text is None:
            return DEFAULT_IP_TIMEOUT
        try:
            return float(cv.float_range(0.1, 60)(text))
        except ValueError as exc:
            raise Fatal(EXIT_CONFIG, f"IP_TIMEOUT: {exc}.") from None

    def internal_ip(self) -> str:
        given = self.var("INTERNAL_IP")
        if given is not None:
            try:
                address = str(ipaddress.ip_address(given))
            except ValueError:
                msg = f"INTERNAL_IP {given!r} is not an IP address."
                raise Fatal(EXIT_INTERNAL_IP, msg) from None
            _say(f"[+] Using the internal IP passed in INTERNAL_IP: {address}.")
            return address
        detected = local_outbound_ip()
        if detected is None:
            raise Fatal(
                EXIT_INTERNAL_IP,
                "Cannot determine the internal IP address (no route out of this host); "
                "set INTERNAL_IP.",
            )
        _say(f"[+] Detected the internal IP: {detected}.")
        return detected

    def nat_info(self, internal: str, external: str) -> None:
        if "nat_info" in self.options:
            return
        try:
            both_v4 = all(ipaddress.ip_address(a).version == 4 for a in (internal, external))
        except ValueError:
            both_v4 = False
        if not both_v4:
            _say("[!] No NAT info for the middle proxies: it needs IPv4 addresses on both sides.")
            return
        self.put("nat_info", [f"{internal}:{external}"], "INTERNAL_IP/EXTERNAL_IP")

    def ports(self) -> int:
        """Client listen addresses from PORT or -H; returns the port the links use."""
        port_env = self.var("PORT")
        given = self.given("listen")
        if given is not None:
            if port_env is not None:
                _say("[*] PORT is not used: --listen is set.")
            try:
                first = cv.endpoint(given[0] if isinstance(given, list) else given)
            except (ValueError, IndexError):
                return DEFAULT_PORT  # load_settings reports the bad value
            return int(first[1])
        if port_env is not None:
            ports, source = [_port(port_env, "PORT")], "PORT"
        elif self.req.ports:
            ports, source = self.req.ports, "-H"
        elif self.req.run_mode:
            return DEFAULT_PORT
        else:
            ports, source = [DEFAULT_PORT], "default"
        hosts = [self.req.address] if self.req.address else ["0.0.0.0"]
        if self.req.ipv6 and not self.req.address:
            hosts.append("::")
        listen = [format_endpoint((h, p)) for p in ports for h in hosts]
        self.put("listen", listen, source)
        return ports[0]

    def link_port(self, listen_port: int) -> int:
        text = self.var("EXTERNAL_PORT")
        return _port(text, "EXTERNAL_PORT") if text is not None else listen_port

    def general(self) -> None:
        """WORKERS, STATS_PORT, DEBUG, IP_SERVICES: plain option mappings."""
        workers = self.var("WORKERS")
        if workers is not None:
            self.put("workers", _count(workers, "WORKERS", 1), "WORKERS")
        elif "workers" not in self.options:
            self.put("workers", DEFAULT_WORKERS, "default WORKERS")
        stats_port = self.var("STATS_PORT")
        port = _port(stats_port, "STATS_PORT") if stats_port else self.req.stats_port
        if port is not None:
            host = self.var("STATS_HOST") or DEFAULT_STATS_HOST
            self.put("stats", format_endpoint((host, port)),
                     "STATS_PORT" if stats_port else "-p")
        if self.debug:
            self.put("log_level", "DEBUG", "DEBUG")
        if self.var("IP_SERVICES") is not None:
            self.put("ip_services", self._ip_services(), "IP_SERVICES")

    # assembly

    def available(self) -> dict[str, Any]:
        """The options this build's ``mtproxy run`` knows, shaped as its parser would."""
        by_field = {opt.field: opt for opt in OPTIONS}
        out: dict[str, Any] = {}
        for name, value in self.options.items():
            opt = by_field.get(name)
            if opt is None:
                source = self.sources.get(name, name)
                line = (f"[!] {source}: this mtproxy has no {_flag(name)} option; "
                        f"{_flag(name)} {_show(value)} is not applied.")
                if source.startswith("default"):
                    if self.debug:
                        _say(line.replace("[!]", "[D]"))
                else:
                    _say(line)
                continue
            out[name] = _shape(opt, value)
        return out

    def prepare(self) -> Prepared:
        if self.req.no_effect:
            ignored = ", ".join(self.req.no_effect)
            _say(f"[*] Accepted for compatibility, no effect here: {ignored}.")
        if self.req.user is not None:
            # The official server switches to this user after binding; we do not.
            severity = "[!]" if os.geteuid() == 0 and self.req.user != "root" else "[*]"
            _say(f"{severity} -u {self.req.user}: mtproxy does not switch users; start it as "
                 "the user it should run as (the image runs as uid 10001).")
        data_dir = self.data_dir()
        keys = self.secrets(data_dir)
        tag = self.tag()
        middle = self.middle_mode(tag)
        if middle:
            self.telegram_files(data_dir)
        elif self.req.proxy_config_file or self.req.proxy_secret_file:
            _say("[*] No ad tag, so the proxy connects straight to Telegram's data centers: "
                 "the proxy config and --aes-pwd files are not needed.")
        listen_port = self.ports()
        self.general()
        external = self.external_ip()
        internal = self.internal_ip()
        if middle:
            self.nat_info(internal, external)
        options = self.available()
        settings = load_settings(options, self.req.config_path)
        if not settings.secrets:
            settings = replace(
                settings, secrets=tuple(ClientSecret(bytes.fromhex(k), Mode.CLASSIC) for k in keys)
            )
        port = self.link_port(listen_port)
        self.report(settings, keys, tag, external, internal, port, options)
        return Prepared(settings, options, external, port)

    def report(
        self, settings: Settings, keys: list[str], tag: str | None, external: str,
        internal: str, port: int, options: Mapping[str, Any],
    ) -> None:
        _say("[*] Final configuration:")
        for index, key in enumerate(keys, 1):
            _say(f"[*]   Secret {index}: {key}")
            for link in _ordered_links(settings, external, port, bytes.fromhex(key)):
                mode = link.secret.mode
                label = "" if mode is Mode.CLASSIC else f" ({_mode_label(link.secret)})"
                _say(f"[*]   tg:// link for secret {index} auto configuration{label}: {link.tg}")
                _say(f"[*]   t.me link for secret {index}{label}: {link.https}")
        _say(f"[*]   Tag: {tag}" if tag else "[*]   Tag: no tag")
        _say(f"[*]   External IP: {external}")
        _say(f"[*]   Internal IP: {internal}")
        _say(f"[*]   The links use port {port}; if clients reach the proxy on another port "
             "(a Docker port mapping), set EXTERNAL_PORT or fix the links.")
        _say(f"[*]   Runs as: mtproxy run {_command_line(options, self.req.config_path)}")


def _temporary_copy(name: str, data: bytes, code: int, what: str) -> Path:
    """Somewhere to put a download when the data directory is read-only."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"mtproxy-{name}-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        msg = f"Cannot store the {what} anywhere: {exc.strerror or exc}; make /data writable."
        raise Fatal(code, msg) from None
    return Path(tmp)


def _mode_label(secret: ClientSecret) -> str:
    if secret.mode is Mode.TLS:
        return f"fake TLS, {secret.domain}"
    return "dd, padded"


def _ordered_links(settings: Settings, host: str, port: int, key: bytes) -> list[Any]:
    """Classic first (the official line), then dd, then fake TLS."""
    links = links_for(host, port, key, settings.modes, list(settings.tls_domains))
    rank = {Mode.CLASSIC: 0, Mode.SECURE: 1, Mode.TLS: 2}
    return sorted(links, key=lambda link: rank[link.secret.mode])


def _shape(opt: Option, value: Any) -> Any:
    if opt.switch:
        return bool(cv.as_bool(value))
    if isinstance(value, bool):
        value = "true" if value else "false"
    if opt.repeat:
        return list(value) if isinstance(value, list | tuple) else [value]
    if isinstance(value, list | tuple):
        return value[0]
    return value


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def _command_line(options: Mapping[str, Any], config_path: str | None) -> str:
    by_field = {opt.field: opt for opt in OPTIONS}
    words: list[str] = ["--config", config_path] if config_path else []
    for name, value in options.items():
        opt = by_field[name]
        if opt.switch:
            words.append(opt.flags[0] if value else "--no-" + opt.flags[0][2:])
            continue
        for item in value if opt.repeat else [value]:
            words += [opt.flags[0], str(item)]
    return " ".join(words)


# --- running ----------------------------------------------------------------------------


def _started(port: int, explicit_port: bool) -> Any:
    def ready(server: ProxyServer) -> None:
        addresses = server.addresses
        _say(f"[+] Proxy started, listening on {', '.join(format_endpoint(a) for a in addresses)}.")
        bound = {a[1] for a in addresses}
        if port not in bound and not explicit_port:
            _say(f"[!] The links above say port {port}, but the proxy listens on port "
                 f"{addresses[0][1]}: use that port in the links.")

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
            _say("[+] Dry run: not starting the proxy.")
            for path in startup.temporary:
                path.unlink(missing_ok=True)
            return 0
        _say()
        _say("[+] Starting proxy...")
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
        _say(f"[F] {exc}")
        return exc.code
    except ConfigError as exc:
        _say(f"[F] Bad setting: {exc}")
        return EXIT_CONFIG
    except FatalError as exc:
        _say(f"[F] {exc}")
        return exc.code
    except KeyboardInterrupt:
        return 130
