"""CRC-32C (docs/protocol.md §8.2, §9.2): published vectors and the algebra a CRC must obey.

The reference below works bit by bit on the unreflected polynomial and reverses bits
explicitly, so it shares nothing with the module's reflected table but the definition.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mtproxy.protocol.crc32c import HAVE_FAST_CRC32C, POLYNOMIAL_REFLECTED, crc32c, crc32c_pure

#: (data, CRC) pairs published elsewhere: the CRC catalogue's check value for
#: "123456789", RFC 3720 appendix B.4 (iSCSI) including its SCSI Read PDU, and two
#: short strings whose CRC-32C appears in many implementations' tests.
KNOWN = [
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (
        bytes.fromhex(
            "01c00000000000000000000000000000"
            "14000000000004000000001400000018"
            "28000000000000000200000000000000"
        ),
        0xD9963A56,
    ),
    (b"The quick brown fox jumps over the lazy dog", 0x22620404),
]

blobs = st.binary(max_size=300)


def reflect(value: int, width: int) -> int:
    return int(f"{value:0{width}b}"[::-1], 2)


def reference(data: bytes) -> int:
    """Textbook CRC-32C: MSB-first register, polynomial 0x1EDC6F41, reflected in and out."""
    register = 0xFFFFFFFF
    for byte in data:
        register ^= reflect(byte, 8) << 24
        for _ in range(8):
            top = register & 0x80000000
            register = (register << 1) & 0xFFFFFFFF
            if top:
                register ^= 0x1EDC6F41
    return reflect(register, 32) ^ 0xFFFFFFFF


def test_published_vectors() -> None:
    for data, value in KNOWN:
        assert crc32c(data) == value, data
        assert crc32c_pure(data) == value, data
        assert reference(data) == value, data


def test_the_fast_package_is_used_when_installed() -> None:
    """The suite installs the ``fast`` extra: the C CRC is what the middle path runs."""
    assert HAVE_FAST_CRC32C and crc32c is not crc32c_pure


@given(blobs, st.integers(0, 2**32 - 1))
def test_python_and_c_agree_from_any_start(data: bytes, start: int) -> None:
    assert crc32c(data, start) == crc32c_pure(data, start)


def test_polynomial_is_castagnoli() -> None:
    assert reflect(POLYNOMIAL_REFLECTED, 32) == 0x1EDC6F41


@given(blobs)
def test_matches_the_bitwise_reference(data: bytes) -> None:
    assert crc32c(data) == reference(data)


@given(blobs)
def test_bytes_bytearray_and_memoryview_agree(data: bytes) -> None:
    expected = crc32c(data)
    assert crc32c(bytearray(data)) == expected
    assert crc32c(memoryview(data)) == expected
    padded = memoryview(b"xx" + data + b"yy")[2:-2]
    assert crc32c(padded) == expected


@given(blobs, blobs, blobs)
def test_continues_across_pieces(a: bytes, b: bytes, c: bytes) -> None:
    assert crc32c(c, crc32c(b, crc32c(a))) == crc32c(a + b + c)


@given(
    st.integers(0, 64).flatmap(
        lambda n: st.tuples(st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))
    )
)
def test_is_affine_over_xor(pair: tuple[bytes, bytes]) -> None:
    # A CRC is linear up to its init/xor-out constants: crc(a^b) = crc(a)^crc(b)^crc(0...0).
    a, b = pair
    mixed = bytes(x ^ y for x, y in zip(a, b, strict=True))
    assert crc32c(mixed) == crc32c(a) ^ crc32c(b) ^ crc32c(bytes(len(a)))


@given(st.binary(min_size=1, max_size=64), st.data())
def test_every_burst_up_to_32_bits_is_detected(data: bytes, draw: st.DataObject) -> None:
    bits = len(data) * 8
    width = draw.draw(st.integers(1, min(32, bits)))
    start = draw.draw(st.integers(0, bits - width))
    # A burst starts and ends with a flipped bit; anything may lie between.
    inner = draw.draw(st.integers(0, (1 << max(0, width - 2)) - 1)) if width > 2 else 0
    pattern = 1 | (inner << 1) | (1 << (width - 1))
    flipped = int.from_bytes(data, "big") ^ (pattern << (bits - start - width))
    corrupted = flipped.to_bytes(len(data), "big")
    assert corrupted != data
    assert crc32c(corrupted) != crc32c(data)
