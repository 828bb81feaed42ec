"""CRC-32C (Castagnoli), the checksum of PROXY v2 headers and of CRC32C-mode RPC frames.

The one implementation in the project (docs/protocol.md §8.2 and §9.2 say where it is
used). It runs in pure Python on purpose: the proxy checks it once per connection over a
PROXY v2 header of a few hundred bytes, and never asks a middle-end for CRC32C frames
(zlib's CRC32 is the default both sides accept), so a C extension (PyPI ``crc32c``, Debian's
``python3-crc32c``) would add a dependency to the container image for no measurable gain.
"""

from __future__ import annotations

#: The Castagnoli polynomial 0x1EDC6F41, bit-reflected.
POLYNOMIAL_REFLECTED = 0x82F63B78


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ POLYNOMIAL_REFLECTED if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of ``data``; pass an earlier result as ``value`` to continue over more data
    (``crc32c(b, crc32c(a)) == crc32c(a + b)``, as with :func:`zlib.crc32`)."""
    table = _TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
