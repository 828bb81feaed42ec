"""The record writer on its own: a socket pair stands in for the client connection.

The sizes a whole session produces are checked over real sockets in
``tests/integration/test_records.py``; this covers the writer's two ways out (direct
writes, or through the transport once it holds a backlog) and the hold's timer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import pytest

from mtproxy.protocol.tlsrecords import FULL_RECORD, HOLD_SECONDS, MIN_RECORD
from mtproxy.proxy.records import RecordSink, RecordWriter


class Transport:
    """What the writer uses of a transport: write (the backlog) and is_closing."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing


@dataclass
class Sink:
    transport: Transport
    fd: int
    write_paused: bool = False


def writer_for(
    sink: Sink, loop: asyncio.AbstractEventLoop
) -> tuple[RecordWriter, asyncio.Transport]:
    return RecordWriter(cast(RecordSink, sink), loop), cast(asyncio.Transport, sink.transport)


def records(wire: bytes) -> list[int]:
    """Payload sizes of the application-data records in ``wire`` (all of it parsed)."""
    sizes = []
    while wire:
        assert wire[:3] == b"\x17\x03\x03", wire[:5]
        size = int.from_bytes(wire[3:5], "big")
        sizes.append(size)
        assert len(wire) >= 5 + size
        wire = wire[5 + size :]
    return sizes


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(2)
    yield ours, theirs
    ours.close()
    theirs.close()


def received(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        got += sock.recv(size - len(got))
    return bytes(got)


async def test_small_writes_are_held_then_lead_the_next(pair: tuple[socket.socket, ...]) -> None:
    ours, theirs = pair
    writer, transport = writer_for(Sink(Transport(), ours.fileno()), asyncio.get_running_loop())
    writer.send(b"ab", transport)
    writer.send(b"cd", transport)
    assert writer.held == b"abcd" and writer.timer is not None
    writer.send(b"x" * 100, transport)
    assert writer.held == b"" and writer.timer is None
    wire = received(theirs, 5 + 104)
    assert records(wire) == [104] and wire[5:9] == b"abcd"
    # A lone small write goes alone once the hold time passes.
    writer.send(b"z", transport)
    await asyncio.sleep(HOLD_SECONDS * 20)
    assert received(theirs, 6) == b"\x17\x03\x03\x00\x01z"
    assert cast(Transport, transport).written == b""


def test_a_backlog_goes_through_the_transport_in_legal_records(
    pair: tuple[socket.socket, ...],
) -> None:
    ours, _ = pair
    fake = Transport()
    loop = asyncio.new_event_loop()
    try:
        writer, transport = writer_for(Sink(fake, ours.fileno(), write_paused=True), loop)
        writer.send(b"h" * 3, transport)
        writer.send(memoryview(b"d" * (2 * FULL_RECORD + 1)), transport)
        sizes = records(bytes(fake.written))
        assert sizes[:1] == [FULL_RECORD] and sum(sizes) == 2 * FULL_RECORD + 4
        assert min(sizes) >= MIN_RECORD
        # The end of the stream sends what is held, and a closed transport gets nothing.
        writer.send(b"e", transport)
        writer.flush()
        assert bytes(fake.written).endswith(b"\x17\x03\x03\x00\x01e")
        before = len(fake.written)
        writer.send(b"f", transport)
        fake.closing = True
        writer.flush()
        assert len(fake.written) == before and writer.timer is None
    finally:
        loop.close()
