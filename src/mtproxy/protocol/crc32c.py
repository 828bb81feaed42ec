"""CRC-32C (Castagnoli), the checksum of PROXY v2 headers and of CRC32C-mode RPC frames.

The one implementation in the project (docs/protocol.md §8.2 and §9.2 say where it is
used). The optional ``crc32c`` package (the ``fast`` extra; Debian's ``python3-crc32c``)
runs it on the CPU's CRC32 instruction, five times faster than zlib's CRC32, which is
the single largest cost of a middle-proxy download after the two AES passes: with it
the proxy asks the middle-proxy for CRC32C frames, as the official server does. Without
it the proxy keeps to zlib's CRC32 (both sides accept it), and the table-driven code
here serves the PROXY header and a peer that insists.
"""

from __future__ import annotations

from typing import Protocol

#: The Castagnoli polynomial 0x1EDC6F41, bit-reflected.
POLYNOMIAL_REFLECTED = 0x82F63B78


class Crc(Protocol):
    def __call__(self, data: bytes | bytearray | memoryview, value: int = 0, /) -> int: ...


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ POLYNOMIAL_REFLECTED if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_TABLE = _make_table()


def crc32c_pure(data: bytes | bytearray | memoryview, value: int = 0, /) -> int:
    """CRC-32C of ``data``, in Python; pass an earlier result as ``value`` to continue
    over more data (``crc32c(b, crc32c(a)) == crc32c(a + b)``, as with :func:`zlib.crc32`)."""
    table = _TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_fast: Crc | None
try:
    from crc32c import crc32c as _fast
except ImportError:  # pragma: no cover - depends on the installation
    _fast = None

#: True when CRC-32C runs in C: only then does the proxy ask a middle-proxy for it.
HAVE_FAST_CRC32C = _fast is not None

#: CRC-32C of ``data``, continuing from ``value`` (C when installed, else Python).
crc32c: Crc = _fast if _fast is not None else crc32c_pure
