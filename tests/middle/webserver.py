"""A tiny HTTP/1.0 server on loopback standing in for core.telegram.org."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from types import TracebackType


@dataclass
class Reply:
    """What one path answers: status, body, and optionally a lying Content-Length."""

    body: bytes
    status: int = 200
    content_type: str = "text/plain"
    declared_length: int | None = None


class ConfigWebServer:
    """Serves :attr:`routes` (path -> Reply); unknown paths get 404. Counts hits."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.hits: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> ConfigWebServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.hits[path] += 1
            reply = self.routes.get(path, Reply(b"not found", 404))
            length = len(reply.body) if reply.declared_length is None else reply.declared_length
            writer.write(
                f"HTTP/1.0 {reply.status} X\r\nContent-Type: {reply.content_type}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode()
                + reply.body
            )
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, IndexError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
