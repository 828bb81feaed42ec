"""A small QR code encoder (byte mode), for drawing proxy links in a terminal.

Written here rather than taken from a QR library because the container image has a size
budget: the usual libraries bring image writers and half of ``xml`` along, which cost
more than this whole module. Only what a link needs is implemented: byte mode, the four
error correction levels, versions 1 to 40, and mask choice by the standard's penalty
rules (ISO/IEC 18004, section 8). The tests compare every module with an independent
encoder and decode the result with an independent reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

LEVELS: Final = ("L", "M", "Q", "H")
#: The two format-information bits of each level (L=01, M=00, Q=11, H=10).
_LEVEL_BITS: Final = {"L": 1, "M": 0, "Q": 3, "H": 2}

# Error correction codewords per block, and number of blocks, by level and version
# (index 0 unused). ISO/IEC 18004 table 9.
_ECC_PER_BLOCK: Final = {
    "L": (0, 7, 10, 15, 20, 26, 18, 20, 24, 30, 18, 20, 24, 26, 30, 22, 24, 28, 30, 28, 28,
          28, 28, 30, 30, 26, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30),
    "M": (0, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26,
          26, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28),
    "Q": (0, 13, 22, 18, 26, 18, 24, 18, 22, 20, 24, 28, 26, 24, 20, 30, 24, 28, 28, 26, 30,
          28, 30, 30, 30, 30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30),
    "H": (0, 17, 28, 22, 16, 22, 28, 26, 26, 24, 28, 24, 28, 22, 24, 24, 30, 28, 28, 26, 28,
          30, 24, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30),
}
_BLOCKS: Final = {
    "L": (0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 4, 6, 6, 6, 6, 7, 8, 8, 9, 9, 10, 12,
          12, 12, 13, 14, 15, 16, 17, 18, 19, 19, 20, 21, 22, 24, 25),
    "M": (0, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16, 17, 17, 18,
          20, 21, 23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49),
    "Q": (0, 1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 8, 10, 12, 16, 12, 17, 16, 18, 21, 20, 23, 23,
          25, 27, 29, 34, 34, 35, 38, 40, 43, 45, 48, 51, 53, 56, 59, 62, 65, 68),
    "H": (0, 1, 1, 2, 4, 4, 4, 5, 6, 8, 8, 11, 11, 16, 16, 18, 16, 19, 21, 25, 25, 25, 34,
          30, 32, 35, 37, 40, 42, 45, 48, 51, 54, 57, 60, 63, 66, 70, 74, 77, 81),
}

# GF(256) with the QR polynomial x^8 + x^4 + x^3 + x^2 + 1.
_EXP = [0] * 512
_LOG = [0] * 256
_value = 1
for _i in range(255):
    _EXP[_i] = _value
    _LOG[_value] = _i
    _value <<= 1
    if _value & 0x100:
        _value ^= 0x11D
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


class QrError(ValueError):
    """The data does not fit in a QR code, or an argument is out of range."""


@dataclass(frozen=True)
class QrCode:
    """An encoded symbol: ``modules[row][column]`` is True for a dark module."""

    version: int
    level: str
    mask: int
    modules: tuple[tuple[bool, ...], ...]

    @property
    def size(self) -> int:
        return len(self.modules)

    def matrix(self, border: int = 4) -> list[list[bool]]:
        """The modules with ``border`` light modules (the quiet zone) on every side."""
        width = self.size + 2 * border
        blank = [False] * width
        rows = [list(blank) for _ in range(border)]
        rows += [[False] * border + list(row) + [False] * border for row in self.modules]
        rows += [list(blank) for _ in range(border)]
        return rows


def _raw_data_modules(version: int) -> int:
    """Modules left for data and error correction once the function patterns are drawn."""
    result = (16 * version + 128) * version + 64
    if version >= 2:
        aligns = version // 7 + 2
        result -= (25 * aligns - 10) * aligns - 55
        if version >= 7:
            result -= 36
    return result


def _data_codewords(version: int, level: str) -> int:
    return _raw_data_modules(version) // 8 - _ECC_PER_BLOCK[level][version] * _BLOCKS[level][
        version
    ]


def _capacity_bits(version: int, level: str) -> int:
    return _data_codewords(version, level) * 8


def capacity(version: int, level: str) -> int:
    """How many bytes a symbol of ``version`` holds at ``level``."""
    count_bits = 8 if version <= 9 else 16
    return (_capacity_bits(version, level) - 4 - count_bits) // 8


def _needed_bits(length: int, version: int) -> int:
    count_bits = 8 if version <= 9 else 16
    return 4 + count_bits + 8 * length


def _alignment_positions(version: int) -> list[int]:
    if version == 1:
        return []
    aligns = version // 7 + 2
    size = version * 4 + 17
    step = (version * 8 + aligns * 3 + 5) // (aligns * 4 - 4) * 2
    return [6, *sorted(size - 7 - i * step for i in range(aligns - 1))]


def _rs_generator(degree: int) -> list[int]:
    """Coefficients (highest first, leading 1 dropped) of prod (x - a^i), i < degree."""
    poly = [1]
    for i in range(degree):
        nxt = [0] * (len(poly) + 1)
        for j, coef in enumerate(poly):
            nxt[j] ^= coef
            if coef:
                nxt[j + 1] ^= _EXP[_LOG[coef] + i]
        poly = nxt
    return poly[1:]


def _rs_remainder(data: list[int], generator: list[int]) -> list[int]:
    rem = [0] * len(generator)
    for byte in data:
        factor = byte ^ rem[0]
        rem = [*rem[1:], 0]
        if factor:
            log_factor = _LOG[factor]
            for i, coef in enumerate(generator):
                rem[i] ^= _EXP[_LOG[coef] + log_factor]
    return rem


def _codewords(data: bytes, version: int, level: str) -> list[int]:
    """Data bits as codewords, padded, split into blocks with RS codes, interleaved."""
    bits: list[int] = []

    def put(value: int, length: int) -> None:
        bits.extend((value >> i) & 1 for i in reversed(range(length)))

    put(0b0100, 4)  # byte mode
    put(len(data), 8 if version <= 9 else 16)
    for byte in data:
        put(byte, 8)
    capacity = _capacity_bits(version, level)
    put(0, min(4, capacity - len(bits)))  # terminator
    put(0, -len(bits) % 8)
    words = [int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8)]
    pad = 0xEC
    while len(words) < capacity // 8:
        words.append(pad)
        pad ^= 0xEC ^ 0x11

    blocks = _BLOCKS[level][version]
    ecc_len = _ECC_PER_BLOCK[level][version]
    raw_words = _raw_data_modules(version) // 8
    short_blocks = blocks - raw_words % blocks
    short_len = raw_words // blocks  # data + ecc of a short block
    generator = _rs_generator(ecc_len)
    data_blocks: list[list[int]] = []
    ecc_blocks: list[list[int]] = []
    pos = 0
    for i in range(blocks):
        length = short_len - ecc_len + (0 if i < short_blocks else 1)
        block = words[pos : pos + length]
        pos += length
        data_blocks.append(block)
        ecc_blocks.append(_rs_remainder(block, generator))
    out: list[int] = []
    for i in range(short_len - ecc_len + 1):
        out.extend(block[i] for block in data_blocks if i < len(block))
    for i in range(ecc_len):
        out.extend(block[i] for block in ecc_blocks)
    return out


class _Grid:
    def __init__(self, version: int) -> None:
        self.version = version
        self.size = version * 4 + 17
        self.dark = [[False] * self.size for _ in range(self.size)]
        self.reserved = [[False] * self.size for _ in range(self.size)]

    def set(self, x: int, y: int, dark: bool) -> None:
        self.dark[y][x] = dark
        self.reserved[y][x] = True

    def function_patterns(self) -> None:
        size = self.size
        for i in range(size):
            self.set(6, i, i % 2 == 0)
            self.set(i, 6, i % 2 == 0)
        for cx, cy in ((3, 3), (size - 4, 3), (3, size - 4)):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    x, y = cx + dx, cy + dy
                    if 0 <= x < size and 0 <= y < size:
                        self.set(x, y, max(abs(dx), abs(dy)) not in (2, 4))
        positions = _alignment_positions(self.version)
        last = len(positions) - 1
        for i, cx in enumerate(positions):
            for j, cy in enumerate(positions):
                if (i, j) in ((0, 0), (0, last), (last, 0)):
                    continue  # the finder patterns' corners
                for dy in range(-2, 3):
                    for dx in range(-2, 3):
                        self.set(cx + dx, cy + dy, max(abs(dx), abs(dy)) != 1)
        self.format_bits("L", 0)  # reserve; overwritten once the mask is chosen
        if self.version >= 7:
            rem = self.version
            for _ in range(12):
                rem = (rem << 1) ^ ((rem >> 11) * 0x1F25)
            bits = self.version << 12 | rem
            for i in range(18):
                dark = (bits >> i) & 1 == 1
                a, b = size - 11 + i % 3, i // 3
                self.set(a, b, dark)
                self.set(b, a, dark)

    def format_bits(self, level: str, mask: int) -> None:
        data = _LEVEL_BITS[level] << 3 | mask
        rem = data
        for _ in range(10):
            rem = (rem << 1) ^ ((rem >> 9) * 0x537)
        bits = (data << 10 | rem) ^ 0x5412

        def bit(i: int) -> bool:
            return (bits >> i) & 1 == 1

        size = self.size
        for i in range(6):
            self.set(8, i, bit(i))
        self.set(8, 7, bit(6))
        self.set(8, 8, bit(7))
        self.set(7, 8, bit(8))
        for i in range(9, 15):
            self.set(14 - i, 8, bit(i))
        for i in range(8):
            self.set(size - 1 - i, 8, bit(i))
        for i in range(8, 15):
            self.set(8, size - 15 + i, bit(i))
        self.set(8, size - 8, True)  # the dark module

    def place(self, codewords: list[int]) -> None:
        """Codeword bits in the standard two-column zigzag, skipping function modules."""
        total = len(codewords) * 8
        index = 0
        right = self.size - 1
        while right >= 1:
            if right == 6:
                right = 5  # the vertical timing pattern
            upward = (right + 1) & 2 == 0
            for step in range(self.size):
                y = self.size - 1 - step if upward else step
                for x in (right, right - 1):
                    if self.reserved[y][x]:
                        continue
                    if index < total:
                        self.dark[y][x] = (codewords[index >> 3] >> (7 - (index & 7))) & 1 == 1
                        index += 1
            right -= 2

    def masked(self, mask: int) -> list[list[bool]]:
        condition = _MASKS[mask]
        return [
            [
                dark != (not self.reserved[y][x] and condition(x, y))
                for x, dark in enumerate(row)
            ]
            for y, row in enumerate(self.dark)
        ]


_MASKS: Final[tuple[Callable[[int, int], bool], ...]] = (
    lambda x, y: (x + y) % 2 == 0,
    lambda x, y: y % 2 == 0,
    lambda x, y: x % 3 == 0,
    lambda x, y: (x + y) % 3 == 0,
    lambda x, y: (x // 3 + y // 2) % 2 == 0,
    lambda x, y: x * y % 2 + x * y % 3 == 0,
    lambda x, y: (x * y % 2 + x * y % 3) % 2 == 0,
    lambda x, y: ((x + y) % 2 + x * y % 3) % 2 == 0,
)

_FINDER_LIKE: Final = (
    (True, False, True, True, True, False, True, False, False, False, False),
    (False, False, False, False, True, False, True, True, True, False, True),
)


def penalty(modules: list[list[bool]]) -> int:
    """The standard's four penalty rules; the mask with the lowest score is used."""
    size = len(modules)
    columns = [[modules[y][x] for y in range(size)] for x in range(size)]
    score = 0
    for line in (*modules, *columns):
        run = 1
        for i in range(1, size + 1):
            if i < size and line[i] == line[i - 1]:
                run += 1
                continue
            if run >= 5:
                score += 3 + run - 5
            run = 1
        for i in range(size - 10):
            if tuple(line[i : i + 11]) in _FINDER_LIKE:
                score += 40
    for y in range(size - 1):
        for x in range(size - 1):
            colour = modules[y][x]
            if colour == modules[y][x + 1] == modules[y + 1][x] == modules[y + 1][x + 1]:
                score += 3
    dark = sum(map(sum, modules))
    total = size * size
    score += 10 * (abs(dark * 20 - total * 10) // total)
    return score


def encode(
    data: bytes,
    *,
    level: str = "L",
    boost: bool = True,
    version: int | None = None,
    mask: int | None = None,
) -> QrCode:
    """The smallest QR code holding ``data`` at ``level`` or better.

    ``boost`` raises the level while the data still fits the same version. ``version``
    and ``mask`` force those choices (for tests and comparisons).
    """
    if level not in LEVELS:
        raise QrError(f"error correction level must be one of {', '.join(LEVELS)}")
    if version is None:
        for candidate in range(1, 41):
            if _needed_bits(len(data), candidate) <= _capacity_bits(candidate, level):
                version = candidate
                break
        else:
            raise QrError(f"{len(data)} bytes do not fit in a QR code at level {level}")
    elif not 1 <= version <= 40:
        raise QrError("version must be 1 to 40")
    elif _needed_bits(len(data), version) > _capacity_bits(version, level):
        raise QrError(f"{len(data)} bytes do not fit in version {version} at level {level}")
    if boost:
        for better in LEVELS[LEVELS.index(level) + 1 :]:
            if _needed_bits(len(data), version) <= _capacity_bits(version, better):
                level = better
    if mask is not None and not 0 <= mask <= 7:
        raise QrError("mask must be 0 to 7")

    grid = _Grid(version)
    grid.function_patterns()
    grid.place(_codewords(data, version, level))
    best: tuple[int, int, list[list[bool]]] | None = None
    for candidate in range(8) if mask is None else (mask,):
        grid.format_bits(level, candidate)
        modules = grid.masked(candidate)
        score = penalty(modules) if mask is None else 0
        if best is None or score < best[0]:
            best = (score, candidate, modules)
    assert best is not None
    return QrCode(version, level, best[1], tuple(tuple(row) for row in best[2]))
