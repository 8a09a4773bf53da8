"""Encoders that turn a scalar value and a timestamp into sparse bit sets (SDRs).

An SDR is a sorted, duplicate-free int32 array of active bit indices.

RDSE (random distributed scalar encoder)
    ``bucket = floor(value / resolution)``; active bit ``i`` (``i < active_bits``) is
    ``hash(seed, bucket + i) mod size``. Consecutive buckets share ``active_bits - 1`` hashes,
    so near values overlap and far values are almost disjoint. Hash collisions only make an
    encoding shorter. The bucket is taken modulo 2**64 (two's complement), so negative and
    huge values are handled deterministically; its low and high 32-bit halves are each mixed
    with the seed through MurmurHash3's 32-bit finaliser (fmix32).

DateEncoder
    Time of day is a periodic scalar encoder over [0, 24) hours, sized the way htm.core sizes
    periodic encoders: ``resolution = radius / width`` and ``n = ceil(24 / resolution)``
    (21 bits, radius 9.49 h → n = 54). Bucket ``floor(hours / resolution) mod n`` switches on
    bits ``bucket .. bucket + width - 1``, wrapping modulo n. Day of week works the same over
    7 days (the value is weekday + fraction of day, Monday = 0). Weekend is a two-category
    field of ``2 × width`` bits: bits [0, w) on weekdays, [w, 2w) on Saturday and Sunday.
    Fields are laid out time of day, day of week, weekend; a width of 0 disables a field.
    Timestamps are unix seconds (UTC) shifted by ``utc_offset_hours`` to local time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

_MASK32 = np.uint64(0xFFFFFFFF)
_MASK64 = (1 << 64) - 1
_SECONDS_PER_DAY = 86400.0
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@njit(cache=True)
def _fmix32(h: np.uint64) -> np.uint64:
    """MurmurHash3's 32-bit finaliser on the low 32 bits of `h` (kept in uint64 to avoid overflow surprises)."""
    h = h & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    return h


@njit(cache=True)
def _rdse_bits(seed: np.uint64, bucket: np.uint64, active_bits: int, size: int) -> np.ndarray:
    """Return the sorted unique bit indices of `bucket` (uint64, wraps) for an RDSE."""
    seed_lo = _fmix32(seed ^ np.uint64(0x9E3779B9))
    seed_hi = _fmix32((seed >> np.uint64(32)) ^ np.uint64(0x7F4A7C15))
    bits = np.empty(active_bits, dtype=np.int32)
    for i in range(active_bits):
        key = bucket + np.uint64(i)  # wraps modulo 2**64 by design
        lo = key & np.uint64(0xFFFFFFFF)
        hi = key >> np.uint64(32)
        h = _fmix32(lo ^ seed_lo)
        h = _fmix32(h ^ ((hi * np.uint64(0xCC9E2D51)) & np.uint64(0xFFFFFFFF)) ^ seed_hi)
        bits[i] = np.int32(h % np.uint64(size))
    bits.sort()
    n = 0
    for i in range(active_bits):
        if n == 0 or bits[i] != bits[n - 1]:
            bits[n] = bits[i]
            n += 1
    return bits[:n].copy()


@dataclass(frozen=True)
class RDSEParams:
    """Parameters of a random distributed scalar encoder."""

    size: int = 400
    active_bits: int = 21
    resolution: float = 1.0
    seed: int = 0


class RDSE:
    """Random distributed scalar encoder (htm.core style); stateless apart from its params."""

    def __init__(self, params: RDSEParams) -> None:
        if params.size < 1 or not 1 <= params.active_bits <= params.size:
            raise ValueError(f"RDSE needs size >= 1 and 1 <= active_bits <= size, got {params}")
        if not (math.isfinite(params.resolution) and params.resolution > 0):
            raise ValueError(f"RDSE resolution must be a positive finite number, got {params.resolution!r}")
        self.params = params
        self.size = int(params.size)
        self._seed = np.uint64(int(params.seed) & _MASK64)

    def bucket(self, value: float) -> int:
        """Return the bucket index floor(value / resolution)."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"RDSE cannot encode {value!r}")
        return math.floor(value / self.params.resolution)

    def encode(self, value: float) -> np.ndarray:
        """Return the sorted unique int32 active bits for `value` (at most active_bits of them)."""
        bucket = np.uint64(self.bucket(value) & _MASK64)
        return _rdse_bits(self._seed, bucket, self.params.active_bits, self.size)


@dataclass(frozen=True)
class DateEncoderParams:
    """Parameters of the date encoder; a width of 0 disables that field."""

    time_of_day_width: int = 21
    time_of_day_radius: float = 9.49  # hours
    weekend_width: int = 0
    day_of_week_width: int = 0
    day_of_week_radius: float = 1.0  # days
    utc_offset_hours: float = 0.0


def periodic_size(width: int, extent: float, radius: float) -> int:
    """Return the bit count of a periodic scalar encoder (htm.core rule: ceil(extent / (radius / width)))."""
    if width <= 0:
        return 0
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"periodic encoder radius must be positive, got {radius!r}")
    size = math.ceil(extent / (radius / width))
    if size < width:
        raise ValueError(f"periodic encoder of width {width} over {extent} with radius {radius} is too small")
    return size


@functools.lru_cache(maxsize=64)
def _periodic_table(width: int, size: int) -> tuple[np.ndarray, ...]:
    """Precompute the sorted active bits of every bucket of a periodic encoder.

    Shared by every encoder with the same shape (thousands of models per process), so the
    arrays are made read-only.
    """
    table = []
    for b in range(size):
        bits = np.sort((np.arange(width) + b) % size).astype(np.int32)
        bits.flags.writeable = False
        table.append(bits)
    return tuple(table)


class DateEncoder:
    """Encodes a unix timestamp as time of day, day of week and weekend fields."""

    def __init__(self, params: DateEncoderParams) -> None:
        if min(params.time_of_day_width, params.weekend_width, params.day_of_week_width) < 0:
            raise ValueError(f"DateEncoder widths must be >= 0, got {params}")
        self.params = params
        self.tod_size = periodic_size(params.time_of_day_width, 24.0, params.time_of_day_radius)
        self.dow_size = periodic_size(params.day_of_week_width, 7.0, params.day_of_week_radius)
        self.weekend_size = 2 * params.weekend_width
        self.size = self.tod_size + self.dow_size + self.weekend_size
        # Each field is a lookup: a bucket index selects a precomputed sorted bit array.
        self._tod = _periodic_table(params.time_of_day_width, self.tod_size) if self.tod_size else []
        self._dow = _periodic_table(params.day_of_week_width, self.dow_size) if self.dow_size else []
        w = params.weekend_width
        self._weekend = [np.arange(0, w, dtype=np.int32), np.arange(w, 2 * w, dtype=np.int32)]
        self._tod_res = params.time_of_day_radius / params.time_of_day_width if self.tod_size else 0.0
        self._dow_res = params.day_of_week_radius / params.day_of_week_width if self.dow_size else 0.0
        self._empty = np.empty(0, dtype=np.int32)

    def encode(self, timestamp: float) -> np.ndarray:
        """Return the sorted unique int32 active bits for a unix timestamp (seconds, UTC)."""
        ts = float(timestamp)
        if not math.isfinite(ts):
            raise ValueError(f"DateEncoder cannot encode {timestamp!r}")
        local = ts + self.params.utc_offset_hours * 3600.0
        day_number = math.floor(local / _SECONDS_PER_DAY)
        hours = (local - day_number * _SECONDS_PER_DAY) / 3600.0  # in [0, 24]
        weekday = (day_number + _EPOCH_WEEKDAY) % 7
        parts = []
        offset = 0
        if self.tod_size:
            parts.append(self._tod[int(hours / self._tod_res) % self.tod_size])
            offset = self.tod_size
        if self.dow_size:
            day_value = weekday + hours / 24.0
            parts.append(self._dow[int(day_value / self._dow_res) % self.dow_size] + offset)
            offset += self.dow_size
        if self.weekend_size:
            parts.append(self._weekend[1 if weekday >= 5 else 0] + offset)
        if not parts:
            return self._empty
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def concat_sdrs(parts: Sequence[np.ndarray], sizes: Sequence[int]) -> np.ndarray:
    """Concatenate SDRs of the given sizes into one SDR, offsetting each part by the sizes before it."""
    if len(parts) != len(sizes):
        raise ValueError(f"concat_sdrs got {len(parts)} parts but {len(sizes)} sizes")
    shifted = []
    offset = 0
    for part, size in zip(parts, sizes):
        shifted.append(np.asarray(part, dtype=np.int32) + np.int32(offset))
        offset += int(size)
    if not shifted:
        return np.empty(0, dtype=np.int32)
    return np.concatenate(shifted).astype(np.int32, copy=False)
