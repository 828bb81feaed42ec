"""The receive buffer shared by every connection of one event loop, and the writes
that keep it shared.

An idle connection must cost a few kilobytes, so no connection owns a buffer. All
sockets read into one loop-wide buffer; the data is transformed in place and written
on before the callback returns.

A stalled peer must cost little more. Handing a slice of the shared buffer to a
transport that cannot send it all would let the transport keep a view of it (uvloop
does), pinning the whole buffer for as long as the peer does not read. So relayed
bytes go to the socket directly (:func:`send_now`, :func:`sendv_now`: one ``write``
or ``writev``, as the transport itself would do), and only what the kernel did not
take is copied into the transport, which sends it when it can. Connections set
their transports' high-water mark to 0 (:func:`watch_backlog`): the protocol is told
to pause the other side the moment anything waits, so at most one read's tail is
ever held per direction, and direct writes happen only while nothing waits (order
is kept).

The buffer has :data:`~mtproxy.protocol.crypto.CTR_SLACK` spare bytes at the end:
older ``cryptography`` releases (the container uses Debian's) want that much extra
room in the output of ``update_into``. Received data always starts at offset 0 of
``inbuf``, so ``inview[:n + CTR_SLACK]`` is a valid output for ``inview[:n]``.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence

from mtproxy.protocol.crypto import CTR_SLACK

_ROOM = 16  # >= CTR_SLACK whatever the cryptography version
#: Seconds after a stalled session's end before freed memory is handed back.
TRIM_DELAY = 1.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library, or no ctypes); looked up on
    first use, so a process that never needs it does not import ctypes."""
    try:
        import ctypes

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    return trim



class SharedBuffers:
    __slots__ = (
        "_trim", "inbuf", "inview", "recv_view", "size", "stalls", "trims"
    )

    def __init__(self, size: int) -> None:
        assert CTR_SLACK <= _ROOM
        self.size = size
        self.inbuf = bytearray(size + _ROOM)
        self.inview = memoryview(self.inbuf)
        #: What sockets read into (the spare room at the end stays out of reach).
        self.recv_view = self.inview[:size]
        self._trim: asyncio.TimerHandle | None = None
        #: Back-pressure pauses since the last trim: tails were copied, perhaps many.
        self.stalls = 0
        #: Times freed memory was handed back to the system (see :meth:`trim_soon`).
        self.trims = 0

    def stalled(self) -> None:
        """A transport took a tail (back-pressure): count it, and trim afterwards."""
        self.stalls += 1
        if self._trim is None:
            self.trim_soon()

    def trim_soon(self) -> None:
        """Give freed memory back to the system shortly (after back-pressure, or after
        sessions that had it ended).

        Tails are copies of up to a read each, spread over the heap; once sent (or
        their sessions gone) the C allocator keeps the pages unless asked, so a
        process would stay as big as its worst moment. One trim a second at most
        (it takes well under a millisecond when there is nothing to give back, a few
        when a burst of sessions just ended).
        """
        if self._trim is None and _malloc_trim() is not None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._trim_now)

    def _trim_now(self) -> None:
        self._trim = None
        self.stalls = 0
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
            self.trims += 1


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The transport's socket descriptor, or -1 (then every write goes through it)."""
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


def watch_backlog(transport: asyncio.WriteTransport) -> None:
    """Have the protocol paused as soon as the transport holds anything unsent."""
    transport.set_write_buffer_limits(high=0, low=0)


def send_now(transport: asyncio.WriteTransport, fd: int, data: bytes | memoryview) -> bool:
    """Write ``data`` to the socket now; copy what it did not take into the transport.

    Only call while the transport holds nothing (its protocol is not paused).
    Returns True when everything went out.
    """
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Let the transport meet the error itself and close as it does.
        transport.write(bytes(data))
        return False
    if sent == len(data):
        return True
    transport.write(bytes(data[sent:]))
    return False


def sendv_now(
    transport: asyncio.WriteTransport, fd: int, pieces: Sequence[bytes | memoryview], total: int
) -> bool:
    """Like :func:`send_now` for pieces gathered by one ``writev``; ``total`` is their size."""
    try:
        sent = os.writev(fd, pieces)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(b"".join(pieces))
        return False
    if sent == total:
        return True
    transport.write(unsent_tail(pieces, sent))
    return False


def unsent_tail(pieces: Sequence[bytes | memoryview], sent: int) -> bytes:
    """What is left of ``pieces`` after their first ``sent`` bytes, as one copy."""
    rest: list[bytes | memoryview] = []
    for piece in pieces:
        size = len(piece)
        if sent >= size:
            sent -= size
            continue
        rest.append(piece[sent:] if sent else piece)
        sent = 0
    return b"".join(rest)
