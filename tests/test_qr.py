"""The QR encoder against two independent implementations.

python-qrcode (a separate encoder) must produce the very same modules for the same
data, version, level and mask, and hold exactly as many bytes per version; zxing-cpp
(a reader) must decode what we draw with the mask we choose.
"""

from __future__ import annotations

import random

import pytest
import qrcode
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from qrcode.exceptions import DataOverflowError
from qrcode.util import MODE_8BIT_BYTE, QRData

from mtproxy.qr import LEVELS, QrCode, QrError, capacity, encode, penalty

REFERENCE_LEVELS = {
    "L": qrcode.constants.ERROR_CORRECT_L,
    "M": qrcode.constants.ERROR_CORRECT_M,
    "Q": qrcode.constants.ERROR_CORRECT_Q,
    "H": qrcode.constants.ERROR_CORRECT_H,
}


def reference(data: bytes, version: int, level: str, mask: int) -> list[list[bool]]:
    code = qrcode.QRCode(version=version, error_correction=REFERENCE_LEVELS[level], border=0,
                         mask_pattern=mask)
    code.add_data(QRData(data, mode=MODE_8BIT_BYTE), optimize=0)
    code.make(fit=False)
    return [[bool(m) for m in row] for row in code.modules]


def fits_reference(data: bytes, version: int, level: str) -> bool:
    try:
        reference(data, version, level, 0)
    except DataOverflowError:
        return False
    return True


def modules(code: QrCode) -> list[list[bool]]:
    return [list(row) for row in code.modules]


def decode(matrix: list[list[bool]]) -> list[bytes]:
    cell = 3
    width = len(matrix) * cell
    image = bytearray(width * width)
    for y, row in enumerate(matrix):
        line = b"".join((b"\x00" if dark else b"\xff") * cell for dark in row)
        for yy in range(y * cell, (y + 1) * cell):
            image[yy * width : (yy + 1) * width] = line
    view = memoryview(bytes(image)).cast("B", (width, width))
    return [bytes(r.bytes) for r in zxingcpp.read_barcodes(view, try_invert=False)]


def random_bytes(rng: random.Random, n: int) -> bytes:
    # Non-zero first byte: python-qrcode fails on a leading zero coefficient.
    return bytes([rng.randrange(1, 256)] + [rng.randrange(256) for _ in range(n - 1)])[:n]


@pytest.mark.parametrize("level", LEVELS)
def test_every_version_has_the_reference_capacity_and_modules(level: str) -> None:
    rng = random.Random(level)
    for version in range(1, 41):
        limit = capacity(version, level)
        full = random_bytes(rng, limit)
        assert not fits_reference(full + b"x", version, level), (version, limit)
        with pytest.raises(QrError):
            encode(full + b"x", level=level, boost=False, version=version)
        mask = rng.randrange(8)
        code = encode(full, level=level, boost=False, mask=mask)
        # The smallest version that holds it: the full one.
        assert (code.version, code.level, code.mask) == (version, level, mask)
        assert modules(code) == reference(full, version, level, mask), (version, level)


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300).filter(lambda b: b[0] != 0),
    level=st.sampled_from(LEVELS),
    mask=st.integers(0, 7),
)
def test_matches_the_reference_encoder(data: bytes, level: str, mask: int) -> None:
    code = encode(data, level=level, boost=False, mask=mask)
    assert modules(code) == reference(data, code.version, level, mask)


@pytest.mark.parametrize(
    "data",
    [b"A", b"https://t.me/proxy?server=203.0.113.7&port=443&secret=" + b"ab" * 16,
     b"tg://proxy?server=2001:db8::1&port=8443&secret=ee" + b"0f" * 16
     + b"www.google.com".hex().encode(), bytes(range(256)) * 3],
)
def test_chosen_mask_decodes(data: bytes) -> None:
    code = encode(data)
    assert decode(code.matrix(4)) == [data]
    # The chosen mask scores no worse than any other.
    scores = [penalty(modules(encode(data, level=code.level, boost=False, mask=m)))
              for m in range(8)]
    assert scores[code.mask] == min(scores)


def test_level_is_boosted_within_the_same_version() -> None:
    data = b"x" * 10  # version 1 holds 17 bytes at L, 14 at M, 11 at Q, 7 at H
    code = encode(data)
    assert (code.version, code.level) == (1, "Q")
    assert encode(data, boost=False).level == "L"
    assert [capacity(1, level) for level in LEVELS] == [17, 14, 11, 7]


def test_matrix_adds_a_light_quiet_zone() -> None:
    code = encode(b"quiet")
    matrix = code.matrix(2)
    assert len(matrix) == code.size + 4 and all(len(row) == code.size + 4 for row in matrix)
    assert not any(matrix[0]) and not any(matrix[-1])
    assert not any(row[0] or row[1] or row[-1] for row in matrix)
    assert [row[2:-2] for row in matrix[2:-2]] == modules(code)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"level": "X"}, "level"), ({"version": 41}, "version"), ({"mask": 8}, "mask"),
     ({"version": 1, "level": "H", "boost": False}, "do not fit")],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(QrError, match=message):
        encode(b"0123456789abcdef", **kwargs)  # type: ignore[arg-type]


def test_too_much_data() -> None:
    with pytest.raises(QrError, match="do not fit"):
        encode(bytes(2954))
    assert encode(bytes(2953)).version == 40
