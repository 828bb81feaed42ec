"""The program's assembly: which loop, which listeners, which upstreams.

The zero-config fallbacks (no IPv6, no permission for port 443) are exercised for real
in tests/test_cli.py inside a network namespace; here every branch of the decision is
driven through a stand-in for the socket call, which no machine offers all at once.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import errno
import inspect
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

from mtproxy import app
from mtproxy.config.errors import ConfigError
from mtproxy.config.settings import Settings, load_settings
from mtproxy.middle import MiddleUpstreams
from mtproxy.protocol.dc import Endpoint
from mtproxy.proxy.direct import DirectUpstreams
from mtproxy.proxy.sockets import ListenError

KEY = "00112233445566778899aabbccddeeff"


def test_the_upstreams_follow_the_settings() -> None:
    assert app.upstreams_for(load_settings({"secrets": [KEY]})) is DirectUpstreams
    tagged = load_settings({"secrets": [KEY], "tag": "ab" * 16})
    assert app.upstreams_for(tagged) is MiddleUpstreams


def test_the_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    assert app.event_loop_factory("asyncio") is asyncio.new_event_loop
    assert app.event_loop_factory("auto") is uvloop.new_event_loop
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert app.event_loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        app.event_loop_factory("uvloop")


def test_a_loop_that_cannot_be_had_leaves_no_coroutine_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> int:
        return 0

    def refuse(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
        raise ConfigError("--event-loop", "no")

    monkeypatch.setattr(app, "event_loop_factory", refuse)
    coro = main()
    with pytest.raises(ConfigError):
        app.run_until_signal(coro, "uvloop")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"


def fake_bind(
    monkeypatch: pytest.MonkeyPatch, failures: dict[Endpoint, OSError]
) -> list[Endpoint]:
    bound: list[Endpoint] = []

    def bind(endpoint: Endpoint, **_: Any) -> socket.socket:
        if endpoint in failures:
            raise failures[endpoint]
        bound.append(endpoint)
        return socket.socket()

    monkeypatch.setattr(app, "listening_socket", bind)
    return bound


def defaults() -> Settings:
    return load_settings({"secrets": [KEY]})


def test_the_default_listeners_degrade_gracefully(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bound = fake_bind(monkeypatch, {
        ("0.0.0.0", 443): PermissionError(errno.EACCES, "Permission denied"),
        ("::", 443): OSError(errno.EAFNOSUPPORT, "Address family not supported"),
    })  # fmt: skip
    with caplog.at_level(logging.INFO, logger="mtproxy"):
        socks = app.bind_listeners(defaults())
    for sock in socks:
        sock.close()
    assert bound == [("0.0.0.0", app.FALLBACK_PORT)]
    assert "no permission to use port 443; listening on 0.0.0.0:8443 instead" in caplog.text
    assert "IPv6 unavailable, not listening on [::]:443" in caplog.text


def test_listeners_the_operator_named_do_not_degrade(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bind(monkeypatch, {("127.0.0.1", 443): PermissionError(errno.EACCES, "denied")})
    settings = load_settings({"secrets": [KEY], "listen": ["127.0.0.1:443"]})
    with pytest.raises(ListenError, match=r"cannot listen on 127\.0\.0\.1:443: permission denied"):
        app.bind_listeners(settings)


def test_other_bind_errors_close_what_was_bound_and_say_which(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[socket.socket] = []

    def bind(endpoint: Endpoint, **_: Any) -> socket.socket:
        if endpoint[0] == "::":
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = socket.socket()
        opened.append(sock)
        return sock

    monkeypatch.setattr(app, "listening_socket", bind)
    with pytest.raises(ListenError, match=r"cannot listen on \[::\]:443: Address already"):
        app.bind_listeners(defaults())
    assert [s.fileno() for s in opened] == [-1]


def test_nothing_bound_at_all_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    unsupported = OSError(errno.EAFNOSUPPORT, "not supported")
    fake_bind(monkeypatch, {
        ("0.0.0.0", 443): OSError(errno.EADDRNOTAVAIL, "x"), ("::", 443): unsupported,
    })  # fmt: skip
    with pytest.raises(ListenError):
        app.bind_listeners(defaults())
    only_ipv6 = dataclasses.replace(defaults(), listen=(("::", 443),))
    with pytest.raises(ListenError, match="no address could be bound"):
        app.bind_listeners(only_ipv6)
