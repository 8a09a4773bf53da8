import math

import msgpack
import numpy as np
import pytest

from pensu.errors import CorruptData
from pensu.htm.likelihood import (
    AnomalyLikelihood,
    AnomalyLikelihoodParams,
    SpatialAnomaly,
    SpatialAnomalyParams,
    log_likelihood,
)

TINY = AnomalyLikelihoodParams(learning_period=2, estimation_samples=3, historic_window_size=8,
                               reestimation_period=4, averaging_window=3)


def tail(x, mean, var):
    """Tail probability straight from the spec's formula."""
    xp = x if x >= mean else 2 * mean - x
    return 0.5 * math.erfc(((xp - mean) / math.sqrt(var)) / 1.4142)


def naive_reference(raws, values, p):
    """A slow, list-based re-implementation of the spec, recomputing everything each time."""
    out, dist, prev = [], None, None
    red, yellow = 1.0 - 0.99999, 1.0 - 0.999
    for i, (r, v) in enumerate(zip(raws, values)):
        if i < p.learning_period + p.estimation_samples:
            out.append(0.5)
            continue
        if dist is None or i % p.reestimation_period == 0:
            start = max(0, i - p.historic_window_size)
            wr, wv = raws[start:i], values[start:i]
            avgs = []
            for k in range(len(wr)):
                chunk = wr[max(0, k - p.averaging_window + 1):k + 1]
                avgs.append(sum(chunk) / len(chunk))
            skip = min(i, max(0, p.learning_period - max(0, i - p.historic_window_size)))
            a, vals = avgs[skip:], wv[skip:]
            if len(a) == 0:
                dist = (0.5, 1e6)
            else:
                vm = sum(vals) / len(vals)
                if sum((x - vm) ** 2 for x in vals) / len(vals) < 1.5e-5:
                    dist = (0.5, 1e6)
                else:
                    m = sum(a) / len(a)
                    var = sum((x - m) ** 2 for x in a) / len(a)
                    dist = (max(m, 0.03), max(var, 0.0003))
            last = raws[max(0, i - p.averaging_window):i]
            prev = tail(sum(last) / len(last), *dist) if last else None
        cur = raws[max(0, i - p.averaging_window + 1):i + 1]
        t = tail(sum(cur) / len(cur), *dist)
        out.append(1.0 - (yellow if t <= red and prev is not None and prev <= red else t))
        prev = t
    return out


def run(model, raws, values):
    return [model.update(r, v) for r, v in zip(raws, values)]


def test_probation_is_exactly_half():
    model = AnomalyLikelihood(TINY)
    outs = run(model, [0.9, 0.0, 1.0, 0.3, 0.7], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert outs == [0.5] * 5
    assert model.distribution is None and model.iteration == 5


def test_first_likelihood_by_hand():
    raws = [0.1, 0.4, 0.2, 0.5, 0.3, 0.9]
    values = [1.0, 5.0, 2.0, 7.0, 3.0, 4.0]
    model = AnomalyLikelihood(TINY)
    out = run(model, raws, values)[-1]
    # Window = records 0..4; skip the 2 learning-period records; moving averages over 3.
    m2 = (0.1 + 0.4 + 0.2) / 3
    m3 = (0.4 + 0.2 + 0.5) / 3
    m4 = (0.2 + 0.5 + 0.3) / 3
    mean = (m2 + m3 + m4) / 3
    var = ((m2 - mean) ** 2 + (m3 - mean) ** 2 + (m4 - mean) ** 2) / 3
    assert model.distribution == pytest.approx((mean, max(var, 0.0003)), rel=1e-6)  # records are kept as float32
    current = (0.5 + 0.3 + 0.9) / 3  # includes this step's raw score
    expected = 1.0 - 0.5 * math.erfc(((current - mean) / math.sqrt(max(var, 0.0003))) / 1.4142)
    assert out == pytest.approx(expected, rel=1e-6)


def test_matches_naive_reference_through_window_wrap_and_reestimation():
    rng = np.random.default_rng(7)
    # float32-exact inputs: the model keeps its window as float32, the reference as Python floats
    raws = [float(np.float32(r)) for r in rng.random(80) ** 3]
    values = [float(np.float32(v)) for v in rng.normal(10, 2, 80)]
    model = AnomalyLikelihood(TINY)
    assert run(model, raws, values) == pytest.approx(naive_reference(raws, values, TINY), rel=1e-9, abs=1e-12)


def test_mirrored_tail_treats_low_average_like_high():
    p = AnomalyLikelihoodParams(learning_period=0, estimation_samples=4, historic_window_size=100,
                                reestimation_period=1000, averaging_window=1)
    model = AnomalyLikelihood(p)
    run(model, [0.2, 0.6, 0.2, 0.6], [1, 2, 3, 4])
    low = model.update(0.1, 5.0)
    assert model.distribution == pytest.approx((0.4, 0.04))
    assert low == pytest.approx(1.0 - tail(0.7, 0.4, 0.04), rel=1e-6)  # 0.2 and 0.6 are stored as float32


def test_reestimation_period_is_respected():
    p = AnomalyLikelihoodParams(learning_period=5, estimation_samples=5, historic_window_size=50,
                                reestimation_period=7, averaging_window=3)
    rng = np.random.default_rng(3)
    model = AnomalyLikelihood(p)
    changes = []
    previous = None
    for i in range(60):
        model.update(float(rng.random()), float(rng.normal()))
        if model.distribution != previous:
            changes.append(i)
            previous = model.distribution
    assert changes[0] == 10  # the first step after probation fits at once
    assert all(i % 7 == 0 for i in changes[1:])
    assert changes[1:] == list(range(14, 60, 7))


def test_floors_on_mean_and_variance():
    p = AnomalyLikelihoodParams(learning_period=3, estimation_samples=10)
    model = AnomalyLikelihood(p)
    run(model, [0.0] * 14, list(np.linspace(0, 5, 14)))
    assert model.distribution == (0.03, 0.0003)


def test_flat_signal_is_never_anomalous():
    p = AnomalyLikelihoodParams(learning_period=20, estimation_samples=20)
    rng = np.random.default_rng(1)
    model = AnomalyLikelihood(p)
    run(model, list(rng.random(40) * 0.1), [3.0] * 40)
    spikes = run(model, [1.0] * 5, [3.0] * 5)
    assert model.distribution == (0.5, 1e6)
    # The null distribution (std 1000) keeps every likelihood within a hair of 0.5.
    assert all(abs(s - 0.5) < 1e-3 for s in spikes)
    assert all(log_likelihood(s) < 0.031 for s in spikes)


def test_sustained_jump_after_calm_period_is_very_likely_anomalous():
    p = AnomalyLikelihoodParams(learning_period=50, estimation_samples=50)
    rng = np.random.default_rng(2)
    model = AnomalyLikelihood(p)
    calm = run(model, list(rng.random(300) * 0.1), list(rng.normal(5, 1, 300)))
    jump = run(model, [1.0] * 10, list(rng.normal(5, 1, 10)))
    assert max(calm[100:]) < 0.999
    peak = max(jump)  # later records of the run are filtered down to the yellow level
    assert peak > 0.9999
    assert log_likelihood(peak) > 0.4
    assert log_likelihood(peak) > 5 * log_likelihood(calm[-1])


def test_repeated_red_zone_is_reported_once_at_full_strength():
    p = AnomalyLikelihoodParams(learning_period=50, estimation_samples=50, reestimation_period=1000)
    rng = np.random.default_rng(5)
    model = AnomalyLikelihood(p)
    run(model, list(rng.random(200) * 0.05), list(rng.normal(5, 1, 200)))
    jump = run(model, [1.0] * 6, list(rng.normal(5, 1, 6)))
    red = [lk for lk in jump if lk >= 0.99999]
    # The first red record keeps its value; the following ones drop to the yellow level.
    assert len(red) == 1
    first = jump.index(red[0])
    assert all(lk == pytest.approx(0.999, abs=1e-12) for lk in jump[first + 1:])
    # Once the average leaves the red zone, a new red record counts in full again.
    run(model, [0.0] * 30, list(rng.normal(5, 1, 30)))
    assert max(run(model, [1.0] * 4, list(rng.normal(5, 1, 4)))) >= 0.99999


def test_log_likelihood_formula():
    for lk in (0.0, 0.3, 0.5, 0.99, 0.99999, 1.0):
        assert log_likelihood(lk) == pytest.approx(math.log(1.0000000001 - lk) / math.log(1e-10), rel=1e-15)
    assert log_likelihood(1.0) == pytest.approx(1.0, abs=1e-8)
    assert abs(log_likelihood(0.0)) < 1e-10
    assert log_likelihood(0.999) < log_likelihood(0.99999)


def test_malformed_state_raises_corrupt_data():
    model = AnomalyLikelihood(TINY)
    run(model, [0.1] * 12, list(range(12)))
    state = model.get_state()
    with pytest.raises(CorruptData):
        AnomalyLikelihood.from_state({k: v for k, v in state.items() if k != "raw"})
    with pytest.raises(CorruptData):
        AnomalyLikelihood.from_state({**state, "iteration": 5})
    with pytest.raises(CorruptData):
        AnomalyLikelihood.from_state({**state, "params": {"nonsense": 1}})


def test_spatial_anomaly_rule():
    rule = SpatialAnomaly(SpatialAnomalyParams(tolerance=0.05))
    assert [rule.update(v) for v in (5.0, 5.0, 0.0, 5.2)] == [False] * 4  # 5.2 <= 5 + 0.25
    assert rule.update(10.0) is True  # range 0..5.2, margin 0.26
    assert rule.update(10.4) is False  # within 5 % of the range 0..10
    assert rule.update(11.0) is True  # outside 10.4 + 0.52
    assert rule.update(-0.5) is False  # range is now 0..11, margin 0.55
    assert rule.update(-1.2) is True
    assert (rule.min_value, rule.max_value) == (-1.2, 11.0)


def test_spatial_anomaly_min_samples_and_round_trip():
    rule = SpatialAnomaly(SpatialAnomalyParams(tolerance=0.0, min_samples=3))
    assert [rule.update(v) for v in (0.0, 1.0, 5.0, 6.0)] == [False, False, False, True]
    restored = SpatialAnomaly.from_state(msgpack.unpackb(msgpack.packb(rule.get_state())))
    seq = [3.0, 7.0, -1.0, 7.5, 2.0]
    assert [rule.update(v) for v in seq] == [restored.update(v) for v in seq]
    with pytest.raises(CorruptData):
        SpatialAnomaly.from_state({"params": {}, "min": 1.0, "max": None, "count": 2})
