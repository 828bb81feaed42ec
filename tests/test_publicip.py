"""Public-address detection against "what is my IP" services on loopback: the first
plausible answer of the wanted family wins, nonsense and slowness give None."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fakes.web import ThreadedWeb

from mtproxy.publicip import detect_public_ip


@pytest.fixture
def services() -> Iterator[ThreadedWeb]:
    with ThreadedWeb().running() as web:
        yield web


async def test_first_plausible_answer_of_the_family_wins(services: ThreadedWeb) -> None:
    services.routes.update({
        "/junk": (200, b"<html>no</html>"),
        "/v6": (200, b"2001:db8::7\n"),
        "/v4": (200, b" 203.0.113.9\n"),
    })  # fmt: skip
    services.delays["/v4"] = 0.2
    urls = [services.url(p) for p in ("/junk", "/missing", "/v6", "/v4")]
    assert await detect_public_ip(urls, timeout=5) == "203.0.113.9"
    assert await detect_public_ip(urls, timeout=5, family=6) == "2001:db8::7"


async def test_nonsense_or_nothing_gives_none(services: ThreadedWeb) -> None:
    services.routes["/junk"] = (200, b"localhost")
    assert await detect_public_ip([services.url("/junk"), services.url("/missing")]) is None
    assert await detect_public_ip([]) is None


async def test_slow_services_give_none_in_bounded_time(services: ThreadedWeb) -> None:
    services.routes["/slow"] = (200, b"203.0.113.9")
    services.delays["/slow"] = 2.5
    started = time.monotonic()
    assert await detect_public_ip([services.url("/slow")], timeout=0.2) is None
    assert time.monotonic() - started < 2.0
