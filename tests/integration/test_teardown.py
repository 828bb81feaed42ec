"""No socket outlives its session, and each session's end leaves one line.

A client that half-closes towards a DC that never answers, a client that resets while
its socket is paused behind a DC that stopped reading, a DC socket left with unsent
bytes: each is closed within a short, fixed time instead of at the idle timeout (or
never). And a DC outage is a few log lines, not one per client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time

import pytest
from fakes import TAG_INTERMEDIATE, FakeDC, open_obfs2, packet_echo_handler

from integration.harness import address, new_secret, running_proxy
from mtproxy.proxy.sockets import FLUSH_DEADLINE

TCP_CLOSE_WAIT, TCP_CLOSE = 8, 7


class DeafDC:
    """Accepts connections and never reads from them (a DC that stopped reading)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DeafDC:
        self._task = asyncio.get_running_loop().create_task(self._accept())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        for sock in [self.listener, *self.accepted]:
            sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self.listener)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.accepted.append(sock)

    def state(self, index: int = 0) -> int:
        return self.accepted[index].getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]

    async def wait_closed_by_proxy(self, timeout: float) -> float:
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while not self.accepted or self.state() not in (TCP_CLOSE_WAIT, TCP_CLOSE):
                await asyncio.sleep(0.05)
        return time.monotonic() - started


async def test_a_client_fin_towards_a_silent_dc_ends_after_the_half_close_grace(
    loop_impl: str,
) -> None:
    secret = new_secret()
    async with (
        DeafDC() as dc,
        running_proxy(
            [secret], {2: ("127.0.0.1", dc.port)}, modes="classic", half_close_timeout="1",
        ) as proxy,
    ):
        stream = await open_obfs2(*address(proxy), secret, TAG_INTERMEDIATE, 2)
        stream.send_packet(b"x" * 64)
        await stream.drain()
        started = time.monotonic()
        stream.writer.write_eof()
        assert await asyncio.wait_for(stream.reader.read(), 10) == b""
        assert 0.9 < time.monotonic() - started < 5
        await dc.wait_closed_by_proxy(2)
        stream.close()
        assert not proxy.sessions


async def test_a_client_reset_behind_a_dc_that_stopped_reading_frees_both_sockets(
    loop_impl: str,
) -> None:
    """The client's socket is paused (the DC takes nothing), so only a check of the paused
    socket sees the reset; the DC socket then has unsent bytes and must not wait forever."""
    secret = new_secret()
    async with (
        DeafDC() as dc,
        running_proxy(
            [secret], {2: ("127.0.0.1", dc.port)}, modes="classic", idle_timeout="8",
            buffer_size="16384",
        ) as proxy,
    ):
        stream = await open_obfs2(*address(proxy), secret, TAG_INTERMEDIATE, 2)
        chunk = os.urandom(60_000)
        async with asyncio.timeout(20):  # fill every buffer on the way until the proxy pauses
            while not any(c.reading_paused for c in proxy.sessions):
                stream.send_packet(chunk)
                await asyncio.sleep(0.01)
        sock = stream.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.writer.transport.abort()  # a reset
        started = time.monotonic()
        async with asyncio.timeout(10):  # the sweep runs every 2 s here
            while proxy.sessions:
                await asyncio.sleep(0.05)
        assert time.monotonic() - started < 5
        # The DC socket is reset once its unsent bytes had FLUSH_DEADLINE to go.
        await dc.wait_closed_by_proxy(FLUSH_DEADLINE + 3)
        assert dc.state() == TCP_CLOSE


async def test_every_session_end_is_one_line_with_who_what_and_why(
    loop_impl: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = new_secret()
    caplog.set_level(logging.INFO, logger="mtproxy")
    async with (
        FakeDC(packet_echo_handler) as dc,
        running_proxy(
            [secret], {4: (dc.host, dc.port)}, modes="classic", log_sessions="true"
        ) as proxy,
    ):
        async with await open_obfs2(*address(proxy), secret, TAG_INTERMEDIATE, 4) as stream:
            stream.send_packet(b"p" * 100)
            assert await stream.recv_packet() == b"p" * 100
        async with asyncio.timeout(5):
            while proxy.sessions:
                await asyncio.sleep(0.02)
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session ")]
    # 100 bytes and their 4-byte intermediate length each way; the DC closed after us.
    assert "user secret1, DC 4, classic, 104 B up, 104 B down" in line, line
    assert line.startswith("session 127.0.0.1:") and line.endswith(", done"), line


async def test_a_dc_outage_is_a_few_lines_not_one_per_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = new_secret()
    caplog.set_level(logging.INFO, logger="mtproxy")
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with running_proxy([secret], {2: ("127.0.0.1", port)}, modes="classic") as proxy:
        streams = [
            await open_obfs2(*address(proxy), secret, TAG_INTERMEDIATE, 2) for _ in range(20)
        ]
        for stream in streams:
            assert await asyncio.wait_for(stream.reader.read(), 10) == b""
            stream.close()
        assert proxy.stats.upstream_failures == 20
    failures = [r for r in caplog.records if "upstream failed" in r.getMessage()]
    assert len(failures) <= 2, [r.getMessage() for r in failures]
    assert failures[0].levelno == logging.INFO
