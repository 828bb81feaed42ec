"""Every option, through both doors (TOML and the command line), good values and bad.

A bad value must become a ConfigError that names the key or flag and says how to fix
it; the fix is the part after "; " in the problem text.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import (
    DEFAULT_TLS_DOMAIN,
    OPTIONS,
    Settings,
    add_arguments,
    load_settings,
)
from mtproxy.config.users import UserConfig
from mtproxy.protocol.secret import ClientSecret, Mode

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
HEX = KEY.hex()
EE = "ee" + HEX + b"cdn.example.org".hex()
FIX = re.compile(r"; (use|write|give|generate|fix|check|choose|quote|delete|see)\b")


@dataclass
class Case:
    cli_good: list[tuple[list[str], Any]] = field(default_factory=list)
    cli_bad: list[list[str]] = field(default_factory=list)
    toml_good: list[tuple[str, Any]] = field(default_factory=list)
    toml_bad: list[str] = field(default_factory=list)


def floats(flag: str, key: str, low: float, high: float) -> Case:
    return Case(
        cli_good=[([flag, str(low)], low), ([flag, f" {high} "], high)],
        cli_bad=[[flag, str(low - 0.25)], [flag, str(high + 1)], [flag, "abc"], [flag, "nan"],
                 [f"{flag}=-inf"], [flag, ""]],
        toml_good=[(f"{key} = {int(high)}", float(int(high))), (f'{key} = "{low}"', low)],
        toml_bad=[f"{key} = nan", f"{key} = inf", f"{key} = true", f"{key} = [1]",
                  f"{key} = 1{'0' * 400}"],
    )


def ints(flag: str, key: str, low: int, high: int) -> Case:
    return Case(
        cli_good=[([flag, str(low)], low), ([flag, str(high)], high)],
        cli_bad=[[flag, str(low - 1)], [flag, str(high + 1)], [flag, "1.5"], [flag, "ten"],
                 [flag, ""]],
        toml_good=[(f"{key} = {high}", high), (f'{key} = "{low}"', low)],
        toml_bad=[f"{key} = {high + 1}", f"{key} = 1.5", f"{key} = true", f'{key} = "x"'],
    )


def switch(flag: str, key: str) -> Case:
    return Case(
        cli_good=[([flag], True), ([flag.replace("--", "--no-")], False)],
        toml_good=[(f"{key} = true", True), (f"{key} = false", False), (f'{key} = "yes"', True),
                   (f'{key} = "off"', False)],
        toml_bad=[f"{key} = 1", f'{key} = "maybe"', f"{key} = []"],
    )


CASES: dict[str, Case] = {
    "listen": Case(
        cli_good=[(["--listen", "127.0.0.1:8443"], (("127.0.0.1", 8443),)),
                  (["-l", "[::1]:0", "-l", "0.0.0.0:443"], (("::1", 0), ("0.0.0.0", 443)))],
        cli_bad=[["--listen", "127.0.0.1"], ["--listen", "h:99999"], ["--listen", "[::1"],
                 ["--listen", "no host:443"], ["--listen", "300.1.1.1:443"]],
        toml_good=[('listen = ["127.0.0.1:1"]', (("127.0.0.1", 1),)),
                   ('listen = "[::]:443"', (("::", 443),))],
        toml_bad=["listen = 443", 'listen = ["x"]', "listen = [[1]]"],
    ),
    "secrets": Case(
        cli_good=[(["--secret", HEX], (ClientSecret(KEY, Mode.CLASSIC),)),
                  (["-s", "dd" + HEX, "-s", EE],
                   (ClientSecret(KEY, Mode.SECURE),
                    ClientSecret(KEY, Mode.TLS, "cdn.example.org")))],
        cli_bad=[["--secret", "xyz"], ["--secret", HEX + "0"]],
        toml_good=[(f'secrets = ["{HEX}"]', (ClientSecret(KEY, Mode.CLASSIC),)),
                   (f'secrets = "dd{HEX}"', (ClientSecret(KEY, Mode.SECURE),))],
        toml_bad=["secrets = [1]", 'secrets = ["abc"]'],
    ),
    "modes": Case(
        cli_good=[(["--modes", "tls,dd"], frozenset({Mode.TLS, Mode.SECURE})),
                  (["--modes", " Classic "], frozenset({Mode.CLASSIC}))],
        cli_bad=[["--modes", "ftp"], ["--modes", ""], ["--modes", "tls,,classic"]],
        toml_good=[('modes = ["classic", "tls"]', frozenset({Mode.CLASSIC, Mode.TLS})),
                   ('modes = "secure"', frozenset({Mode.SECURE}))],
        toml_bad=["modes = []", "modes = [1]", 'modes = ["ee"]'],
    ),
    "tls_domains": Case(
        cli_good=[(["--tls-domain", "Example.COM."], ("example.com",))],
        cli_bad=[["--tls-domain", "bad domain"], ["--tls-domain", ""],
                 ["--tls-domain", "192.0.2.1"]],
        toml_good=[('tls_domains = ["a.example", "b.example"]', ("a.example", "b.example"))],
        toml_bad=['tls_domains = ["-x"]', "tls_domains = [1]"],
    ),
    "mask": Case(
        cli_good=[(["--mask", "127.0.0.1:8443"], ("127.0.0.1", 8443)),
                  (["--mask", "example.com"], ("example.com", 443)),
                  (["--mask", "off"], None)],
        cli_bad=[["--mask", "h:0"], ["--mask", "[::1"], ["--mask", "bogus host"],
                 ["--mask", "bogus host:443"], ["--mask", "5"], ["--mask", "a..b:443"]],
        toml_good=[('mask = "off"', None), ('mask = "[::1]:80"', ("::1", 80))],
        toml_bad=["mask = 5", 'mask = "h:x"', 'mask = "under_score.example:443"'],
    ),
    "dc": Case(
        cli_good=[(["--dc", "2=127.0.0.1:443", "--dc", "2=127.0.0.2"],
                   {2: (("127.0.0.1", 443), ("127.0.0.2", 443))})],
        cli_bad=[["--dc", "2"], ["--dc", "0=1.2.3.4"], ["--dc", "x=1.2.3.4"],
                 ["--dc", "2=not a host!:443"], ["--dc", "2=5"], ["--dc", "2=1.2.3:443"]],
        toml_good=[('dc = ["-2=127.0.0.1:8443"]', {-2: (("127.0.0.1", 8443),)}),
                   ('dc = { "2" = "127.0.0.1:443", "4" = "[::1]:1" }',
                    {2: (("127.0.0.1", 443),), 4: (("::1", 1),)}),
                   ('[dc]\n2 = ["127.0.0.1:1", "dc2.example:443"]',
                    {2: (("127.0.0.1", 1), ("dc2.example", 443))})],
        toml_bad=['dc = ["x"]', 'dc = { "2" = "host:http" }', "dc = [2]", "[dc]\n2 = 5",
                  '[dc]\n2 = ["127.0.0.1:1", 7]', '[dc]\n2 = "bad host:443"'],
    ),
    "prefer_ipv6": switch("--prefer-ipv6", "prefer_ipv6"),
    "log_sessions": switch("--log-sessions", "log_sessions"),
    "data_dir": Case(
        cli_good=[(["--data-dir", "/var/lib/mtproxy"], Path("/var/lib/mtproxy")),
                  (["--data-dir", "~/mtp"], Path.home() / "mtp")],
        cli_bad=[["--data-dir", ""], ["--data-dir", "~no-such-user-zz/x"]],
        toml_good=[('data_dir = "/srv/m"', Path("/srv/m"))],
        toml_bad=["data_dir = 3", 'data_dir = " "'],
    ),
    "public_host": Case(
        cli_good=[(["--public-host", "203.0.113.5"], "203.0.113.5"),
                  (["--public-host", "[2001:DB8::1]"], "2001:db8::1"),
                  (["--public-host", "proxy.example.net"], "proxy.example.net")],
        cli_bad=[["--public-host", "not a host"], ["--public-host", ""],
                 ["--public-host", "1.2.3"]],
        toml_good=[('public_host = "::1"', "::1")],
        toml_bad=["public_host = 1", 'public_host = "a..b"'],
    ),
    "ip_services": Case(
        cli_good=[(["--ip-service", "https://ip.example/"], ("https://ip.example/",))],
        cli_bad=[["--ip-service", "ftp://ip.example"], ["--ip-service", "ip.example"],
                 ["--ip-service", "https://bad host/"], ["--ip-service", "https:///ip"]],
        toml_good=[('ip_services = ["http://a/", "https://b/"]', ("http://a/", "https://b/"))],
        toml_bad=['ip_services = ["x"]', "ip_services = [true]"],
    ),
    "download_passthrough": switch("--download-passthrough", "download_passthrough"),
    "handshake_timeout": floats("--handshake-timeout", "handshake_timeout", 0.5, 300),
    "mask_mirror_after": floats("--mask-mirror-after", "mask_mirror_after", 0, 300),
    "server_hello_segment": ints("--server-hello-segment", "server_hello_segment", 0, 1400),
    "idle_timeout": floats("--idle-timeout", "idle_timeout", 5, 86400),
    "half_close_timeout": floats("--half-close-timeout", "half_close_timeout", 1, 3600),
    "connect_timeout": floats("--connect-timeout", "connect_timeout", 0.5, 120),
    "mask_check_interval": floats("--mask-check-interval", "mask_check_interval", 1, 86400),
    "replay_cache_size": ints("--replay-cache-size", "replay_cache_size", 1, 50_000_000),
    "replay_window": floats("--replay-window", "replay_window", 10, 86400),
    "tls_max_future": floats("--tls-max-future", "tls_max_future", 0, 86400),
    "buffer_size": ints("--buffer-size", "buffer_size", 4096, 16 * 1024 * 1024),
    "keepalive": ints("--keepalive", "keepalive", 0, 7200),
    "backlog": ints("--backlog", "backlog", 1, 65535),
    "log_level": Case(
        cli_good=[(["--log-level", "debug"], "DEBUG"), (["--log-level", " Warning"], "WARNING")],
        cli_bad=[["--log-level", "verbose"], ["--log-level", ""]],
        toml_good=[('log_level = "error"', "ERROR")],
        toml_bad=["log_level = 1", 'log_level = "trace"'],
    ),
    "event_loop": Case(
        cli_good=[(["--event-loop", "asyncio"], "asyncio"), (["--event-loop", "UVLOOP"], "uvloop")],
        cli_bad=[["--event-loop", "trio"], ["--event-loop", ""]],
        toml_good=[('event_loop = "auto"', "auto")],
        toml_bad=["event_loop = 2", 'event_loop = "gevent"'],
    ),
    "tag": Case(
        # A bad tag is a warning, not an error (the official container's behaviour):
        # tests/middle/test_middle_settings.py checks that; only a non-string fails.
        cli_good=[(["--tag", "0123456789ABCDEF0123456789abcdef"],
                   "0123456789ABCDEF0123456789abcdef"), (["-P", " "], None)],
        toml_good=[('tag = "00112233445566778899aabbccddeeff"',
                    "00112233445566778899aabbccddeeff")],
        toml_bad=["tag = 5", "tag = [1]"],
    ),
    "middle_proxy": switch("--middle-proxy", "middle_proxy"),
    "proxy_config": Case(
        cli_good=[(["--proxy-config", "https://example.org/list"], "https://example.org/list"),
                  (["--proxy-config", "/etc/mtproxy/proxy-multi.conf"],
                   "/etc/mtproxy/proxy-multi.conf")],
        cli_bad=[["--proxy-config", ""], ["--proxy-config", "ftp://example.org/list"],
                 ["--proxy-config", "https://bad host/list"],
                 ["--proxy-config", "~no-such-user-zz/x"]],
        toml_good=[('proxy_config = "list.conf"', "list.conf")],
        toml_bad=["proxy_config = 1", 'proxy_config = "file://x"'],
    ),
    "proxy_config_v6": Case(
        cli_good=[(["--proxy-config-v6", "http://127.0.0.1/v6"], "http://127.0.0.1/v6")],
        cli_bad=[["--proxy-config-v6", " "]],
        toml_good=[('proxy_config_v6 = "/srv/v6.conf"', "/srv/v6.conf")],
        toml_bad=["proxy_config_v6 = true"],
    ),
    "proxy_secret": Case(
        cli_good=[(["--proxy-secret", "/srv/secret"], "/srv/secret"),
                  (["--aes-pwd", "https://example.org/s"], "https://example.org/s")],
        cli_bad=[["--aes-pwd", ""], ["--proxy-secret", "gopher://x"]],
        toml_good=[('proxy_secret = "secret.bin"', "secret.bin")],
        toml_bad=["proxy_secret = 0", 'proxy_secret = ""'],
    ),
    "nat_info": Case(
        cli_good=[(["--nat-info", "10.0.0.5:203.0.113.7"], (("10.0.0.5", "203.0.113.7"),)),
                  (["--nat-info", "10.0.0.5:203.0.113.7", "--nat-info", "10.0.1.5:1.2.3.4"],
                   (("10.0.0.5", "203.0.113.7"), ("10.0.1.5", "1.2.3.4")))],
        cli_bad=[["--nat-info", "10.0.0.5"], ["--nat-info", "10.0.0.5:example.com"],
                 ["--nat-info", "::1:2001:db8::1"]],
        toml_good=[('nat_info = ["10.0.0.5:203.0.113.7"]', (("10.0.0.5", "203.0.113.7"),)),
                   ('nat_info = "192.168.1.2:198.51.100.3"', (("192.168.1.2", "198.51.100.3"),))],
        toml_bad=["nat_info = [1]", 'nat_info = ["10.0.0.5-203.0.113.7"]'],
    ),
    "proxy_config_refresh": floats(
        "--proxy-config-refresh", "proxy_config_refresh", 60, 7 * 86400
    ),
    "middle_min_connections": ints(
        "--middle-min-connections", "middle_min_connections", 0, 1000
    ),
    "middle_max_connections": ints(
        "--middle-max-connections", "middle_max_connections", 1, 1000
    ),
    "middle_client_queue": ints(
        "--middle-client-queue", "middle_client_queue", 64 * 1024, 1 << 30
    ),
    "middle_fallback": switch("--middle-fallback", "middle_fallback"),
    "middle_fallback_after": floats(
        "--middle-fallback-after", "middle_fallback_after", 0, 86400
    ),
}

#: Options whose command-line value cannot be wrong, only warned about.
WARN_ONLY = {"tag"}


CASES.update({
    "event_loop": Case(
        cli_good=[(["--event-loop", "asyncio"], "asyncio"),
                  (["--event-loop", " UVLOOP"], "uvloop")],
        cli_bad=[["--event-loop", "tokio"], ["--event-loop", ""]],
        toml_good=[('event_loop = "auto"', "auto")],
        toml_bad=['event_loop = "trio"', "event_loop = 1"],
    ),
    "workers": ints("--workers", "workers", 1, 256),
    "stats": Case(
        cli_good=[(["--stats", "0.0.0.0:9000"], ("0.0.0.0", 9000)), (["--stats", "off"], None),
                  (["--stats", "[::1]"], ("::1", 2398))],
        cli_bad=[["--stats", "h:x"], ["--stats", "h:99999"], ["--stats", "local host:1"]],
        toml_good=[('stats = "127.0.0.1:1"', ("127.0.0.1", 1))],
        toml_bad=["stats = 1", 'stats = "[::1"'],
    ),
    "stats_allow": Case(
        cli_good=[(["--stats-allow", "10.0.0.0/8", "--stats-allow", "::1"],
                   (ip_network("10.0.0.0/8"), ip_network("::1/128")))],
        cli_bad=[["--stats-allow", "10.0.0.0/33"], ["--stats-allow", "local"]],
        toml_good=[('stats_allow = ["192.168.1.7"]', (ip_network("192.168.1.7/32"),))],
        toml_bad=['stats_allow = ["nope"]', "stats_allow = [1]"],
    ),
    "max_connections": ints("--max-connections", "max_connections", 0, 10_000_000),
    "proxy_protocol": switch("--proxy-protocol", "proxy_protocol"),
    "socks5": Case(
        cli_good=[(["--socks5", "socks5://u:p@127.0.0.1:1080"], "socks5://u:p@127.0.0.1:1080"),
                  (["--socks5", "off"], None)],
        cli_bad=[["--socks5", "http://h:1"], ["--socks5", "socks5://h"],
                 ["--socks5", "socks5://bad_host:1080"]],
        toml_good=[('socks5 = "socks5h://proxy.example:1080"', "socks5h://proxy.example:1080")],
        toml_bad=["socks5 = 1", 'socks5 = "socks5://:1080"'],
    ),
    "shutdown_grace": floats("--shutdown-grace", "shutdown_grace", 0, 3600),
    "api": Case(
        cli_good=[(["--api", "127.0.0.1:2399"], ("127.0.0.1", 2399)), (["--api", "[::1]"],
                   ("::1", 2399)), (["--api", "off"], None)],
        cli_bad=[["--api", "h:x"], ["--api", "no host:1"], ["--api", "127.0.0.1:0"]],
        toml_good=[('api = "127.0.0.1:9"', ("127.0.0.1", 9))],
        toml_bad=["api = 1", 'api = "[::1"'],
    ),
    "api_token": Case(
        cli_good=[(["--api-token", "0123456789abcdef"], "0123456789abcdef"),
                  (["--api-token", ""], None)],
        cli_bad=[["--api-token", "short"], ["--api-token", "has a space in it ok"]],
        toml_good=[('api_token = "tok-0123456789abcdefgh"', "tok-0123456789abcdefgh")],
        toml_bad=["api_token = 1", 'api_token = "x"'],
    ),
    "users": Case(
        toml_good=[(f'[[users]]\nname = "a"\nsecret = "{HEX}"',
                    (UserConfig("a", ClientSecret(KEY, Mode.CLASSIC)),))],
        toml_bad=["users = 1", '[[users]]\nname = "a"', f'[[users]]\nname = "a"\nsecret = "{HEX}"'
                  '\nquota = "much"', f'[[users]]\nname = "a"\nsecret = "{HEX}"\nspeed = 1',
                  f'[[users]]\nname = "a"\nsecret = "{HEX}"\ndisabled = "maybe"'],
    ),
})


def test_every_option_has_cases() -> None:
    assert set(CASES) == {opt.field for opt in OPTIONS}
    for name, case in CASES.items():
        assert case.toml_good and case.toml_bad, name
        opt = next(o for o in OPTIONS if o.field == name)
        assert opt.switch or not opt.flags or (
            case.cli_good and (case.cli_bad or name in WARN_ONLY)
        ), name


def parse_cli(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return load_settings(vars(args), args.config)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mtproxy.toml"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def check_error(err: ConfigError, where: str) -> None:
    assert where in err.where, (err.where, where)
    assert str(err).startswith(err.where)
    assert FIX.search(err.problem), f"no fix in: {err.problem}"
    assert "\n" not in str(err)


def _params(kind: str) -> list[Any]:
    out = []
    for name, case in CASES.items():
        for i, item in enumerate(getattr(case, kind)):
            out.append(pytest.param(name, item, id=f"{name}-{i}"))
    return out


@pytest.mark.parametrize(("name", "item"), _params("cli_good"))
def test_cli_good(name: str, item: tuple[list[str], Any]) -> None:
    argv, expected = item
    assert getattr(parse_cli(argv), name) == expected


@pytest.mark.parametrize(("name", "item"), _params("cli_bad"))
def test_cli_bad(name: str, item: list[str]) -> None:
    opt = next(o for o in OPTIONS if o.field == name)
    with pytest.raises(ConfigError) as info:
        parse_cli(item)
    check_error(info.value, opt.flags[0])


@pytest.mark.parametrize(("name", "item"), _params("toml_good"))
def test_toml_good(name: str, item: tuple[str, Any], tmp_path: Path) -> None:
    text, expected = item
    assert getattr(load_settings({}, write_toml(tmp_path, text)), name) == expected


@pytest.mark.parametrize(("name", "item"), _params("toml_bad"))
def test_toml_bad(name: str, item: str, tmp_path: Path) -> None:
    path = write_toml(tmp_path, item)
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    opt = next(o for o in OPTIONS if o.field == name)
    check_error(info.value, f"{path}: {opt.key}")


def test_cli_wins_over_toml_which_wins_over_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'listen = ["127.0.0.1:1000"]\nbacklog = 7\nlog_level = "debug"')
    s = parse_cli(["--config", str(path), "--backlog", "9", "-l", "127.0.0.1:2000"])
    assert s.backlog == 9
    assert s.listen == (("127.0.0.1", 2000),)  # a repeated flag replaces the file's list
    assert s.log_level == "DEBUG"
    assert s.keepalive == Settings().keepalive
    assert s.listen_given


@pytest.mark.parametrize(
    ("key", "hint"),
    [("listne", "did you mean 'listen'?"), ("secret", "did you mean 'secrets'?"),
     ("tls_domain", "did you mean 'tls_domains'?"), ("zzzzzz", "see mtproxy run --help")],
)
def test_unknown_toml_key(tmp_path: Path, key: str, hint: str) -> None:
    path = write_toml(tmp_path, f'{key} = "x"')
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert key in info.value.where and str(path) in info.value.where
    assert hint in info.value.problem


@pytest.mark.parametrize("text", ["listen = ", "[dc\n", "a = 'b", "backlog = 1\nbacklog = 2"])
def test_invalid_toml_syntax(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings({}, path)
    assert info.value.where == str(path)
    assert "fix the syntax" in info.value.problem


def test_missing_and_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, tmp_path / "nope.toml")
    assert "check the --config path" in info.value.problem
    with pytest.raises(ConfigError):
        load_settings({}, tmp_path)  # a directory


def test_derived_tls_domain_and_mask() -> None:
    s = parse_cli([])
    assert s.tls_domains == (DEFAULT_TLS_DOMAIN,)
    assert s.mask == (DEFAULT_TLS_DOMAIN, 443) and not s.mask_given
    s = parse_cli(["--tls-domain", "a.example", "--tls-domain", "b.example"])
    assert s.mask == ("a.example", 443)
    s = parse_cli(["--secret", EE])
    assert s.tls_domains == ("cdn.example.org",) and s.mask == ("cdn.example.org", 443)
    s = parse_cli(["--secret", EE, "--tls-domain", "a.example"])
    assert s.tls_domains == ("a.example", "cdn.example.org")
    s = parse_cli(["--mask", "off"])
    assert s.mask is None and s.mask_given
    s = parse_cli(["--mask", "127.0.0.1:9"])
    assert s.mask == ("127.0.0.1", 9)
    s = parse_cli(["--modes", "classic,secure"])
    assert s.tls_domains == () and s.mask is None


def test_secret_domains_are_compared_lowercase() -> None:
    """The handshake lowercases the client's SNI, so configured names must be lowercase."""
    upper = "ee" + HEX + b"CDN.Example.ORG".hex()
    s = parse_cli(["--secret", upper, "--tls-domain", "cdn.example.org"])
    assert s.tls_domains == ("cdn.example.org",)
    assert s.mask == ("cdn.example.org", 443)


def test_at_most_16_secrets() -> None:
    argv = [a for i in range(17) for a in ("-s", f"{i:032x}")]
    with pytest.raises(ConfigError) as info:
        parse_cli(argv)
    assert "secrets" in info.value.where and "at most 16" in info.value.problem
    assert len(parse_cli(argv[:32]).secrets) == 16


def test_run_accepts_fake_tls_alone_by_default() -> None:
    """Classic and dd openings cannot be told from a prober's random bytes (README)."""
    assert load_settings({}).modes == frozenset({Mode.TLS})
    assert load_settings({"modes": "classic,secure,tls"}).modes == frozenset(Mode)
