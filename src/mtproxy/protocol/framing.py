"""The three MTProto transport framings carried inside obfuscated2.

Direct mode never re-frames (it only re-encrypts the byte stream), but middle-proxy
mode, quick acks, the benchmark and the self-check need to cut packets out of a
stream and build them, so the framings live here as pure code.

Layouts and quick acks: docs/protocol.md §3.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from mtproxy.protocol.bufferpool import BufferPool
from mtproxy.protocol.errors import FramingError

#: Largest packet we accept; the official server's limit for client connections.
MAX_PACKET = 1 << 24

QUICKACK_ABRIDGED = 0x80
QUICKACK_INTERMEDIATE = 0x80000000
_U32 = struct.Struct("<I")


class Framing(enum.Enum):
    """The framing a client asked for, named by its 4-byte obfuscated2 tag."""

    ABRIDGED = b"\xef\xef\xef\xef"
    INTERMEDIATE = b"\xee\xee\xee\xee"
    PADDED = b"\xdd\xdd\xdd\xdd"

    @property
    def tag(self) -> bytes:
        return self.value

    @classmethod
    def from_tag(cls, tag: bytes) -> Framing | None:
        for framing in cls:
            if framing.value == tag:
                return framing
        return None


@dataclass(frozen=True, slots=True)
class Packet:
    payload: bytes
    quickack: bool = False


def _packet_head(framing: Framing, length: int, quickack: bool, pad: int) -> bytes:
    if length == 0 or length > MAX_PACKET:
        raise FramingError(f"packet length {length} out of range")
    if length % 4:
        raise FramingError("packets must be a multiple of 4 bytes")
    if framing is Framing.ABRIDGED:
        words = length // 4
        flag = QUICKACK_ABRIDGED if quickack else 0
        if words < 0x7F:
            return bytes([words | flag])
        return bytes([0x7F | flag]) + words.to_bytes(3, "little")
    flag = QUICKACK_INTERMEDIATE if quickack else 0
    return struct.pack("<I", (length + pad) | flag)


def _padding(length: int, random_bytes: Callable[[int], bytes]) -> int:
    # A maximal packet gets no tail: the padding counts towards the reader's limit.
    return min(random_bytes(1)[0] & 3, max(0, MAX_PACKET - length))


def encode_packet(
    framing: Framing,
    payload: bytes | bytearray | memoryview,
    *,
    quickack: bool = False,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Frame one packet; the padded framing appends 0-3 random tail bytes."""
    if framing is not Framing.PADDED:
        return _packet_head(framing, len(payload), quickack, 0) + payload
    pad = _padding(len(payload), random_bytes)
    return _packet_head(framing, len(payload), quickack, pad) + payload + random_bytes(pad)


#: Room :func:`encode_packet_into` needs beyond the payload (header and padding).
PACKET_OVERHEAD_MAX = 7


def encode_packet_into(
    framing: Framing,
    payload: bytes | bytearray | memoryview,
    out: bytearray | memoryview,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> int:
    """:func:`encode_packet` into ``out`` (payload + PACKET_OVERHEAD_MAX bytes at least),
    so that big packets need no fresh allocation; returns the framed size."""
    length = len(payload)
    pad = _padding(length, random_bytes) if framing is Framing.PADDED else 0
    head = _packet_head(framing, length, False, pad)
    start, end = len(head), len(head) + length
    if len(out) < end + pad:
        raise ValueError(f"output buffer of {len(out)} bytes is too small for {end + pad}")
    out[:start] = head
    out[start:end] = payload
    if pad:
        out[end : end + pad] = random_bytes(pad)
    return end + pad


def encode_quickack(framing: Framing, confirm: bytes) -> bytes:
    """The 4-byte quick-ack confirmation as the client expects it in its framing.

    Abridged clients get the value byte-swapped (the official server's choice);
    the intermediate framings get it as is, with the high bit set.
    """
    if len(confirm) != 4:
        raise FramingError("a quick-ack confirm is 4 bytes")
    if framing is Framing.ABRIDGED:
        return confirm[::-1]
    value = int.from_bytes(confirm, "little") | QUICKACK_INTERMEDIATE
    return value.to_bytes(4, "little")


class PacketReader:
    """Incremental decoder: feed stream bytes, get whole packets out."""

    __slots__ = ("_buf", "_framing", "_max")

    def __init__(self, framing: Framing, max_packet: int = MAX_PACKET) -> None:
        self._framing = framing
        self._max = max_packet
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        self._buf += data
        packets: list[Packet] = []
        while True:
            packet = self._next()
            if packet is None:
                return packets
            packets.append(packet)

    def _next(self) -> Packet | None:
        buf = self._buf
        parsed = parse_header(self._framing, buf, 0, len(buf), self._max)
        if parsed is None:
            return None
        head, length, take, quickack = parsed
        if len(buf) < head + length:
            return None
        payload = bytes(buf[head : head + take])
        del buf[: head + length]
        return Packet(payload, quickack)


def parse_header(
    framing: Framing, buf: bytearray | memoryview, pos: int, end: int, max_packet: int
) -> tuple[int, int, int, bool] | None:
    """The frame header at ``buf[pos:end]``: (header length, packet length, payload
    length kept, quick ack), or None while the header is incomplete."""
    if framing is Framing.ABRIDGED:
        if end - pos < 1:
            return None
        first = buf[pos]
        quickack = bool(first & QUICKACK_ABRIDGED)
        words = first & 0x7F
        head = 1
        if words == 0x7F:
            if end - pos < 4:
                return None
            words = int.from_bytes(buf[pos + 1 : pos + 4], "little")
            head = 4
        length = take = words * 4
    else:
        if end - pos < 4:
            return None
        raw = int.from_bytes(buf[pos : pos + 4], "little")
        quickack = bool(raw & QUICKACK_INTERMEDIATE)
        length = raw & ~QUICKACK_INTERMEDIATE
        if length & 0x40000000:
            raise FramingError(f"length field {raw:#x} has reserved bits set")
        head = 4
        take = length & ~3 if framing is Framing.PADDED else length
        if framing is Framing.INTERMEDIATE and length % 4:
            raise FramingError(f"intermediate length {length} is not a multiple of 4")
    if length <= 0 or take <= 0:
        raise FramingError(f"empty or negative packet length {length}")
    if length > max_packet:
        raise FramingError(f"packet length {length} exceeds the limit {max_packet}")
    return head, length, take, quickack


#: One cut packet: its payload and whether the client asked for a quick ack.
PacketView = tuple[memoryview | bytes, bool]


class PacketSplitter:
    """Like :class:`PacketReader`, without copying packets that arrive whole.

    A packet that lies entirely inside the bytes just fed comes back as a memoryview
    of them, valid only until the caller reuses that buffer (middle-proxy mode
    encrypts it straight away); a packet that straddled feeds is assembled once, in a
    buffer from ``pool`` when one is given, and comes back as a view of that, valid
    until :meth:`release` or the next :meth:`feed`. Same checks and errors as
    :class:`PacketReader`.
    """

    __slots__ = ("_filled", "_framing", "_handed_out", "_max", "_pending", "_pool", "_total")

    def __init__(
        self, framing: Framing, max_packet: int = MAX_PACKET, pool: BufferPool | None = None
    ) -> None:
        self._framing = framing
        self._max = max_packet
        self._pool = pool
        self._pending = bytearray()  # a packet begun in earlier feeds
        self._filled = 0  # bytes of it received
        self._total = 0  # its size with header, 0 while the header is incomplete
        self._handed_out: bytearray | None = None  # buffer of the packet completed last

    @property
    def buffered(self) -> int:
        return self._filled

    def feed(self, data: bytes | bytearray | memoryview) -> list[PacketView]:
        view = data if isinstance(data, memoryview) else memoryview(data)
        out: list[PacketView] = []
        pos, end = 0, len(view)
        if self._handed_out is not None:
            self.release()
        if self._filled:
            pos = self._continue(view, out)
            if self._filled:
                return out
        # The 4-byte headers inline (this runs per packet); anything odd goes to
        # parse_header, which raises the proper error.
        fast = self._framing is not Framing.ABRIDGED
        padded = self._framing is Framing.PADDED
        bad = 0x40000000 if padded else 0x40000003
        limit = self._max
        while pos < end:
            if fast and end - pos >= 4:
                (raw,) = _U32.unpack_from(view, pos)
                length = raw & 0x7FFFFFFF
                take = length & ~3 if padded else length
                if take > 0 and length <= limit and not length & bad:
                    head, quickack = 4, raw > 0x7FFFFFFF
                else:
                    parsed = self._header(view, pos, end)
                    assert parsed is not None
                    head, length, take, quickack = parsed
            else:
                parsed = self._header(view, pos, end)
                if parsed is None:
                    self._pending = bytearray(view[pos:])
                    self._filled, self._total = end - pos, 0
                    break
                head, length, take, quickack = parsed
            total = head + length
            if end - pos < total:
                self._start(view[pos:], total)
                break
            out.append((view[pos + head : pos + head + take], quickack))
            pos += total
        return out

    def _start(self, part: memoryview, total: int) -> None:
        """Keep the first ``part`` of a ``total``-byte packet."""
        have = len(part)
        # Reserve the whole packet once half of it is here; a client that only
        # announces a big packet gets no more memory than it actually sent.
        if 2 * have + 16384 >= total:
            buf = self._pool.take(total) if self._pool is not None else bytearray(total)
        else:
            buf = bytearray(have)
        buf[:have] = part
        self._pending, self._filled, self._total = buf, have, total

    def _continue(self, view: memoryview, out: list[PacketView]) -> int:
        """Add to the packet begun earlier; return how much of ``view`` it took."""
        pos, end = 0, len(view)
        if not self._total:
            head_bytes = self._pending
            while True:
                parsed = self._header(head_bytes, 0, len(head_bytes))
                if parsed is not None:
                    break
                add = min(self._header_len(head_bytes) - len(head_bytes), end - pos)
                if add <= 0:
                    self._filled = len(head_bytes)
                    return pos
                head_bytes += view[pos : pos + add]
                pos += add
            self._start(memoryview(head_bytes), parsed[0] + parsed[1])
        buf, filled, total = self._pending, self._filled, self._total
        add = min(total - filled, end - pos)
        buf[filled : filled + add] = view[pos : pos + add]
        filled += add
        pos += add
        if filled < total:
            self._filled = filled
            return pos
        parsed = self._header(buf, 0, total)
        assert parsed is not None
        head, _, take, quickack = parsed
        out.append((memoryview(buf)[head : head + take], quickack))
        self._handed_out = buf
        self._pending, self._filled, self._total = bytearray(), 0, 0
        return pos

    def release(self) -> None:
        """The caller is done with the views :meth:`feed` returned last (pooled buffers
        go back; the next :meth:`feed` does this anyway)."""
        buf, self._handed_out = self._handed_out, None
        if buf is not None and self._pool is not None:
            self._pool.give(buf)

    def _header_len(self, buf: bytearray) -> int:
        if self._framing is not Framing.ABRIDGED:
            return 4
        return 4 if buf and buf[0] & 0x7F == 0x7F else 1

    def _header(
        self, buf: bytearray | memoryview, pos: int, end: int
    ) -> tuple[int, int, int, bool] | None:
        return parse_header(self._framing, buf, pos, end, self._max)
