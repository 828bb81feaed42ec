"""What the official container promises: exit codes, defaults, and how values are read.

Every start-up step reports failure the same way (one ``[F]`` line, one of the official
run script's exit codes), so the codes, the line printer and the parsers of single
values live here, shared by the steps.
"""

from __future__ import annotations

import re

# Exit codes of the official run script.
EXIT_BAD_SECRET = 1
EXIT_CONFIG = 2  # Telegram's config not available; also a bad flag or setting
EXIT_EXTERNAL_IP = 3
EXIT_INTERNAL_IP = 4
EXIT_SECRETS = 5  # SECRET_COUNT out of range; Telegram's proxy secret not available
# Ours: the data directory cannot keep the secret for the user the proxy runs as, so a
# start would run with a secret that the next start replaces (every shared link breaks).
EXIT_DATA_DIR = 6

DEFAULT_DATA_DIR = "/data"
DEFAULT_PORT = 443
DEFAULT_WORKERS = "2"
DEFAULT_STATS_HOST = "0.0.0.0"
DEFAULT_IP_TIMEOUT = 3.0
#: Every client mode, as the official image accepts (``mtproxy run`` alone may default to
#: fewer): classic and dd secrets and the links printed for them keep working.
DEFAULT_MODES = "classic,secure,tls"
#: Seconds sessions may drain after SIGTERM: below Docker's default 10 s stop timeout, so a
#: plain `docker stop` ends in exit 0 and not in SIGKILL (exit 137).
DEFAULT_SHUTDOWN_GRACE = "8"
MAX_SECRETS = 16

HEX32 = re.compile(r"[0-9a-fA-F]{32}")
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class Fatal(Exception):
    """Stop before the server starts: printed as one ``[F]`` line, exit ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def say(line: str = "") -> None:
    """One line of the official script's output (stdout, flushed: `docker logs` order)."""
    print(line, flush=True)


def flag(name: str) -> str:
    """The ``mtproxy run`` flag of an option field: ``tls_domains`` -> ``--tls-domains``."""
    return "--" + name.replace("_", "-")


def port(text: str, what: str) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        raise Fatal(EXIT_CONFIG, f"{what} {text!r} is not a port number.") from None
    if not 0 < number < 65536:
        raise Fatal(EXIT_CONFIG, f"{what} {number} is not a port from 1 to 65535.")
    return number


def count(text: str, what: str, low: int = 0) -> str:
    try:
        number = int(text.strip())
    except ValueError:
        raise Fatal(EXIT_CONFIG, f"{what} {text!r} is not a number.") from None
    if number < low:
        raise Fatal(EXIT_CONFIG, f"{what} must be at least {low}, got {number}.")
    return str(number)


def hex32(text: str, what: str) -> str:
    if not HEX32.fullmatch(text.strip()):
        raise Fatal(EXIT_CONFIG, f"{what} {text!r} is not 32 hex characters.")
    return text.strip().lower()


def parse_secret_env(text: str) -> list[str]:
    """SECRET: 1 to 16 comma-separated 32-hex secrets, any case; lower-cased."""
    items = [item.strip() for item in text.strip().split(",")]
    if not 1 <= len(items) <= MAX_SECRETS or not all(HEX32.fullmatch(i) for i in items):
        raise Fatal(
            EXIT_BAD_SECRET,
            "Bad SECRET: each secret must be 32 hex characters (16 bytes); give 1 to "
            f"{MAX_SECRETS} of them, comma-separated.",
        )
    return [item.lower() for item in items]
