"""AES-256-CTR stream contexts from ``cryptography``.

CTR encryption and decryption are the same operation, so every direction is an
"encryptor"; callers transform buffers in place with ``update_into``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["CTR_SLACK", "CipherContext", "aes_ctr", "in_place"]


def aes_ctr(key: bytes, iv: bytes) -> CipherContext:
    """A CTR keystream context; ``iv`` is the big-endian 128-bit initial counter."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()


def _probe_slack() -> int:
    """Extra output room ``update_into`` demands: 15 before cryptography 42, else 0."""
    buf = bytearray(16)
    try:
        aes_ctr(bytes(32), bytes(16)).update_into(memoryview(buf)[:1], memoryview(buf)[:1])
    except ValueError:
        return 15
    return 0


#: Bytes an ``update_into`` output must extend past the data (see :func:`_probe_slack`).
CTR_SLACK = _probe_slack()


def in_place(ctx: CipherContext, data: bytearray | memoryview) -> None:
    """Transform a writable buffer that has no spare room after it (rare paths only)."""
    if CTR_SLACK:
        data[:] = ctx.update(data)
    else:
        ctx.update_into(data, data)
