"""A fake middle-proxy for the benchmark, run as its own process so its CPU is not the proxy's.

It speaks the server side of the RPC link (nonce, AES-CBC keys, handshake, frames)
and picks a behaviour per client packet from the packet's first 8 bytes (where an
MTProto packet has its auth_key_id, so the proxy forwards it as an encrypted one):

- ``BENCHECH``: echo the packet back;
- ``BENCHSRC`` + u64 n + u32 last: answer with n bytes (a file part; the client keeps a
  few requests in flight, as apps do), then RPC_CLOSE_EXT if ``last``;
- ``BENCHSNK``: count the packet's bytes; ``BENCHEND``: answer with the count;
- ``BENCHDWN`` + 8-byte tag + u32 n: answer with n bytes, the tag then :data:`PATTERN`
  from offset 16, so the client can check every byte (bench/middle_vs_c.py);
- ``BENCHUPL`` + 8-byte tag + anything: answer with 64 bytes, the tag, the CRC32 and the
  length of the whole packet, so the client can check that every byte arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import struct
import time
import zlib
from ipaddress import ip_address
from typing import cast

from mtproxy.protocol.crc32c import HAVE_FAST_CRC32C
from mtproxy.protocol.rpc import (
    CloseConn,
    CloseExt,
    Handshake,
    Nonce,
    Ping,
    ProcessId,
    ProxyAns,
    ProxyReq,
    RpcCodec,
    derive_keys,
    parse_message,
)
from mtproxy.protocol.rpc.constants import RPCF_USE_CRC32C

ECHO, SOURCE, SINK, END = b"BENCHECH", b"BENCHSRC", b"BENCHSNK", b"BENCHEND"
DOWN, UP = b"BENCHDWN", b"BENCHUPL"
PART = 1024 * 1024
ZEROS = bytes(PART)
#: What BENCHDWN answers carry after their tag; the client holds the same bytes.
PATTERN = random.Random(20261205).randbytes(PART)
_UP_ANSWER = struct.Struct("<8sII48x")


class MeProtocol(asyncio.Protocol):
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.codec = RpcCodec()
        self.transport: asyncio.Transport | None = None
        self.stage = 0  # 0 nonce, 1 handshake, 2 ready
        self.sinks: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        payloads = self.codec.feed(data)
        out: list[bytes] = []
        while payloads:
            payload = payloads.pop(0)
            if self.stage == 0:
                out.append(self._on_nonce(payload))
                payloads.extend(self.codec.feed(b""))
            elif self.stage == 1:
                hello = Handshake.decode(payload)
                # Like Telegram's middle-proxies, agree to CRC32C when asked (if it is
                # fast here too).
                crc32c = bool(hello.flags & RPCF_USE_CRC32C) and HAVE_FAST_CRC32C
                reply = Handshake(RPCF_USE_CRC32C if crc32c else 0, ProcessId(), hello.sender_pid)
                out.append(self.codec.encode_flush(reply.encode()))
                self.codec.set_crc32c(crc32c)
                self.stage = 2
                payloads.extend(self.codec.feed(b""))
            else:
                out.append(self._on_message(payload))
        self.transport.write(b"".join(out) + self.codec.flush())

    def _on_nonce(self, payload: bytes) -> bytes:
        assert self.transport is not None
        theirs = Nonce.decode(payload)
        mine = Nonce(theirs.key_select, int(time.time()), os.urandom(16))
        wire = self.codec.encode(mine.encode())
        local = self.transport.get_extra_info("sockname")
        peer = self.transport.get_extra_info("peername")
        keys = derive_keys(
            nonce_srv=mine.nonce, nonce_clt=theirs.nonce, clt_ts=theirs.crypto_ts,
            srv_ip=ip_address(local[0]), srv_port=local[1],
            clt_ip=ip_address(peer[0]), clt_port=peer[1],
            secret=self.secret, am_client=False,
        )
        self.codec.start_encryption(keys)
        self.stage = 1
        return wire

    def _on_message(self, payload: bytes) -> bytes:
        message = parse_message(payload)
        if isinstance(message, ProxyReq):
            data = message.payload
            kind = data[:8]
            if kind == ECHO:
                return self.codec.encode(ProxyAns(0, message.conn_id, data).encode())
            if kind == DOWN:
                (size,) = struct.unpack_from("<I", data, 16)
                answer = data[8:16] + PATTERN[16:max(16, size)]
                return self.codec.encode(ProxyAns(0, message.conn_id, answer).encode())
            if kind == UP:
                answer = _UP_ANSWER.pack(data[8:16], zlib.crc32(data), len(data))
                return self.codec.encode(ProxyAns(0, message.conn_id, answer).encode())
            if kind == SOURCE:
                size, last = struct.unpack_from("<QI", data, 8)
                return self._part(message.conn_id, size, bool(last))
            elif kind == SINK:
                self.sinks[message.conn_id] = self.sinks.get(message.conn_id, 0) + len(data)
            elif kind == END:
                count = struct.pack("<Q", self.sinks.pop(message.conn_id, 0))
                return self.codec.encode(ProxyAns(0, message.conn_id, count).encode())
        elif isinstance(message, CloseConn):
            self.sinks.pop(message.conn_id, None)
        elif isinstance(message, Ping):
            return self.codec.encode(message.pong().encode())
        return b""

    def _part(self, conn_id: int, size: int, last: bool) -> bytes:
        parts = []
        while size > 0:
            chunk = min(size, PART)
            parts.append(self.codec.encode(ProxyAns(0, conn_id, ZEROS[:chunk]).encode()))
            size -= chunk
        if last:
            parts.append(self.codec.encode(CloseExt(conn_id).encode()))
        return b"".join(parts)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret-file", required=True)
    args = parser.parse_args()
    with open(args.secret_file, "rb") as fh:
        secret = fh.read()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MeProtocol(secret), "127.0.0.1", args.port, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
