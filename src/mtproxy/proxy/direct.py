"""Direct mode: each client gets its own obfuscated2 connection to a Telegram DC."""

from __future__ import annotations

import asyncio
import logging

from mtproxy.config.settings import Settings
from mtproxy.protocol.dc import DcTable, format_endpoint
from mtproxy.protocol.handshake import Accepted
from mtproxy.protocol.obfuscated2 import build_dc_header
from mtproxy.proxy.accept import out_of_fds
from mtproxy.proxy.peer import PeerConnection
from mtproxy.proxy.upstream import SessionPort, UpstreamHost

log = logging.getLogger("mtproxy.direct")


class DirectUpstreams:
    """Opens DC connections; tries each address of the DC in order of preference."""

    #: Direct mode can forward DC bytes without re-encryption when asked to.
    supports_passthrough = True

    def __init__(self, host: UpstreamHost) -> None:
        self.host = host
        self.dcs = DcTable(host.settings.dc, host.settings.prefer_ipv6)

    async def start(self) -> None:
        """Nothing to prepare: DC connections are opened per client."""

    async def stop(self) -> None:
        """Nothing shared to close."""

    def reconfigure(self, settings: Settings) -> None:
        self.dcs = DcTable(settings.dc, settings.prefer_ipv6)

    def open(
        self, session: SessionPort, accepted: Accepted, passthrough: bool
    ) -> asyncio.Task[None]:
        return self.host.loop.create_task(self._connect(session, accepted, passthrough))

    async def _connect(self, client: SessionPort, accepted: Accepted, passthrough: bool) -> None:
        host = self.host
        settings = host.settings
        hello = accepted.client
        pass_key = hello.encrypt_key if passthrough else None
        dc_side = build_dc_header(hello.framing, hello.dc_id, passthrough=pass_key)
        first = dc_side.header
        if client.early:
            first += dc_side.encryptor.update(client.early)
            client.early = b""
        deliver = client.send_obfs if pass_key is not None else client.send_plain
        decryptor = None if pass_key is not None else dc_side.decryptor
        errors: list[str] = []
        for endpoint in self.dcs.resolve(hello.dc_id):
            host.stats.upstream_connects += 1
            try:
                async with asyncio.timeout(settings.connect_timeout):
                    await host.connect_upstream(
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
                if isinstance(exc, OSError) and out_of_fds(exc):
                    # Ours, not the DC's: another address of it would fail the same way.
                    host.out_of_fds(f"no connection to DC {hello.dc_id}", exc)
                    client.upstream_failed(f"no file descriptor left to connect to DC "
                                           f"{hello.dc_id}")  # fmt: skip
                    return
                errors.append(f"{format_endpoint(endpoint)}: {exc or type(exc).__name__}")
                log.debug("DC %d via %s failed: %s", hello.dc_id, endpoint, exc)
        client.upstream_failed(f"DC {hello.dc_id} unreachable ({'; '.join(errors)})")
