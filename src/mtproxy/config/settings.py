"""Every setting of ``mtproxy run``: defaults, TOML file, command line, in that order.

One :class:`Option` row per setting drives the TOML reader, the argparse flags and
validation, so a new option is one row here plus a field on :class:`Settings`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

from mtproxy.config import convert as cv
from mtproxy.config.errors import ConfigError
from mtproxy.config.users import (
    UserConfig,
    check_unique,
    load_overlay,
    merge_users,
    user_entry,
)
from mtproxy.protocol.dc import Endpoint
from mtproxy.protocol.errors import SecretError
from mtproxy.protocol.secret import ClientSecret, Mode, parse_hex32
from mtproxy.telegram_config import CONFIG_URL, CONFIG_V6_URL, SECRET_URL

IPNetwork = IPv4Network | IPv6Network
ALL_MODES = frozenset(Mode)
#: Fake TLS alone: the only mode whose every opening can be told from a prober's bytes
#: at once (README, "Hard to probe"); classic and dd are opt-in through --modes.
DEFAULT_MODES = frozenset({Mode.TLS})
DEFAULT_TLS_DOMAIN = "www.google.com"
DEFAULT_IP_SERVICES = (
    "https://api.ipify.org",
    "https://ifconfig.me/ip",
    "https://icanhazip.com",
    "https://ipinfo.io/ip",
)
DEFAULT_PROXY_CONFIG_URL = CONFIG_URL
DEFAULT_PROXY_CONFIG_V6_URL = CONFIG_V6_URL
DEFAULT_PROXY_SECRET_URL = SECRET_URL


def default_data_dir() -> Path:
    env = os.environ.get("MTPROXY_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "mtproxy"


@dataclass(frozen=True)
class Settings:
    """The resolved configuration the server runs with."""

    listen: tuple[Endpoint, ...] = (("0.0.0.0", 443), ("::", 443))
    listen_given: bool = False
    secrets: tuple[ClientSecret, ...] = ()
    modes: frozenset[Mode] = DEFAULT_MODES
    tls_domains: tuple[str, ...] = ()
    mask: Endpoint | None = None
    mask_given: bool = False
    dc: Mapping[int, tuple[Endpoint, ...]] = field(default_factory=dict)
    prefer_ipv6: bool = False
    data_dir: Path = field(default_factory=default_data_dir)
    public_host: str | None = None
    ip_services: tuple[str, ...] = DEFAULT_IP_SERVICES
    download_passthrough: bool = False
    handshake_timeout: float = 10.0
    mask_mirror_after: float = 0.5
    #: Bytes per TCP segment of the fake-TLS ServerHello flight (0: as the kernel sends it).
    server_hello_segment: int = 0
    idle_timeout: float = 300.0
    half_close_timeout: float = 10.0
    connect_timeout: float = 10.0
    mask_check_interval: float = 300.0
    replay_cache_size: int = 100_000
    replay_window: float = 600.0
    tls_max_future: float = 120.0
    buffer_size: int = 128 * 1024
    keepalive: int = 60
    backlog: int = 1024
    log_level: str = "INFO"
    #: One line per session end: True at INFO, None at DEBUG (seen with --log-level
    #: debug), False never.
    log_sessions: bool | None = None
    event_loop: str = "auto"
    workers: int = 1
    stats: Endpoint | None = ("127.0.0.1", 2398)
    #: Who may read the stats port; empty means loopback and private networks.
    stats_allow: tuple[IPNetwork, ...] = ()
    #: Client connections per worker (0: what the descriptor limit has room for).
    max_connections: int = 0
    proxy_protocol: bool = False
    socks5: str | None = None
    shutdown_grace: float = 20.0
    #: Named users: the configuration's, with the management API's overlay applied.
    users: tuple[UserConfig, ...] = ()
    #: The configuration's users before the overlay (None: same as ``users``).
    config_users: tuple[UserConfig, ...] | None = None
    #: The management API's address (None: no API).
    api: Endpoint | None = None
    #: Its bearer token; None means the data directory's ``api-token`` file.
    api_token: str | None = None
    # -- middle-proxy mode ---------------------------------------------------------------
    tag: str | None = None
    middle_proxy: bool = False
    proxy_config: str = DEFAULT_PROXY_CONFIG_URL
    proxy_config_v6: str = DEFAULT_PROXY_CONFIG_V6_URL
    proxy_config_v6_given: bool = False
    proxy_secret: str = DEFAULT_PROXY_SECRET_URL
    nat_info: tuple[tuple[str, str], ...] = ()
    proxy_config_refresh: float = 3600.0
    middle_min_connections: int | None = None
    middle_max_connections: int | None = None
    middle_client_queue: int = 4 * 1024 * 1024
    middle_fallback: bool = True
    middle_fallback_after: float = 60.0

    @property
    def file_users(self) -> tuple[UserConfig, ...]:
        """The configuration's own users (without the management API's)."""
        return self.config_users if self.config_users is not None else self.users

    @property
    def secret_keys(self) -> list[bytes]:
        """Every secret a client may use: the anonymous ones, then each user's."""
        return [s.key for s in self.secrets] + [u.secret.key for u in self.users]

    @property
    def ad_tag(self) -> bytes | None:
        """The 16-byte ad tag, or None when none (or an unusable one) is configured."""
        if self.tag is None or self.tag_problem is not None:
            return None
        return bytes.fromhex(self.tag)

    @property
    def tag_problem(self) -> str | None:
        """Why the configured tag is ignored (a warning, not an error), or None."""
        if self.tag is None:
            return None
        try:
            parse_hex32(self.tag)
        except SecretError:
            return (
                f"ad tag {self.tag!r} is not 32 hex characters; running without it "
                "(get the tag from @MTProxybot)"
            )
        return None

    @property
    def middle_mode(self) -> bool:
        """Relay through Telegram's middle-proxies: an ad tag needs them, or it is forced."""
        return self.middle_proxy or self.ad_tag is not None


@dataclass(frozen=True)
class Option:
    """One setting: its TOML key, its flags, how to read a value, and its help."""

    field: str
    flags: tuple[str, ...]
    convert: cv.Converter
    help: str
    toml: str = ""
    repeat: bool = False
    switch: bool = False
    metavar: str | None = None

    @property
    def key(self) -> str:
        return self.toml or self.field


OPTIONS: list[Option] = [
    Option("listen", ("--listen", "-l"), cv.endpoint, "address to accept clients on "
           "(repeatable; [::]:443 for IPv6)", repeat=True, metavar="HOST:PORT"),
    Option("secrets", ("--secret", "-s"), cv.secret_key, "proxy secret, 32 hex characters "
           "(repeatable, up to 16; default: from the data directory, else generated)",
           toml="secrets", repeat=True, metavar="HEX32"),
    Option("modes", ("--modes",), cv.modes, "client modes to accept: comma list of classic, "
           "secure (dd), tls (ee); default tls (see README, Hard to probe)", metavar="LIST"),
    Option("tls_domains", ("--tls-domain",), cv.domain, "domain fake-TLS clients must name "
           f"in SNI (repeatable; default {DEFAULT_TLS_DOMAIN})", toml="tls_domains",
           repeat=True, metavar="DOMAIN"),
    Option("mask", ("--mask",), cv.optional_endpoint(443), "where clients that fail the "
           "handshake are relayed (default: the first TLS domain on port 443; 'off' to drop "
           "them silently)", metavar="HOST:PORT"),
    Option("dc", ("--dc",), cv.dc_override, "override a DC address (repeatable), e.g. "
           "2=149.154.167.51:443", repeat=True, metavar="ID=HOST:PORT"),
    Option("prefer_ipv6", ("--prefer-ipv6",), cv.as_bool, "connect to DCs over IPv6 first, "
           "falling back to IPv4", switch=True),
    Option("data_dir", ("--data-dir",), cv.path, "where secrets and state are kept",
           metavar="DIR"),
    Option("public_host", ("--public-host",), cv.host, "address put into the printed links "
           "(default: detected)", metavar="HOST"),
    Option("ip_services", ("--ip-service",), cv.url, "URL that answers with our public IP, "
           "for the links (repeatable)", toml="ip_services", repeat=True, metavar="URL"),
    Option("download_passthrough", ("--download-passthrough",), cv.as_bool, "forward DC->client "
           "bytes without re-encrypting them (faster; see README for the trade-off)",
           switch=True),
    Option("handshake_timeout", ("--handshake-timeout",), cv.float_range(0.5, 300),
           "seconds a client has to complete its handshake", metavar="SECONDS"),
    Option("mask_mirror_after", ("--mask-mirror-after",), cv.float_range(0, 300),
           "seconds after which a client still undecided is mirrored to the mask host, so "
           "probers see the site's own timers (default 0.5)", metavar="SECONDS"),
    Option("server_hello_segment", ("--server-hello-segment",), cv.int_range(0, 1400),
           "send the fake-TLS ServerHello in TCP segments of at most this many bytes, later "
           "data in full ones (some DPI systems match the first full segment; 0: off)",
           metavar="BYTES"),
    Option("idle_timeout", ("--idle-timeout",), cv.float_range(5, 86400),
           "close sessions with no traffic for this long", metavar="SECONDS"),
    Option("half_close_timeout", ("--half-close-timeout",), cv.float_range(1, 3600),
           "close a session this long after one side finished sending if the other side "
           "never does", metavar="SECONDS"),
    Option("connect_timeout", ("--connect-timeout",), cv.float_range(0.5, 120),
           "timeout for connecting to a DC or the mask host", metavar="SECONDS"),
    Option("mask_check_interval", ("--mask-check-interval",), cv.float_range(1, 86400),
           "seconds between checks of the mask host: reachable, and its TLS 1.3 answer, "
           "which the fake-TLS reply copies (default 300)", metavar="SECONDS"),
    Option("replay_cache_size", ("--replay-cache-size",), cv.int_range(1, 50_000_000),
           "handshakes remembered for replay protection", metavar="N"),
    Option("replay_window", ("--replay-window",), cv.float_range(10, 86400),
           "age of the oldest fake-TLS timestamp accepted; handshakes are remembered this long "
           "plus --tls-max-future",
           metavar="SECONDS"),
    Option("tls_max_future", ("--tls-max-future",), cv.float_range(0, 86400),
           "how far ahead of our clock a fake-TLS timestamp may be", metavar="SECONDS"),
    Option("buffer_size", ("--buffer-size",), cv.int_range(4096, 16 * 1024 * 1024),
           "bytes read from a socket at once", metavar="BYTES"),
    Option("keepalive", ("--keepalive",), cv.int_range(0, 7200), "TCP keepalive idle time "
           "in seconds (0 disables)", metavar="SECONDS"),
    Option("backlog", ("--backlog",), cv.int_range(1, 65535), "listen backlog", metavar="N"),
    Option("log_sessions", ("--log-sessions",), cv.as_bool, "log one INFO line per session "
           "end: user, DC, mode, bytes each way, duration, why it ended (default: at debug "
           "level only)", switch=True),
    Option("log_level", ("--log-level",), cv.log_level, "debug, info, warning or error",
           metavar="LEVEL"),
    Option("event_loop", ("--event-loop",), cv.choice("auto", "uvloop", "asyncio"),
           "auto (uvloop when installed), uvloop or asyncio", metavar="LOOP"),
    Option("workers", ("--workers", "-M"), cv.int_range(1, 256), "worker processes sharing "
           "the listening port (one per core is a good start; default 1)", metavar="N"),
    Option("stats", ("--stats",), cv.optional_endpoint(2398), "where /stats and /metrics "
           "are served (default 127.0.0.1:2398; 'off' to disable)", metavar="HOST:PORT"),
    Option("stats_allow", ("--stats-allow",), cv.network, "address or CIDR block allowed to "
           "read the stats port (repeatable; default loopback and private networks)",
           toml="stats_allow", repeat=True, metavar="CIDR"),
    Option("max_connections", ("--max-connections", "-C", "--max-special-connections"),
           cv.int_range(0, 10_000_000), "client connections per worker; more are closed "
           "right after accept (default 0: as many as the descriptor limit has room for)",
           metavar="N"),
    Option("proxy_protocol", ("--proxy-protocol",), cv.as_bool, "require a PROXY protocol "
           "v1/v2 header (from a load balancer) on every client connection", switch=True),
    Option("socks5", ("--socks5",), cv.socks_url, "reach Telegram DCs through this SOCKS5 "
           "proxy (direct mode), socks5://[user:pass@]host:port", metavar="URL"),
    Option("shutdown_grace", ("--shutdown-grace",), cv.float_range(0, 3600), "on SIGTERM, "
           "seconds sessions may drain before they are closed (default 20)",
           metavar="SECONDS"),
    Option("api", ("--api",), cv.optional_endpoint(2399), "serve the management API "
           "(JSON over HTTP, token required) here, e.g. 127.0.0.1:2399 (default: off)",
           metavar="HOST:PORT"),
    Option("api_token", ("--api-token",), cv.api_token, "the API's bearer token (default: "
           "the data directory's api-token file, created when missing)", metavar="TOKEN"),
    Option("users", (), user_entry, "named users with limits ([[users]] tables; TOML only)",
           toml="users", repeat=True),
    Option("tag", ("--tag", "-P"), cv.optional_text, "ad tag from @MTProxybot (32 hex "
           "characters); turns on middle-proxy mode", metavar="HEX32"),
    Option("middle_proxy", ("--middle-proxy",), cv.as_bool, "relay through Telegram's "
           "middle-proxies even without an ad tag", switch=True),
    Option("proxy_config", ("--proxy-config",), cv.source, "Telegram's proxy list for "
           "middle-proxy mode: a file or URL (default: getProxyConfig from core.telegram.org)",
           metavar="PATH|URL"),
    Option("proxy_config_v6", ("--proxy-config-v6",), cv.source, "the IPv6 proxy list, "
           "used with --prefer-ipv6 (default: getProxyConfigV6)", metavar="PATH|URL"),
    Option("proxy_secret", ("--proxy-secret", "--aes-pwd"), cv.source, "Telegram's proxy "
           "secret for middle-proxy mode: a file or URL (default: getProxySecret)",
           metavar="PATH|URL"),
    Option("nat_info", ("--nat-info",), cv.nat_info, "behind NAT: the local address and the "
           "public address Telegram sees (repeatable)", repeat=True, metavar="LOCAL_IP:PUBLIC_IP"),
    Option("proxy_config_refresh", ("--proxy-config-refresh",), cv.float_range(60, 7 * 86400),
           "seconds between downloads of the proxy list and secret", metavar="SECONDS"),
    Option("middle_min_connections", ("--middle-min-connections",), cv.int_range(0, 1000),
           "connections kept open to each middle-proxy (default: from the proxy list, 4)",
           metavar="N"),
    Option("middle_max_connections", ("--middle-max-connections",), cv.int_range(1, 1000),
           "most connections to each middle-proxy (default: from the proxy list, 8)",
           metavar="N"),
    Option("middle_client_queue", ("--middle-client-queue",),
           cv.int_range(64 * 1024, 1 << 30), "answer bytes a client may leave unread before "
           "it alone is dropped (the connection it shares never waits for it)",
           metavar="BYTES"),
    Option("middle_fallback", ("--middle-fallback",), cv.as_bool, "serve clients directly "
           "(without the ad tag) while there is no proxy list or a DC's middle-proxies stay "
           "unreachable, and go back to them on its own (default on; --no-middle-fallback "
           "makes such clients fail instead)", switch=True),
    Option("middle_fallback_after", ("--middle-fallback-after",), cv.float_range(0, 86400),
           "seconds every middle-proxy of a DC must stay unreachable before its new clients "
           "are served directly (default 60)", metavar="SECONDS"),
]


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option] = ()) -> None:
    """Register the flags of every option (values stay raw strings; None = not given)."""
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    for opt in options or OPTIONS:
        if not opt.flags:
            continue
        if opt.switch:
            parser.add_argument(*opt.flags, dest=opt.field, default=None,
                                action=argparse.BooleanOptionalAction, help=opt.help)
        else:
            parser.add_argument(*opt.flags, dest=opt.field, default=None, metavar=opt.metavar,
                                action="append" if opt.repeat else "store", help=opt.help)


def _convert(opt: Option, raw: Any, where: str) -> Any:
    try:
        if opt.repeat:
            items = raw if isinstance(raw, list) else [raw]
            if opt.field == "dc" and isinstance(raw, dict):
                items = _dc_table(raw)
            return [opt.convert(item) for item in items]
        return opt.convert(raw)
    except ValueError as exc:
        raise ConfigError(where, str(exc)) from None


def _dc_table(raw: dict[str, Any]) -> list[str]:
    """``[dc]`` as a table: each value a "HOST:PORT" string or a list of them."""
    items: list[str] = []
    for key, value in raw.items():
        for one in value if isinstance(value, list) else [value]:
            if not isinstance(one, str):
                raise ValueError(
                    f"DC {key}: expected \"HOST:PORT\", got {type(one).__name__} {one!r}; "
                    f"write it in quotes, e.g. {key} = \"149.154.167.51:443\""
                )
            items.append(f"{key}={one}")
    return items


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found; check the --config path") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML ({exc}); fix the syntax") from None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    config_path: Path | str | None = None,
    *,
    options: Iterable[Option] = (),
    base: Settings | None = None,
) -> Settings:
    """Defaults, then the TOML file, then the flags that were given."""
    table = list(options) or OPTIONS
    values: dict[str, Any] = {}
    if config_path is not None:
        path = Path(config_path)
        data = read_toml(path)
        by_key = {opt.key: opt for opt in table}
        for key, raw in data.items():
            opt = by_key.get(key)
            if opt is None:
                close = difflib.get_close_matches(key, list(by_key), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "see mtproxy run --help"
                raise ConfigError(f"{path}: {key}", f"unknown setting; {hint}")
            values[opt.field] = _convert(opt, raw, f"{path}: {key}")
    for opt in table:
        raw = (cli or {}).get(opt.field)
        if raw is not None:
            values[opt.field] = _convert(opt, raw, opt.flags[0])
    return finish(values, base or Settings())


def finish(values: dict[str, Any], base: Settings) -> Settings:
    """Turn converted option values into Settings, filling derived defaults."""
    known = {f.name for f in fields(Settings)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name == "dc":
            table: dict[int, list[Endpoint]] = {}
            for dc_id, ep in value:
                table.setdefault(dc_id, []).append(ep)
            kwargs["dc"] = {k: tuple(v) for k, v in table.items()}
        elif name in known:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    if "listen" in kwargs:
        kwargs["listen_given"] = True
    if "mask" in kwargs:
        kwargs["mask_given"] = True
    if "proxy_config_v6" in kwargs:
        kwargs["proxy_config_v6_given"] = True
    settings = replace(base, **kwargs)
    overlay = load_overlay(settings.data_dir)
    if overlay.users or overlay.removed:
        settings = replace(
            settings, users=merge_users(settings.users, overlay), config_users=settings.users
        )
    return _derive(settings)


def with_users(settings: Settings, users: tuple[UserConfig, ...]) -> Settings:
    """The same settings with another user list (the management API's changes), checked
    like a loaded file: unique names and secrets, fake-TLS domains of ee secrets."""
    return _derive(replace(settings, users=users, config_users=settings.file_users))


def _derive(s: Settings) -> Settings:
    if len(s.secrets) > 16:
        raise ConfigError("secrets", f"{len(s.secrets)} secrets given; at most 16 are supported")
    try:
        check_unique(s.users, s.secrets)
    except ValueError as exc:
        raise ConfigError("users", str(exc)) from None
    domains = list(s.tls_domains)
    for secret in (*s.secrets, *(u.secret for u in s.users)):
        # The handshake compares the client's SNI lowercased.
        name = secret.domain.lower() if secret.domain else None
        if name and name not in domains:
            domains.append(name)
    if Mode.TLS in s.modes and not domains:
        domains.append(DEFAULT_TLS_DOMAIN)
    low, high = s.middle_min_connections, s.middle_max_connections
    if low is not None and high is not None and low > high:
        raise ConfigError(
            "middle_min_connections",
            f"{low} is more than middle_max_connections {high}; use a minimum no larger "
            "than the maximum",
        )
    mask = s.mask
    if not s.mask_given and domains and Mode.TLS in s.modes:
        mask = (domains[0], 443)
    return replace(s, tls_domains=tuple(domains), mask=mask)
