"""Every client mode and framing, through the real proxy to a fake DC, on both loops."""

from __future__ import annotations

import os

import pytest
from fakes import (
    TAG_ABRIDGED,
    TAG_INTERMEDIATE,
    TAG_PADDED,
    FakeDC,
    ObfsStream,
    open_faketls,
    open_obfs2,
    packet_echo_handler,
)

from integration.harness import DOMAIN, address, new_secret, running_proxy

CASES = [
    ("classic", TAG_ABRIDGED),
    ("classic", TAG_INTERMEDIATE),
    ("secure", TAG_PADDED),
    ("tls", TAG_ABRIDGED),
    ("tls", TAG_INTERMEDIATE),
    ("tls", TAG_PADDED),
]
PAYLOADS = [b"\x01\x02\x03\x04", os.urandom(1000), os.urandom(0x7E * 4), os.urandom(70000)]


async def connect(
    mode: str, host: str, port: int, secret: bytes, tag: bytes, dc: int, coalesce: bool = False
) -> ObfsStream:
    if mode == "tls":
        return await open_faketls(host, port, secret, DOMAIN, tag, dc, coalesce_header=coalesce)
    return await open_obfs2(host, port, secret, tag, dc, coalesce_header=coalesce)


async def exchange(stream: ObfsStream) -> None:
    for payload in PAYLOADS:
        stream.send_packet(payload)
    await stream.drain()
    for payload in PAYLOADS:
        assert await stream.recv_packet() == payload


@pytest.mark.parametrize("passthrough", [False, True], ids=["reencrypt", "passthrough"])
@pytest.mark.parametrize(("mode", "tag"), CASES, ids=[f"{m}-{t[:1].hex()}" for m, t in CASES])
async def test_mode_and_framing(loop_impl: str, mode: str, tag: bytes, passthrough: bool) -> None:
    secret = new_secret()
    async with (
        FakeDC(packet_echo_handler) as dc,
        running_proxy(
            [new_secret(), secret], {2: (dc.host, dc.port)}, download_passthrough=passthrough
        ) as proxy,
    ):
        for coalesce in (False, True):
            stream = await connect(mode, *address(proxy), secret, tag, 2, coalesce)
            async with stream:
                await exchange(stream)
        conns = await dc.wait_connections(2)
        assert all(c.tag == tag and c.dc_id == 2 and c.tag_ok for c in conns)
        assert proxy.stats.handshakes[(mode, "ok")] == 2
        assert proxy.stats.users[1].connections_total == 2


async def test_ipv6_listener_and_dc(loop_impl: str) -> None:
    secret = new_secret()
    async with (
        FakeDC(packet_echo_handler, host="::1") as dc,
        running_proxy([secret], {2: ("::1", dc.port)}, listen="[::1]:0") as proxy,
    ):
        host, port = address(proxy)
        assert host == "::1"
        for mode, tag in (("classic", TAG_INTERMEDIATE), ("tls", TAG_PADDED)):
            stream = await connect(mode, host, port, secret, tag, 2)
            async with stream:
                await exchange(stream)
        conns = await dc.wait_connections(2)
        assert all(c.peer[0] == "::1" for c in conns)


async def test_a_server_hello_sent_in_small_segments_is_still_one_valid_flight(
    loop_impl: str,
) -> None:
    """--server-hello-segment writes the flight past the transport (see sockets.py);
    the client must still get it whole, in order, and the session relay after it.
    (The segment sizes on the wire: tests/stealth/test_timers.py, from a capture.)"""
    secret = new_secret()
    async with (
        FakeDC(packet_echo_handler) as dc,
        running_proxy(
            [secret], {2: (dc.host, dc.port)}, modes="tls", server_hello_segment="64"
        ) as proxy,
    ):
        host, port = address(proxy)
        stream = await open_faketls(host, port, secret, DOMAIN, TAG_PADDED, 2)
        async with stream:
            assert stream.handshake is not None and stream.handshake.verified
            await exchange(stream)
