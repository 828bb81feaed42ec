"""Command-line entry point (``mtproxy`` and ``python -m mtproxy``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from mtproxy import __version__

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--version":
        print(f"mtproxy {__version__}")
        return 0
    print("mtproxy: error: no command yet", file=sys.stderr)
    return 2
