"""AES-256-CTR contexts: a published answer, and the in-place path on both kinds of
``cryptography`` (the compat run repeats this file with 38, whose update_into needs room)."""

from __future__ import annotations

import cryptography
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol import crypto
from mtproxy.protocol.crypto import CTR_SLACK, aes_ctr, in_place

# NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt.
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PLAIN = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
NIST_CIPHER = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
)


def test_nist_vector_in_any_split() -> None:
    assert aes_ctr(NIST_KEY, NIST_COUNTER).update(NIST_PLAIN) == NIST_CIPHER
    ctx = aes_ctr(NIST_KEY, NIST_COUNTER)
    pieces = [NIST_PLAIN[:5], NIST_PLAIN[5:21], NIST_PLAIN[21:]]
    assert b"".join(ctx.update(p) for p in pieces) == NIST_CIPHER


def test_slack_probe_matches_the_installed_cryptography() -> None:
    major = int(cryptography.__version__.split(".")[0])
    expected = 15 if major < 42 else 0
    assert expected == CTR_SLACK
    assert crypto._probe_slack() == CTR_SLACK


# update_into without spare room is exactly what old cryptography refuses, so the
# direct path only runs where the probe found no slack.
@pytest.mark.parametrize("slack", [15] if CTR_SLACK else [0, 15])
@given(data=st.binary(min_size=1, max_size=200), skip=st.integers(0, 40))
def test_in_place_equals_update(slack: int, data: bytes, skip: int) -> None:
    reference = aes_ctr(NIST_KEY, NIST_COUNTER)
    reference.update(bytes(skip))
    expected = reference.update(data)
    ctx = aes_ctr(NIST_KEY, NIST_COUNTER)
    ctx.update(bytes(skip))
    buf = bytearray(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crypto, "CTR_SLACK", slack)
        in_place(ctx, memoryview(buf))
    assert bytes(buf) == expected
