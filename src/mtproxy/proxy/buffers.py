"""Receive and send buffers shared by every connection of one event loop.

An idle connection must cost a few kilobytes, so no connection owns a buffer. All
sockets read into one loop-wide buffer and the data is transformed in place and
written on before the callback returns. A transport that could not send everything
keeps a reference to the tail (uvloop and newer CPython keep a view instead of a
copy), so after such a write the shared buffer is handed over and replaced.

Both buffers have :data:`~mtproxy.protocol.crypto.CTR_SLACK` spare bytes at the end:
older ``cryptography`` releases (the container uses Debian's) want that much extra
room in the output of ``update_into``. Received data always starts at offset 0 of
``inbuf``, so ``inview[:n + CTR_SLACK]`` is a valid output for ``inview[:n]``.
"""

from __future__ import annotations

import asyncio

from mtproxy.protocol.crypto import CTR_SLACK
from mtproxy.protocol.faketls import wrapped_size

_ROOM = 16  # >= CTR_SLACK whatever the cryptography version


class SharedBuffers:
    __slots__ = ("inbuf", "inview", "outbuf", "outview", "recv_view", "renewals", "size")

    def __init__(self, size: int) -> None:
        assert CTR_SLACK <= _ROOM
        self.size = size
        self.renewals = 0
        self._new_in()
        self.outbuf = bytearray(wrapped_size(size) + _ROOM)
        self.outview = memoryview(self.outbuf)

    def _new_in(self) -> None:
        self.inbuf = bytearray(self.size + _ROOM)
        self.inview = memoryview(self.inbuf)
        #: What sockets read into (the spare room at the end stays out of reach).
        self.recv_view = self.inview[: self.size]

    def write_in(self, transport: asyncio.WriteTransport, data: memoryview) -> None:
        """Write a slice of the receive buffer; give the buffer up if it is retained."""
        transport.write(data)
        if transport.get_write_buffer_size():
            self.renewals += 1
            self._new_in()

    def writelines_in(
        self, transport: asyncio.WriteTransport, pieces: list[bytes | memoryview]
    ) -> None:
        """Like :meth:`write_in` for pieces that include slices of the receive buffer."""
        transport.writelines(pieces)
        if transport.get_write_buffer_size():
            self.renewals += 1
            self._new_in()

    def write_out(self, transport: asyncio.WriteTransport, data: memoryview) -> None:
        transport.write(data)
        if transport.get_write_buffer_size():
            self.renewals += 1
            self.outbuf = bytearray(len(self.outbuf))
            self.outview = memoryview(self.outbuf)
