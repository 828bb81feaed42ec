"""Telegram's middle-proxy list and proxy secret: download, check, keep a copy.

The official container downloads both files on every start and dies when it cannot.
Here a download that fails, or that does not parse (an HTML error page, a cut-off
body), falls back to the copy saved by the last good start, so a Telegram outage
does not take a restarting proxy down with it. Copies are written atomically: a
crash mid-write leaves the previous good copy, never half a file.

Blocking on purpose: this runs once at start-up, before the event loop exists.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mtproxy import __version__
from mtproxy.protocol.proxy_config import (
    MAX_CONFIG_BYTES,
    ProxyConfigError,
    parse_proxy_config,
    parse_proxy_secret,
)
from mtproxy.state import atomic_write

CONFIG_URL = "https://core.telegram.org/getProxyConfig"
CONFIG_V6_URL = "https://core.telegram.org/getProxyConfigV6"
SECRET_URL = "https://core.telegram.org/getProxySecret"

#: File names of the saved copies inside the data directory.
CONFIG_FILE = "proxy-config"
CONFIG_V6_FILE = "proxy-config-v6"
SECRET_FILE = "proxy-secret"

DEFAULT_TIMEOUT = 10.0

Validator = Callable[[bytes], object]


class FetchError(Exception):
    """Neither a download nor a saved copy gave a usable file; the message says why."""


def validate_config(data: bytes) -> None:
    parse_proxy_config(data)


def validate_secret(data: bytes) -> None:
    parse_proxy_secret(data)


def download(url: str, *, timeout: float = DEFAULT_TIMEOUT, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """GET ``url``: the whole body of a 2xx answer of at most ``limit`` bytes, else FetchError
    (also for a body shorter than its Content-Length: a download cut short)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"mtproxy/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            body: bytes = response.read(limit + 1)
            declared = response.headers.get("Content-Length")
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url} answered HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FetchError(f"cannot download {url}: {reason}") from None
    if not 200 <= status < 300:
        raise FetchError(f"{url} answered HTTP {status}")
    if len(body) > limit:
        raise FetchError(f"{url} sent more than {limit} bytes")
    if declared is not None and declared.isdigit() and int(declared) != len(body):
        raise FetchError(f"{url}: body cut short, {len(body)} of {declared} bytes")
    return body


def _check(data: bytes, validate: Validator) -> str | None:
    try:
        validate(data)
    except (ProxyConfigError, ValueError) as exc:
        return str(exc)
    return None


def fetch_with_cache(
    url: str,
    cache_path: Path,
    validate: Validator,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_stale: Callable[[str], None] | None = None,
    on_unsaved: Callable[[str], None] | None = None,
) -> bytes:
    """The freshly downloaded file (saved to ``cache_path``), else the saved copy.

    ``validate`` raises ProxyConfigError/ValueError for a body that must not be used.
    ``on_stale(reason)`` is called when the saved copy is used instead of a download,
    ``on_unsaved(reason)`` when a good download could not be saved (it is still
    returned: a read-only volume must not stop a proxy that has what it needs).
    Raises FetchError when there is neither a good download nor a good saved copy.
    """
    try:
        data = download(url, timeout=timeout)
    except FetchError as exc:
        problem = str(exc)
    else:
        bad = _check(data, validate)
        if bad is None:
            try:
                atomic_write(cache_path, data)
            except OSError as exc:
                if on_unsaved is not None:
                    on_unsaved(f"cannot save {cache_path}: {exc.strerror or exc}")
            return data
        problem = f"{url} sent an unusable file ({bad})"
    try:
        cached = cache_path.read_bytes()
    except FileNotFoundError:
        raise FetchError(f"{problem}; no saved copy in {cache_path}") from None
    except OSError as exc:
        raise FetchError(f"{problem}; cannot read {cache_path}: {exc.strerror}") from None
    bad = _check(cached, validate)
    if bad is not None:
        raise FetchError(f"{problem}; the saved copy {cache_path} is unusable too ({bad})")
    if on_stale is not None:
        on_stale(problem)
    return cached
