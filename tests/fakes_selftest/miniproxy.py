"""A throwaway MTProxy used only to prove the fakes before the real proxy exists.

Its client side (key schedule, ClientHello check, ServerHello, record framing) is written
separately from the fakes' client code, so the self-tests pit two implementations against
each other rather than one against itself. The DC leg reuses ``open_dc_direct``: that is the
fakes' own proxy-side dial, itself checked against Telethon's obfuscated2 code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from fakes.clients import open_dc_direct
from fakes.obfs import ObfsStream

VALID_TAGS = (b"\xef" * 4, b"\xee" * 4, b"\xdd" * 4)
GREASE = {0x0A0A + 0x1010 * i for i in range(16)}


def _ctr(key: bytes, iv: bytes) -> CipherContext:
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


@dataclass(frozen=True)
class HelloCheck:
    timestamp: int
    session_id: bytes
    cipher_suites: tuple[int, ...]
    sni: str | None


def check_client_hello(secret: bytes, record: bytes) -> HelloCheck | None:
    """Server-side validation of a fake-TLS ClientHello; None if the HMAC does not match."""
    received = record[11:43]
    mac = hmac.new(secret, record[:11] + b"\x00" * 32 + record[43:], "sha256").digest()
    xored = bytes(x ^ y for x, y in zip(mac, received, strict=True))
    if not hmac.compare_digest(xored[:28], b"\x00" * 28):
        return None
    timestamp = int.from_bytes(xored[28:], "little")
    body = record[9:]  # record header 5 + handshake header 4
    pos = 2 + 32
    sid = body[pos + 1 : pos + 1 + body[pos]]
    pos += 1 + body[pos]
    n_suites = int.from_bytes(body[pos : pos + 2], "big")
    suites = tuple(
        int.from_bytes(body[i : i + 2], "big") for i in range(pos + 2, pos + 2 + n_suites, 2)
    )
    pos += 2 + n_suites
    pos += 1 + body[pos]
    ext_end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    sni = None
    while pos + 4 <= ext_end:
        etype, elen = struct.unpack(">HH", body[pos : pos + 4])
        if etype == 0:
            name_len = int.from_bytes(body[pos + 7 : pos + 9], "big")
            sni = body[pos + 9 : pos + 9 + name_len].decode("ascii")
        pos += 4 + elen
    return HelloCheck(timestamp, sid, suites, sni)


def server_hello(
    secret: bytes, client_random: bytes, session_id: bytes, cipher: int, *, corrupt: bool
) -> bytes:
    """SH + CCS + one AppData record, with the server random HMACed as MTProxy does."""
    exts = b"\x00\x33\x00\x24\x00\x1d\x00\x20" + os.urandom(32) + b"\x00\x2b\x00\x02\x03\x04"
    body = (
        b"\x03\x03"
        + b"\x00" * 32
        + bytes([len(session_id)])
        + session_id
        + cipher.to_bytes(2, "big")
        + b"\x00"
        + len(exts).to_bytes(2, "big")
        + exts
    )
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    fake_cert = os.urandom(2500 + int.from_bytes(os.urandom(2), "big") % 1120)
    out = bytearray(
        b"\x16\x03\x03"
        + len(hs).to_bytes(2, "big")
        + hs
        + b"\x14\x03\x03\x00\x01\x01"
        + b"\x17\x03\x03"
        + len(fake_cert).to_bytes(2, "big")
        + fake_cert
    )
    digest = hmac.new(secret, client_random + bytes(out), "sha256").digest()
    if corrupt:
        digest = bytes([digest[0] ^ 1]) + digest[1:]
    out[11:43] = digest
    return bytes(out)


@dataclass
class Session:
    """What the mini proxy saw on one client connection."""

    tls: bool = False
    hello: HelloCheck | None = None
    tag: bytes = b""
    dc_id: int = 0
    client_records: list[int] = field(default_factory=list)
    error: BaseException | None = None


class _RecordIn:
    """Reads AppData payloads from the client, skipping CCS."""

    def __init__(self, reader: asyncio.StreamReader, session: Session) -> None:
        self.reader = reader
        self.session = session

    async def next_payload(self) -> bytes:
        while True:
            try:
                head = await self.reader.readexactly(5)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return b""
            body = await self.reader.readexactly(int.from_bytes(head[3:5], "big"))
            if head[0] == 0x14:
                continue
            if head[:3] != b"\x17\x03\x03":
                raise ValueError(f"unexpected record {head.hex()}")
            self.session.client_records.append(len(body))
            return body


class MiniProxy:
    def __init__(
        self,
        secret: bytes,
        dc_host: str,
        dc_port: int,
        *,
        domain: str | None = None,
        out_record_size: int = 16384,
        inject_ccs: bool = False,
        corrupt_server_hmac: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.secret = secret
        self.dc_host = dc_host
        self.dc_port = dc_port
        self.domain = domain
        self.out_record_size = out_record_size
        self.inject_ccs = inject_ccs
        self.corrupt_server_hmac = corrupt_server_hmac
        self.host = host
        self.port = 0
        self.sessions: list[Session] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> MiniProxy:
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session()
        self.sessions.append(session)
        dc: ObfsStream | None = None
        try:
            first = await reader.readexactly(1)
            records: _RecordIn | None = None
            if first == b"\x16" and self.domain is not None:
                session.tls = True
                rest = await reader.readexactly(4)
                record = first + rest + await reader.readexactly(int.from_bytes(rest[2:4], "big"))
                hello = check_client_hello(self.secret, record)
                if hello is None or hello.sni != self.domain:
                    raise PermissionError("ClientHello rejected")
                if hello.timestamp > time.time() + 3 or hello.timestamp < time.time() - 600:
                    raise PermissionError("ClientHello timestamp out of window")
                session.hello = hello
                cipher = next(s for s in hello.cipher_suites if s not in GREASE)
                writer.write(
                    server_hello(
                        self.secret,
                        record[11:43],
                        hello.session_id,
                        cipher,
                        corrupt=self.corrupt_server_hmac,
                    )
                )
                records = _RecordIn(reader, session)
                data = b""
                while len(data) < 64:
                    payload = await records.next_payload()
                    if not payload:
                        raise EOFError("client closed before its obfuscated2 header")
                    data += payload
                header, leftover = data[:64], data[64:]
            else:
                header, leftover = first + await reader.readexactly(63), b""

            seed = header[8:56]
            rev = seed[::-1]
            dec = _ctr(hashlib.sha256(seed[:32] + self.secret).digest(), seed[32:48])
            enc = _ctr(hashlib.sha256(rev[:32] + self.secret).digest(), rev[32:48])
            plain = dec.update(header)
            session.tag = plain[56:60]
            session.dc_id = struct.unpack("<h", plain[60:62])[0]
            if session.tag not in VALID_TAGS:
                raise PermissionError(f"bad tag {session.tag.hex()}")
            dc = await open_dc_direct(self.dc_host, self.dc_port, session.tag, session.dc_id)
            if leftover:
                dc.write(dec.update(leftover))

            async def upstream() -> None:
                assert dc is not None
                while True:
                    if records is not None:
                        chunk = await records.next_payload()
                    else:
                        chunk = await reader.read(1 << 18)
                    if not chunk:
                        break
                    dc.write(dec.update(chunk))
                    await dc.drain()
                dc.write_eof()

            async def downstream() -> None:
                assert dc is not None
                while True:
                    chunk = await dc.read(1 << 18)
                    if not chunk:
                        break
                    out = enc.update(chunk)
                    if session.tls:
                        out = self._wrap(out)
                    writer.write(out)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

            async with asyncio.TaskGroup() as group:
                group.create_task(upstream())
                group.create_task(downstream())
        except (Exception, asyncio.IncompleteReadError) as exc:
            session.error = exc
        finally:
            writer.close()
            if dc is not None:
                dc.close()
                await dc.wait_closed()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _wrap(self, data: bytes) -> bytes:
        parts = []
        size = self.out_record_size
        for off in range(0, len(data), size):
            chunk = data[off : off + size]
            if self.inject_ccs:
                parts.append(b"\x14\x03\x03\x00\x01\x01")
            parts.append(b"\x17\x03\x03" + len(chunk).to_bytes(2, "big") + chunk)
        return b"".join(parts)
