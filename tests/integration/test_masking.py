"""Clients that fail the handshake are relayed byte for byte to the mask host.

A censor's prober must see the real site behind the domain, never a proxy's
behaviour, whatever it sends: wrong secret, bad HMAC, a replay, a stale timestamp,
a wrong SNI, a disabled mode, plain HTTP, or nothing at all.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from fakes import (
    TAG_ABRIDGED,
    TAG_INTERMEDIATE,
    TAG_PADDED,
    FakeDC,
    RecordingServer,
    build_client_hello,
    open_faketls,
    open_obfs2,
    packet_echo_handler,
)
from fakes.obfs import make_initiator_header

from integration.harness import DOMAIN, address, new_secret, running_proxy

SITE_REPLY = b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"


async def probe(host: str, port: int, data: bytes, *, eof: bool = True) -> bytes:
    """Send ``data`` like a prober and return everything the 'site' answers."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    if eof:
        writer.write_eof()
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def classic_header(secret: bytes, tag: bytes = TAG_INTERMEDIATE) -> bytes:
    return make_initiator_header(tag, 2, secret).wire


async def assert_masked(server: RecordingServer, host: str, port: int, data: bytes) -> None:
    index = len(server.connections)
    answer = await probe(host, port, data)
    assert answer == SITE_REPLY
    assert await server.wait_bytes(len(data), index=index) == data


@pytest.fixture
def secret() -> bytes:
    return new_secret()


async def masked_proxy_case(secret: bytes, data: bytes, **options: str) -> None:
    async with (
        RecordingServer(SITE_REPLY) as site,
        FakeDC(packet_echo_handler) as dc,
        running_proxy(
            [secret], {2: (dc.host, dc.port)}, mask=f"127.0.0.1:{site.port}", **options
        ) as proxy,
    ):
        await assert_masked(site, *address(proxy), data)
        assert dc.connections == []
        assert proxy.stats.masked == 1


async def test_wrong_secret_sees_the_site(loop_impl: str, secret: bytes) -> None:
    await masked_proxy_case(secret, classic_header(new_secret()) + os.urandom(300))


async def test_http_request_sees_the_site(secret: bytes) -> None:
    await masked_proxy_case(secret, b"GET / HTTP/1.1\r\nHost: proxy-test.example.com\r\n\r\n" * 2)


async def test_tls_hello_with_wrong_secret_sees_the_site(loop_impl: str, secret: bytes) -> None:
    await masked_proxy_case(secret, build_client_hello(new_secret(), DOMAIN))


async def test_tls_hello_with_stale_timestamp(secret: bytes) -> None:
    hello = build_client_hello(secret, DOMAIN, int(time.time()) - 3600)
    await masked_proxy_case(secret, hello)


async def test_tls_hello_from_the_future(secret: bytes) -> None:
    hello = build_client_hello(secret, DOMAIN, int(time.time()) + 3600)
    await masked_proxy_case(secret, hello)


async def test_tls_hello_with_wrong_sni(secret: bytes) -> None:
    await masked_proxy_case(secret, build_client_hello(secret, "other.example.org"))


async def test_tls_hello_with_extra_data(secret: bytes) -> None:
    await masked_proxy_case(
        secret, build_client_hello(secret, DOMAIN) + b"\x14\x03\x03\x00\x01\x01"
    )


@pytest.mark.parametrize(
    ("enabled", "kind", "tag"),
    [
        ("tls", "classic", TAG_INTERMEDIATE),
        ("tls,classic", "secure", TAG_PADDED),
        ("secure", "classic", TAG_ABRIDGED),
        ("classic,secure", "tls", TAG_PADDED),
    ],
)
async def test_disabled_mode_sees_the_site(
    secret: bytes, enabled: str, kind: str, tag: bytes
) -> None:
    data = build_client_hello(secret, DOMAIN) if kind == "tls" else classic_header(secret, tag)
    await masked_proxy_case(secret, data, modes=enabled)


async def test_replayed_handshakes_see_the_site(loop_impl: str, secret: bytes) -> None:
    async with (
        RecordingServer(SITE_REPLY) as site,
        FakeDC(packet_echo_handler) as dc,
        running_proxy([secret], {2: (dc.host, dc.port)}, mask=f"127.0.0.1:{site.port}") as proxy,
    ):
        host, port = address(proxy)
        # A real client connects once; a censor then replays what it recorded.
        header = classic_header(secret)
        stream = await open_obfs2(host, port, secret, TAG_INTERMEDIATE, 2, header=header)
        async with stream:
            stream.send_packet(b"ping")
            assert await stream.recv_packet() == b"ping"
        await assert_masked(site, host, port, header)

        hello = build_client_hello(secret, DOMAIN)
        stream = await open_faketls(host, port, secret, DOMAIN, TAG_PADDED, 2, hello=hello)
        async with stream:
            stream.send_packet(b"pong")
            assert await stream.recv_packet() == b"pong"
        await assert_masked(site, host, port, hello)
        assert proxy.stats.handshakes[("-", "replay")] == 1
        assert proxy.stats.handshakes[("-", "tls_replay")] == 1
        assert len(dc.connections) == 2


async def test_silent_client_is_handed_to_the_site_after_the_timeout(secret: bytes) -> None:
    """With mirroring put off past the timeout, the timeout alone hands it over."""
    async with (
        RecordingServer(SITE_REPLY) as site,
        running_proxy(
            [secret], {}, mask=f"127.0.0.1:{site.port}", handshake_timeout="1",
            mask_mirror_after="30",
        ) as proxy,
    ):
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(b"\x16\x03\x01\x02")  # a prefix, then silence
        await writer.drain()
        started = time.monotonic()
        assert await site.wait_bytes(4, timeout=5) == b"\x16\x03\x01\x02"
        assert 0.8 < time.monotonic() - started < 4
        writer.write(b"more")
        await writer.drain()
        assert await site.wait_bytes(8, timeout=5) == b"\x16\x03\x01\x02more"
        assert await reader.readexactly(len(SITE_REPLY)) == SITE_REPLY
        writer.close()
        assert proxy.stats.handshakes[("-", "timeout")] == 1


async def test_without_a_mask_host_bad_clients_get_silence(secret: bytes) -> None:
    async with running_proxy([secret], {}, mask="off", modes="classic") as proxy:
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(os.urandom(200))
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 1.0)
        assert not reader.at_eof()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_a_mask_host_pointing_back_at_the_proxy_does_not_loop(secret: bytes) -> None:
    """A TLS domain resolving to the proxy itself must not make probes bounce forever."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with running_proxy(
        [secret], {}, listen=f"127.0.0.1:{port}", mask=f"127.0.0.1:{port}"
    ) as proxy:
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(classic_header(new_secret()))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await asyncio.sleep(0.2)
        assert proxy.stats.masked == 1
        assert proxy.stats.connections_total == 2
        assert not proxy.sessions and not proxy.mask_sources


async def test_a_masked_download_is_not_cut_while_only_the_site_talks() -> None:
    """A prober fetching something slowly from the site sends nothing meanwhile; the
    proxy's idle sweep must count the site's bytes, or it would cut what the site keeps."""
    import dataclasses

    from mtproxy.config.settings import load_settings
    from mtproxy.proxy.server import ProxyServer

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        for _ in range(12):  # 2.4 s, twice the proxy's idle timeout below
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)
        writer.close()

    site = await asyncio.start_server(trickle, "127.0.0.1", 0)
    site_port = site.sockets[0].getsockname()[1]
    settings = load_settings({
        "listen": ["127.0.0.1:0"], "secrets": [new_secret().hex()], "tls_domains": [DOMAIN],
        "mask": f"127.0.0.1:{site_port}", "modes": "tls",
    })  # fmt: skip
    # Below the option's floor (5 s), to keep the test short: swept every 0.3 s.
    proxy = ProxyServer(dataclasses.replace(settings, idle_timeout=1.2))
    async with site, proxy:
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(b"GET /big HTTP/1.1\r\n\r\n")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert got == b"x" * 12
