"""A fake Telegram DC: accepts secret-less obfuscated2 connections and runs a handler on each."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import CipherContext

from .obfs import HEADER_LEN, BadHeaderError, ObfsStream, accept_header, aes_ctr

DcHandler = Callable[["DcConn"], Awaitable[None]]


@dataclass(frozen=True)
class SinkResult:
    """What a sink handler received: byte count and SHA-256 (hex)."""

    count: int
    sha256: str


class DcConn(ObfsStream):
    """One accepted connection: the plaintext stream plus what the DC observed about it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        header: bytes,
    ) -> None:
        accepted = accept_header(header, None)
        super().__init__(
            reader,
            writer,
            encryptor=accepted.encryptor,
            decryptor=accepted.decryptor,
            tag=accepted.tag,
            peer_is_client=True,
        )
        self.header = header
        self.header_plain = accepted.plain
        self.dc_id = accepted.dc_id
        self.tag_ok = accepted.tag_ok
        peer = writer.get_extra_info("peername")
        self.peer: tuple[Any, ...] = tuple(peer) if peer else ()
        self.closed = False
        self.error: BaseException | None = None
        self.sink: SinkResult | None = None
        self.packets_in = 0
        self.quickacks_in = 0
        self.done = asyncio.Event()


class FakeDC:
    """A loopback server speaking obfuscated2 as a Telegram DC does.

    Every connection whose 64-byte header arrives is appended to ``connections`` (even with a
    bad tag, then ``error`` is a BadHeaderError and the handler is not run); connections that
    close before 64 bytes land in ``handshake_failures``.
    """

    def __init__(
        self,
        handler: DcHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        header_timeout: float = 10.0,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.header_timeout = header_timeout
        self.connections: list[DcConn] = []
        self.handshake_failures: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
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
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    async def __aenter__(self) -> FakeDC:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def errors(self) -> list[BaseException]:
        return [c.error for c in self.connections if c.error is not None]

    async def wait_connections(self, count: int, timeout: float = 10.0) -> list[DcConn]:
        """Wait until ``count`` connections have sent their header."""
        async with asyncio.timeout(timeout):
            while len(self.connections) < count:
                await self._wait_change()
        return list(self.connections)

    async def wait_closed_connections(self, count: int, timeout: float = 10.0) -> list[DcConn]:
        """Wait until ``count`` connections have arrived and every one of them has finished."""
        async with asyncio.timeout(timeout):
            while len(self.connections) < count or not all(c.closed for c in self.connections):
                await self._wait_change()
        return list(self.connections)

    async def _wait_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in a task of our own: stop() cancels that one, never the task asyncio
        # made for this callback (asyncio's done-callback would log the cancellation).
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: DcConn | None = None
        try:
            try:
                header = await asyncio.wait_for(reader.readexactly(HEADER_LEN), self.header_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
                self.handshake_failures.append(exc)
                return
            conn = DcConn(reader, writer, header)
            self.connections.append(conn)
            self._changed.set()
            if not conn.tag_ok:
                conn.error = BadHeaderError(f"unknown protocol tag {conn.tag.hex()}")
                return
            try:
                await self.handler(conn)
                await conn.drain()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                conn.error = exc
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5.0)
            if conn is not None:
                conn.closed = True
                conn.done.set()
            self._changed.set()


# ---------------------------------------------------------------------------------------------
# Deterministic data


def _keystream(seed: int) -> CipherContext:
    key = hashlib.sha256(b"mtproxy-fakes-stream" + struct.pack("<q", seed)).digest()
    return aes_ctr(key, bytes(16))


def deterministic_chunks(total: int, seed: int, chunk: int = 1 << 18) -> Iterator[bytes]:
    """``total`` pseudo-random bytes for ``seed``, independent of how they are chunked."""
    ks = _keystream(seed)
    zeros = bytes(chunk)
    left = total
    while left > 0:
        n = min(chunk, left)
        yield ks.update(zeros[:n] if n < chunk else zeros)
        left -= n


def deterministic_bytes(total: int, seed: int) -> bytes:
    return b"".join(deterministic_chunks(total, seed))


def deterministic_sha256(total: int, seed: int) -> str:
    digest = hashlib.sha256()
    for part in deterministic_chunks(total, seed):
        digest.update(part)
    return digest.hexdigest()


class StreamDigest:
    """Running byte count and SHA-256 of a stream seen in pieces."""

    def __init__(self) -> None:
        self.count = 0
        self._sha = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self.count += len(data)
        self._sha.update(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def digest(self) -> bytes:
        return self._sha.digest()

    def result(self) -> SinkResult:
        return SinkResult(self.count, self.hexdigest())


class StreamVerifier:
    """Compares received pieces against the deterministic stream, locating the first bad byte."""

    def __init__(self, total: int, seed: int) -> None:
        self.total = total
        self.count = 0
        self.mismatch_at: int | None = None
        self._ks = _keystream(seed)

    def feed(self, data: bytes) -> None:
        if self.count + len(data) > self.total and self.mismatch_at is None:
            self.mismatch_at = self.total
        expect = self._ks.update(bytes(len(data)))
        if self.mismatch_at is None and expect != data:
            first = next(i for i, (a, b) in enumerate(zip(expect, data, strict=True)) if a != b)
            self.mismatch_at = self.count + first
        self.count += len(data)

    @property
    def ok(self) -> bool:
        return self.mismatch_at is None and self.count == self.total


# ---------------------------------------------------------------------------------------------
# Ready-made handlers


async def _drain_until_eof(conn: DcConn) -> None:
    """Swallow the peer's remaining bytes so closing does not turn into an RST that would
    destroy data still in flight towards the peer."""
    while await conn.read(1 << 18):
        pass


async def echo_handler(conn: DcConn) -> None:
    """Echo plaintext back until EOF, then half-close."""
    while True:
        data = await conn.read(1 << 18)
        if not data:
            break
        conn.write(data)
        await conn.drain()
    conn.write_eof()


async def packet_echo_handler(conn: DcConn) -> None:
    """Echo every packet re-encoded in the connection's framing, then half-close at EOF."""
    while True:
        try:
            packet = await conn.recv_packet_ex()
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            break
        conn.packets_in += 1
        conn.quickacks_in += packet.quickack
        conn.send_packet(packet.payload)
        await conn.drain()
    conn.write_eof()


async def endless_source_handler(conn: DcConn) -> None:
    """Send zeros, 64 KiB at a time, as fast as the proxy takes them, until it goes."""
    block = bytes(64 * 1024)
    try:
        while True:
            conn.write(block)
            await conn.drain()
    except (ConnectionError, OSError):
        return


def make_source_handler(total: int, seed: int, *, chunk: int = 1 << 18) -> DcHandler:
    """Send ``total`` deterministic bytes, half-close, then wait for the peer's EOF."""

    async def source_handler(conn: DcConn) -> None:
        for part in deterministic_chunks(total, seed, chunk):
            conn.write(part)
            await conn.drain()
        conn.write_eof()
        await _drain_until_eof(conn)

    return source_handler


async def _sink(conn: DcConn, read_size: int, delay: float) -> StreamDigest:
    digest = StreamDigest()
    while True:
        data = await conn.read(read_size)
        if not data:
            break
        digest.update(data)
        if delay:
            await asyncio.sleep(delay)
    conn.sink = digest.result()
    return digest


def make_sink_handler(
    *, read_size: int = 1 << 18, delay: float = 0.0, reply_digest: bool = True
) -> DcHandler:
    """Read to EOF hashing everything into ``conn.sink``.

    ``read_size``/``delay`` make a slow reader (backpressure tests). With ``reply_digest`` the
    sink answers ``<count:u64le><sha256:32>`` and half-closes, so a client can check the
    upload end to end.
    """

    async def sink_handler(conn: DcConn) -> None:
        digest = await _sink(conn, read_size, delay)
        if reply_digest:
            conn.write(struct.pack("<Q", digest.count) + digest.digest())
        conn.write_eof()

    return sink_handler


def make_duplex_handler(
    total: int, seed: int, *, read_size: int = 1 << 18, delay: float = 0.0
) -> DcHandler:
    """Send the deterministic stream while sinking what arrives (``conn.sink``), both at once."""

    async def duplex_handler(conn: DcConn) -> None:
        async def send() -> None:
            for part in deterministic_chunks(total, seed):
                conn.write(part)
                await conn.drain()
            conn.write_eof()

        async with asyncio.TaskGroup() as group:
            group.create_task(send())
            group.create_task(_sink(conn, read_size, delay))

    return duplex_handler


def parse_sink_reply(reply: bytes) -> SinkResult:
    """Decode the 40-byte answer of a sink handler created with ``reply_digest=True``."""
    if len(reply) != 40:
        raise ValueError(f"sink reply must be 40 bytes, got {len(reply)}")
    (count,) = struct.unpack_from("<Q", reply)
    return SinkResult(count, reply[8:].hex())
