"""Downloading Telegram's proxy config and secret with a saved copy to fall back on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.web import ThreadedWeb

from mtproxy.protocol.proxy_config import MAX_CONFIG_BYTES
from mtproxy.telegram_config import (
    FetchError,
    download,
    fetch_with_cache,
    validate_config,
    validate_secret,
)

CONFIG = b"default 2;\nproxy_for 2 149.154.161.144:8888;\n"
OLD_CONFIG = b"proxy_for 2 91.108.56.1:8888;\n"
HTML = b"<html><body>oops</body></html>"


@pytest.fixture
def web() -> Iterator[ThreadedWeb]:
    with ThreadedWeb().running() as fake:
        yield fake


def test_good_download_is_saved(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/c"] = (200, CONFIG)
    cache = tmp_path / "sub" / "proxy-config"
    stale: list[str] = []
    assert fetch_with_cache(web.url("/c"), cache, validate_config, on_stale=stale.append) == CONFIG
    assert cache.read_bytes() == CONFIG
    assert stale == []
    assert [p.name for p in cache.parent.iterdir()] == ["proxy-config"]


@pytest.mark.parametrize("answer", [(404, b""), (200, HTML), (200, b"proxy_for 2")])
def test_bad_download_uses_the_saved_copy(
    tmp_path: Path, web: ThreadedWeb, answer: tuple[int, bytes]
) -> None:
    web.routes["/c"] = answer
    cache = tmp_path / "proxy-config"
    cache.write_bytes(OLD_CONFIG)
    stale: list[str] = []
    assert fetch_with_cache(web.url("/c"), cache, validate_config, on_stale=stale.append) == (
        OLD_CONFIG
    )
    assert len(stale) == 1 and web.url("/c") in stale[0]
    assert cache.read_bytes() == OLD_CONFIG


def test_no_download_and_no_copy(tmp_path: Path, web: ThreadedWeb) -> None:
    with pytest.raises(FetchError, match=r"HTTP 404.*no saved copy"):
        fetch_with_cache(web.url("/missing"), tmp_path / "c", validate_config)


def test_no_download_and_a_bad_copy(tmp_path: Path, web: ThreadedWeb) -> None:
    (tmp_path / "s").write_bytes(b"\x00" * 64)
    with pytest.raises(FetchError, match="unusable too"):
        fetch_with_cache(web.url("/missing"), tmp_path / "s", validate_secret)


def test_unsaveable_download_is_still_returned(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/s"] = (200, bytes(range(1, 129)))
    cache = tmp_path / "proxy-secret"
    cache.mkdir()
    unsaved: list[str] = []
    data = fetch_with_cache(web.url("/s"), cache, validate_secret, on_unsaved=unsaved.append)
    assert data == bytes(range(1, 129))
    assert len(unsaved) == 1 and "cannot save" in unsaved[0]


def test_oversized_download_is_refused(web: ThreadedWeb) -> None:
    web.routes["/big"] = (200, b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(FetchError, match="more than"):
        download(web.url("/big"))


def test_unreachable_server() -> None:
    with pytest.raises(FetchError, match="cannot download"):
        download("http://127.0.0.1:1/x", timeout=2)


def test_unsaveable_download_without_a_callback(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/s"] = (200, bytes(range(1, 129)))
    cache = tmp_path / "proxy-secret"
    cache.mkdir()
    assert fetch_with_cache(web.url("/s"), cache, validate_secret) == bytes(range(1, 129))


def test_saved_copy_used_silently_without_a_callback(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/c"] = (503, b"")
    cache = tmp_path / "proxy-config"
    cache.write_bytes(OLD_CONFIG)
    assert fetch_with_cache(web.url("/c"), cache, validate_config) == OLD_CONFIG


def test_unreadable_saved_copy_is_named(tmp_path: Path, web: ThreadedWeb) -> None:
    web.routes["/c"] = (200, HTML)
    cache = tmp_path / "proxy-config"
    cache.mkdir()  # exists, but reading it fails
    with pytest.raises(FetchError, match=f"unusable file .*; cannot read {cache}"):
        fetch_with_cache(web.url("/c"), cache, validate_config)
