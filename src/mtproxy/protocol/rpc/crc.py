"""Frame checksums: zlib CRC32 always, CRC32C once both peers agreed on it.

The official server asks for CRC32C in its RPC_HANDSHAKE (``engine.c:571`` sets
``RPCF_USE_CRC32C`` by default) and TMT does too; ALX never does. Python has no
CRC32C in the standard library. With the optional ``crc32c`` package (the ``fast``
extra; Debian's ``python3-crc32c``) it runs on the CPU's CRC32 instruction, five
times faster than zlib's CRC32, which is the single largest cost of a download after
the two AES passes; then the proxy asks for it like the official server does.
Without the package we keep to zlib's CRC32 (the middle-end accepts either) and
carry a table-driven CRC32C only for a peer that insists.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

_fast_crc32c: Callable[[bytes | bytearray | memoryview, int], int] | None
try:  # optional: hardware CRC32C
    from crc32c import crc32c as _fast_crc32c
except ImportError:  # pragma: no cover - depends on the installation
    _fast_crc32c = None

_CASTAGNOLI_REFLECTED = 0x82F63B78


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ _CASTAGNOLI_REFLECTED if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_TABLE = _make_table()


def crc32c_pure(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli, as in iSCSI / RFC 3720), continuing from ``value``."""
    table = _TABLE
    crc = value ^ 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


#: True when CRC32C runs in C; only then does the proxy ask a middle-end for it.
HAVE_FAST_CRC32C = _fast_crc32c is not None

#: CRC32C continuing from a value (like ``zlib.crc32``'s second argument).
crc32c_update: Callable[[bytes | bytearray | memoryview, int], int] = (
    _fast_crc32c if _fast_crc32c is not None else crc32c_pure
)


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of ``data`` (pure Python without the ``crc32c`` package)."""
    return crc32c_update(data, 0)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """zlib's CRC32, the default frame checksum."""
    return zlib.crc32(data)
