"""Direct mode: each client gets its own obfuscated2 connection to a Telegram DC."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mtproxy.protocol.dc import DcTable, format_endpoint
from mtproxy.protocol.handshake import Accepted
from mtproxy.protocol.obfuscated2 import build_dc_header
from mtproxy.proxy.peer import PeerConnection

if TYPE_CHECKING:
    from mtproxy.proxy.client import ClientConnection
    from mtproxy.proxy.server import ProxyServer

log = logging.getLogger("mtproxy.direct")


class DirectUpstreams:
    """Opens DC connections; tries each address of the DC in order of preference."""

    #: Direct mode can forward DC bytes without re-encryption when asked to.
    supports_passthrough = True

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        settings = server.settings
        self.dcs = DcTable(settings.dc, settings.prefer_ipv6)

    async def start(self) -> None:
        """Nothing to prepare: DC connections are opened per client."""

    async def stop(self) -> None:
        """Nothing shared to close."""

    def open(self, client: ClientConnection, accepted: Accepted) -> asyncio.Task[None]:
        return self.server.loop.create_task(self._connect(client, accepted))

    async def _connect(self, client: ClientConnection, accepted: Accepted) -> None:
        server = self.server
        settings = server.settings
        hello = accepted.client
        passthrough = hello.encrypt_key if server.passthrough else None
        dc_side = build_dc_header(hello.framing, hello.dc_id, passthrough=passthrough)
        first = dc_side.header
        if client.early:
            first += dc_side.encryptor.update(client.early)
            client.early = b""
        deliver = client.send_obfs if passthrough is not None else client.send_plain
        decryptor = None if passthrough is not None else dc_side.decryptor
        errors: list[str] = []
        for endpoint in self.dcs.resolve(hello.dc_id):
            server.stats.upstream_connects += 1
            try:
                async with asyncio.timeout(settings.connect_timeout):
                    await server.connect_upstream(
                        lambda: PeerConnection(
                            client,
                            deliver,
                            first=first,
                            encryptor=dc_side.encryptor,
                            decryptor=decryptor,
                            keepalive=settings.keepalive,
                        ),
                        endpoint,
                    )
                return
            except (OSError, TimeoutError) as exc:
                errors.append(f"{format_endpoint(endpoint)}: {exc or type(exc).__name__}")
                log.debug("DC %d via %s failed: %s", hello.dc_id, endpoint, exc)
        client.upstream_failed(f"DC {hello.dc_id} unreachable ({'; '.join(errors)})")
