import calendar
import math

import numpy as np
import pytest

from pensu.htm.encoders import RDSE, DateEncoder, DateEncoderParams, RDSEParams, concat_sdrs, periodic_size


def overlap(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.intersect1d(a, b).size)


def is_sdr(bits: np.ndarray, size: int) -> bool:
    return (bits.dtype == np.int32 and bits.ndim == 1 and np.all(np.diff(bits) > 0)
            and (bits.size == 0 or (bits[0] >= 0 and bits[-1] < size)))


# -- RDSE -------------------------------------------------------------------------------------
def test_rdse_bucket_is_floor_of_value_over_resolution():
    enc = RDSE(RDSEParams(resolution=0.25))
    assert enc.bucket(1.0) == 4 and enc.bucket(1.24) == 4 and enc.bucket(-0.01) == -1
    assert enc.bucket(1e300) == math.floor(1e300 / 0.25)


def test_rdse_values_in_one_bucket_encode_identically():
    enc = RDSE(RDSEParams(resolution=1.0, seed=5))
    assert np.array_equal(enc.encode(3.0), enc.encode(3.99))


@pytest.mark.parametrize("seed", [0, 1, 123456789, 2**63 + 17])
def test_rdse_output_is_sdr_with_at_most_active_bits(seed):
    enc = RDSE(RDSEParams(size=400, active_bits=21, resolution=0.5, seed=seed))
    lengths = []
    for v in np.linspace(-1000, 1000, 401):
        bits = enc.encode(float(v))
        assert is_sdr(bits, 400)
        lengths.append(bits.size)
    assert max(lengths) == 21
    # Expected collisions among 21 hashes into 400 bits: C(21, 2) / 400 ~ 0.5 per encoding.
    assert 20.2 < np.mean(lengths) < 20.8
    assert min(lengths) >= 14


def test_rdse_overlap_falls_with_distance():
    enc = RDSE(RDSEParams(size=400, active_bits=21, resolution=1.0, seed=9))
    means = []
    for d in range(0, 30):
        means.append(np.mean([overlap(enc.encode(b), enc.encode(b + d)) for b in range(-200, 200, 7)]))
    assert means[0] >= 20.5
    # Neighbouring buckets share active_bits - 1 hashes: overlap ~ 20, then ~ 21 - d.
    for d in range(1, 21):
        assert abs(means[d] - (21 - d)) < 1.5, (d, means[d])
    assert all(means[d + 1] <= means[d] + 0.5 for d in range(29))
    # Far apart, only chance overlap remains (expected 21 * 21 / 400 ~ 1.1).
    assert means[25] < 2.5 and overlap(enc.encode(0), enc.encode(10_000)) <= 5


def test_rdse_neighbours_share_all_but_one_bit_without_collisions():
    enc = RDSE(RDSEParams(size=4000, active_bits=21, resolution=1.0, seed=2))
    shared = [overlap(enc.encode(b), enc.encode(b + 1)) for b in range(100)]
    assert np.median(shared) == 20


def test_rdse_is_deterministic_per_seed_and_seeds_differ():
    a1, a2 = RDSE(RDSEParams(seed=7)), RDSE(RDSEParams(seed=7))
    b = RDSE(RDSEParams(seed=8))
    for v in (-5.5, 0.0, 42.0, 1e9):
        assert np.array_equal(a1.encode(v), a2.encode(v))
    differing = sum(overlap(a1.encode(v), b.encode(v)) < 10 for v in range(50))
    assert differing >= 45


def test_rdse_negative_and_huge_values_work_and_differ():
    enc = RDSE(RDSEParams(resolution=0.1, seed=3))
    neg, pos = enc.encode(-7.3), enc.encode(7.3)
    assert neg.size >= 17 and overlap(neg, pos) < 6
    assert overlap(enc.encode(-7.3), enc.encode(-7.2)) >= 18
    for v in (-1e300, 1e300, -1e-300):
        assert is_sdr(enc.encode(v), 400) and enc.encode(v).size >= 17


def test_rdse_rejects_non_finite_values_and_bad_params():
    enc = RDSE(RDSEParams())
    for v in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            enc.encode(v)
    with pytest.raises(ValueError):
        RDSE(RDSEParams(resolution=0.0))
    with pytest.raises(ValueError):
        RDSE(RDSEParams(size=10, active_bits=11))


# -- DateEncoder ----------------------------------------------------------------------------
def ts(year, month, day, hour=0, minute=0):
    return float(calendar.timegm((year, month, day, hour, minute, 0)))


def test_date_encoder_size_follows_the_periodic_rule():
    enc = DateEncoder(DateEncoderParams())
    assert enc.size == math.ceil(24 / (9.49 / 21)) == 54
    full = DateEncoder(DateEncoderParams(weekend_width=4, day_of_week_width=5, day_of_week_radius=1.0))
    assert full.size == 54 + 35 + 8
    assert DateEncoder(DateEncoderParams(time_of_day_width=0)).size == 0
    assert periodic_size(21, 24.0, 9.49) == 54


def test_time_of_day_nearby_times_overlap_and_half_a_day_does_not():
    enc = DateEncoder(DateEncoderParams())
    t = ts(2024, 3, 5, 10, 0)
    a = enc.encode(t)
    assert a.size == 21 and is_sdr(a, enc.size)
    assert overlap(a, enc.encode(t + 60)) >= 20
    assert overlap(a, enc.encode(t + 3600)) >= 17
    assert overlap(a, enc.encode(t + 12 * 3600)) == 0
    assert np.array_equal(a, enc.encode(t + 86400))  # same time next day


def test_time_of_day_wraps_around_midnight():
    enc = DateEncoder(DateEncoderParams())
    before = enc.encode(ts(2024, 3, 5, 23, 59))
    after = enc.encode(ts(2024, 3, 6, 0, 1))
    assert overlap(before, after) >= 19
    assert before.size == 21 and is_sdr(before, enc.size)
    # Bits at both ends of the field are on just before midnight: the encoding wraps.
    assert before[0] == 0 and before[-1] == enc.size - 1


def test_utc_offset_shifts_local_time():
    utc = DateEncoder(DateEncoderParams())
    plus2 = DateEncoder(DateEncoderParams(utc_offset_hours=2.0))
    t = ts(2024, 3, 5, 8, 0)
    assert np.array_equal(plus2.encode(t), utc.encode(t + 7200))


def test_weekend_bits():
    enc = DateEncoder(DateEncoderParams(time_of_day_width=0, weekend_width=5))
    assert enc.size == 10
    friday, saturday, sunday, monday = (ts(2024, 3, d, 12) for d in (8, 9, 10, 11))
    weekday_bits = enc.encode(friday)
    assert np.array_equal(weekday_bits, np.arange(5))
    assert np.array_equal(enc.encode(saturday), np.arange(5, 10))
    assert np.array_equal(enc.encode(sunday), np.arange(5, 10))
    assert np.array_equal(enc.encode(monday), weekday_bits)


def test_day_of_week_field_is_periodic_over_the_week():
    enc = DateEncoder(DateEncoderParams(time_of_day_width=0, day_of_week_width=7, day_of_week_radius=1.0))
    assert enc.size == 49
    mon, tue, thu = ts(2024, 3, 11, 0, 1), ts(2024, 3, 12, 0, 1), ts(2024, 3, 14, 0, 1)
    sun_late = ts(2024, 3, 10, 23, 59)
    assert overlap(enc.encode(mon), enc.encode(tue)) == 0
    assert overlap(enc.encode(mon), enc.encode(thu)) == 0
    assert overlap(enc.encode(sun_late), enc.encode(mon)) >= 6  # Sunday night wraps to Monday


def test_concat_sdrs_offsets_parts():
    out = concat_sdrs([np.array([0, 3], dtype=np.int32), np.array([1], dtype=np.int32),
                       np.array([0, 4], dtype=np.int32)], [4, 2, 5])
    assert out.dtype == np.int32 and out.tolist() == [0, 3, 5, 6, 10]
    with pytest.raises(ValueError):
        concat_sdrs([np.array([1])], [3, 4])
