"""Public-address detection against "what is my IP" services on loopback: the first
plausible answer of the wanted family wins, nonsense and slowness give None."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from mtproxy.publicip import detect_public_ip


class Services:
    """One loopback web server; each path answers its text, after its delay."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[float, bytes]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                delay, body = routes.get(self.path, (0.0, b""))
                time.sleep(delay)
                self.send_response(200 if self.path in routes else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a client that gave up waiting
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def services() -> Iterator[Services]:
    web = Services()
    thread = threading.Thread(target=web.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield web
    finally:
        web.server.shutdown()
        web.server.server_close()
        thread.join(5)


async def test_first_plausible_answer_of_the_family_wins(services: Services) -> None:
    services.routes.update({
        "/junk": (0.0, b"<html>no</html>"),
        "/v6": (0.0, b"2001:db8::7\n"),
        "/v4": (0.2, b" 203.0.113.9\n"),
    })  # fmt: skip
    urls = [services.url(p) for p in ("/junk", "/missing", "/v6", "/v4")]
    assert await detect_public_ip(urls, timeout=5) == "203.0.113.9"
    assert await detect_public_ip(urls, timeout=5, family=6) == "2001:db8::7"


async def test_nonsense_or_nothing_gives_none(services: Services) -> None:
    services.routes["/junk"] = (0.0, b"localhost")
    assert await detect_public_ip([services.url("/junk"), services.url("/missing")]) is None
    assert await detect_public_ip([]) is None


async def test_slow_services_give_none_in_bounded_time(services: Services) -> None:
    services.routes["/slow"] = (2.5, b"203.0.113.9")
    started = time.monotonic()
    assert await detect_public_ip([services.url("/slow")], timeout=0.2) is None
    assert time.monotonic() - started < 2.0
