"""Receive and send buffers shared by every connection of one event loop.

An idle connection must cost a few kilobytes, so no connection owns a buffer. All
sockets read into one loop-wide buffer and the data is transformed in place and
written on before the callback returns. A transport that could not send everything
keeps a reference to the tail (uvloop and newer CPython keep a view instead of a
copy), so after such a write the shared buffer is handed over and replaced.
"""

from __future__ import annotations

import asyncio

from mtproxy.protocol.faketls import wrapped_size


class SharedBuffers:
    __slots__ = ("inbuf", "inview", "outbuf", "outview", "renewals", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.renewals = 0
        self.inbuf = bytearray(size)
        self.inview = memoryview(self.inbuf)
        self.outbuf = bytearray(wrapped_size(size))
        self.outview = memoryview(self.outbuf)

    def write_in(self, transport: asyncio.WriteTransport, data: memoryview) -> None:
        """Write a slice of the receive buffer; give the buffer up if it is retained."""
        transport.write(data)
        if transport.get_write_buffer_size():
            self.renewals += 1
            self.inbuf = bytearray(self.size)
            self.inview = memoryview(self.inbuf)

    def writelines_in(
        self, transport: asyncio.WriteTransport, pieces: list[bytes | memoryview]
    ) -> None:
        """Like :meth:`write_in` for pieces that include slices of the receive buffer."""
        transport.writelines(pieces)
        if transport.get_write_buffer_size():
            self.renewals += 1
            self.inbuf = bytearray(self.size)
            self.inview = memoryview(self.inbuf)

    def write_out(self, transport: asyncio.WriteTransport, data: memoryview) -> None:
        transport.write(data)
        if transport.get_write_buffer_size():
            self.renewals += 1
            self.outbuf = bytearray(len(self.outbuf))
            self.outview = memoryview(self.outbuf)
