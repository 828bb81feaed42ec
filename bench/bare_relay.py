"""A bare TCP relay on uvloop: the floor under any Python proxy on this machine.

It accepts a client, reads its first 64 bytes, connects to the DC, forwards them and
then relays both ways with no cryptography at all, using the same BufferedProtocol
pattern as mtproxy. The benchmark drives it like the proxy (with a DC-style header
instead of a client one), so the table can show how much of the proxy's cost per
handshake and per packet is the event loop and the kernel rather than mtproxy.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

SHARED = memoryview(bytearray(128 * 1024))


class Side(asyncio.BufferedProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return SHARED

    def buffer_updated(self, n: int) -> None:
        if self.peer is None or self.peer.transport is None:
            self.relay.head += SHARED[:n]
            self.relay.maybe_connect()
            return
        self.peer.transport.write(bytes(SHARED[:n]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Relay:
    def __init__(self, loop: asyncio.AbstractEventLoop, dc: tuple[str, int]) -> None:
        self.loop = loop
        self.dc = dc
        self.head = bytearray()
        self.client = Side(self)
        self.started = False

    def maybe_connect(self) -> None:
        if len(self.head) >= 64 and not self.started:
            self.started = True
            assert self.client.transport is not None
            self.client.transport.pause_reading()
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        upstream = Side(self)
        await self.loop.create_connection(lambda: upstream, *self.dc)
        assert upstream.transport is not None and self.client.transport is not None
        upstream.transport.write(bytes(self.head))
        upstream.peer, self.client.peer = self.client, upstream
        self.client.transport.resume_reading()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dc-port", type=int, required=True)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Relay(loop, ("127.0.0.1", args.dc_port)).client, "127.0.0.1", args.port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    asyncio.run(main())
