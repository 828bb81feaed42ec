"""Clients still undecided after ``--mask-mirror-after`` follow the mask site's timers.

A prober that sends nothing, or a prefix of a hello, must see the connection end when
the site would end it, not when the proxy's handshake timeout says. So the proxy
mirrors such a client to the mask host and lets the site's answer (bytes, FIN or a
reset) decide; a real client whose opening was only slow is still served. And no
keepalive probe leaves a connection before its handshake is done.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, RecordingServer, packet_echo_handler
from fakes.obfs import ObfsStream, make_initiator_header

from integration.harness import address, new_secret, running_proxy
from mtproxy.proxy.server import ProxyServer

#: tcpi_state of a connection that was reset (Linux include/net/tcp_states.h).
TCP_CLOSE = 7
SITE_REPLY = b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Length: 0\r\n\r\n"


class IdleSite:
    """A site that closes a connection idle for ``idle`` seconds (FIN, or a reset with
    ``reset``), as web servers time out half-sent requests; it records what it got."""

    def __init__(self, idle: float, *, reset: bool = False) -> None:
        self.idle = idle
        self.reset = reset
        self.accepted: list[float] = []
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> IdleSite:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        try:
            while data := await asyncio.wait_for(reader.read(1000), self.idle):
                self.received += data
        except (TimeoutError, ConnectionError):
            pass
        if self.reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()


async def read_until_closed(reader: asyncio.StreamReader) -> str:
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return "reset"
    return "fin" if data == b"" else f"data {data!r}"


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
async def test_a_silent_prober_sees_the_site_close_at_the_site_s_time(
    loop_impl: str, reset: bool
) -> None:
    async with (
        IdleSite(1.0, reset=reset) as site,
        running_proxy(
            [new_secret()], {}, mask=f"127.0.0.1:{site.port}", handshake_timeout="20",
            mask_mirror_after="0.2",
        ) as proxy,
    ):
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(b"\x16")  # a single byte of a TLS record, then nothing
        await writer.drain()
        outcome = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
        assert outcome == ("reset" if reset else "fin")
        # The site's 1 s, plus the mirror's 0.2 s; nowhere near the 20 s handshake timeout.
        assert 1.0 <= elapsed < 2.5, elapsed
        assert 0.15 <= site.accepted[0] - started < 1.0
        assert site.received == b"\x16"
        assert proxy.stats.handshakes[("-", "mask_answered")] == 1
        assert proxy.stats.masked == 1


async def test_a_prober_s_prefix_gets_the_site_s_answer_when_the_site_answers_it() -> None:
    async with (
        RecordingServer(SITE_REPLY) as site,
        running_proxy(
            [new_secret()], {}, mask=f"127.0.0.1:{site.port}", handshake_timeout="20",
            mask_mirror_after="0.2",
        ) as proxy,
    ):
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(b"\x16\x03\x01\x02")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(SITE_REPLY)), 5) == SITE_REPLY
        # Later bytes go on to the site, as they would reach it directly.
        writer.write(b"more")
        await writer.drain()
        assert await site.wait_bytes(8, timeout=5) == b"\x16\x03\x01\x02more"
        writer.close()


async def test_a_client_whose_opening_is_only_slow_is_still_served(loop_impl: str) -> None:
    secret = new_secret()
    async with (
        IdleSite(30.0) as site,
        FakeDC(packet_echo_handler) as dc,
        running_proxy(
            [secret], {2: (dc.host, dc.port)}, mask=f"127.0.0.1:{site.port}",
            mask_mirror_after="0.1", modes="classic",
        ) as proxy,
    ):
        hs = make_initiator_header(TAG_INTERMEDIATE, 2, secret)
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(hs.wire[:20])
        await writer.drain()
        async with asyncio.timeout(5):
            while not site.accepted:  # mirrored by now
                await asyncio.sleep(0.02)
        writer.write(hs.wire[20:])
        stream = ObfsStream(
            reader, writer, encryptor=hs.encryptor, decryptor=hs.decryptor, tag=TAG_INTERMEDIATE
        )
        async with stream:
            stream.send_packet(b"ping" * 8)
            assert await asyncio.wait_for(stream.recv_packet(), 5) == b"ping" * 8
        assert site.received == hs.wire[:20]
        assert proxy.stats.handshakes[("classic", "ok")] == 1
        assert proxy.stats.masked == 0


def server_side_keepalive(proxy: ProxyServer) -> list[int]:
    out = []
    for client in proxy.sessions:
        assert client.transport is not None
        sock = client.transport.get_extra_info("socket")
        out.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
    return out


async def test_keepalive_starts_only_once_the_handshake_is_done(loop_impl: str) -> None:
    """A keepalive probe on a connection a prober left idle is a tell the site lacks."""
    secret = new_secret()
    async with (
        FakeDC(packet_echo_handler) as dc,
        running_proxy(
            [secret], {2: (dc.host, dc.port)}, mask="off", modes="classic", keepalive="30",
        ) as proxy,
    ):
        hs = make_initiator_header(TAG_INTERMEDIATE, 2, secret)
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(hs.wire[:10])
        await writer.drain()
        await asyncio.sleep(0.2)
        assert server_side_keepalive(proxy) == [0]
        writer.write(hs.wire[10:])
        stream = ObfsStream(
            reader, writer, encryptor=hs.encryptor, decryptor=hs.decryptor, tag=TAG_INTERMEDIATE
        )
        async with stream:
            stream.send_packet(b"ping" * 8)
            assert await asyncio.wait_for(stream.recv_packet(), 5) == b"ping" * 8
            assert server_side_keepalive(proxy) == [1]
            [client] = proxy.sessions
            assert client.transport is not None
            sock = client.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30


async def test_a_mirrored_client_s_fin_reaches_the_site_at_once(loop_impl: str) -> None:
    """The site closes on the prober's FIN, so the prober sees that close at once too."""
    async with (
        IdleSite(10.0) as site,
        running_proxy(
            [new_secret()], {}, mask=f"127.0.0.1:{site.port}", handshake_timeout="20",
            mask_mirror_after="0.1",
        ) as proxy,
    ):
        reader, writer = await asyncio.open_connection(*address(proxy))
        writer.write(b"\x16")
        await writer.drain()
        async with asyncio.timeout(5):
            while not site.accepted:  # mirrored by now
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        writer.write_eof()
        outcome = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
        assert outcome == "fin"
        assert elapsed < 2.0, elapsed  # not the site's 10 s idle timer
        assert site.received == b"\x16"


def tcp_state(sock: socket.socket) -> int:
    state: int = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state


async def test_a_byte_after_the_site_s_close_is_answered_with_a_reset(loop_impl: str) -> None:
    """The site closed its socket: whatever the prober sends next, the site's kernel
    answers with a reset; through the proxy the prober must get one as well."""
    async with (
        IdleSite(0.3) as site,
        running_proxy(
            [new_secret()], {}, mask=f"127.0.0.1:{site.port}", handshake_timeout="20",
            mask_mirror_after="0.1",
        ) as proxy,
    ):
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, address(proxy))
            await loop.sock_sendall(sock, b"\x16")
            assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b""  # the FIN
            await asyncio.sleep(0.1)
            assert tcp_state(sock) != TCP_CLOSE  # nothing more until the prober speaks
            sock.send(b"x")
            async with asyncio.timeout(2):
                while tcp_state(sock) != TCP_CLOSE:
                    await asyncio.sleep(0.01)
