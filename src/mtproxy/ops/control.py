"""The supervisor <-> worker channel: length-prefixed JSON messages over a socketpair.

Requests carry an ``id`` and get exactly one reply carrying ``re`` = that id; other
messages are notifications. Either side can ask. Stats, ledger decisions and the
worker's "ready" travel here; signals (SIGHUP, SIGTERM) travel as real signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("mtproxy.control")

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[Message | None]]
LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024


class Channel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer, handler)

    def send(self, message: Message) -> None:
        if self.closed.is_set():
            raise ConnectionError("control channel closed")
        data = json.dumps(message, separators=(",", ":")).encode()
        self.writer.write(LENGTH.pack(len(data)) + data)

    def request(self, message: Message) -> asyncio.Future[Message]:
        """Send a request; the future gets the reply (or ConnectionError if the peer goes)."""
        ident = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self.send(dict(message, id=ident))
        except ConnectionError:
            del self._waiting[ident]
            raise
        return future

    async def ask(self, message: Message, timeout: float) -> Message:
        future = self.request(message)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting = {k: v for k, v in self._waiting.items() if v is not future}

    async def _read_loop(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(LENGTH.size)
                (size,) = LENGTH.unpack(head)
                if size > MAX_MESSAGE:
                    raise ConnectionError(f"control message of {size} bytes")
                message: Message = json.loads(await self.reader.readexactly(size))
                reply_to = message.get("re")
                if reply_to is not None:
                    future = self._waiting.pop(reply_to, None)
                    if future is not None and not future.done():
                        future.set_result(message)
                    continue
                asyncio.get_running_loop().create_task(self._answer(message))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
            log.debug("control channel closed: %s", exc)
        finally:
            self._shut()

    async def _answer(self, message: Message) -> None:
        try:
            reply = await self.handler(message)
        except Exception:
            log.exception("control request %s failed", message.get("op"))
            reply = {"error": True} if "id" in message else None
        if reply is not None and "id" in message:
            with contextlib.suppress(ConnectionError):
                self.send(dict(reply, re=message["id"]))

    def _shut(self) -> None:
        self.closed.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("control channel closed"))
        self._waiting.clear()
        self.writer.close()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._shut()
