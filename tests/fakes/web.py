"""A loopback HTTP server with settable answers per path, for code that fetches with
blocking urllib (Telegram's files, "what is my IP" services, the entrypoint's downloads).

It runs in a thread of its own, so it answers while a test's event loop (or a
subprocess) waits on the request. Unknown paths get 404; every request is counted.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator


class ThreadedWeb:
    def __init__(self, routes: dict[str, tuple[int, bytes]] | None = None) -> None:
        #: path -> (status, body); and seconds to wait before answering (a slow service).
        self.routes: dict[str, tuple[int, bytes]] = dict(routes or {})
        self.delays: dict[str, float] = {}
        self.hits: Counter[str] = Counter()
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                web.hits[self.path] += 1
                status, body = web.routes.get(self.path, (404, b"not found"))
                time.sleep(web.delays.get(self.path, 0.0))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a client that gave up waiting
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    @contextlib.contextmanager
    def running(self) -> Iterator[ThreadedWeb]:
        thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)
