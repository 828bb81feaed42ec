"""Named users from the TOML ``[[users]]`` tables: a secret each, and optional limits.

Configuration only; enforcement lives in
:mod:`mtproxy.ops.limits`. Converters raise ``ValueError("problem; fix")`` like the
rest of :mod:`mtproxy.config.convert`.

Users changed through the management API live in ``users.json`` in the data
directory, an overlay on the configuration file's users: an entry there replaces the
file's user of the same name (or adds one), a name under ``removed`` hides the file's
user. The file is the API's; the TOML file is never rewritten (it may be read-only,
shared, or carry comments an operator wants kept).
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtproxy.config import convert as cv
from mtproxy.config.errors import ConfigError
from mtproxy.protocol.secret import ClientSecret
from mtproxy.state import atomic_write

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?i?b?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", 1):
    _UNITS[_p] = _UNITS[_p + "b"] = 1000**_i
    _UNITS[_p + "i"] = _UNITS[_p + "ib"] = 1024**_i

USER_KEYS = (
    "name", "secret", "max_connections", "max_ips", "quota", "rate_up", "rate_down", "expires",
    "disabled",
)


@dataclass(frozen=True)
class UserConfig:
    """One named user. ``None`` limits mean unlimited."""

    name: str
    secret: ClientSecret
    max_connections: int | None = None
    max_ips: int | None = None
    #: Bytes relayed in both directions, over the user's whole life (kept in the data dir).
    quota: int | None = None
    #: Bytes per second from the user's clients (up) and to them (down), all their
    #: sessions together; shaped (reading pauses), never dropped.
    rate_up: int | None = None
    rate_down: int | None = None
    #: Unix time after which the user is refused and their sessions are closed.
    expires: float | None = None
    #: Refused, and their sessions closed, until enabled again (kept with its counters).
    disabled: bool = False

    @property
    def limited(self) -> bool:
        """Whether admission needs the cross-worker ledger (connection or IP caps)."""
        return self.max_connections is not None or self.max_ips is not None


def byte_size(value: Any) -> int:
    """An integer byte count or a string like ``"10GB"`` (decimal) / ``"1.5GiB"`` (binary)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        number: float = value
        unit = ""
    else:
        match = _SIZE.fullmatch(cv.as_str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{value!r} is not a size; write bytes or e.g. \"500MB\", \"10GiB\"")
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{value!r} is not a positive size; write e.g. \"10GB\"")
    return size


def byte_rate(value: Any) -> int:
    """Bytes per second: like :func:`byte_size`, optionally ending in ``/s``."""
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        value = value.strip()[:-2]
    try:
        return byte_size(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a rate; write bytes per second or e.g. \"2MB\", \"512KiB/s\""
        ) from None


def expiry(value: Any) -> float:
    """A TOML date (the user works through that day, UTC), datetime, or ISO string."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = dt.date.fromisoformat(text) if len(text) == 10 else dt.datetime.fromisoformat(
                text.replace("Z", "+00:00")
            )
        except ValueError:
            raise ValueError(
                f"{text!r} is not a date; write 2026-12-31 or 2026-12-31T18:00:00Z"
            ) from None
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    if isinstance(value, dt.date):
        end = dt.datetime.combine(value + dt.timedelta(days=1), dt.time(), dt.UTC)
        return end.timestamp()
    raise ValueError(f"{value!r} is not a date; write 2026-12-31 or 2026-12-31T18:00:00Z")


def user_name(value: Any) -> str:
    text = cv.as_str(value).strip()
    if not _NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a user name; use 1-64 letters, digits, '_' or '-'")
    if re.fullmatch(r"secret[0-9]+", text):
        raise ValueError(f"{text!r} is reserved for the anonymous secrets; choose another name")
    return text


def user_entry(value: Any) -> UserConfig:
    """One ``[[users]]`` table."""
    if not isinstance(value, dict):
        raise ValueError("a user is not a table; write [[users]] tables with name and secret")
    for key in value:
        if key not in USER_KEYS:
            close = difflib.get_close_matches(key, USER_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(USER_KEYS)}"
            raise ValueError(f"unknown user key {key!r}; {hint}")
    if "name" not in value or "secret" not in value:
        raise ValueError("a user needs a name and a secret; write name = \"...\" and "
                         "secret = \"<32 hex>\"")
    name = user_name(value["name"])
    try:
        return UserConfig(
            name=name,
            secret=cv.secret_key(value["secret"]),
            max_connections=_opt(value, "max_connections", cv.int_range(1)),
            max_ips=_opt(value, "max_ips", cv.int_range(1)),
            quota=_opt(value, "quota", byte_size),
            rate_up=_opt(value, "rate_up", byte_rate),
            rate_down=_opt(value, "rate_down", byte_rate),
            expires=_opt(value, "expires", expiry),
            disabled=bool(_opt(value, "disabled", cv.as_bool)),
        )
    except ValueError as exc:
        raise ValueError(f"user {name!r}: {exc}") from None


def _opt(table: dict[str, Any], key: str, convert: cv.Converter) -> Any:
    if key not in table:
        return None
    try:
        return convert(table[key])
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def check_unique(users: tuple[UserConfig, ...], anonymous: tuple[ClientSecret, ...]) -> None:
    """Names and secrets must be unique: a secret is how a client says who it is."""
    names: set[str] = set()
    keys = {s.key for s in anonymous}
    for user in users:
        if user.name in names:
            raise ValueError(f"user {user.name!r} is defined twice; give every user a unique name")
        if user.secret.key in keys:
            raise ValueError(
                f"user {user.name!r} reuses a secret already in use; give every user their own "
                "(mtproxy generate-secret)"
            )
        names.add(user.name)
        keys.add(user.secret.key)


# -- the API's overlay -----------------------------------------------------------------------

USERS_FILE = "users.json"


@dataclass(frozen=True)
class Overlay:
    """What the management API changed: users it added or replaced, names it removed."""

    users: Mapping[str, UserConfig]
    removed: frozenset[str] = frozenset()


def user_to_entry(user: UserConfig) -> dict[str, Any]:
    """The ``[[users]]`` table (as JSON) that :func:`user_entry` reads back to ``user``."""
    entry: dict[str, Any] = {"name": user.name, "secret": str(user.secret)}
    for key in ("max_connections", "max_ips", "quota", "rate_up", "rate_down"):
        value = getattr(user, key)
        if value is not None:
            entry[key] = value
    if user.expires is not None:
        moment = dt.datetime.fromtimestamp(user.expires, dt.UTC)
        entry["expires"] = moment.isoformat().replace("+00:00", "Z")
    if user.disabled:
        entry["disabled"] = True
    return entry


def load_overlay(data_dir: Path) -> Overlay:
    path = data_dir / USERS_FILE
    fix = "fix it, or delete it to drop the API's changes"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return Overlay({})  # nothing saved yet (or no data directory at all)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(str(path), f"unreadable ({exc}); {fix}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("users", []), list):
        raise ConfigError(str(path), f"not a users file; {fix}")
    users: dict[str, UserConfig] = {}
    for item in raw.get("users", []):
        try:
            user = user_entry(item)
        except ValueError as exc:
            raise ConfigError(str(path), f"{exc}; {fix}") from None
        users[user.name] = user
    removed = raw.get("removed", [])
    if not isinstance(removed, list) or not all(isinstance(n, str) for n in removed):
        raise ConfigError(str(path), f"'removed' is not a list of names; {fix}")
    return Overlay(users, frozenset(removed))


def save_overlay(data_dir: Path, overlay: Overlay) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of either."""
    body = {
        "users": [user_to_entry(u) for u in sorted(overlay.users.values(), key=lambda u: u.name)],
        "removed": sorted(overlay.removed),
    }
    atomic_write(data_dir / USERS_FILE, (json.dumps(body, indent=1) + "\n").encode())


def merge_users(config: Sequence[UserConfig], overlay: Overlay) -> tuple[UserConfig, ...]:
    """The file's users in their order, replaced or hidden by the overlay; then the API's own."""
    out: list[UserConfig] = []
    seen: set[str] = set()
    for user in config:
        seen.add(user.name)
        if user.name in overlay.removed and user.name not in overlay.users:
            continue
        out.append(overlay.users.get(user.name, user))
    out.extend(u for name, u in overlay.users.items() if name not in seen)
    return tuple(out)
