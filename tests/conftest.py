"""Test-suite plumbing: run ``async def`` tests on a fresh event loop with a hard timeout.

Every async test gets its own loop and is cancelled after ``@pytest.mark.timeout_s(N)``
seconds (default 60), so no test can hang the suite. A test that takes the
``loop_impl`` fixture runs once on the standard asyncio loop and once on uvloop, the
loop the proxy uses in production.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

DEFAULT_TIMEOUT_S = 60.0


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
