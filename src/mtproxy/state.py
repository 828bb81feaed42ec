"""Files in the data directory, always written atomically.

A crash or a full disk mid-write must never leave a half-written secret behind:
every file is written to a temporary name in the same directory, flushed to disk,
then renamed over the old one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from mtproxy.protocol.errors import SecretError
from mtproxy.protocol.secret import generate_secret, parse_hex32

SECRET_FILE = "secret"


class StateError(Exception):
    """The data directory or a file in it is unusable; the message says how to fix it."""


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def parse_secret_list(text: str) -> list[bytes]:
    """Comma-separated 32-hex secrets (the official container's /data/secret format)."""
    items = [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    return [parse_hex32(item) for item in items]


def read_secrets(data_dir: Path) -> list[bytes] | None:
    """The stored secrets, or None when there is no secret file yet."""
    path = data_dir / SECRET_FILE
    try:
        text = path.read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError):
        return None  # no file there (yet); writing it will say what is wrong
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read {path}: {exc}; fix or delete the file") from None
    try:
        secrets = parse_secret_list(text)
    except SecretError as exc:
        raise StateError(
            f"{path} is corrupt ({exc}); it must hold comma-separated 32-hex secrets: "
            "fix it or delete it to generate a new one"
        ) from None
    if not secrets or len(secrets) > 16:
        raise StateError(f"{path} must hold 1 to 16 secrets; fix it or delete it")
    return secrets


def secrets_text(secrets: list[bytes]) -> bytes:
    """The secret file's content: comma-separated lower-case hex, as the official image."""
    return (",".join(s.hex() for s in secrets) + "\n").encode()


def write_secrets(data_dir: Path, secrets: list[bytes]) -> None:
    try:
        atomic_write(data_dir / SECRET_FILE, secrets_text(secrets))
    except OSError as exc:
        raise StateError(
            f"cannot write {data_dir / SECRET_FILE}: {exc.strerror or exc}; "
            "choose a writable --data-dir"
        ) from None


def load_or_create_secrets(data_dir: Path, count: int = 1) -> tuple[list[bytes], bool]:
    """Stored secrets, or ``count`` new ones persisted now; the flag says which."""
    existing = read_secrets(data_dir)
    if existing is not None:
        return existing, False
    secrets = [generate_secret() for _ in range(count)]
    write_secrets(data_dir, secrets)
    return secrets, True
