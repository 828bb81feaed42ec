"""What the operator's small HTTP ports (the stats port, the management API) share.

One request per connection, answered and closed; served on the careful accept path
(:class:`~mtproxy.proxy.accept.StreamServer`, with a spare descriptor), so they keep
answering when clients hold every other descriptor, and a shortage is one throttled
log line. A subclass reads and answers the request in :meth:`LocalHttp.respond`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Iterable

from mtproxy.protocol.dc import Endpoint
from mtproxy.proxy.accept import StreamServer
from mtproxy.throttled_log import ThrottledLog

#: Seconds a client has to send its request.
REQUEST_TIMEOUT = 5.0


def response(
    status: int, kind: str, body: bytes, *, length: int | None = None,
    headers: Iterable[str] = (), reason: str | None = None,
) -> bytes:
    """A whole HTTP/1.1 response; ``length`` differs from the body's for a HEAD answer."""
    if reason is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
    head = [
        f"HTTP/1.1 {status} {reason}", f"Content-Type: {kind}",
        f"Content-Length: {len(body) if length is None else length}", *headers,
        "Connection: close",
    ]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class LocalHttp:
    #: Names the port in log lines ("stats port", "management API").
    label = "HTTP port"

    def __init__(self, endpoint: Endpoint, log: logging.Logger) -> None:
        self.endpoint = endpoint
        self.log = log
        self.shortages = ThrottledLog(log)
        self._server: StreamServer | None = None

    async def start(self) -> None:
        host, port = self.endpoint
        server = StreamServer(self._handle, self._shortage)
        await server.start(host, port)
        self._server = server

    @property
    def address(self) -> Endpoint:
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _shortage(self, exc: OSError) -> None:
        self.shortages.log(logging.WARNING, "fds", f"{self.label}: out of file descriptors "
                           f"({exc.strerror or exc}); requests wait")  # fmt: skip

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self.respond(reader, writer)
            if answer is not None:
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def respond(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """The whole response to the request on ``reader`` (None: close without one)."""
        raise NotImplementedError
