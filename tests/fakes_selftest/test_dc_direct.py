"""A proxy-style dial (open_dc_direct) talks straight to FakeDC with every framing."""

from __future__ import annotations

import asyncio
import os

import pytest
from fakes.clients import open_dc_direct
from fakes.dc import (
    FakeDC,
    StreamDigest,
    StreamVerifier,
    deterministic_bytes,
    deterministic_chunks,
    deterministic_sha256,
    echo_handler,
    make_duplex_handler,
    make_sink_handler,
    make_source_handler,
    packet_echo_handler,
    parse_sink_reply,
)
from fakes.obfs import TAGS, BadHeaderError, make_initiator_header

MB = 1 << 20


async def _read_all(stream_read: object, limit: int = 64 * MB) -> bytes:
    out = bytearray()
    reader = stream_read
    assert callable(reader)
    while len(out) <= limit:
        chunk = await reader(1 << 18)
        if not chunk:
            return bytes(out)
        out += chunk
    raise AssertionError("peer sent more than expected")


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("tag", TAGS)
async def test_echo_each_tag(tag: bytes) -> None:
    async with FakeDC(echo_handler) as dc:
        stream = await open_dc_direct(dc.host, dc.port, tag, -5)
        data = os.urandom(3 * MB + 5)
        pos = 0
        for size in (1, 7, 4096, 65536, 1 << 20):
            stream.write(data[pos : pos + size])
            pos += size
        stream.write(data[pos:])
        await stream.drain()
        stream.write_eof()
        assert await _read_all(stream.read) == data
        assert stream.at_eof
        stream.close()
        (conn,) = await dc.wait_closed_connections(1)
        assert conn.error is None
        assert conn.tag == tag and conn.dc_id == -5
        assert conn.header == stream.header
        assert conn.bytes_in == conn.bytes_out == len(data)


@pytest.mark.timeout_s(30)
@pytest.mark.parametrize("tag", TAGS)
async def test_packet_echo_each_tag(tag: bytes) -> None:
    async with FakeDC(packet_echo_handler) as dc:
        stream = await open_dc_direct(dc.host, dc.port, tag, 2)
        sizes = [4, 504, 508, 4096, 100_000]
        sent = [os.urandom(n) for n in sizes]
        for i, payload in enumerate(sent):
            stream.send_packet(payload, quickack=i % 2 == 1)
        await stream.drain()
        got = [await stream.recv_packet() for _ in sent]
        assert got == sent
        stream.write_eof()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await stream.recv_packet()
        assert info.value.partial == b""
        stream.close()
        (conn,) = await dc.wait_closed_connections(1)
        assert conn.error is None
        assert conn.packets_in == len(sent)
        assert conn.quickacks_in == 2


@pytest.mark.timeout_s(30)
async def test_ipv6_loopback() -> None:
    async with FakeDC(echo_handler, host="::1") as dc:
        stream = await open_dc_direct("::1", dc.port, TAGS[1], 3)
        stream.write(b"over v6")
        stream.write_eof()
        assert await _read_all(stream.read) == b"over v6"
        stream.close()
        (conn,) = await dc.wait_closed_connections(1)
        assert conn.peer[0] == "::1"


@pytest.mark.timeout_s(60)
async def test_source_delivers_deterministic_stream() -> None:
    total = 24 * MB + 3
    async with FakeDC(make_source_handler(total, seed=11)) as dc:
        stream = await open_dc_direct(dc.host, dc.port, TAGS[0], 2)
        verifier = StreamVerifier(total, 11)
        digest = StreamDigest()
        while chunk := await stream.read(1 << 20):
            verifier.feed(chunk)
            digest.update(chunk)
        assert verifier.ok, verifier.mismatch_at
        assert digest.hexdigest() == deterministic_sha256(total, 11)
        stream.close()
        (conn,) = await dc.wait_closed_connections(1)
        assert conn.error is None and conn.bytes_out == total


def test_deterministic_stream_is_chunking_independent() -> None:
    whole = deterministic_bytes(300_001, 5)
    assert b"".join(deterministic_chunks(300_001, 5, chunk=4097)) == whole
    assert deterministic_bytes(1000, 6) != whole[:1000]
    verifier = StreamVerifier(300_001, 5)
    verifier.feed(whole[:1000])
    damaged = bytearray(whole[1000:2000])
    damaged[500] ^= 1
    verifier.feed(bytes(damaged))
    assert verifier.mismatch_at == 1500 and not verifier.ok


@pytest.mark.timeout_s(60)
@pytest.mark.parametrize(
    ("read_size", "delay", "total"), [(1 << 18, 0.0, 16 * MB), (4096, 0.002, MB)]
)
async def test_sink_reports_digest(read_size: int, delay: float, total: int) -> None:
    sink = make_sink_handler(read_size=read_size, delay=delay)
    async with FakeDC(sink) as dc:
        stream = await open_dc_direct(dc.host, dc.port, TAGS[2], 1)
        for part in deterministic_chunks(total, 3):
            stream.write(part)
            await stream.drain()
        stream.write_eof()
        reply = parse_sink_reply(await stream.readexactly(40))
        assert await stream.read() == b""
        stream.close()
        assert reply.count == total
        assert reply.sha256 == deterministic_sha256(total, 3)
        (conn,) = await dc.wait_closed_connections(1)
        assert conn.sink == reply


@pytest.mark.timeout_s(60)
async def test_slow_sink_applies_backpressure() -> None:
    """A sink reading 4 KiB every 10 ms must make the writer's drain() wait."""
    async with FakeDC(make_sink_handler(read_size=4096, delay=0.01)) as dc:
        stream = await open_dc_direct(dc.host, dc.port, TAGS[0], 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while loop.time() - start < 0.5 and sent < 256 * MB:
            stream.write(bytes(1 << 16))
            sent += 1 << 16
            await stream.drain()
        (conn,) = await dc.wait_connections(1)
        # Far less than what was offered got through: the kernel and asyncio buffers filled.
        assert conn.bytes_in < 16 * MB
        assert sent < 64 * MB
        stream.close()


@pytest.mark.timeout_s(60)
async def test_duplex_both_directions_at_once() -> None:
    total = 8 * MB
    async with FakeDC(make_duplex_handler(total, seed=9)) as dc:
        stream = await open_dc_direct(dc.host, dc.port, TAGS[1], 4)

        async def upload() -> None:
            for part in deterministic_chunks(total, 21):
                stream.write(part)
                await stream.drain()
            stream.write_eof()

        async def download() -> StreamVerifier:
            verifier = StreamVerifier(total, 9)
            while chunk := await stream.read(1 << 20):
                verifier.feed(chunk)
            return verifier

        _, verifier = await asyncio.gather(upload(), download())
        assert verifier.ok
        stream.close()
        (conn,) = await dc.wait_closed_connections(1)
        assert conn.error is None
        assert conn.sink is not None and conn.sink.sha256 == deterministic_sha256(total, 21)


@pytest.mark.timeout_s(20)
async def test_bad_tag_and_short_header_are_recorded() -> None:
    async with FakeDC(echo_handler) as dc:
        hs = make_initiator_header(b"\xaa\xbb\xcc\xdd", 2, None)
        reader, writer = await asyncio.open_connection(dc.host, dc.port)
        writer.write(hs.wire + b"more")
        assert await reader.read() == b""
        writer.close()
        reader2, writer2 = await asyncio.open_connection(dc.host, dc.port)
        writer2.write(b"short")
        writer2.write_eof()
        assert await reader2.read() == b""
        writer2.close()
        conns = await dc.wait_closed_connections(1)
        assert isinstance(conns[0].error, BadHeaderError)
        for _ in range(500):
            if dc.handshake_failures:
                break
            await asyncio.sleep(0.01)
        assert isinstance(dc.handshake_failures[0], asyncio.IncompleteReadError)
