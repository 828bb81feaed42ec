"""The management API: users with live usage, and changes to them, for panels and bots.

JSON over HTTP/1.1 on its own address (``--api``, off by default: it can hand out
access to the proxy, so nothing exposes it unless the operator asks), one request per
connection, every request authenticated with ``Authorization: Bearer TOKEN`` (compared
in constant time). The token is ``--api-token`` or the data directory's ``api-token``
file, created (atomically, mode 0600) on first start; a panel on the same machine
reads it from there.

A change is checked like a configuration file (unique names and secrets), written
atomically to ``users.json`` in the data directory (see
:mod:`mtproxy.config.users`), then applied to every worker through the reload path:
sessions go on, new handshakes follow the new users. The answer comes once every
worker has applied it. Endpoints: docs/api.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, with_users
from mtproxy.config.users import (
    Overlay,
    UserConfig,
    byte_rate,
    byte_size,
    expiry,
    load_overlay,
    merge_users,
    save_overlay,
    user_entry,
)
from mtproxy.ops.http import LocalHttp, response
from mtproxy.ops.stats_server import StatsView
from mtproxy.protocol.dc import Endpoint, format_endpoint
from mtproxy.protocol.secret import ClientSecret, Mode, format_secret, generate_secret, links_for
from mtproxy.state import StateError, atomic_write

log = logging.getLogger("mtproxy.api")

TOKEN_FILE = "api-token"
REQUEST_TIMEOUT = 10.0
MAX_HEAD = 8192
MAX_BODY = 64 * 1024
LIMIT_KEYS = ("max_connections", "max_ips", "quota", "rate_up", "rate_down", "expires")


class Backend(Protocol):
    """What the API drives: the single serving process, or the supervisor of workers."""

    @property
    def settings(self) -> Settings: ...
    @property
    def addresses(self) -> list[Endpoint]: ...
    async def view(self) -> StatsView: ...
    async def apply(self, settings: Settings) -> int:
        """Switch every worker to ``settings``; how many confirmed."""
    async def reset_quota(self, name: str) -> None: ...
    async def reread(self) -> str | None:
        """Re-read the configuration (as SIGHUP); the problem, or None."""
    async def link_host(self) -> str: ...


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def load_token(settings: Settings) -> str:
    """The configured token, else the data directory's, created when missing."""
    if settings.api_token:
        return settings.api_token
    path = settings.data_dir / TOKEN_FILE
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"cannot read {path}: {exc}; fix or delete it") from None
    if len(token) >= 16:
        return token
    token = secrets.token_urlsafe(32)
    try:
        atomic_write(path, (token + "\n").encode(), 0o600)
    except OSError as exc:
        raise StateError(
            f"cannot write {path}: {exc.strerror or exc}; choose a writable --data-dir "
            "or pass --api-token"
        ) from None
    log.info("management API token created in %s", path)
    return token


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat().replace("+00:00", "Z")


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/api/health"), "health"),
    ("GET", re.compile(r"/api/stats"), "stats"),
    ("POST", re.compile(r"/api/reload"), "reload"),
    ("GET", re.compile(r"/api/users"), "list_users"),
    ("POST", re.compile(r"/api/users"), "add_user"),
    ("GET", re.compile(r"/api/users/([^/]+)"), "get_user"),
    ("PATCH", re.compile(r"/api/users/([^/]+)"), "change_user"),
    ("DELETE", re.compile(r"/api/users/([^/]+)"), "remove_user"),
    ("POST", re.compile(r"/api/users/([^/]+)/disable"), "disable_user"),
    ("POST", re.compile(r"/api/users/([^/]+)/enable"), "enable_user"),
    ("POST", re.compile(r"/api/users/([^/]+)/rotate-secret"), "rotate_secret"),
    ("POST", re.compile(r"/api/users/([^/]+)/reset-quota"), "reset_quota"),
]
#: Every (method, path pattern) served, for the documentation's test.
ROUTES = [(method, pattern.pattern) for method, pattern, _ in _ROUTES]
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON ({exc}); send a JSON object") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object; send {\"key\": value, ...}")
        return data


class ApiServer(LocalHttp):
    label = "management API"

    def __init__(self, endpoint: Endpoint, token: str, backend: Backend) -> None:
        super().__init__(endpoint, log)
        self.token = token.encode()
        self.backend = backend
        self._lock = asyncio.Lock()
        self._host: str | None = None

    async def start(self) -> None:
        await super().start()
        if not _is_loopback(self.endpoint[0]):
            log.warning("management API on %s, beyond this machine: the token travels in "
                        "clear; put TLS (a reverse proxy) or an SSH tunnel in front",
                        format_endpoint(self.endpoint))  # fmt: skip

    # -- HTTP --------------------------------------------------------------------------------

    async def respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await self._read(reader)
            status, body = await self._answer(request)
        except ApiError as exc:
            status, body = exc.status, {"error": str(exc)}
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return None
        except Exception as exc:  # an answer, never a dead connection
            log.exception("API request failed")
            status, body = 500, {"error": f"internal error: {exc}"}
        headers = ["Cache-Control: no-store"]
        if status == 401:
            headers.append('WWW-Authenticate: Bearer realm="mtproxy"')
        data = (json.dumps(body, indent=1) + "\n").encode()
        return response(status, "application/json", data, headers=headers,
                        reason=_REASONS.get(status, "Error"))  # fmt: skip

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ApiError(413, "request head too large; send fewer headers")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ApiError(400, "not an HTTP/1.1 request; send METHOD PATH HTTP/1.1")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise ApiError(400, "bad Content-Length; send the body's size in bytes")
        length = int(length_text)
        if length > MAX_BODY:
            raise ApiError(413, f"body over {MAX_BODY} bytes; send less")
        body = await reader.readexactly(length) if length else b""
        return Request(parts[0].upper(), parts[1].split("?", 1)[0], headers, body)

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token)  # fmt: skip

    async def _answer(self, request: Request) -> tuple[int, Any]:
        if not self._authorized(request):
            raise ApiError(401, "missing or wrong token; send Authorization: Bearer <token> "
                           "(the token is in the data directory's api-token file)")
        allowed: list[str] = []
        for method, pattern, name in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            handler: Callable[..., Awaitable[tuple[int, Any]]] = getattr(self, name)
            if request.method == "GET":
                return await handler(request, *match.groups())
            async with self._lock:
                return await handler(request, *match.groups())
        if allowed:
            raise ApiError(405, f"{request.method} is not allowed here; use "
                           f"{' or '.join(allowed)}")  # fmt: skip
        raise ApiError(404, f"no such endpoint {request.path!r}; see docs/api.md")

    # -- reading ------------------------------------------------------------------------------

    async def health(self, request: Request) -> tuple[int, Any]:
        view = await self.backend.view()
        return 200, {
            "status": "draining" if view.snapshot["draining"] else "ok",
            "pid": view.pid,
            "uptime": int(time.time() - view.started),
            "workers": len(view.workers) or 1,
            "listen": [format_endpoint(a) for a in self.backend.addresses],
        }

    async def stats(self, request: Request) -> tuple[int, Any]:
        view = await self.backend.view()
        snap = view.snapshot
        return 200, {
            "pid": view.pid,
            "started": _iso(view.started),
            "counters": snap["counters"],
            "handshakes": snap["handshakes"],
            "refused": snap["refused"],
            "reloads": snap["reloads"],
            "draining": bool(snap["draining"]),
            "workers": view.workers,
        }

    def _user(self, name: str) -> UserConfig:
        for user in self.backend.settings.users:
            if user.name == name:
                return user
        raise ApiError(404, f"no user {name!r}; GET /api/users lists them")

    async def _describe(self, user: UserConfig, usage: dict[str, Any] | None,
                        links: bool) -> dict[str, Any]:  # fmt: skip
        base = self.backend.settings.file_users
        live = usage or {}
        out: dict[str, Any] = {
            "name": user.name,
            "secret": user.secret.key.hex(),
            "disabled": user.disabled,
            "source": "config" if user in base else "api",
            "limits": {"max_connections": user.max_connections, "max_ips": user.max_ips,
                       "quota": user.quota, "rate_up": user.rate_up,
                       "rate_down": user.rate_down, "expires": _iso(user.expires)},
            "usage": {
                "connections": live.get("connections_active", 0),
                "connections_total": live.get("connections_total", 0),
                "bytes_from_client": live.get("bytes_from_client", 0),
                "bytes_to_client": live.get("bytes_to_client", 0),
                "quota_used": live.get("quota_used") or 0,
                "throttled_seconds_up": round(live.get("throttled_up", 0.0), 3),
                "throttled_seconds_down": round(live.get("throttled_down", 0.0), 3),
                "ips": live.get("ips", {}),
                "refused": live.get("refused", {}),
            },
        }  # fmt: skip
        if links:
            out["links"] = await self._links(user)
        return out

    async def _links(self, user: UserConfig) -> list[dict[str, str]]:
        settings = self.backend.settings
        if self._host is None:
            self._host = await self.backend.link_host()
        port = self.backend.addresses[0][1]
        secret = user.secret
        domains = [secret.domain] if secret.mode is Mode.TLS and secret.domain else []
        found = links_for(self._host, port, secret.key, settings.modes,
                          domains + [d for d in settings.tls_domains if d not in domains])
        return [{"mode": link.secret.mode.value, "secret": format_secret(
                    link.secret.key, link.secret.mode, link.secret.domain),
                 "tg": link.tg, "https": link.https} for link in found]  # fmt: skip

    async def _usage(self) -> dict[str, Any]:
        users: dict[str, Any] = (await self.backend.view()).snapshot["users"]
        return users

    async def list_users(self, request: Request) -> tuple[int, Any]:
        usage = await self._usage()
        users = [await self._describe(u, usage.get(u.name), links=False)
                 for u in self.backend.settings.users]  # fmt: skip
        return 200, {"users": users}

    async def get_user(self, request: Request, name: str) -> tuple[int, Any]:
        user = self._user(name)
        return 200, await self._describe(user, (await self._usage()).get(name), links=True)

    # -- changing -----------------------------------------------------------------------------

    async def _commit(self, overlay: Overlay) -> int:
        """Check the new user list, persist it, apply it everywhere."""
        current = self.backend.settings
        try:
            new = with_users(current, merge_users(current.file_users, overlay))
        except ConfigError as exc:
            raise ApiError(409, exc.problem) from None
        try:
            save_overlay(current.data_dir, overlay)
        except (OSError, StateError) as exc:
            raise ApiError(500, f"cannot save {current.data_dir}/users.json: {exc}; "
                           "make the data directory writable") from None  # fmt: skip
        applied = await self.backend.apply(new)
        log.info("API: users changed, applied by %d workers", applied)
        return applied

    def _overlay(self) -> Overlay:
        try:
            return load_overlay(self.backend.settings.data_dir)
        except ConfigError as exc:
            raise ApiError(500, str(exc)) from None

    async def _put(self, user: UserConfig) -> None:
        overlay = self._overlay()
        await self._commit(Overlay({**overlay.users, user.name: user},
                                   overlay.removed - {user.name}))

    async def add_user(self, request: Request) -> tuple[int, Any]:
        data = request.json()
        data.setdefault("secret", generate_secret().hex())
        try:
            user = user_entry(data)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if any(u.name == user.name for u in self.backend.settings.users):
            raise ApiError(409, f"user {user.name!r} exists; PATCH /api/users/{user.name} "
                           "changes it")  # fmt: skip
        await self._put(user)
        return 201, await self._describe(user, None, links=True)

    async def change_user(self, request: Request, name: str) -> tuple[int, Any]:
        user = self._user(name)
        data = request.json()
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if key not in (*LIMIT_KEYS, "disabled"):
                raise ApiError(400, f"{key!r} cannot be changed here; send any of "
                               f"{', '.join((*LIMIT_KEYS, 'disabled'))} (the secret: "
                               "POST .../rotate-secret)")  # fmt: skip
            changes[key] = _limit(key, value)
        user = dataclasses.replace(user, **changes)
        await self._put(user)
        return 200, await self._describe(user, (await self._usage()).get(name), links=False)

    async def _set_disabled(self, name: str, disabled: bool) -> tuple[int, Any]:
        user = dataclasses.replace(self._user(name), disabled=disabled)
        await self._put(user)
        return 200, await self._describe(user, (await self._usage()).get(name), links=False)

    async def disable_user(self, request: Request, name: str) -> tuple[int, Any]:
        return await self._set_disabled(name, True)

    async def enable_user(self, request: Request, name: str) -> tuple[int, Any]:
        return await self._set_disabled(name, False)

    async def remove_user(self, request: Request, name: str) -> tuple[int, Any]:
        self._user(name)
        overlay = self._overlay()
        users = {k: v for k, v in overlay.users.items() if k != name}
        await self._commit(Overlay(users, overlay.removed | {name}))
        return 200, {"removed": name}

    async def rotate_secret(self, request: Request, name: str) -> tuple[int, Any]:
        user = self._user(name)
        given = request.json().get("secret")
        try:
            if given is None:
                secret = ClientSecret(generate_secret(), user.secret.mode, user.secret.domain)
            else:
                secret = user_entry({"name": name, "secret": given}).secret
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        user = dataclasses.replace(user, secret=secret)
        await self._put(user)
        return 200, await self._describe(user, (await self._usage()).get(name), links=True)

    async def reset_quota(self, request: Request, name: str) -> tuple[int, Any]:
        user = self._user(name)
        await self.backend.reset_quota(name)
        return 200, await self._describe(user, (await self._usage()).get(name), links=False)

    async def reload(self, request: Request) -> tuple[int, Any]:
        problem = await self.backend.reread()
        if problem is not None:
            raise ApiError(409, f"reload failed, the running configuration stays: {problem}")
        return 200, {"reloaded": True, "users": len(self.backend.settings.users)}


def _limit(key: str, value: Any) -> Any:
    """One PATCH value: null clears a limit."""
    if key == "disabled":
        if not isinstance(value, bool):
            raise ApiError(400, "disabled: send true or false")
        return value
    if value is None:
        return None
    try:
        if key == "quota":
            return byte_size(value)
        if key in ("rate_up", "rate_down"):
            return byte_rate(value)
        if key == "expires":
            return expiry(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{value!r} is not a positive whole number; send e.g. 8")
        return value
    except ValueError as exc:
        raise ApiError(400, f"{key}: {exc}") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


