"""``mtproxy doctor``: check the set-up a proxy runs with and say what to fix.

It takes ``mtproxy run``'s options and ``--config`` (give it the same ones), runs every
check in :mod:`mtproxy.ops.doctor` and prints one line per result. The exit code is the
worst result: 0 all ok, 1 warnings, 2 errors (a configuration that does not load is an
error too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from mtproxy.config import convert as cv
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import add_arguments, load_settings
from mtproxy.errors import FatalError


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "doctor", help="check clock, DCs, Telegram's files, mask, DNS, port and limits",
        description="Check what would keep users from connecting: clock skew, each DC "
        "(directly and through --socks5), Telegram's proxy list and secret, the mask host's "
        "TLS for the --tls-domain, whether that domain's DNS points here, the listening port "
        "at the public address, and the descriptor limit. Takes the same options and "
        "--config as mtproxy run. Exit code: 0 ok, 1 warnings, 2 errors.",
    )
    add_arguments(parser)
    parser.add_argument("--time-url", metavar="URL", default=None,
                        help="https:// site whose Date header is the reference clock "
                        "(default https://core.telegram.org/)")
    parser.add_argument("--timeout", metavar="SECONDS", default="5",
                        help="how long each network check may take (default 5)")
    parser.add_argument("--json", action="store_true", help="results as a JSON list")
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    # Imported here: every command builds this parser, only this one needs the checks.
    from mtproxy.ops.doctor import DEFAULT_TIME_URL, Level, Probe, Result, diagnose, render, worst

    try:
        time_url = cv.url(args.time_url or DEFAULT_TIME_URL)
    except ValueError as exc:
        raise ConfigError("--time-url", str(exc)) from None
    try:
        timeout = float(cv.float_range(0.5, 120)(args.timeout))
    except ValueError as exc:
        raise ConfigError("--timeout", str(exc)) from None
    try:
        settings = load_settings(vars(args), args.config)
    except ConfigError as exc:
        results = [Result("config", Level.ERROR, str(exc), "fix the setting named above")]
    else:
        probe = Probe(timeout=timeout, time_url=time_url)
        try:
            results = asyncio.run(diagnose(settings, probe))
        except KeyboardInterrupt:
            raise FatalError("interrupted", 130) from None
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=1))
    else:
        print(render(results))
    return int(worst(results))
