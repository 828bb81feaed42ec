"""The relay: big transfers with slow readers, half-close, timeouts, keepalive, DC routing."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from fakes import (
    TAG_INTERMEDIATE,
    TAG_PADDED,
    DcConn,
    FakeDC,
    ObfsStream,
    StreamDigest,
    StreamVerifier,
    deterministic_chunks,
    deterministic_sha256,
    make_sink_handler,
    make_source_handler,
    open_faketls,
    open_obfs2,
    packet_echo_handler,
    parse_sink_reply,
)

from integration.harness import DOMAIN, address, new_secret, running_proxy
from mtproxy.proxy.server import ProxyServer

BIG = 50 * 1024 * 1024
#: Per-connection memory the relay may hold in transport buffers (both directions).
BUFFER_BOUND = 1024 * 1024


class BufferWatch:
    """Samples every transport buffer of the proxy while a transfer runs."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.peak = 0
        self.samples = 0
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            for client in list(self.proxy.sessions):
                total = 0
                if client.transport is not None:
                    total += client.transport.get_write_buffer_size()
                upstream = getattr(client.upstream, "transport", None)
                if upstream is not None:
                    total += upstream.get_write_buffer_size()
                self.peak = max(self.peak, total)
            self.samples += 1
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def connect(tls: bool, host: str, port: int, secret: bytes, dc: int = 2) -> ObfsStream:
    if tls:
        return await open_faketls(host, port, secret, DOMAIN, TAG_PADDED, dc)
    return await open_obfs2(host, port, secret, TAG_INTERMEDIATE, dc)


@pytest.mark.timeout_s(180)
@pytest.mark.parametrize(
    ("tls", "passthrough"), [(False, False), (True, True)], ids=["classic", "tls-passthrough"]
)
async def test_50mb_download_to_a_slow_reader(loop_impl: str, tls: bool, passthrough: bool) -> None:
    secret = new_secret()
    async with (
        FakeDC(make_source_handler(BIG, seed=7)) as dc,
        running_proxy([secret], {2: (dc.host, dc.port)}, download_passthrough=passthrough) as proxy,
    ):
        stream = await connect(tls, *address(proxy), secret)
        watch = BufferWatch(proxy)
        verifier = StreamVerifier(BIG, seed=7)
        reads = 0
        async with stream:
            while True:
                data = await stream.read(64 * 1024)
                if not data:
                    break
                verifier.feed(data)
                reads += 1
                if reads % 8 == 0:
                    await asyncio.sleep(0.002)  # a slow phone
        await watch.stop()
        assert verifier.ok, f"first bad byte at {verifier.mismatch_at}"
        assert watch.samples > 10 and watch.peak <= BUFFER_BOUND, watch.peak


@pytest.mark.timeout_s(180)
@pytest.mark.parametrize("tls", [False, True], ids=["classic", "tls"])
async def test_50mb_upload_to_a_slow_dc(loop_impl: str, tls: bool) -> None:
    secret = new_secret()
    sink = make_sink_handler(read_size=64 * 1024, delay=0.0005)
    async with FakeDC(sink) as dc, running_proxy([secret], {2: (dc.host, dc.port)}) as proxy:
        stream = await connect(tls, *address(proxy), secret)
        watch = BufferWatch(proxy)
        async with stream:
            for chunk in deterministic_chunks(BIG, seed=11, chunk=256 * 1024):
                stream.write(chunk)
                await stream.drain()
            stream.write_eof()
            result = parse_sink_reply(await stream.readexactly(40))
            assert await stream.read() == b""
        await watch.stop()
        assert result.count == BIG
        assert result.sha256 == deterministic_sha256(BIG, seed=11)
        assert watch.peak <= BUFFER_BOUND, watch.peak


async def test_half_close_is_passed_on(loop_impl: str) -> None:
    """The client finishes sending; the DC still answers; then the DC closes."""
    secret = new_secret()

    async def answer_after_eof(conn: DcConn) -> None:
        digest = StreamDigest()
        while data := await conn.read():
            digest.update(data)
        conn.write(struct.pack("<Q", digest.count) + b"bye!" * 1000)
        await conn.drain()
        conn.write_eof()

    async with (
        FakeDC(answer_after_eof) as dc,
        running_proxy([secret], {2: (dc.host, dc.port)}) as proxy,
    ):
        stream = await connect(False, *address(proxy), secret)
        async with stream:
            stream.write(b"x" * 100_000)
            stream.write_eof()
            await stream.drain()
            reply = await stream.readexactly(8 + 4000)
            assert struct.unpack("<Q", reply[:8])[0] == 100_000
            assert reply[8:] == b"bye!" * 1000
            assert await stream.read() == b""
        await asyncio.sleep(0.1)
        assert not proxy.sessions


async def test_dc_closing_first_closes_the_client(loop_impl: str) -> None:
    secret = new_secret()

    async def close_at_once(conn: DcConn) -> None:
        conn.write(b"last words")
        await conn.drain()
        conn.close()

    async with (
        FakeDC(close_at_once) as dc,
        running_proxy([secret], {2: (dc.host, dc.port)}) as proxy,
    ):
        stream = await connect(True, *address(proxy), secret)
        async with stream:
            assert await stream.readexactly(10) == b"last words"
            assert await asyncio.wait_for(stream.read(), 5) == b""
        await asyncio.sleep(0.1)
        assert not proxy.sessions


@pytest.mark.timeout_s(30)
async def test_idle_sessions_are_closed() -> None:
    secret = new_secret()
    async with (
        FakeDC(packet_echo_handler) as dc,
        running_proxy([secret], {2: (dc.host, dc.port)}, idle_timeout="5") as proxy,
    ):
        busy = await connect(False, *address(proxy), secret)
        idle = await connect(False, *address(proxy), secret)
        loop = asyncio.get_running_loop()
        started = loop.time()
        idle.send_packet(b"once")
        await idle.drain()
        assert await idle.recv_packet() == b"once"
        while loop.time() - started < 8:
            busy.send_packet(b"tick")
            await busy.drain()
            assert await busy.recv_packet() == b"tick"
            await asyncio.sleep(0.5)
        assert await asyncio.wait_for(idle.read(), 2) == b""
        elapsed = loop.time() - started
        assert 5 <= elapsed < 10
        busy.send_packet(b"still here!!")
        await busy.drain()
        assert await busy.recv_packet() == b"still here!!"
        busy.close()
        idle.close()


async def test_keepalive_on_both_legs(loop_impl: str) -> None:
    secret = new_secret()
    async with (
        FakeDC(packet_echo_handler) as dc,
        running_proxy([secret], {2: (dc.host, dc.port)}, keepalive="45") as proxy,
    ):
        stream = await connect(False, *address(proxy), secret)
        async with stream:
            stream.send_packet(b"ping")
            await stream.drain()
            assert await stream.recv_packet() == b"ping"
            (client,) = proxy.sessions
            assert client.transport is not None and client.upstream is not None
            for transport in (client.transport, client.upstream.transport):  # type: ignore[attr-defined]
                sock = transport.get_extra_info("socket")
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 45


async def test_unreachable_dc_closes_the_client() -> None:
    secret = new_secret()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with running_proxy([secret], {2: ("127.0.0.1", port)}) as proxy:
        stream = await connect(False, *address(proxy), secret)
        async with stream:
            stream.send_packet(b"ping")
            await stream.drain()
            assert await asyncio.wait_for(stream.read(), 5) == b""
        assert proxy.stats.upstream_failures == 1


async def test_next_address_is_tried_when_one_fails() -> None:
    secret = new_secret()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = unused.getsockname()[1]
    dc = FakeDC(packet_echo_handler, host="::1")
    await dc.start()
    # Two addresses for DC 2: a dead IPv4 one first, then a live IPv6 one.
    dcs = [f"2=127.0.0.1:{dead}", f"2=[::1]:{dc.port}"]
    try:
        async with running_proxy([secret], {}, dc=dcs) as proxy:
            stream = await connect(False, *address(proxy), secret)
            async with stream:
                stream.send_packet(b"ping")
                await stream.drain()
                assert await stream.recv_packet() == b"ping"
    finally:
        await dc.stop()


@pytest.mark.parametrize(
    ("client_dc", "expected_fake"),
    [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (-2, 2), (-4, 4), (203, 203), (99, 2), (0, 2)],
)
async def test_dc_ids_are_routed(client_dc: int, expected_fake: int) -> None:
    secret = new_secret()
    fakes = {dc_id: FakeDC(packet_echo_handler) for dc_id in (1, 2, 3, 4, 5, 203)}
    for fake in fakes.values():
        await fake.start()
    try:
        dcs = {dc_id: (f.host, f.port) for dc_id, f in fakes.items()}
        async with running_proxy([secret], dcs) as proxy:
            stream = await connect(False, *address(proxy), secret, dc=client_dc)
            async with stream:
                stream.send_packet(b"ping")
                await stream.drain()
                assert await stream.recv_packet() == b"ping"
        (conn,) = fakes[expected_fake].connections
        assert conn.dc_id == client_dc
        assert sum(len(f.connections) for f in fakes.values()) == 1
    finally:
        for fake in fakes.values():
            await fake.stop()


async def test_byte_counters_match_the_traffic(loop_impl: str) -> None:
    secret = new_secret()
    sent = received = 0
    async with FakeDC(packet_echo_handler) as dc, running_proxy(
        [secret], {2: (dc.host, dc.port)}
    ) as proxy:
        for tls in (False, True):
            if tls:
                stream = await connect(True, *address(proxy), secret)
            else:
                host, port = address(proxy)
                stream = await open_obfs2(
                    host, port, secret, TAG_INTERMEDIATE, 2, coalesce_header=True
                )
            async with stream:
                for size in (4, 400, 40000):
                    stream.send_packet(b"\x00" * size)
                    await stream.drain()
                    assert len(await stream.recv_packet()) == size
                assert proxy.stats.sessions_active == 1
                sent += stream.bytes_out
                received += stream.bytes_in
        assert sent > 2 * 40400
        for _ in range(100):
            if proxy.stats.sessions_active == 0:
                break
            await asyncio.sleep(0.02)
        assert proxy.stats.sessions_active == 0
        assert proxy.stats.bytes_from_clients == sent
        assert proxy.stats.bytes_to_clients == received
        assert proxy.stats.users[0].bytes_from_client == sent
        assert proxy.stats.users[0].bytes_to_client == received
