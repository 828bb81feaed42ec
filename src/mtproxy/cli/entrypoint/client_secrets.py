"""Client secrets: ``SECRET``/``-S``, else ``/data/secret``, else ``SECRET_COUNT`` new ones.

Whatever is chosen is saved to the data directory (atomically) so the next start and
``mtproxy links`` see the same secrets: a link shared once keeps working.
"""

from __future__ import annotations

from pathlib import Path

from mtproxy.cli.entrypoint.choices import Choices
from mtproxy.cli.entrypoint.contract import (
    EXIT_BAD_SECRET,
    EXIT_CONFIG,
    EXIT_SECRETS,
    MAX_SECRETS,
    Fatal,
    parse_secret_env,
    say,
)
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import load_settings
from mtproxy.protocol.secret import generate_secret
from mtproxy.state import SECRET_FILE, StateError, read_secrets, write_secrets


def choose(c: Choices, data_dir: Path) -> list[str]:
    """The secrets' keys (32 hex each), in order; sets the ``secrets`` option."""
    path = data_dir / SECRET_FILE
    env_secret = c.var("SECRET")
    if "secrets" in c.req.given:
        if env_secret:
            say("[*] SECRET is not used: --secret is set.")
        keys = _run_mode_keys(c)
        say(f"[+] Using the secrets set with --secret or --config: '{','.join(keys)}'.")
    elif env_secret is not None or c.req.flag_secrets:
        keys = parse_secret_env(env_secret) if env_secret is not None else []
        keys += [k for k in c.req.flag_secrets if k not in keys]
        if len(keys) > MAX_SECRETS:
            raise Fatal(EXIT_BAD_SECRET, f"{len(keys)} secrets given; at most {MAX_SECRETS}.")
        where = "SECRET" if env_secret is not None else "-S"
        if env_secret is not None and c.req.flag_secrets:
            where = "SECRET and -S"
        say(f"[+] Using the secrets passed in {where}: '{','.join(keys)}'.")
        c.options["secrets"] = keys
    else:
        try:
            stored = read_secrets(data_dir)
        except StateError as exc:
            raise Fatal(EXIT_BAD_SECRET, str(exc)) from None
        if stored is not None:
            keys = [k.hex() for k in stored]
            say(f"[+] Using the secrets stored in {path}: '{','.join(keys)}'.")
            c.options["secrets"] = keys
            return keys  # already saved; the volume may even be read-only
        count = _secret_count(c)
        say(f"[+] No secret given: generating {count} random one{'s' * (count > 1)}.")
        keys = [generate_secret().hex() for _ in range(count)]
        c.options["secrets"] = keys
    _save(data_dir, keys)
    return keys


def _save(data_dir: Path, keys: list[str]) -> None:
    """Store the secrets for the next start and for ``mtproxy links``."""
    wanted = [bytes.fromhex(k) for k in keys]
    try:
        if read_secrets(data_dir) == wanted:
            return  # nothing to do, and the volume may be read-only
    except StateError:
        pass  # unreadable or corrupt: replace it
    try:
        write_secrets(data_dir, wanted)
    except StateError as exc:
        say(f"[!] {exc}; the secrets will not survive a restart.")


def _run_mode_keys(c: Choices) -> list[str]:
    """The keys of the secrets set with --secret or in the config file."""
    cli = {"secrets": c.options["secrets"]} if "secrets" in c.options else {}
    try:
        settings = load_settings(cli, c.req.config_path)
    except ConfigError as exc:
        code = EXIT_BAD_SECRET if "secret" in exc.where else EXIT_CONFIG
        raise Fatal(code, f"Bad setting: {exc}") from None
    keys: list[str] = []
    for secret in settings.secrets:
        if secret.key.hex() not in keys:
            keys.append(secret.key.hex())
    return keys


def _secret_count(c: Choices) -> int:
    text = c.var("SECRET_COUNT")
    if text is None:
        return 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SECRETS:
        raise Fatal(
            EXIT_SECRETS,
            f"SECRET_COUNT must be a number from 1 to {MAX_SECRETS}, got {text!r}: that "
            "many secrets can be generated.",
        )
    return count
