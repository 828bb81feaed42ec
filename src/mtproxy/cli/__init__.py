"""Command-line entry point (``mtproxy`` and ``python -m mtproxy``).

Every expected failure (bad option, unusable data directory, busy port) ends as one
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mtproxy import __version__
from mtproxy.errors import FatalError

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from mtproxy.cli import doctor, healthcheck, links, run, secrets

    parser = argparse.ArgumentParser(
        prog="mtproxy",
        description="Telegram MTProto proxy: classic, dd and fake-TLS clients.",
    )
    parser.add_argument("--version", action="version", version=f"mtproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run.register(sub)
    secrets.register(sub)
    links.register(sub)
    doctor.register(sub)
    healthcheck.register(sub)
    sub.add_parser(
        "entrypoint", add_help=False,
        help="start like the official container (SECRET, TAG, ... and -H/-p/-S flags)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["entrypoint"]:
        # Its own parser: it takes the official server's flags, which argparse's
        # subcommand handling would reject.
        from mtproxy.cli import entrypoint

        return entrypoint.main(args_list[1:])
    if args_list[:1] == ["healthcheck"]:
        # Run every few seconds in the container: spared the server's and the
        # configuration's imports (this module imports neither at the top for that).
        from mtproxy.cli import healthcheck

        return healthcheck.main(args_list[1:])
    from mtproxy.config.errors import ConfigError

    parser = build_parser()
    args = parser.parse_args(args_list)
    handler: Command | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"mtproxy: error: {exc}", file=sys.stderr)
        return 2
    except FatalError as exc:
        print(f"mtproxy: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
