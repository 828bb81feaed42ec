"""Getting Telegram's proxy list and secret: checks, fallbacks, cache (local HTTP server)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from mtproxy.config.settings import DEFAULT_PROXY_CONFIG_URL
from mtproxy.middle.config_source import (
    CONFIG_CACHE,
    CONFIG_V6_CACHE,
    SECRET_CACHE,
    ConfigSource,
    MiddleConfigError,
    config_checker,
)
from mtproxy.protocol.proxy_config import ProxyConfigError, ProxyTarget
from mtproxy.proxy.stats import ProxyStats
from mtproxy.telegram_config import FetchError, download

from .harness import PROXY_SECRET, config_text
from .webserver import ConfigWebServer, Reply

GOOD = config_text({1: [("10.0.0.1", 8888)], 2: [("10.0.0.2", 8888)]}, default=2).encode()
CHANGED = config_text({1: [("10.0.0.1", 8888)], 2: [("10.0.0.9", 80)]}, default=2).encode()
GOOD_V6 = config_text({2: [("2001:db8::2", 80)]}, default=2).encode()
HTML = b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"


def closed_port_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def source_for(web: ConfigWebServer, data_dir: Path, v6: bool = False) -> ConfigSource:
    return ConfigSource(
        config=web.url("/getProxyConfig"),
        secret=web.url("/getProxySecret"),
        config_v6=web.url("/getProxyConfigV6") if v6 else None,
        data_dir=data_dir,
        timeout=5.0,
        stats=ProxyStats(),
    )


def serve_good(web: ConfigWebServer) -> None:
    web.routes["/getProxyConfig"] = Reply(GOOD)
    web.routes["/getProxySecret"] = Reply(PROXY_SECRET, content_type="application/octet-stream")
    web.routes["/getProxyConfigV6"] = Reply(GOOD_V6)


async def test_download_is_parsed_and_cached(tmp_path: Path) -> None:
    async with ConfigWebServer() as web:
        serve_good(web)
        source = source_for(web, tmp_path, v6=True)
        loaded = await source.load()
    assert loaded.secret == PROXY_SECRET
    assert loaded.config.lookup(2) == (ProxyTarget("10.0.0.2", 8888),)
    assert loaded.config.lookup(-7) == (ProxyTarget("10.0.0.2", 8888),)  # default dc 2
    assert loaded.config_v6 is not None
    assert loaded.config_v6.lookup(2) == (ProxyTarget("2001:db8::2", 80),)
    assert (tmp_path / CONFIG_CACHE).read_bytes() == GOOD
    assert (tmp_path / CONFIG_V6_CACHE).read_bytes() == GOOD_V6
    assert (tmp_path / SECRET_CACHE).read_bytes() == PROXY_SECRET
    assert (tmp_path / SECRET_CACHE).stat().st_mode & 0o777 == 0o600
    assert source.stats.me_config_loads == 3


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("empty", Reply(b"")),
        ("html", Reply(HTML, content_type="text/html")),
        ("html with status 200 and no doctype", Reply(b"\n<html><head></head></html>")),
        ("truncated transfer", Reply(GOOD[:40], declared_length=len(GOOD))),
        ("cut inside a statement", Reply(GOOD[: GOOD.index(b"10.0.0.2") + 4])),
        ("server error", Reply(GOOD, status=500)),
        ("not found", Reply(b"nothing", status=404)),
        ("garbage", Reply(b"proxy_for 2 10.0.0.2:8888; proxy_for 1 nonsense")),
    ],
)
async def test_bad_download_keeps_the_copy_in_use(
    tmp_path: Path, name: str, reply: Reply, caplog: pytest.LogCaptureFixture
) -> None:
    async with ConfigWebServer() as web:
        serve_good(web)
        source = source_for(web, tmp_path)
        first = await source.load()
        web.routes["/getProxyConfig"] = reply
        with caplog.at_level(logging.WARNING, logger="mtproxy.middle.config"):
            second = await source.load()
    assert second == first, name
    assert source.stats.me_config_failures == 1
    assert "keeping the copy in use" in caplog.text
    assert (tmp_path / CONFIG_CACHE).read_bytes() == GOOD


async def test_a_good_refresh_replaces_list_and_cache(tmp_path: Path) -> None:
    async with ConfigWebServer() as web:
        serve_good(web)
        source = source_for(web, tmp_path)
        first = await source.load()
        web.routes["/getProxyConfig"] = Reply(CHANGED)
        second = await source.load()
    assert first.config.lookup(2) == (ProxyTarget("10.0.0.2", 8888),)
    assert second.config.lookup(2) == (ProxyTarget("10.0.0.9", 80),)
    assert (tmp_path / CONFIG_CACHE).read_bytes() == CHANGED


async def test_unreachable_url_falls_back_to_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with ConfigWebServer() as web:
        serve_good(web)
        await source_for(web, tmp_path).load()
    # The server is gone now; a new process (new source) starts from the cache.
    source = ConfigSource(
        config=closed_port_url("/getProxyConfig"),
        secret=closed_port_url("/getProxySecret"),
        config_v6=None,
        data_dir=tmp_path,
        timeout=2.0,
    )
    with caplog.at_level(logging.WARNING, logger="mtproxy.middle.config"):
        loaded = await source.load()
    assert loaded.secret == PROXY_SECRET
    assert loaded.config.lookup(1) == (ProxyTarget("10.0.0.1", 8888),)
    assert "using the copy cached in" in caplog.text


async def test_a_corrupt_cache_is_not_used(tmp_path: Path) -> None:
    (tmp_path / CONFIG_CACHE).write_bytes(HTML)
    (tmp_path / SECRET_CACHE).write_bytes(PROXY_SECRET)
    source = ConfigSource(
        config=closed_port_url("/c"),
        secret=closed_port_url("/s"),
        config_v6=None,
        data_dir=tmp_path,
        timeout=2.0,
    )
    with pytest.raises(MiddleConfigError, match="proxy list"):
        await source.load()


async def test_nothing_at_all_is_a_clear_error(tmp_path: Path) -> None:
    url = closed_port_url("/getProxySecret")
    source = ConfigSource(
        config=closed_port_url("/getProxyConfig"),
        secret=url,
        config_v6=None,
        data_dir=tmp_path,
        timeout=2.0,
    )
    with pytest.raises(MiddleConfigError) as info:
        await source.load()
    message = str(info.value)
    assert url in message and "no cached copy" in message and "--proxy-secret" in message


async def test_bad_secret_download_is_refused(tmp_path: Path) -> None:
    async with ConfigWebServer() as web:
        serve_good(web)
        web.routes["/getProxySecret"] = Reply(b"\x01\x02\x03")
        with pytest.raises(MiddleConfigError, match="proxy secret"):
            await source_for(web, tmp_path).load()
        web.routes["/getProxySecret"] = Reply(HTML, content_type="text/html")
        with pytest.raises(MiddleConfigError, match="HTML"):
            await source_for(web, tmp_path).load()
    assert not (tmp_path / SECRET_CACHE).exists()


async def test_missing_v6_list_is_not_fatal(tmp_path: Path) -> None:
    async with ConfigWebServer() as web:
        serve_good(web)
        del web.routes["/getProxyConfigV6"]
        loaded = await source_for(web, tmp_path, v6=True).load()
    assert loaded.config_v6 is None
    assert loaded.config.lookup(2)


async def test_local_files_are_read_again_and_not_cached(tmp_path: Path) -> None:
    config = tmp_path / "in" / "proxy-multi.conf"
    secret = tmp_path / "in" / "secret"
    config.parent.mkdir()
    config.write_bytes(GOOD)
    secret.write_bytes(PROXY_SECRET)
    data_dir = tmp_path / "data"
    source = ConfigSource(config=str(config), secret=str(secret), config_v6=None, data_dir=data_dir)
    first = await source.load()
    config.write_bytes(CHANGED)
    second = await source.load()
    config.write_bytes(b"proxy_for 2 10.0.0.3:8888")  # no ';': an editor mid-save
    third = await source.load()
    assert first.config.lookup(2) != second.config.lookup(2)
    assert third == second
    assert not data_dir.exists()


async def test_missing_local_file_names_the_flag(tmp_path: Path) -> None:
    source = ConfigSource(
        config=str(tmp_path / "nope.conf"),
        secret=str(tmp_path / "nope"),
        config_v6=None,
        data_dir=tmp_path,
    )
    with pytest.raises(MiddleConfigError, match="cannot read"):
        await source.load()


def test_telegrams_own_list_must_name_all_production_dcs() -> None:
    check = config_checker(DEFAULT_PROXY_CONFIG_URL, DEFAULT_PROXY_CONFIG_URL)
    full = config_text({dc: [("10.0.0.1", 8888)] for dc in (1, 2, 3, 4, 5)}, default=2)
    check(full.encode())
    with pytest.raises(ProxyConfigError, match="dc 3"):
        check(config_text({1: [("10.0.0.1", 1)], 2: [("10.0.0.1", 1)]}).encode())
    # A private mirror may list fewer.
    config_checker("http://mirror.example/list", DEFAULT_PROXY_CONFIG_URL)(GOOD)


async def test_download_limits() -> None:
    async with ConfigWebServer() as web:
        web.routes["/big"] = Reply(b"x" * 2000)
        web.routes["/ok"] = Reply(b"fine")
        assert await asyncio.to_thread(download, web.url("/ok"), timeout=5.0, limit=100) == b"fine"
        with pytest.raises(FetchError, match="more than 100"):
            await asyncio.to_thread(download, web.url("/big"), timeout=5.0, limit=100)
        with pytest.raises(FetchError, match="404"):
            await asyncio.to_thread(download, web.url("/missing"), timeout=5.0, limit=100)
