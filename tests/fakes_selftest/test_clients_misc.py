"""Classic clients through the mini proxy, header replays, and the masking recorder."""

from __future__ import annotations

import asyncio
import os

import pytest
from fakes.clients import build_client_hello, faketls_exchange, open_obfs2
from fakes.dc import FakeDC, packet_echo_handler
from fakes.mask import RecordingServer
from fakes.obfs import TAG_ABRIDGED, TAG_PADDED, TAGS, FakeTlsError

from .miniproxy import MiniProxy

SECRET = os.urandom(16)


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("coalesce", [False, True])
async def test_classic_client_through_mini_proxy(tag: bytes, coalesce: bool) -> None:
    async with FakeDC(packet_echo_handler) as dc, MiniProxy(SECRET, dc.host, dc.port) as proxy:
        stream = await open_obfs2("127.0.0.1", proxy.port, SECRET, tag, 5, coalesce_header=coalesce)
        if coalesce:
            await asyncio.sleep(0.05)
            assert proxy.sessions == [] or proxy.sessions[0].tag == b""
        payloads = [os.urandom(n) for n in (8, 512, 70_000)]
        for p in payloads:
            stream.send_packet(p)
        await stream.drain()
        assert [await stream.recv_packet() for _ in payloads] == payloads
        stream.close()
        await dc.wait_closed_connections(1)
        assert proxy.sessions[0].tag == tag and proxy.sessions[0].dc_id == 5
        assert dc.connections[0].packets_in == 3


@pytest.mark.timeout_s(30)
async def test_replayed_header_uses_its_own_tag() -> None:
    async with FakeDC(packet_echo_handler) as dc, MiniProxy(SECRET, dc.host, dc.port) as proxy:
        first = await open_obfs2("127.0.0.1", proxy.port, SECRET, TAG_PADDED, -1)
        first.close()
        again = await open_obfs2(
            "127.0.0.1", proxy.port, SECRET, TAG_ABRIDGED, 9, header=first.header
        )
        assert again.header == first.header and again.tag == TAG_PADDED
        again.send_packet(b"ping")
        await again.drain()
        assert await again.recv_packet() == b"ping"
        again.close()
        await dc.wait_closed_connections(2)
        assert [c.header for c in dc.connections][1] != first.header  # the proxy's own header
        assert [s.dc_id for s in proxy.sessions] == [-1, -1]


@pytest.mark.timeout_s(20)
async def test_recording_server_sees_probe_verbatim() -> None:
    banner = b"HTTP/1.1 400 Bad Request\r\n\r\n"
    async with RecordingServer(banner) as site:
        hello = build_client_hello(SECRET, "example.com")
        with pytest.raises(FakeTlsError):
            await faketls_exchange(site.host, site.port, hello)
        assert await site.wait_bytes(len(hello)) == hello
        reader, writer = await asyncio.open_connection(site.host, site.port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert await reader.readexactly(len(banner)) == banner
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await site.wait_closed_connections(2)
        assert site.connections[1].data == b"GET / HTTP/1.1\r\n\r\n"
