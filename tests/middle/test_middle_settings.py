"""The middle-proxy options of ``mtproxy run``: flags other tools rely on, TOML keys, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mtproxy.cli import build_parser
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import (
    DEFAULT_PROXY_CONFIG_URL,
    DEFAULT_PROXY_SECRET_URL,
    Settings,
    load_settings,
)

TAG = "0123456789abcdef0123456789ABCDEF"


def settings_from_argv(*argv: str) -> Settings:
    args = build_parser().parse_args(["run", *argv])
    cli: dict[str, Any] = dict(vars(args))
    positional = cli.pop("proxy_config_file", None)
    if positional is not None and cli.get("proxy_config") is None:
        cli["proxy_config"] = positional
    return load_settings(cli, args.config)


def test_the_six_flags_other_tools_use() -> None:
    s = settings_from_argv(
        "--tag", TAG,
        "--middle-proxy",
        "--proxy-config", "/etc/mtproxy/proxy-multi.conf",
        "--proxy-config-v6", "https://example.org/v6",
        "--proxy-secret", "https://example.org/secret",
        "--nat-info", "10.0.0.5:203.0.113.7",
    )
    assert s.ad_tag == bytes.fromhex(TAG)
    assert s.middle_proxy and s.middle_mode
    assert s.proxy_config == "/etc/mtproxy/proxy-multi.conf"
    assert s.proxy_config_v6 == "https://example.org/v6" and s.proxy_config_v6_given
    assert s.proxy_secret == "https://example.org/secret"
    assert s.nat_info == (("10.0.0.5", "203.0.113.7"),)


def test_defaults_are_direct_mode_and_telegrams_urls() -> None:
    s = settings_from_argv()
    assert not s.middle_mode and s.ad_tag is None and s.tag_problem is None
    assert s.proxy_config == DEFAULT_PROXY_CONFIG_URL
    assert s.proxy_secret == DEFAULT_PROXY_SECRET_URL
    assert s.proxy_config_refresh == 3600
    assert not s.proxy_config_v6_given


def test_official_spelling_positional_list_and_aes_pwd() -> None:
    s = settings_from_argv("-P", TAG, "--aes-pwd", "proxy-secret", "proxy-multi.conf")
    assert s.middle_mode and s.ad_tag == bytes.fromhex(TAG)
    assert s.proxy_secret == "proxy-secret"
    assert s.proxy_config == "proxy-multi.conf"
    # --proxy-config wins over the positional file.
    s = settings_from_argv("--proxy-config", "a.conf", "b.conf")
    assert s.proxy_config == "a.conf"


@pytest.mark.parametrize("bad", ["xyz", "0123", TAG + "00", "dd" + TAG[2:] + "zz"])
def test_bad_tag_warns_and_runs_without(bad: str) -> None:
    s = settings_from_argv("--tag", bad)
    assert s.ad_tag is None
    assert s.tag_problem is not None and "@MTProxybot" in s.tag_problem
    assert not s.middle_mode  # falls back to direct mode
    forced = settings_from_argv("--tag", bad, "--middle-proxy")
    assert forced.middle_mode and forced.ad_tag is None


def test_empty_tag_means_none() -> None:
    s = settings_from_argv("--tag", "")
    assert s.tag is None and s.tag_problem is None and not s.middle_mode


def test_toml_keys(tmp_path: Path) -> None:
    path = tmp_path / "mtproxy.toml"
    path.write_text(
        f'tag = "{TAG}"\n'
        'proxy_config = "/srv/list.conf"\n'
        'proxy_secret = "https://example.org/s"\n'
        'nat_info = ["10.1.1.1:198.51.100.1"]\n'
        "proxy_config_refresh = 600\n"
        "middle_min_connections = 2\n"
        "middle_max_connections = 6\n"
    )
    s = load_settings({}, path)
    assert s.middle_mode and s.ad_tag == bytes.fromhex(TAG)
    assert s.proxy_config == "/srv/list.conf"
    assert s.nat_info == (("10.1.1.1", "198.51.100.1"),)
    assert (s.proxy_config_refresh, s.middle_min_connections, s.middle_max_connections) == (
        600, 2, 6,
    )


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (("--nat-info", "10.0.0.1"), "--nat-info"),
        (("--nat-info", "10.0.0.1:example.com"), "--nat-info"),
        (("--nat-info", "::1:2001:db8::1"), "--nat-info"),
        (("--proxy-config", "ftp://x/y"), "--proxy-config"),
        (("--proxy-config-refresh", "5"), "--proxy-config-refresh"),
        (("--middle-min-connections", "5", "--middle-max-connections", "2"), "middle_min"),
    ],
)
def test_mistakes_are_config_errors(argv: tuple[str, ...], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_argv(*argv)
    assert where in str(info.value)
