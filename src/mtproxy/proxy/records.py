"""Fake TLS, the server's writes: client-keystream bytes as TLS 1.3-shaped records.

The cutting rules are sans-I/O (:mod:`mtproxy.protocol.tlsrecords`); this is the part
that needs a socket and a clock: a write too short for a record of its own is held
(at most ``HOLD_SECONDS``) to lead the next one, and goes alone if none comes.
A session that speaks fake TLS has one writer for its lifetime.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from mtproxy.protocol.tlsrecords import (
    FULL_RECORD,
    HOLD_SECONDS,
    MIN_RECORD,
    header,
    record_pieces,
)
from mtproxy.proxy.buffers import send_now, sendv_now


class RecordSink(Protocol):
    """The client connection the records go to (ClientConnection)."""

    transport: asyncio.Transport | None
    #: The socket's descriptor, for direct writes (see buffers.py).
    fd: int
    #: The transport holds unsent bytes: write through it, in order.
    write_paused: bool


class RecordWriter:
    """Cuts one session's server-to-client stream into records and writes them."""

    __slots__ = ("held", "loop", "sink", "timer")

    def __init__(self, sink: RecordSink, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = sink
        self.loop = loop
        #: Encrypted bytes too few for a record of their own, waiting (at most
        #: HOLD_SECONDS, on ``timer``) to lead the next write.
        self.held = b""
        self.timer: asyncio.TimerHandle | None = None

    def send(self, data: memoryview | bytes, transport: asyncio.Transport) -> None:
        """Wrap ``data`` (already in the client's keystream) and write it."""
        held = self.held
        total = len(held) + len(data)
        if total < MIN_RECORD:
            self.held = held + data
            if self.timer is None:
                self.timer = self.loop.call_later(HOLD_SECONDS, self.flush)
            return
        if held:
            self.held = b""
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        pieces: list[bytes | memoryview]
        if total <= FULL_RECORD:
            pieces = [header(total), held, data] if held else [header(total), data]
            wire = total + 5
        else:
            pieces = record_pieces(held, data, total)
            wire = total + 5 * ((len(pieces) - (1 if held else 0)) >> 1)
        sink = self.sink
        if sink.write_paused:
            transport.write(b"".join(pieces))
        else:
            sendv_now(transport, sink.fd, pieces, wire)

    def flush(self) -> None:
        """Send held bytes as a record of their own: no more data came in time, or the
        stream ends."""
        self.cancel()
        held, self.held = self.held, b""
        sink = self.sink
        transport = sink.transport
        if not held or transport is None or transport.is_closing():
            return
        record = header(len(held)) + held
        if sink.write_paused:
            transport.write(record)
        else:
            send_now(transport, sink.fd, record)

    def cancel(self) -> None:
        """Forget the hold's timer (the connection is gone, or the bytes go now)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
