"""Over real sockets: probes reach the mask host as soon as their bytes rule out every mode,
and nothing reaches it once the fake ServerHello has gone out."""

from __future__ import annotations

import asyncio

import pytest
from fakes import RecordingServer, build_client_hello, read_server_hello_raw

from integration.harness import DOMAIN, address, new_secret, running_proxy

SITE_REPLY = b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"
#: Far longer than any wait below: a verdict that needed it would fail the test.
LONG = "60"


@pytest.mark.parametrize(
    ("modes", "probe"),
    [
        ("tls", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("tls", b"\x15\x03\x01\x00\x02\x02\x28"),  # an alert record, not a hello
        ("tls", b"\x17\x03\x03\x00\x05hello"),
        ("tls,classic,secure", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("tls,classic,secure", b"\xef" + b"x" * 10),
    ],
)
async def test_a_probe_is_handed_to_the_site_without_waiting(
    loop_impl: str, modes: str, probe: bytes
) -> None:
    """No EOF from the prober, a long handshake timeout: only the bytes decide."""
    secret = new_secret()
    async with (
        RecordingServer(SITE_REPLY) as site,
        running_proxy([secret], {}, mask=f"127.0.0.1:{site.port}", modes=modes,
                      handshake_timeout=LONG) as proxy,
    ):  # fmt: skip
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(probe)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(SITE_REPLY)), 10) == SITE_REPLY
        assert await site.wait_bytes(len(probe)) == probe
        writer.close()


async def test_random_bytes_with_classic_on_still_wait_for_more() -> None:
    """16 random bytes may be the start of a classic header: that tell needs fake TLS alone."""
    secret = new_secret()
    async with (
        RecordingServer(SITE_REPLY) as site,
        running_proxy([secret], {}, mask=f"127.0.0.1:{site.port}", modes="tls,classic",
                      handshake_timeout=LONG) as proxy,
    ):  # fmt: skip
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(bytes(range(1, 17)))
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.5)
        assert site.connections == []
        writer.close()


@pytest.mark.parametrize("then", ["fin", "silence"])
async def test_after_the_fake_server_hello_the_site_never_sees_the_client(
    loop_impl: str, then: str
) -> None:
    secret = new_secret()
    async with (
        RecordingServer(SITE_REPLY) as site,
        running_proxy([secret], {}, mask=f"127.0.0.1:{site.port}", modes="tls",
                      handshake_timeout="1") as proxy,
    ):  # fmt: skip
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(build_client_hello(secret, DOMAIN))
        await writer.drain()
        flight = await read_server_hello_raw(reader)
        if then == "fin":
            writer.write_eof()
        # Closed after the flight (at once on FIN, at the handshake timeout on silence),
        # with nothing from the site after it.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert flight[0] == 0x16
        writer.close()
        await asyncio.sleep(0.2)
        assert site.connections == []
        reason = "eof" if then == "fin" else "timeout"
        assert proxy.stats.handshakes[("-", reason)] == 1
        assert proxy.stats.masked == 0
