"""A stand-in for the masking web site: records what a proxy forwards to it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecordedConn:
    """Bytes one forwarded connection delivered, and whether it has finished."""

    data: bytearray = field(default_factory=bytearray)
    closed: bool = False
    peer: tuple[Any, ...] = ()


class RecordingServer:
    """Accepts TCP, sends ``reply`` once the first bytes arrive, keeps every received byte.

    Closes after the peer's EOF (or at once after replying if ``close_after_reply``), so a
    test can check that a proxy forwarded a probe verbatim and relayed the answer back.
    """

    def __init__(
        self,
        reply: bytes = b"",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        close_after_reply: bool = False,
    ) -> None:
        self.reply = reply
        self.host = host
        self.port = port
        self.close_after_reply = close_after_reply
        self.connections: list[RecordedConn] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        self._server = None

    async def __aenter__(self) -> RecordingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_bytes(self, count: int, timeout: float = 10.0, index: int = 0) -> bytes:
        """Wait until connection ``index`` has delivered at least ``count`` bytes."""
        async with asyncio.timeout(timeout):
            while len(self.connections) <= index or len(self.connections[index].data) < count:
                self._changed.clear()
                await self._changed.wait()
        return bytes(self.connections[index].data)

    async def wait_closed_connections(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.connections) < count or not all(c.closed for c in self.connections):
                self._changed.clear()
                await self._changed.wait()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = RecordedConn(peer=tuple(peer) if peer else ())
        self.connections.append(conn)
        self._changed.set()
        replied = not self.reply
        try:
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                conn.data += chunk
                self._changed.set()
                if not replied:
                    replied = True
                    writer.write(self.reply)
                    await writer.drain()
                    if self.close_after_reply:
                        break
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5.0)
            conn.closed = True
            self._changed.set()
