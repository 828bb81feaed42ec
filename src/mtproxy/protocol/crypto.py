"""AES-256-CTR stream contexts from ``cryptography``.

CTR encryption and decryption are the same operation, so every direction is an
"encryptor"; callers transform buffers in place with ``update_into(buf, buf)``.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["CipherContext", "aes_ctr"]


def aes_ctr(key: bytes, iv: bytes) -> CipherContext:
    """A CTR keystream context; ``iv`` is the big-endian 128-bit initial counter."""
    return Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
