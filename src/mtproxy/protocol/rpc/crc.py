"""Frame checksums: zlib CRC32 always, CRC32C once both peers agreed on it.

The official server asks for CRC32C in its RPC_HANDSHAKE (``engine.c:571`` sets
``RPCF_USE_CRC32C`` by default) and TMT does too; ALX never does. Python has no
CRC32C in the standard library, and zlib's CRC32 is in C, so we keep to CRC32 (the
middle-end accepts either) and carry a table-driven CRC32C only for completeness.
"""

from __future__ import annotations

import zlib

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


#: CRC32C runs in pure Python here, so the proxy never asks a middle-end for it.
HAVE_FAST_CRC32C = False


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C of ``data`` (pure Python: fine for tests and a peer that insists)."""
    return crc32c_pure(data)


def crc32(data: bytes | bytearray | memoryview) -> int:
    """zlib's CRC32, the default frame checksum."""
    return zlib.crc32(data)
