"""Client secrets: ``SECRET``/``-S``, else ``/data/secret``, else ``SECRET_COUNT`` new ones.

Whatever is chosen is saved to the data directory (atomically) so the next start and
``mtproxy links`` see the same secrets: a link shared once keeps working.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mtproxy.cli.entrypoint.choices import Choices
from mtproxy.cli.entrypoint.contract import (
    EXIT_BAD_SECRET,
    EXIT_CONFIG,
    EXIT_DATA_DIR,
    EXIT_SECRETS,
    MAX_SECRETS,
    Fatal,
    parse_secret_env,
    say,
)
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import load_settings
from mtproxy.protocol.secret import generate_secret
from mtproxy.state import (
    SECRET_FILE,
    StateError,
    atomic_write,
    read_secrets,
    secrets_text,
    write_secrets,
)


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
        _check_readable(data_dir)
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
        _keep_generated(data_dir, keys)
        return keys
    _save(data_dir, keys)
    return keys


def _owner(path: Path) -> str:
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return f"{path} belongs to uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}"


def _check_readable(data_dir: Path) -> None:
    """A stored secret that this user cannot read must stop the start: a new one in its
    place would break every link handed out."""
    path = data_dir / SECRET_FILE
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        denied = data_dir if not os.access(data_dir, os.X_OK) else path
        raise Fatal(
            EXIT_DATA_DIR,
            f"Cannot read {path} as uid {os.geteuid()} ({_owner(denied)}): run the "
            "container as that owner (--user UID), or as root without --user and with "
            "its default capabilities, so that it hands the directory to the proxy's user.",
        ) from None
    except OSError:
        pass  # missing (the usual first start), or read_secrets says what is wrong


def _keep_generated(data_dir: Path, keys: list[str]) -> None:
    """Save new secrets, or stop: one the next start cannot read breaks every link."""
    try:
        atomic_write(data_dir / SECRET_FILE, secrets_text([bytes.fromhex(k) for k in keys]))
    except OSError as exc:
        where = data_dir if os.path.isdir(data_dir) else data_dir.parent
        raise Fatal(
            EXIT_DATA_DIR,
            f"Cannot keep a secret in {data_dir} as uid {os.geteuid()}: "
            f"{exc.strerror or exc} ({_owner(where)}), so every start would make a new "
            "one and break the links: start the container without --user (it then hands "
            "the directory to its user), mount a volume that this user can write, or set "
            "SECRET.",
        ) from None


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
