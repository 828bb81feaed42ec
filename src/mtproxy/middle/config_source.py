"""Telegram's proxy list (getProxyConfig[V6]) and proxy secret: get, check, cache, refresh.

Each document comes from an http(s) URL or a local file. A download is used only if
it parses completely (an empty body, an HTML error page or a truncated file is
refused, see :mod:`mtproxy.protocol.proxy_config`); a refused or failed download
keeps the copy in use, and downloads that pass are cached in the data directory so
that a restart works while Telegram is unreachable. Local files are read again on
every refresh, so editing one takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mtproxy.config.settings import (
    DEFAULT_PROXY_CONFIG_URL,
    DEFAULT_PROXY_CONFIG_V6_URL,
    Settings,
)
from mtproxy.protocol.proxy_config import (
    MAX_CONFIG_BYTES,
    ProxyConfig,
    ProxyConfigError,
    parse_proxy_config,
    parse_proxy_secret,
)
from mtproxy.proxy.stats import ProxyStats
from mtproxy.state import atomic_write
from mtproxy.telegram_config import (
    CONFIG_FILE,
    CONFIG_V6_FILE,
    SECRET_FILE,
    FetchError,
    download,
)

log = logging.getLogger("mtproxy.middle.config")

#: Cache file names in the data directory: the ones the container entrypoint saves
#: its start-up downloads under (mtproxy.telegram_config), so each uses the other's.
CONFIG_CACHE: Final = CONFIG_FILE
CONFIG_V6_CACHE: Final = CONFIG_V6_FILE
SECRET_CACHE: Final = SECRET_FILE
#: Telegram's own lists always name the five production DCs; a download missing one
#: was cut short. Other sources (tests, private mirrors) may list fewer.
PRODUCTION_DCS: Final = (1, 2, 3, 4, 5)
_SECRET_FETCH_LIMIT: Final = 4096


class MiddleConfigError(Exception):
    """No usable proxy list or secret at all: nothing downloaded, nothing cached."""


@dataclass(frozen=True)
class MiddleConfig:
    """What middle-proxy mode runs on; ``config_v6`` is None when not used or unavailable."""

    secret: bytes
    config: ProxyConfig
    config_v6: ProxyConfig | None = None


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class _Document:
    """One of the three inputs, with the copy in use and where it is cached."""

    def __init__(
        self,
        what: str,
        flag: str,
        location: str,
        cache: Path | None,
        check: Callable[[bytes], object],
        limit: int,
        optional: bool = False,
    ) -> None:
        self.what = what
        self.flag = flag
        self.location = location
        self.cache = cache if is_url(location) else None
        self.check = check
        self.limit = limit
        self.optional = optional
        self.in_use: bytes | None = None


class ConfigSource:
    """Gets the three documents; :meth:`load` returns what to run on now."""

    def __init__(
        self,
        *,
        config: str,
        secret: str,
        config_v6: str | None,
        data_dir: Path,
        timeout: float = 15.0,
        stats: ProxyStats | None = None,
    ) -> None:
        self.timeout = timeout
        self.stats = stats if stats is not None else ProxyStats()
        self.config = _Document(
            "proxy list", "--proxy-config", config, data_dir / CONFIG_CACHE,
            config_checker(config, DEFAULT_PROXY_CONFIG_URL), MAX_CONFIG_BYTES,
        )
        self.secret = _Document(
            "proxy secret", "--proxy-secret", secret, data_dir / SECRET_CACHE,
            parse_proxy_secret, _SECRET_FETCH_LIMIT,
        )
        self.config_v6 = (
            None
            if config_v6 is None
            else _Document(
                "IPv6 proxy list", "--proxy-config-v6", config_v6, data_dir / CONFIG_V6_CACHE,
                config_checker(config_v6, DEFAULT_PROXY_CONFIG_V6_URL), MAX_CONFIG_BYTES,
                optional=True,
            )
        )

    @classmethod
    def from_settings(cls, settings: Settings, stats: ProxyStats | None = None) -> ConfigSource:
        use_v6 = settings.prefer_ipv6 or settings.proxy_config_v6_given
        return cls(
            config=settings.proxy_config,
            secret=settings.proxy_secret,
            config_v6=settings.proxy_config_v6 if use_v6 else None,
            data_dir=settings.data_dir,
            timeout=max(settings.connect_timeout, 5.0),
            stats=stats,
        )

    def documents(self) -> Iterable[_Document]:
        yield self.secret
        yield self.config
        if self.config_v6 is not None:
            yield self.config_v6

    async def load(self) -> MiddleConfig:
        """Fresh copies where they pass the checks, else the ones in use, else the cache.

        Raises :class:`MiddleConfigError` only when the secret or the proxy list has
        never been obtained at all.
        """
        outcomes = await asyncio.gather(
            *(self._obtain(doc) for doc in self.documents()), return_exceptions=True
        )
        results: list[bytes | None] = []
        for outcome in outcomes:  # report problems in a fixed order: secret, then list
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        secret, config = results[0], results[1]
        assert secret is not None and config is not None
        config_v6 = results[2] if len(results) > 2 else None
        return MiddleConfig(
            secret=parse_proxy_secret(secret),
            config=parse_proxy_config(config),
            config_v6=parse_proxy_config(config_v6) if config_v6 is not None else None,
        )

    async def _obtain(self, doc: _Document) -> bytes | None:
        try:
            data = await self._read(doc)
            doc.check(data)
        except (FetchError, ProxyConfigError) as exc:
            self.stats.me_config_failures += 1
            return self._fallback(doc, str(exc))
        self.stats.me_config_loads += 1
        if doc.cache is not None and data != doc.in_use:
            self._store(doc, data)
        doc.in_use = data
        return data

    async def _read(self, doc: _Document) -> bytes:
        if is_url(doc.location):
            return await asyncio.to_thread(
                download, doc.location, timeout=self.timeout, limit=doc.limit
            )
        path = Path(doc.location)
        try:
            with open(path, "rb") as fh:
                data = fh.read(doc.limit + 1)
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > doc.limit:
            raise FetchError(f"{path} is larger than {doc.limit} bytes")
        return data

    def _fallback(self, doc: _Document, problem: str) -> bytes | None:
        where = doc.location
        if doc.in_use is not None:
            log.warning(
                "%s from %s refused (%s); keeping the copy in use", doc.what, where, problem
            )
            return doc.in_use
        cached = self._cached(doc)
        if cached is not None and doc.cache is not None:
            saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(doc.cache.stat().st_mtime))
            log.warning(
                "%s from %s refused (%s); using the copy cached in %s (saved %s)",
                doc.what, where, problem, doc.cache, saved,
            )
            doc.in_use = cached
            return cached
        if doc.optional:
            log.warning("%s from %s refused (%s); going on without it", doc.what, where, problem)
            return None
        cache_note = f" and no cached copy in {doc.cache}" if doc.cache is not None else ""
        raise MiddleConfigError(
            f"cannot get Telegram's {doc.what} from {where}: {problem}{cache_note}; check the "
            f"network, or pass {doc.flag} with a file"
        )

    def _cached(self, doc: _Document) -> bytes | None:
        if doc.cache is None:
            return None
        try:
            data = doc.cache.read_bytes()
            doc.check(data)
        except FileNotFoundError:
            return None
        except (OSError, ProxyConfigError) as exc:
            log.warning("ignoring the cached %s in %s: %s", doc.what, doc.cache, exc)
            return None
        return data

    def _store(self, doc: _Document, data: bytes) -> None:
        assert doc.cache is not None
        try:
            atomic_write(doc.cache, data, 0o644 if doc is not self.secret else 0o600)
        except OSError as exc:
            log.warning("cannot cache the %s in %s: %s", doc.what, doc.cache, exc.strerror or exc)


def config_checker(location: str, default_url: str) -> Callable[[bytes], object]:
    """The check for a proxy list from ``location``: Telegram's own must name DCs 1-5."""
    required = PRODUCTION_DCS if location == default_url else ()

    def check(data: bytes) -> ProxyConfig:
        return parse_proxy_config(data, require_dcs=required)

    return check
