"""XXH64 (pensu.checksum) against reference values of libxxhash 0.8 (`XXH64(data, length, seed)`)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pensu.checksum import xxh64

DATA = bytes((i * 31 + 7) % 251 for i in range(1000))


@pytest.mark.parametrize(("length", "seed", "expected"), [
    (0, 0, 0xEF46DB3751D8E999),
    (3, 0, 0x56E6957632A487F9),  # bytes only
    (5, 0, 0x808815858624DD4E),  # a 4-byte word and a byte
    (13, 0, 0x52CC5F72CFBDE739),  # 8 + 4 + 1
    (31, 0, 0x3391303D485E846E),  # the longest input without a stripe
    (32, 0, 0x40B7AFF75D45BBC8),  # one stripe, no tail
    (33, 7, 0x464AABCF4AC24F),
    (100, 2**64 - 1, 0x2C11A809F27AE8F4),
    (1000, 0, 0x9E3300C1CDE3C58D),
    (1000, 123456789, 0x1DFA57A5532ED886),
])
def test_reference_values(length: int, seed: int, expected: int) -> None:
    assert xxh64(DATA[:length], seed) == expected


def test_abc() -> None:
    assert xxh64(b"abc") == 0x44BC2CF5AD770999


@pytest.mark.skipif(sys.byteorder != "little", reason="words are read in host order")
def test_unaligned_views_and_buffer_types_hash_alike() -> None:
    expected = xxh64(DATA[3:])
    assert xxh64(memoryview(DATA)[3:]) == expected
    assert xxh64(bytearray(DATA[3:])) == expected
    assert xxh64(np.frombuffer(DATA, np.uint8)[3:].tobytes()) == expected


def test_every_single_bit_flip_changes_the_hash() -> None:
    base = xxh64(DATA[:200])
    for byte in range(200):
        for bit in range(8):
            damaged = bytearray(DATA[:200])
            damaged[byte] ^= 1 << bit
            assert xxh64(damaged) != base
