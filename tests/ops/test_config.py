"""Options of issue 5 and the [[users]] tables: spellings, defaults, clean errors."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, add_arguments, load_settings
from mtproxy.config.users import byte_size, expiry

HEX = "0123456789abcdef0123456789abcdef"
HEX2 = "fedcba9876543210fedcba9876543210"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def from_cli(argv: list[str]) -> Settings:
    return load_settings(vars(parse(argv)))


def from_toml(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_settings({}, path)


def test_defaults() -> None:
    s = Settings()
    assert (s.workers, s.stats, s.max_connections, s.proxy_protocol, s.socks5) == (
        1, ("127.0.0.1", 2398), 0, False, None
    )


def test_the_issue_flags_exist_with_their_spellings() -> None:
    s = from_cli(["--workers", "3", "--stats", "0.0.0.0:9000", "--max-connections", "7",
                  "--proxy-protocol", "--socks5", "socks5://u:p@127.0.0.1:1080"])  # fmt: skip
    assert s.workers == 3 and s.stats == ("0.0.0.0", 9000) and s.max_connections == 7
    assert s.proxy_protocol and s.socks5 == "socks5://u:p@127.0.0.1:1080"
    assert from_cli(["-M", "2", "-C", "5"]).workers == 2
    assert from_cli(["--max-special-connections", "9"]).max_connections == 9
    assert from_cli(["--stats", "off"]).stats is None
    assert from_cli(["--stats", "127.0.0.1"]).stats == ("127.0.0.1", 2398)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--workers", "0"], "out of range"),
        (["--socks5", "http://h:1"], "SOCKS5 URL"),
        (["--socks5", "socks5://hostonly"], "host and a port"),
        (["--stats-allow", "10.0.0.0/33"], "CIDR"),
        (["--max-connections", "-1"], "out of range"),
    ],
)
def test_bad_values_say_what_to_write(argv: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_cli(argv)


def test_users_from_toml(tmp_path: Path) -> None:
    s = from_toml(tmp_path, f"""
stats_allow = ["10.0.0.0/8", "::1"]
[[users]]
name = "alice"
secret = "ee{HEX}{b'example.com'.hex()}"
max_connections = 4
max_ips = 2
quota = "1.5GiB"
expires = 2030-01-31
[[users]]
name = "bob"
secret = "{HEX2}"
""")
    alice, bob = s.users
    assert alice.name == "alice" and alice.max_connections == 4 and alice.max_ips == 2
    assert alice.quota == int(1.5 * 1024**3)
    assert alice.expires == dt.datetime(2030, 2, 1, tzinfo=dt.UTC).timestamp()
    assert bob.quota is None and bob.expires is None and not bob.limited
    assert "example.com" in s.tls_domains  # a user's ee secret names a domain to accept
    assert s.secret_keys == [alice.secret.key, bob.secret.key]
    assert [str(n) for n in s.stats_allow] == ["10.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(
    ("users", "words"),
    [
        (f'name = "a"\nsecret = "{HEX}"\nmax_conns = 1', "did you mean 'max_connections'"),
        ('name = "a"', "needs a name and a secret"),
        (f'name = "a b"\nsecret = "{HEX}"', "not a user name"),
        (f'name = "secret1"\nsecret = "{HEX}"', "reserved"),
        (f'name = "a"\nsecret = "{HEX}"\nquota = "lots"', "not a size"),
        (f'name = "a"\nsecret = "{HEX}"\nexpires = "soon"', "not a date"),
        (f'name = "a"\nsecret = "{HEX}"\nmax_ips = 0', "out of range"),
        (f'name = "a"\nsecret = "{HEX}"\n[[users]]\nname = "a"\nsecret = "{HEX2}"', "twice"),
        (f'name = "a"\nsecret = "{HEX}"\n[[users]]\nname = "b"\nsecret = "{HEX}"', "reuses"),
    ],
)
def test_bad_users_fail_with_one_line(tmp_path: Path, users: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_toml(tmp_path, "[[users]]\n" + users + "\n")


def test_users_cannot_come_from_the_command_line() -> None:
    with pytest.raises(SystemExit):
        parse(["--users", "x"])


def test_sizes_and_dates() -> None:
    assert byte_size(10) == 10
    assert byte_size("10GB") == 10 * 1000**3
    assert byte_size("512 KiB") == 512 * 1024
    assert byte_size("2m") == 2 * 1000**2
    for bad in ("", "0", "-5", "5 parsecs", True):
        with pytest.raises(ValueError):
            byte_size(bad)
    assert expiry("2030-01-01T00:00:00Z") == dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
    assert expiry(dt.datetime(2030, 1, 1)) == expiry("2030-01-01T00:00:00")
    assert expiry("2030-01-01") == expiry("2030-01-02T00:00:00+00:00")
