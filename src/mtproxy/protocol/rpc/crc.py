"""Frame checksums: zlib CRC32 always, CRC32C once both peers agreed on it.

The official server asks for CRC32C in its RPC_HANDSHAKE (``engine.c:571`` sets
``RPCF_USE_CRC32C`` by default) and TMT does too; ALX never does. Python has no
CRC32C in the standard library, so the C implementation of the ``crc32c``
package is used when it is installed and a table-driven fallback otherwise.
The fallback is correct but slow: request CRC32C only when
:data:`HAVE_FAST_CRC32C` is true.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

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


def _load_fast() -> Callable[[bytes | bytearray | memoryview], int] | None:
    try:
        from crc32c import crc32c as fast
    except ImportError:  # the optional C implementation is missing
        return None

    def call(data: bytes | bytearray | memoryview) -> int:
        return int(fast(data))

    return call


_FAST = _load_fast()

#: True when CRC32C runs in C; requesting CRC32C without it costs a lot of CPU.
HAVE_FAST_CRC32C: bool = _FAST is not None


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of ``data`` using the fastest available implementation."""
    if _FAST is not None:
        return _FAST(data)
    return crc32c_pure(data)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """zlib's CRC32, the default frame checksum."""
    return zlib.crc32(data)
