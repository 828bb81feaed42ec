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
    """Transform a writable buffer that has no spare room after it.

    With older ``cryptography`` (CTR_SLACK > 0) all but the last CTR_SLACK bytes are
    transformed in place, the buffer's own end serving as the room ``update_into``
    wants (CTR writes exactly as many bytes as it reads), and only that short tail
    goes through a copy.
    """
    if not CTR_SLACK:
        ctx.update_into(data, data)
        return
    view = data if isinstance(data, memoryview) else memoryview(data)
    head = len(view) - CTR_SLACK
    if head > 0:
        ctx.update_into(view[:head], view)
    else:
        head = 0
    view[head:] = ctx.update(view[head:])
