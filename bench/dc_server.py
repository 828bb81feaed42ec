"""A fake DC for the benchmark, run as its own process so its CPU is not the proxy's.

It reads the proxy's 64-byte obfuscated2 header and picks a behaviour from the DC id
in it (no decryption is needed for that: the id is read after decrypting just the
header). The payload bytes are never decrypted: the proxy's cost does not depend
on what the bytes mean, and the fake must stay cheap.

DC ids: 1 echo, 2 send ``--source-bytes`` then close, 3 read until EOF then report
the count, 4 hold the connection open silently, 5 stop reading after the header (a
DC that stalls an upload).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
from typing import cast

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

CHUNK = 256 * 1024
SHARED = memoryview(bytearray(CHUNK))  # one receive buffer for all connections
#: Connections that neither read nor write are referenced by nothing else: without this
#: the garbage collector closes them (and a close with unread data sends a reset).
LIVE: set[DcProtocol] = set()


class DcProtocol(asyncio.BufferedProtocol):
    def __init__(self, source_bytes: int, force_mode: int = 0) -> None:
        self.force_mode = force_mode
        self.header = bytearray()
        self.mode = 0
        self.count = 0
        self.source_left = source_bytes
        self.expect = source_bytes
        self.reported = False
        self.encryptor = Cipher(algorithms.AES(bytes(32)), modes.CTR(bytes(16))).encryptor()
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        LIVE.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        LIVE.discard(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return SHARED

    def buffer_updated(self, n: int) -> None:
        data = SHARED[:n]
        if self.mode == 0:
            need = 64 - len(self.header)
            self.header += data[:need]
            data = data[need:]
            if len(self.header) < 64:
                return
            hdr = bytes(self.header)
            dec = Cipher(algorithms.AES(hdr[8:40]), modes.CTR(hdr[40:56])).encryptor()
            plain = dec.update(hdr)
            self.mode = self.force_mode or struct.unpack("<h", plain[60:62])[0]
            back = hdr[8:56][::-1]  # our sending key: the header's key and IV reversed
            self.encryptor = Cipher(algorithms.AES(back[:32]), modes.CTR(back[32:48])).encryptor()
            if self.mode == 2:
                self._pump()
            elif self.mode == 5:
                assert self.transport is not None
                self.transport.pause_reading()
                return
        assert self.transport is not None
        if not data:
            return
        if self.mode == 1:
            self.transport.write(bytes(data))
        elif self.mode == 3:
            self.count += len(data)
            if self.count >= self.expect and not self.reported:
                # A proxy that does not pass the client's EOF on still gets its answer.
                self.reported = True
                self.transport.write(self.encryptor.update(struct.pack("<Q", self.count)))

    def _pump(self) -> None:
        assert self.transport is not None
        block = bytes(CHUNK)
        while self.source_left > 0 and not self.paused:
            m = min(CHUNK, self.source_left)
            self.transport.write(block[:m])
            self.source_left -= m
        if self.source_left <= 0:
            self.transport.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == 2:
            self._pump()

    def eof_received(self) -> bool:
        assert self.transport is not None
        if self.mode == 3 and not self.reported:
            self.transport.write(self.encryptor.update(struct.pack("<Q", self.count)))
        self.transport.close()
        return False


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source-bytes", type=int, default=1 << 30)
    parser.add_argument("--host", action="append", help="address to listen on (repeatable; "
                        "default 127.0.0.1)")
    parser.add_argument("--force-mode", type=int, default=0, help="behave as this DC id "
                        "whatever the header says (proxies that do not send the DC id)")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: DcProtocol(args.source_bytes, args.force_mode), args.host or ["127.0.0.1"],
        args.port,
        backlog=4096,
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
