"""``mtproxy generate-secret``: a fresh secret in the spelling the user needs."""

from __future__ import annotations

import argparse
from typing import Any

from mtproxy.config import convert
from mtproxy.config.errors import ConfigError
from mtproxy.protocol.secret import Mode, format_secret, generate_secret


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "generate-secret", help="print a new random secret",
        description="Print a new random 16-byte secret as 32 hex characters (the form "
        "--secret takes). With --tls, print the client form for fake TLS (ee...).",
    )
    parser.add_argument("--tls", metavar="DOMAIN", help="print the ee-secret for this domain")
    parser.add_argument("--dd", action="store_true", help="print the dd-secret (padded mode)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    key = generate_secret()
    if args.tls:
        try:
            domain = convert.domain(args.tls)
        except ValueError as exc:
            raise ConfigError("--tls", str(exc)) from None
        print(format_secret(key, Mode.TLS, domain))
    elif args.dd:
        print(format_secret(key, Mode.SECURE))
    else:
        print(key.hex())
    return 0
