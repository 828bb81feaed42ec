"""The real Telethon library, as an app would use it, through the proxy to a fake DC.

The fake DC answers req_pq_multi with a valid resPQ; Telethon factors pq, encrypts
its inner data with Telegram's RSA key and sends req_DH_params. That message only
arrives intact if every byte went both ways through the proxy correctly.
"""

from __future__ import annotations

import pytest
from fakes import FakeDC, TelethonAuthResponder, drive_telethon
from telethon.network.connection import (
    ConnectionTcpMTProxyAbridged,
    ConnectionTcpMTProxyIntermediate,
    ConnectionTcpMTProxyRandomizedIntermediate,
)

from integration.harness import address, new_secret, running_proxy


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize(
    ("connection", "secret_prefix", "modes"),
    [
        (ConnectionTcpMTProxyAbridged, "", "classic"),
        (ConnectionTcpMTProxyIntermediate, "", "classic,tls"),
        (ConnectionTcpMTProxyRandomizedIntermediate, "dd", "secure"),
    ],
    ids=["abridged", "intermediate", "randomized-intermediate"],
)
async def test_telethon_reaches_the_dc(connection: type, secret_prefix: str, modes: str) -> None:
    secret = new_secret()
    responder = TelethonAuthResponder()
    async with (
        FakeDC(responder) as dc,
        running_proxy([secret], {4: (dc.host, dc.port)}, modes=modes) as proxy,
    ):
        host, port = address(proxy)
        await drive_telethon(
            host, port, secret_prefix + secret.hex(), connection, dc_id=4, responder=responder
        )
    assert responder.dh_params_ok >= 1
    assert responder.dc_ids and set(responder.dc_ids) == {4}
    assert not responder.errors
