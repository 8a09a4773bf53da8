import math

import msgpack
import numpy as np
import pytest

from pensu.errors import CorruptData
from pensu.htm.encoders import RDSE, DateEncoder, DateEncoderParams, RDSEParams, concat_sdrs
from pensu.htm.spatial_pooler import PERM_SCALE, SpatialPooler, SpatialPoolerParams, to_units

INPUT = 454


def random_sdr(rng: np.random.Generator, n_bits: int, size: int = INPUT) -> np.ndarray:
    return np.sort(rng.choice(size, n_bits, replace=False)).astype(np.int32)


def connected_matrix(sp: SpatialPooler) -> np.ndarray:
    """[column, input] connected flags computed from the float permanences, independently of the bitmap."""
    perms = np.stack([sp.permanences(c) for c in range(sp.params.column_count)])
    return np.nan_to_num(perms, nan=-1.0) >= sp.params.syn_perm_connected


def series_inputs(n: int, start: int = 0) -> list[np.ndarray]:
    """Encoded samples of a noisy daily-periodic signal, like the service's input."""
    rdse = RDSE(RDSEParams(size=400, active_bits=21, resolution=0.8, seed=1))
    date = DateEncoder(DateEncoderParams())
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        t = 1_700_000_000 + 300.0 * i
        v = 50 + 40 * math.sin(2 * math.pi * i / 288) + rng.normal(0, 3)
        out.append(concat_sdrs([rdse.encode(v), date.encode(t)], [rdse.size, date.size]))
    return out


def test_fixed_point_rounding_of_default_increments():
    assert (to_units(0.003), to_units(0.0005), to_units(0.2), to_units(0.02)) == (197, 33, 13107, 1311)


def test_init_gives_potential_pools_and_about_half_connected():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=1)
    perms = np.stack([sp.permanences(c) for c in range(0, 2048, 37)])
    potential = ~np.isnan(perms)
    assert np.all(potential.sum(axis=1) == round(0.8 * INPUT))
    connected = (np.nan_to_num(perms, nan=-1) >= 0.2).sum(axis=1) / potential.sum(axis=1)
    assert 0.4 < connected.mean() < 0.6
    assert np.nanmin(perms) >= 0.0 and np.nanmax(perms) <= 1.0
    assert sp.num_active_columns == 51


def test_connected_counts_match_permanences_and_stimulus_threshold_after_init():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=2)
    counts = sp.connected_counts()
    assert np.array_equal(counts, connected_matrix(sp).sum(axis=1))
    assert counts.min() >= 2


def test_output_sparsity_is_exact_and_sorted():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=3)
    rng = np.random.default_rng(0)
    for learn in (True, False):
        for _ in range(30):
            cols = sp.compute(random_sdr(rng, 42), learn=learn)
            assert cols.dtype == np.int32 and cols.size == 51
            assert np.all(np.diff(cols) > 0) and cols[0] >= 0 and cols[-1] < 2048


def test_similar_inputs_share_columns_and_dissimilar_ones_less():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=4)
    rng = np.random.default_rng(1)
    similar, different = [], []
    for _ in range(20):
        a = random_sdr(rng, 42)
        rest = np.setdiff1d(np.arange(INPUT), a)
        b = np.sort(np.concatenate([a[4:], rng.choice(rest, 4, replace=False)])).astype(np.int32)
        c = np.sort(rng.choice(rest, 42, replace=False)).astype(np.int32)
        ca, cb, cc = (sp.compute(x, learn=False) for x in (a, b, c))
        similar.append(np.intersect1d(ca, cb).size)
        different.append(np.intersect1d(ca, cc).size)
    # 90 % shared input bits must keep about half the columns; unrelated inputs overlap near
    # chance (51 * 51 / 2048 ≈ 1.3 columns).
    assert np.mean(similar) > 25 and np.mean(different) < 5
    assert min(similar) > max(different)


def test_winners_are_top_k_by_overlap_and_below_threshold_never_win():
    params = SpatialPoolerParams(stimulus_threshold=3)
    sp = SpatialPooler(INPUT, params, seed=5)
    conn = connected_matrix(sp)
    rng = np.random.default_rng(2)
    for n_bits in (1, 2, 4, 6, 42):
        x = random_sdr(rng, n_bits)
        overlaps = conn[:, x].sum(axis=1)
        cols = sp.compute(x, learn=False)
        eligible = np.flatnonzero(overlaps >= 3)
        assert cols.size == min(51, eligible.size)
        assert np.all(overlaps[cols] >= 3)
        losers = np.setdiff1d(np.arange(2048), cols)
        if cols.size:
            assert overlaps[cols].min() >= overlaps[losers].max() or overlaps[losers].max() < 3
    assert sp.compute(np.array([7], dtype=np.int32), learn=True).size == 0


def test_learning_moves_permanences_by_the_increments():
    params = SpatialPoolerParams()
    sp = SpatialPooler(INPUT, params, seed=6)
    x = random_sdr(np.random.default_rng(3), 42)
    winners = sp.compute(x, learn=False)
    before = {int(c): sp.permanences(c) for c in winners}
    loser = int(np.setdiff1d(np.arange(2048), winners)[0])
    loser_before = sp.permanences(loser)
    assert np.array_equal(sp.compute(x, learn=True), winners)
    inc, dec = to_units(0.003) / PERM_SCALE, to_units(0.0005) / PERM_SCALE
    unit = 1.0 / PERM_SCALE
    active = np.zeros(INPUT, dtype=bool)
    active[x] = True
    for c, old in before.items():
        new = sp.permanences(c)
        assert np.array_equal(np.isnan(old), np.isnan(new))
        pot = ~np.isnan(old)
        up = pot & active & (old < 1 - inc)
        down = pot & ~active & (old > dec)
        assert up.sum() > 20 and down.sum() > 200
        np.testing.assert_allclose(new[up] - old[up], inc, atol=1e-12)
        np.testing.assert_allclose(new[down] - old[down], -dec, atol=1e-12)
        assert abs(inc - 0.003) <= unit / 2 and abs(dec - 0.0005) <= unit / 2
        assert np.all(new[pot & active & ~up] <= 1.0) and np.all(new[pot & ~active & ~down] >= 0.0)
    np.testing.assert_array_equal(sp.permanences(loser), loser_before)


def test_learning_keeps_stimulus_threshold_connected():
    # A tiny pool and a harsh decrement force both the init raise and the re-raise to work.
    params = SpatialPoolerParams(column_count=64, potential_pct=0.3, local_area_density=0.1,
                                 stimulus_threshold=5, syn_perm_inactive_dec=0.05,
                                 syn_perm_active_inc=0.0)
    sp = SpatialPooler(30, params, seed=7)
    assert sp.connected_counts().min() >= 5
    rng = np.random.default_rng(4)
    for _ in range(200):
        sp.compute(random_sdr(rng, 12, size=30), learn=True)
    counts = sp.connected_counts()
    assert counts.min() >= 5
    assert np.array_equal(counts, connected_matrix(sp).sum(axis=1))
    # The decrement really bit: learned columns sit at the threshold, not far above it.
    assert np.median(counts[np.flatnonzero(sp.active_duty > 0)]) <= 7


def test_duty_cycles_are_running_means_before_the_period():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=8)
    inputs = series_inputs(120)
    wins = np.zeros(2048)
    for x in inputs:
        wins[sp.compute(x, learn=True)] += 1
    np.testing.assert_allclose(sp.active_duty, wins / 120, atol=1e-5)
    assert abs(float(sp.active_duty.sum()) - 51) < 1e-3
    assert np.all(sp.overlap_duty >= sp.active_duty - 1e-6) and sp.overlap_duty.max() <= 1.0 + 1e-6


def test_weak_columns_are_bumped_every_50_iterations():
    params = SpatialPoolerParams(column_count=256, potential_pct=0.05, local_area_density=0.02,
                                 stimulus_threshold=1)
    sp = SpatialPooler(200, params, seed=9)
    x = np.arange(10, dtype=np.int32)  # only bits 0..9 ever active
    pools = np.stack([~np.isnan(sp.permanences(c)) for c in range(256)])
    never = int(np.flatnonzero(~pools[:, :10].any(axis=1))[0])  # cannot overlap, ever
    start = sp.permanences(never)
    for _ in range(49):
        sp.compute(x, learn=True)
    np.testing.assert_array_equal(sp.permanences(never), start)
    sp.compute(x, learn=True)
    pot = ~np.isnan(start)
    bump = to_units(0.02) / PERM_SCALE
    expected = np.minimum(start[pot] + bump, 1.0)
    np.testing.assert_allclose(sp.permanences(never)[pot], expected, atol=1e-12)
    assert sp.min_overlap_duty > 0
    for _ in range(50):
        sp.compute(x, learn=True)
    np.testing.assert_allclose(sp.permanences(never)[pot], np.minimum(start[pot] + 2 * bump, 1.0), atol=1e-12)


def test_learn_false_changes_nothing():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(boost_strength=1.0), seed=10)
    for x in series_inputs(60):
        sp.compute(x, learn=True)
    before = msgpack.packb(sp.get_state())
    for x in series_inputs(60, start=60):
        sp.compute(x, learn=False)
    assert msgpack.packb(sp.get_state()) == before


def test_same_seed_same_columns_and_seeds_differ():
    inputs = series_inputs(30)
    runs = []
    for seed in (11, 11, 12):
        sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=seed)
        runs.append([sp.compute(x).tolist() for x in inputs])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_corrupt_state_raises_corrupt_data():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=14)
    for x in series_inputs(20):
        sp.compute(x)
    good = msgpack.unpackb(msgpack.packb(sp.get_state()))
    SpatialPooler.from_state(good)

    def mutated(fn):
        state = msgpack.unpackb(msgpack.packb(good))
        fn(state)
        return state

    def drop_pool_bit(s):
        rows = np.frombuffer(s["rows"]["data"], dtype=np.uint16).reshape(s["rows"]["shape"]).copy()
        r, i = np.argwhere(rows == 0)[0]
        rows[r, i] = 500  # a synapse outside the column's potential pool
        s["rows"]["data"] = rows.tobytes()

    def duplicate_column(s):
        ids = np.frombuffer(s["row_columns"]["data"], dtype=np.int32).copy()
        ids[1] = ids[0]
        s["row_columns"]["data"] = ids.tobytes()

    bad_states = [
        mutated(lambda s: s.pop("rows")),
        mutated(lambda s: s["rows"].update(data=s["rows"]["data"][:-2])),
        mutated(lambda s: s.update(input_size=INPUT + 1)),
        mutated(lambda s: s["params"].update(bogus=1)),
        mutated(lambda s: s["params"].update(column_count="many")),
        mutated(lambda s: s.update(boost={"dtype": "<f4", "shape": [2048], "data": b"\0" * 8192})),
        mutated(lambda s: s["overlap_duty"].update(shape=[1024, 2])),
        mutated(drop_pool_bit),
        mutated(duplicate_column),
        [1, 2, 3],
    ]
    for state in bad_states:
        with pytest.raises(CorruptData):
            SpatialPooler.from_state(state)


def test_memory_is_compact():
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=15)
    dense_float32 = 2048 * INPUT * 4
    assert sp.memory_bytes() < dense_float32 / 10  # nothing touched yet: bitmap + per-column vectors
    for x in series_inputs(200):
        sp.compute(x)
    assert sp.memory_bytes() < 2048 * INPUT * 2 + 2048 * INPUT // 8 + 64 * 2048
    assert len(msgpack.packb(sp.get_state())) < sp.touched_columns * INPUT * 2 + 2 * 2048 * 4 + 4096


@pytest.mark.parametrize("steps", [0, 3, 600])
def test_restore_rebuilds_the_connected_bitmap_exactly(steps):
    """A restore starts from the initial rows' bitmap and flips the bits learning changed."""
    sp = SpatialPooler(INPUT, SpatialPoolerParams(), seed=41)
    for x in series_inputs(steps):
        sp.compute(x, learn=True)
    restored = SpatialPooler.from_state(msgpack.unpackb(msgpack.packb(sp.get_state())))
    assert restored.touched_columns == sp.touched_columns
    assert np.array_equal(restored.connected_counts(), sp.connected_counts())
    assert np.array_equal(restored._bitmap, sp._bitmap)
    for x in series_inputs(50, start=steps):
        assert np.array_equal(restored.compute(x, learn=True), sp.compute(x, learn=True))
