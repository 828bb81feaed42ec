"""``mtproxy links``: the proxy's tg:// and t.me links, each with a QR code to scan.

The secrets come from the options or ``--config`` (as for ``mtproxy run``), else from
the data directory's secret file; nothing is generated here. The QR codes are drawn
with half-block characters, two modules per character cell, so a code fits a normal
terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from mtproxy.config import convert as cv
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, add_arguments, load_settings
from mtproxy.errors import FatalError
from mtproxy.ops.bound import BOUND_FILE, read_bound
from mtproxy.protocol.secret import ClientSecret, Mode, links_for
from mtproxy.qr import encode
from mtproxy.state import StateError, read_secrets

#: Light modules around the code. The standard asks for 4; 2 scans fine and saves room.
QR_BORDER = 2
DEFAULT_PORT = 443

# (top module inked, bottom module inked) -> character
_HALF_BLOCKS = {
    (False, False): " ",
    (True, False): "\u2580",  # upper half block
    (False, True): "\u2584",  # lower half block
    (True, True): "\u2588",  # full block
}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "links", help="print the proxy's tg:// and t.me links with QR codes",
        description="Print the tg:// and https://t.me links for every secret and enabled "
        "mode, each with a QR code. Takes the same options and --config file as "
        "mtproxy run; without secrets there, reads the data directory's secret file.",
    )
    add_arguments(parser)
    parser.add_argument("--port", metavar="PORT",
                        help="port in the links (default: the first --listen port, else the port "
                        "mtproxy run bound, else 443)")
    parser.add_argument("--no-qr", action="store_true", help="links only, no QR codes")
    parser.add_argument("--qr-invert", action="store_true",
                        help="draw QR codes for a light terminal background (default: dark)")
    parser.set_defaults(handler=main)


def qr_matrix(data: str, border: int = QR_BORDER) -> list[list[bool]]:
    """The QR code of ``data`` as rows of modules, True = dark, quiet zone included."""
    return encode(data.encode("utf-8")).matrix(border)


def render_half_blocks(matrix: Sequence[Sequence[bool]], *, invert: bool = False) -> list[str]:
    """Terminal lines drawing ``matrix``, two module rows per line.

    Characters are "ink" on the terminal's background. On a dark background the light
    modules must be inked (the default); ``invert`` inks the dark ones instead.
    """
    width = len(matrix[0]) if matrix else 0
    light_row = [False] * width
    lines: list[str] = []
    for top in range(0, len(matrix), 2):
        upper = matrix[top]
        lower = matrix[top + 1] if top + 1 < len(matrix) else light_row
        cells = (
            _HALF_BLOCKS[(a == invert, b == invert)] for a, b in zip(upper, lower, strict=True)
        )
        lines.append("".join(cells))
    return lines


def qr_lines(data: str, *, invert: bool = False) -> list[str]:
    return render_half_blocks(qr_matrix(data), invert=invert)


def secrets_for_links(settings: Settings) -> Settings:
    """The configured secrets, else the stored ones; never creates any."""
    if settings.secrets:
        return settings
    try:
        stored = read_secrets(settings.data_dir)
    except StateError as exc:
        raise FatalError(str(exc)) from None
    if stored is None:
        raise FatalError(
            f"no secrets: {settings.data_dir / 'secret'} does not exist; start the proxy "
            "once, or pass --secret / --config / --data-dir"
        )
    return replace(settings, secrets=tuple(ClientSecret(k, Mode.CLASSIC) for k in stored))


def link_port(settings: Settings, given: str | None) -> tuple[int, str | None]:
    """The port for the links, and a note saying where it came from (None: it was given).

    An explicit --port or --listen port wins; else the port ``mtproxy run`` recorded
    as bound (443 may have become 8443 without root); else 443, said to be a guess.
    """
    if given is not None:
        try:
            return int(cv.int_range(1, 65535)(given)), None
        except ValueError as exc:
            raise ConfigError("--port", str(exc)) from None
    if settings.listen_given and settings.listen and settings.listen[0][1] != 0:
        return settings.listen[0][1], None
    path = settings.data_dir / BOUND_FILE
    bound = read_bound(settings.data_dir)
    if bound is not None:
        state = "running" if bound.running else "not running now"
        return bound.listen[0][1], (
            f"port {bound.listen[0][1]} is where mtproxy run (pid {bound.pid}, {state}) "
            f"listens, from {path}; pass --port to override"
        )
    return DEFAULT_PORT, (
        f"port {DEFAULT_PORT} is a guess: no --port or --listen, and no {path} from a "
        "running proxy; pass --port, or start the proxy first"
    )


def format_links_with_qr(
    settings: Settings, host: str, port: int, *, qr: bool = True, invert: bool = False
) -> Iterable[str]:
    for index, secret in enumerate(settings.secrets, 1):
        yield f"secret {index}: {secret.key.hex()}"
        for link in links_for(host, port, secret.key, settings.modes, list(settings.tls_domains)):
            yield f"  {link.secret.mode.value:<7} {link.tg}"
            yield f"  {'':<7} {link.https}"
            if qr:
                yield ""
                yield from (f"  {line}" for line in qr_lines(link.https, invert=invert))
                yield ""


def main(args: argparse.Namespace) -> int:
    from mtproxy.app import setup_logging
    from mtproxy.publicip import link_host

    settings = load_settings(vars(args), args.config)
    setup_logging(settings.log_level)
    settings = secrets_for_links(settings)
    port, note = link_port(settings, args.port)
    if note is not None:
        print(f"mtproxy: {note}", file=sys.stderr)
    host = asyncio.run(link_host(settings))
    for line in format_links_with_qr(
        settings, host, port, qr=not args.no_qr, invert=args.qr_invert
    ):
        print(line)
    return 0
