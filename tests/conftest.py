"""Test-suite plumbing: run ``async def`` tests on a fresh event loop with a hard timeout.

Every async test gets its own loop and is cancelled after ``@pytest.mark.timeout_s(N)``
seconds (default 60), so no test can hang the suite. A test that takes the
``loop_impl`` fixture runs once on the standard asyncio loop and once on uvloop, the
loop the proxy uses in production. And no test looks up a name other than loopback's
in this process (see :func:`names_stay_on_this_machine`).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

DEFAULT_TIMEOUT_S = 60.0


_LOOPBACK_NAMES = frozenset({"", "localhost", "localhost.localdomain", "ip6-localhost",
                             "ip6-loopback"})  # fmt: skip


def _stays_here(host: object) -> bool:
    """No lookup leaves the machine for this host: none, loopback's name, or an address."""
    if host is None:
        return True
    name = (host.decode(errors="replace") if isinstance(host, bytes) else str(host)).lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        ipaddress.ip_address(name.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def names_stay_on_this_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Tests talk to loopback only; looking up any other name asks the system's DNS server,
    a packet off the machine. Such a lookup fails (as an unknown name) and so does the
    test. This sees lookups in the test's own process, asyncio's included; uvloop
    resolves in C and subprocesses on their own (tests start those inside ``unshare -n``,
    or with ``--mask off``; scripts/loopback_audit.py catches what slips through)."""
    looked_up: list[object] = []
    lookup = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _stays_here(host):
            looked_up.append(host)
            raise socket.gaierror(socket.EAI_NONAME, f"{host!r}: tests stay on loopback")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield looked_up
    assert not looked_up, f"the test looked up {looked_up}: tests may only talk to loopback"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout_s(seconds): hard timeout for an async test")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_impl(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    marker = pyfuncitem.get_closest_marker("timeout_s")
    timeout = float(marker.args[0]) if marker else DEFAULT_TIMEOUT_S
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}

    async def guarded() -> None:
        async with asyncio.timeout(timeout):
            await func(**kwargs)

    with asyncio.Runner(loop_factory=_loop_factory(kwargs.get("loop_impl", "asyncio"))) as runner:
        runner.run(guarded())
    return True
