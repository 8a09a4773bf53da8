"""The contextual detector: fires on a never-seen context, rests, round-trips exactly; its place in HtmModel."""

import math

import msgpack
import numpy as np
import pytest

from pensu.errors import ConfigurationError, CorruptData
from pensu.htm.contextual import ContextualAnomaly, ContextualAnomalyParams
from pensu.htm.likelihood import log_likelihood
from pensu.htm.model import RESOLUTION_DIVISOR, HtmModel
from pensu.htm.presets import preset_params


def detector(**params) -> ContextualAnomaly:
    params.setdefault("probation_samples", 0)
    return ContextualAnomaly(ContextualAnomalyParams(**params), origin=0.0, width=8.0)  # bins of width 1


def test_no_firing_during_probation_primed_samples_count() -> None:
    d = detector(rest_samples=0, probation_samples=6)
    for v in [0.5, 1.5, 2.5]:
        d.prime(v)
    assert not d.step(5.5)  # 4th sample: new, but in probation
    assert not d.step(6.5)  # 5th
    d.step(6.5)  # 6th (no event)
    assert d.step(9.5)  # 7th: probation over


def test_a_repeated_pattern_stops_firing_and_a_new_level_fires() -> None:
    d = detector(rest_samples=0)
    pattern = [0.5, 2.5, 4.5, 2.5] * 20
    fired = [d.step(v) for v in pattern]
    assert not any(fired[8:])  # every context of the cycle is known after a couple of cycles
    assert d.step(6.5)  # a level never seen: every pair (earlier bin, 6) is new
    assert not d.step(6.5)  # same bin: no event


def test_a_known_level_in_a_new_order_fires_only_at_the_threshold_share() -> None:
    strict, loose = detector(rest_samples=0, span=2), detector(rest_samples=0, span=2, threshold=0.5)
    for d in (strict, loose):
        for v in [0.5, 1.5, 2.5] * 10:  # bins 0 -> 1 -> 2 -> 0 ...; the last events are bins 1, 2
            d.step(v)
    # context of bin 1 now: pairs (1, 1) new and (2, 1) known (the cycle saw 2 -> 0 -> 1): share 0.5
    assert not strict.step(1.5)
    assert loose.step(1.5)


def test_rest_period_blocks_firing_then_expires() -> None:
    d = detector(rest_samples=5)
    for v in [0.5, 1.5] * 10:
        d.step(v)
    assert d.step(10.5)
    assert not d.step(20.5)  # new, but resting (rest 5: this is sample 1 of it)
    for _ in range(4):
        d.step(20.5)
    assert d.step(30.5)


def test_prime_remembers_without_firing_or_resting() -> None:
    primed = detector(rest_samples=100)
    for v in [0.5, 3.5, 0.5, 3.5]:
        primed.prime(v)
    assert primed.get_state()["resting"] == 0
    assert not primed.step(0.5)  # (0, 0) and (3, 0) were remembered
    assert primed.step(-5.0)


def test_learn_false_changes_nothing() -> None:
    d = detector(rest_samples=3)
    for v in [0.5, 1.5] * 5:
        d.step(v)
    before = d.get_state()
    assert d.step(12.5, learn=False)
    assert d.get_state() == before


def test_bad_params_and_states_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="levels"):
        ContextualAnomalyParams(levels=0)
    with pytest.raises(ConfigurationError, match="threshold"):
        ContextualAnomalyParams(threshold=0.0)
    with pytest.raises(ConfigurationError, match="grid"):
        ContextualAnomaly(ContextualAnomalyParams(), origin=0.0, width=0.0)
    state = detector().get_state()
    with pytest.raises(CorruptData):
        ContextualAnomaly.from_state({**state, "recent": list(range(50))})
    with pytest.raises(CorruptData):
        ContextualAnomaly.from_state({**state, "seen": [[1]]})
    with pytest.raises(CorruptData):
        ContextualAnomaly.from_state({k: v for k, v in state.items() if k != "step"})


# -- in the model ---------------------------------------------------------------------------
def feed(model: HtmModel, values, start: float = 1.4e9, offset: int = 0):
    return [model.step(start + 300.0 * (i + offset), v) for i, v in enumerate(values)]


def series(n: int, seed: int = 5) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(np.sin(np.arange(n) * 2 * math.pi / 24) * 10 + 50 + rng.normal(0, 0.3, n))


EARLY = ContextualAnomalyParams(probation_samples=0)  # fires on short test series


def test_model_grid_comes_from_the_warm_up_and_a_firing_raises_the_final_score() -> None:
    params = preset_params("small", warmup_samples=30, contextual=EARLY)
    model = HtmModel(params, seed=2)
    values = series(300)
    outs = feed(model, values)
    assert model.contextual is not None
    lo = min(values[:30])
    assert model.contextual.origin == lo
    assert model.contextual.step_size * params.contextual.levels == pytest.approx(model.resolution * RESOLUTION_DIVISOR)
    for o in outs:
        contextual = params.contextual.score if o.contextual_anomaly else 0.0
        expected = 1.0 if o.spatial_anomaly else max(o.log_likelihood, contextual)
        assert o.anomaly_score == expected
    assert any(o.contextual_anomaly for o in outs[30:])  # the first contexts after the warm-up are new


def test_model_without_contextual_params_scores_as_before() -> None:
    values = series(200)
    on = feed(HtmModel(preset_params("small", warmup_samples=30, contextual=EARLY), seed=2), values)
    off = feed(HtmModel(preset_params("small", warmup_samples=30, contextual=None), seed=2), values)
    assert [o.raw_score for o in on] == [o.raw_score for o in off]
    assert all(not o.contextual_anomaly for o in off)
    assert [o.anomaly_score for o in off] == [1.0 if o.spatial_anomaly else o.log_likelihood for o in off]
    assert any(a.anomaly_score != b.anomaly_score for a, b in zip(on, off))


def test_model_round_trip_with_contextual_state_and_version_1_restore() -> None:
    params = preset_params("small", warmup_samples=30, contextual=EARLY)
    values = series(260)
    model = HtmModel(params, seed=2)
    feed(model, values[:200])
    blob = model.to_bytes()
    restored = HtmModel.from_bytes(blob)
    assert restored.to_bytes() == blob
    assert feed(model, values[200:], offset=200) == feed(restored, values[200:], offset=200)

    # a version-1 model (written before the detector existed) restores without it
    old = HtmModel(params.replace(contextual=None), seed=2)
    feed(old, values[:200])
    envelope = msgpack.unpackb(old.to_bytes(), raw=False, strict_map_key=False)
    envelope["version"] = 1
    del envelope["model"]["contextual"]
    del envelope["model"]["params"]["contextual"]
    v1 = HtmModel.from_bytes(msgpack.packb(envelope, use_bin_type=True))
    assert v1.contextual is None and v1.params.contextual is None
    assert feed(v1, values[200:], offset=200) == feed(old, values[200:], offset=200)

    # a state whose parameters ask for the detector must carry it
    envelope = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    envelope["model"]["contextual"] = None
    with pytest.raises(CorruptData, match="contextual"):
        HtmModel.from_bytes(msgpack.packb(envelope, use_bin_type=True))
    assert log_likelihood(0.5) < params.contextual.score


def test_memory_is_bounded_on_an_ever_growing_counter() -> None:
    d = detector(rest_samples=50, max_pairs=300)
    fired = [d.step(float(i) * 0.37) for i in range(5000)]
    assert len(d._seen) == 300
    assert 0 < sum(fired) <= 5000 // 51 + 1  # still firing on new levels, at most once per rest period
    with pytest.raises(CorruptData):
        ContextualAnomaly.from_state({**d.get_state(), "params": {**d.get_state()["params"], "max_pairs": 10}})


def test_extreme_values_bin_and_serialize() -> None:
    d = detector(rest_samples=0)
    for v in (0.5, 1e308, -1e308, 2.5):
        d.step(v)
    assert d.bin(1e308) == 10**15 and d.bin(-1e308) == -(10**15)
    packed = msgpack.packb(d.get_state(), use_bin_type=True)
    assert ContextualAnomaly.from_state(msgpack.unpackb(packed, raw=False)).get_state() == d.get_state()
