"""Telegram's proxy config and proxy secret, for middle-proxy mode.

Given as files on the command line (the official ``CONFIG`` and ``--aes-pwd``), they are
checked and used as they are. Otherwise they are downloaded and checked (an HTML error
page or a cut-off file does not count), saved in the data directory as the fallback for
a later failed download, and the proxy gets the URL so it refreshes them itself.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mtproxy.cli.entrypoint.choices import Choices
from mtproxy.cli.entrypoint.contract import EXIT_CONFIG, EXIT_SECRETS, FALSE, TRUE, Fatal, say
from mtproxy.config import convert as cv
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

Validator = Callable[[bytes], object]


def fallback_on(c: Choices) -> bool:
    """Whether the proxy may start without Telegram's files and serve clients directly
    meanwhile: MIDDLE_FALLBACK=on (or --middle-fallback in ``run`` mode). Off by default,
    so the official exit codes 2 and 5 stay what they were; once started, the proxy's
    own fallback (DCs whose middle-proxies stay down) is on unless MIDDLE_FALLBACK=off."""
    given = c.given("middle_fallback")
    if given is not None:
        return bool(cv.as_bool(given))
    value = c.var("MIDDLE_FALLBACK")
    if value is None:
        return False
    if value.lower() in FALSE:
        c.put("middle_fallback", "false", "MIDDLE_FALLBACK")
        return False
    if value.lower() in TRUE:
        return True
    raise Fatal(EXIT_CONFIG, f"MIDDLE_FALLBACK={value!r}: write on or off.")


def telegram_files(c: Choices, data_dir: Path) -> None:
    """Download (or reuse the saved copy of) Telegram's config and proxy secret."""
    fallback = fallback_on(c)
    _telegram_file(
        c, fallback, name="proxy_config", given_file=c.req.proxy_config_file,
        url=c.var("PROXY_CONFIG_URL") or CONFIG_URL, cache=data_dir / CONFIG_FILE,
        validate=validate_config, what="proxy configuration", code=EXIT_CONFIG,
    )
    _telegram_file(
        c, fallback, name="proxy_secret", given_file=c.req.proxy_secret_file,
        url=c.var("PROXY_SECRET_URL") or SECRET_URL, cache=data_dir / PROXY_SECRET_FILE,
        validate=validate_secret, what="proxy secret", code=EXIT_SECRETS,
    )


def _telegram_file(
    c: Choices, fallback: bool, *, name: str, given_file: str | None, url: str, cache: Path,
    validate: Validator, what: str, code: int,
) -> None:
    if name in c.req.given:
        return
    if given_file is not None:
        try:
            validate(Path(given_file).read_bytes())
        except OSError as exc:
            msg = f"Cannot read the {what} file {given_file}: {exc.strerror}."
            raise Fatal(code, msg) from None
        except ValueError as exc:
            raise Fatal(code, f"The {what} file {given_file} is unusable: {exc}.") from None
        say(f"[+] Using the {what} in {given_file}.")
        c.put(name, given_file, "the command line")
        return

    def stale(problem: str) -> None:
        say(f"[!] Cannot download the {what} from Telegram ({problem}).")
        say(f"[!] Using the copy saved in {cache}.")

    unsaved: list[str] = []
    try:
        data = fetch_with_cache(url, cache, validate, on_stale=stale, on_unsaved=unsaved.append)
    except FetchError as exc:
        if not fallback:
            raise Fatal(code, f"Cannot get the {what} from Telegram servers: {exc}.") from None
        say(f"[!] Cannot get the {what} from Telegram servers: {exc}.")
        say("[!] MIDDLE_FALLBACK=on: clients are served directly, without the ad tag, "
            "until it can be had.")
        c.put(name, url, "download")  # the proxy keeps trying on its own
        return
    if unsaved:
        path = _temporary_copy(cache.name, data, code, what)
        c.temporary.append(path)
        say(f"[!] {unsaved[0]}; using the temporary copy {path} instead.")
        c.put(name, str(path), "download")
        return
    # The proxy downloads it again every hour from the URL and falls back to the
    # copy just saved in the data directory, so a static path is not passed on.
    c.put(name, url, "download")


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
