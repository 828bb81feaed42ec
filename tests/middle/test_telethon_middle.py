"""The real Telethon client through the proxy in middle-proxy mode.

The fake middle-end plays Telegram's side of the first auth-key steps for each
connection id: Telethon's req_pq_multi arrives as an RPC_PROXY_REQ marked
NOT_ENCRYPTED, the resPQ goes back as RPC_PROXY_ANS, and Telethon only produces a
valid req_DH_params if every byte made it both ways intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fakes.middle_end import FakeMiddleEnd, RecordedRequest
from fakes.telethon_dc import (
    AuthExchange,
    MtprotoParseError,
    TelethonAuthResponder,
    drive_telethon,
)
from telethon.network.connection import (
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
)

from mtproxy.protocol.rpc.constants import FLAG_HAS_AD_TAG, FLAG_NOT_ENCRYPTED

from .harness import (
    AD_TAG,
    CLIENT_SECRET,
    PROXY_SECRET,
    middle_settings,
    port_of,
    running_proxy,
    write_inputs,
)


class MiddleEndAuth:
    """FakeMiddleEnd handler: one AuthExchange per client connection id."""

    def __init__(self, responder: TelethonAuthResponder) -> None:
        self.responder = responder
        self.exchanges: dict[int, AuthExchange] = {}

    def __call__(self, request: RecordedRequest) -> Sequence[bytes]:
        exchange = self.exchanges.get(request.ext_conn_id)
        if exchange is None:
            exchange = self.exchanges[request.ext_conn_id] = AuthExchange(self.responder)
        try:
            reply = exchange.handle(request.payload)
        except MtprotoParseError as exc:
            self.responder.errors.append(str(exc))
            return []
        return [] if reply is None else [reply]


@pytest.mark.telethon
@pytest.mark.timeout_s(90)
@pytest.mark.parametrize(
    "connection",
    [
        ConnectionTcpMTProxyAbridged,
        ConnectionTcpMTProxyIntermediate,
        ConnectionTcpMTProxyRandomizedIntermediate,
    ],
    ids=["abridged", "intermediate", "padded"],
)
async def test_telethon_through_middle_proxy(tmp_path: Path, connection: Any) -> None:
    responder = TelethonAuthResponder()
    handler = MiddleEndAuth(responder)
    async with FakeMiddleEnd(PROXY_SECRET, handler=handler) as me:
        config, secret = write_inputs(tmp_path / "in", {2: [me.address]})
        cli = middle_settings(tmp_path / "data", config, secret, tag=AD_TAG.hex())
        async with running_proxy(cli) as server:
            await drive_telethon(
                "127.0.0.1", port_of(server), CLIENT_SECRET.hex(), connection,
                dc_id=2, timeout=30, responder=responder,
            )
    assert responder.errors == []
    assert responder.dh_params_ok >= 1
    first = me.requests[0]
    assert first.flags & FLAG_NOT_ENCRYPTED and first.flags & FLAG_HAS_AD_TAG
    assert first.ad_tag == AD_TAG
