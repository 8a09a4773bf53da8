import math

import msgpack
import numpy as np
import pytest

from pensu.errors import ConfigurationError, CorruptData
from pensu.htm.predictor import Prediction, Predictor, PredictorParams

N_CELLS = 65536


def phase_cells(n_phases, per_phase=40, seed=0):
    """Distinct sorted active-cell sets, one per phase of a cycle."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(N_CELLS, size=n_phases * per_phase, replace=False)
    return [np.sort(picked[i * per_phase:(i + 1) * per_phase]).astype(np.int32) for i in range(n_phases)]


def cycle_buckets(n_phases):
    """Arbitrary, non-contiguous buckets (negative and large) for the phases of a cycle."""
    return [(-7 + 1013 * i) * (1 if i % 2 else -1) for i in range(n_phases)]


def run_cycle(predictor, cells, buckets, n_samples, start=0):
    """Feed the cycle through infer + learn as the model does; return the last inference."""
    last = None
    for t in range(start, start + n_samples):
        phase = t % len(cells)
        last = predictor.infer(cells[phase])
        predictor.learn(cells[phase], buckets[phase], float(buckets[phase]) * 0.5 + 3.0)
    return last


@pytest.mark.parametrize("step", [1, 3])
def test_learns_a_periodic_series_ahead(step):
    cells, buckets = phase_cells(8), cycle_buckets(8)
    predictor = Predictor(PredictorParams(steps=(step,)))
    run_cycle(predictor, cells, buckets, 8 * 60)
    for phase in range(8):
        pred = predictor.infer(cells[phase])[step]
        expected = buckets[(phase + step) % 8]
        assert pred.bucket == expected
        assert pred.value == pytest.approx(expected * 0.5 + 3.0)
        assert pred.confidence > 0.9


def test_several_steps_at_once():
    cells, buckets = phase_cells(8, seed=3), cycle_buckets(8)
    predictor = Predictor(PredictorParams(steps=(1, 2, 5)))
    run_cycle(predictor, cells, buckets, 8 * 60)
    out = predictor.infer(cells[2])
    assert set(out) == {1, 2, 5}
    for step, pred in out.items():
        assert pred.step == step
        assert pred.bucket == buckets[(2 + step) % 8]


def test_confidence_is_a_probability():
    rng = np.random.default_rng(5)
    predictor = Predictor(PredictorParams(steps=(1,)))
    for _ in range(300):
        cells = np.unique(rng.integers(0, N_CELLS, size=int(rng.integers(1, 300)))).astype(np.int32)
        pred = predictor.infer(cells)[1]
        assert 0.0 <= pred.confidence <= 1.0
        dist = predictor.distribution(cells, 1)
        if dist:
            assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-9)
            assert max(dist.values()) == pytest.approx(pred.confidence)
        predictor.learn(cells, int(rng.integers(-20, 20)), float(rng.normal()))


def test_no_prediction_before_learning():
    predictor = Predictor(PredictorParams())
    pred = predictor.infer(np.array([1, 2, 3], dtype=np.int32))[1]
    assert pred == Prediction(step=1, value=None, confidence=0.0, bucket=None)


def test_unseen_cells_give_a_uniform_answer():
    cells, buckets = phase_cells(8, seed=1), cycle_buckets(8)
    predictor = Predictor(PredictorParams())
    run_cycle(predictor, cells, buckets, 8 * 30)
    used = np.concatenate(cells)
    unseen = np.setdiff1d(np.arange(1000, 1100, dtype=np.int32), used)
    pred = predictor.infer(unseen)[1]
    assert pred.confidence == pytest.approx(1.0 / 8)
    assert list(predictor.distribution(unseen, 1).values()) == [pytest.approx(1.0 / 8)] * 8
    # far beyond any cell ever seen: no row, no map entry, still uniform
    assert predictor.infer(np.array([N_CELLS - 1], dtype=np.int32))[1].confidence == pytest.approx(1 / 8)


def test_value_is_the_running_mean_of_the_bucket():
    predictor = Predictor(PredictorParams())
    cells = np.array([10, 20, 30], dtype=np.int32)
    for value in (1.0, 2.0, 6.0):
        predictor.learn(cells, 42, value)
    pred = predictor.infer(cells)[1]
    assert pred.bucket == 42
    assert pred.value == pytest.approx(3.0)


def test_classes_are_capped_and_overflow_merges_into_the_nearest_bucket():
    predictor = Predictor(PredictorParams(max_classes=4))
    cells = np.array([5], dtype=np.int32)
    for bucket in (0, 10, 20, 30):
        predictor.learn(cells, bucket, float(bucket))
    predictor.learn(cells, 12, 12.0)  # nearest known bucket is 10
    predictor.learn(cells, 1000, 1000.0)  # nearest is 30
    assert predictor.n_classes == 4
    dist_means = dict(zip(predictor._buckets.tolist(), predictor._means.tolist()))
    assert dist_means[10] == pytest.approx(11.0)
    assert dist_means[30] == pytest.approx(515.0)


def test_weights_stay_sparse():
    """Rows exist only for cells that were active during learning, with a bounded slot count."""
    rng = np.random.default_rng(9)
    params = PredictorParams(slots_per_cell=4)
    predictor = Predictor(params)
    seen = set()
    previous = None
    for _ in range(400):
        cells = np.unique(rng.integers(0, 20000, size=60)).astype(np.int32)
        predictor.learn(cells, int(rng.integers(0, 50)), 1.0)
        if previous is not None:
            seen.update(previous.tolist())
        previous = cells
    table = predictor._tables[1]
    assert table.rows_used == len(seen)
    assert table.row_class.shape[1] == 4
    assert int(np.count_nonzero(table.cell_row >= 0)) == len(seen)
    assert predictor.memory_bytes() < 20000 * 4 + table.row_class.shape[0] * 4 * 6 + 50_000


def test_noise_does_not_break_learning_of_a_dominant_transition():
    """Cells followed by bucket A 80% of the time and by random buckets otherwise predict A."""
    rng = np.random.default_rng(2)
    cells = np.arange(100, 140, dtype=np.int32)
    other = np.arange(500, 540, dtype=np.int32)
    predictor = Predictor(PredictorParams())
    for _ in range(600):
        predictor.learn(cells, int(rng.integers(0, 30)), 0.0)
        bucket = 7 if rng.random() < 0.8 else int(rng.integers(0, 30))
        predictor.learn(other, bucket, 7.0)
    assert predictor.infer(cells)[1].bucket == 7


def round_trip(predictor):
    return Predictor.from_state(msgpack.unpackb(msgpack.packb(predictor.get_state()), strict_map_key=False))


def test_fresh_round_trip():
    restored = round_trip(Predictor(PredictorParams(steps=(3,))))
    assert restored.params.steps == (3,)
    assert restored.infer(np.array([1], dtype=np.int32))[3].value is None


@pytest.mark.parametrize("corrupt", [
    lambda s: s.pop("buckets"),
    lambda s: s.update(params={"steps": [0]}),
    lambda s: s.update(tables=[]),
    lambda s: s["tables"][0][1].update(row_class=s["tables"][0][1]["row_weight"]),
    lambda s: s["tables"][0][1]["rows"].update(data=b"\xff\xff\xff\x7f" * 3),
    lambda s: s.update(history=[{"dtype": "<i4", "shape": [5], "data": b"\x00"}]),
    lambda s: s.update(counts=s["means"]),
])
def test_malformed_state_raises_corrupt_data(corrupt):
    predictor = Predictor(PredictorParams())
    cells = np.array([1, 2, 3], dtype=np.int32)
    for bucket in (1, 2, 3, 1):
        predictor.learn(cells, bucket, 1.0)
    state = msgpack.unpackb(msgpack.packb(predictor.get_state()))
    corrupt(state)
    with pytest.raises(CorruptData):
        Predictor.from_state(state)


def test_invalid_params_are_rejected():
    for kwargs in ({"steps": ()}, {"steps": (0,)}, {"steps": (1, 1)}, {"alpha": 0.0},
                   {"max_classes": 0}, {"slots_per_cell": 0}):
        with pytest.raises(ConfigurationError):
            PredictorParams(**kwargs)


def test_bad_active_cells_are_rejected():
    predictor = Predictor(PredictorParams())
    with pytest.raises(ValueError):
        predictor.infer(np.array([-1, 2]))
    with pytest.raises(ValueError):
        predictor.infer(np.array([[1, 2]]))
    assert predictor.infer(np.array([], dtype=np.int32))[1].value is None


# -- forecasting options: change target, context bits, calibrated band ----------------------
FORECAST = dict(alpha=0.03, context_alpha=0.3, target="change", estimate="mean", level_alpha=0.7,
                slots_per_cell=16)


def weekly_samples(n, rng, noise=2.0):
    """A 'demand' series with a period of 48, random cells and a periodic context (time of week)."""
    out = []
    for t in range(n):
        phase = t % 48
        value = 100.0 + 60.0 * math.sin(2 * math.pi * phase / 48) + rng.normal(0, noise)
        # 21 context bits sliding with the phase, wrapping (as the time-of-week field does)
        context = (N_CELLS + (2 * phase + np.arange(21)) % 96).astype(np.int32)
        cells = np.concatenate([rng.choice(N_CELLS, 20, replace=False).astype(np.int32), context])
        out.append((np.sort(cells), value))
    return out


def run_change(predictor, samples, step):
    forecasts = [None] * len(samples)
    for t, (cells, value) in enumerate(samples):
        pred = predictor.infer(cells, value)[step]
        if t + step < len(samples):
            forecasts[t + step] = pred
        predictor.learn(cells, 0, value, resolution=1.0, context_start=N_CELLS)
    return forecasts


@pytest.mark.parametrize("step", [1, 3])
def test_change_target_learns_a_periodic_series_and_beats_persistence(step):
    rng = np.random.default_rng(2)
    samples = weekly_samples(48 * 40, rng)
    forecasts = run_change(Predictor(PredictorParams(steps=(step,), **FORECAST)), samples, step)
    values = np.array([v for _, v in samples])
    late = range(48 * 30, len(samples))
    mae = np.mean([abs(forecasts[t].value - values[t]) for t in late])
    persistence = np.mean([abs(values[t - step] - values[t]) for t in late])
    assert mae < 0.5 * persistence
    inside = np.mean([forecasts[t].lower <= values[t] <= forecasts[t].upper for t in late])
    assert 0.7 <= inside <= 0.9  # an 80 % band


def test_change_target_on_noise_falls_back_to_the_level():
    """Where the context carries nothing, the calibrated gain shrinks the learnt change away."""
    rng = np.random.default_rng(3)
    samples = [(np.sort(rng.choice(N_CELLS, 20, replace=False)).astype(np.int32), rng.normal(50.0, 5.0))
               for _ in range(3000)]
    forecasts = run_change(Predictor(PredictorParams(steps=(1,), **FORECAST)), samples, 1)
    values = np.array([v for _, v in samples])
    late = range(2000, 3000)
    mae = np.mean([abs(forecasts[t].value - values[t]) for t in late])
    persistence = np.mean([abs(values[t - 1] - values[t]) for t in late])
    assert mae < persistence  # white noise: a smoothed level beats the last value


def test_change_target_needs_the_current_value_and_a_resolution():
    predictor = Predictor(PredictorParams(**FORECAST))
    cells = np.array([1, 2, 3], dtype=np.int32)
    with pytest.raises(ValueError, match="resolution"):
        predictor.learn(cells, 0, 1.0)
    with pytest.raises(ValueError, match="current value"):
        predictor.infer(cells)


def test_value_target_band_brackets_the_prediction():
    rng = np.random.default_rng(4)
    predictor = Predictor(PredictorParams(steps=(1,), estimate="mean"))
    cells = np.array([5, 6, 7], dtype=np.int32)
    for _ in range(300):
        predictor.learn(cells, int(rng.integers(0, 10)), float(rng.integers(0, 10)))
    pred = predictor.infer(cells)[1]
    assert pred.lower < pred.value < pred.upper
    assert 0.0 <= pred.lower and pred.upper <= 9.0


@pytest.mark.parametrize("bad", [dict(target="delta"), dict(estimate="median"), dict(context_alpha=0.0),
                                 dict(band=(0.9, 0.1)), dict(level_alpha=1.5), dict(time_of_week_width=-1),
                                 dict(time_of_week_radius=0.0)])
def test_bad_forecast_params_are_refused(bad):
    with pytest.raises(ConfigurationError):
        PredictorParams(**bad)


@pytest.mark.parametrize("split", [1, 2, 200])
def test_change_target_round_trip_continues_bit_identically(split):
    rng = np.random.default_rng(6)
    samples = weekly_samples(400, rng)
    params = PredictorParams(steps=(1, 3), **FORECAST)
    original = Predictor(params)
    run_change(original, samples[:split], 1)
    restored = round_trip(original)
    for cells, value in samples[split:]:
        assert original.infer(cells, value) == restored.infer(cells, value)
        original.learn(cells, 0, value, resolution=1.0, context_start=N_CELLS)
        restored.learn(cells, 0, value, resolution=1.0, context_start=N_CELLS)
    assert msgpack.packb(original.get_state()) == msgpack.packb(restored.get_state())
