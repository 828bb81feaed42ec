"""Cutting the server's byte stream into fake-TLS application-data records.

A real TLS 1.3 server's application-data records carry at most 2^14 bytes of data
plus one content-type byte plus a 16-byte AEAD tag, so a full record has 16 401
payload bytes, and no record is shorter than 18 (one data byte, the type, the
tag). Records of 16 384 bytes, or of 1, 4 or 17, would give the proxy away. So:

- a write is cut into full records of :data:`FULL_RECORD` and one remainder;
- a remainder under :data:`MIN_RECORD` after at least one full record borrows the
  bytes it lacks from the record before it (two records, both legal sizes);
- a write that is under :data:`MIN_RECORD` in total is held back until more data
  comes (then it leads the next write) or :data:`HOLD_SECONDS` pass (then it goes
  alone: the only way a short record can appear, and only after a lull).

Clients accept records up to 16 640 payload bytes (Telegram's apps read any 16-bit
length; the proxy's own reader stops at 16 640), so 16 401 is safe both ways.
"""

from __future__ import annotations

import struct
from typing import Final

#: Payload bytes of a full record: 2^14 data + 1 content type + 16 AEAD tag.
FULL_RECORD: Final = 16401
#: Smallest payload a TLS 1.3 application-data record can have: 1 + 1 + 16.
MIN_RECORD: Final = 18
#: How long a write under MIN_RECORD waits for more data before it goes alone.
HOLD_SECONDS: Final = 0.001

_HEADER: Final = struct.Struct(">BHH")
_APPDATA: Final = 0x17
_TLS12: Final = 0x0303
#: The header of every full record, built once.
FULL_HEADER: Final = _HEADER.pack(_APPDATA, _TLS12, FULL_RECORD)


def header(size: int) -> bytes:
    """The 5-byte application-data record header for ``size`` payload bytes."""
    return _HEADER.pack(_APPDATA, _TLS12, size)


def record_sizes(total: int) -> list[int]:
    """Payload sizes of the records that carry ``total`` bytes written at once.

    Every size is at most FULL_RECORD and, when ``total >= MIN_RECORD``, at least
    MIN_RECORD; an empty list when ``total`` should be held back instead.
    """
    if total < MIN_RECORD:
        return []
    full, rest = divmod(total, FULL_RECORD)
    sizes = [FULL_RECORD] * full
    if rest >= MIN_RECORD:
        sizes.append(rest)
    elif rest:
        # full >= 1 here, since total >= MIN_RECORD: the last full record lends.
        sizes[-1] = FULL_RECORD - (MIN_RECORD - rest)
        sizes.append(MIN_RECORD)
    return sizes


def wrapped_size(total: int) -> int:
    """Wire bytes of ``total`` payload bytes written at once (held bytes count 0)."""
    count = len(record_sizes(total))
    return total + 5 * count if count else 0


def record_pieces(
    held: bytes, data: bytes | bytearray | memoryview, total: int
) -> list[bytes | memoryview]:
    """Headers interleaved with ``held`` and slices of ``data``, for one ``writev``.

    ``total`` is ``len(held) + len(data)`` and at least MIN_RECORD.
    """
    view = data if isinstance(data, memoryview) else memoryview(data)
    pieces: list[bytes | memoryview] = []
    pos = -len(held)  # position in ``data``; negative while still inside ``held``
    for size in record_sizes(total):
        pieces.append(FULL_HEADER if size == FULL_RECORD else header(size))
        end = pos + size
        if pos < 0:
            pieces.append(held)
            pos = 0
        pieces.append(view[pos:end])
        pos = end
    return pieces
