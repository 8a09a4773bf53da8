"""One contract for every HTM component, checked on each (component, input stream) case.

The contract (pensu.htm.serialization): a component is built from frozen parameters (bad ones
are refused), steps on its input, and `get_state()` holds only msgpack-native values such that
`from_state()` of the state after a round trip through the checkpoint codec (msgpack, as
`HtmModel.to_bytes` / `MetricAnalyzer.to_bytes` pack it) continues with *identical* outputs and
packs to identical bytes again; a state missing a field raises `CorruptData`; components that
report memory report more than nothing. This replaces six hand-written round-trip tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest

from pensu.errors import ConfigurationError, CorruptData
from pensu.htm.contextual import ContextualAnomaly, ContextualAnomalyParams
from pensu.htm.encoders import RDSE, DateEncoder, DateEncoderParams, RDSEParams, concat_sdrs
from pensu.htm.likelihood import AnomalyLikelihood, AnomalyLikelihoodParams, SpatialAnomaly, SpatialAnomalyParams
from pensu.htm.model import HtmModel
from pensu.htm.predictor import Predictor, PredictorParams
from pensu.htm.presets import forecast_predictor, prediction_params, preset_params
from pensu.htm.spatial_pooler import SpatialPooler, SpatialPoolerParams
from pensu.htm.temporal_memory import TemporalMemory, TemporalMemoryParams

START = 1_700_000_000.0


def wave(i: int, rng_seed: int = 5) -> float:
    """A noisy daily-periodic value (deterministic in i)."""
    noise = np.random.default_rng(rng_seed * 1_000_003 + i).normal(0, 2)
    return 50 + 30 * math.sin(2 * math.pi * i / 96) + float(noise)


def encoded(i: int) -> np.ndarray:
    """The service's encoding of sample i (RDSE + time of day)."""
    rdse = RDSE(RDSEParams(size=400, active_bits=21, resolution=0.8, seed=1))
    date = DateEncoder(DateEncoderParams())
    return concat_sdrs([rdse.encode(wave(i)), date.encode(START + 300.0 * i)], [rdse.size, date.size])


def noisy_columns(i: int, columns: int = 2048, width: int = 40) -> np.ndarray:
    """A repeating sequence of column sets with random swaps (learns, bursts and punishes)."""
    base = np.random.default_rng(i % 12).choice(columns, width, replace=False)
    rng = np.random.default_rng(10_000 + i)
    swap = rng.random(width) < 0.15
    base[swap] = rng.integers(0, columns, int(swap.sum()))
    return np.unique(base).astype(np.int32)


def cells_for(i: int) -> np.ndarray:
    """Active cells tracking the value, plus noise (a predictor's features)."""
    base = int((wave(i) + 20) * 3)
    noise = np.random.default_rng(20_000 + i).integers(0, 65536, size=20)
    return np.unique(np.concatenate([base * 40 + np.arange(40), noise])).astype(np.int32)


def pack(state: Any) -> bytes:
    return msgpack.packb(state, use_bin_type=True)


def codec(state: Any) -> Any:
    """A state through the checkpoint codec."""
    return msgpack.unpackb(pack(state), raw=False, strict_map_key=False)


@dataclass(frozen=True)
class Case:
    """How to build one component, feed it sample i and read what it outputs."""

    name: str
    build: Callable[[], Any]
    step: Callable[[Any, int], Any]
    restore: Callable[[Any], Any]
    bad_params: Callable[[], Any]
    before: int = 200  # samples before the round trip
    after: int = 150  # samples compared after it


def _predictor_step(predictor: Predictor, i: int) -> Any:
    cells, value = cells_for(i), wave(i)
    out = predictor.infer(cells, value)
    predictor.learn(cells, int(math.floor(value)), value, resolution=1.0)
    return {step: dataclasses.astuple(p) for step, p in out.items()}


def _model_step(model: HtmModel, i: int) -> Any:
    return dataclasses.astuple(model.step(START + 300.0 * i, wave(i)))


def _tm_step(tm: TemporalMemory, i: int) -> Any:
    anomaly = tm.compute(noisy_columns(i))
    return anomaly, tm.active_cells.tobytes(), tm.winner_cells.tobytes(), tm.predictive_cells.tobytes()


SMALL_TM = TemporalMemoryParams(cells_per_column=4, max_segments_per_cell=2, max_synapses_per_segment=8,
                                activation_threshold=3, min_threshold=2, max_new_synapse_count=5)
TINY_LIKELIHOOD = AnomalyLikelihoodParams(learning_period=2, estimation_samples=3, historic_window_size=8,
                                          reestimation_period=4, averaging_window=3)

CASES = [
    Case("spatial pooler",
         lambda: SpatialPooler(454, SpatialPoolerParams(duty_cycle_period=100), seed=13),
         lambda sp, i: sp.compute(encoded(i), learn=True).tobytes(),
         SpatialPooler.from_state,
         lambda: SpatialPooler(454, SpatialPoolerParams(potential_pct=0.0), seed=1)),
    Case("spatial pooler, boosting",
         lambda: SpatialPooler(454, SpatialPoolerParams(boost_strength=2.0, duty_cycle_period=100), seed=13),
         lambda sp, i: sp.compute(encoded(i), learn=True).tobytes(),
         SpatialPooler.from_state,
         lambda: SpatialPooler(454, SpatialPoolerParams(duty_cycle_period=0), seed=1)),
    Case("temporal memory",
         lambda: TemporalMemory(2048, TemporalMemoryParams(), seed=18),
         _tm_step, TemporalMemory.from_state,
         lambda: TemporalMemory(2048, TemporalMemoryParams(cells_per_column=0), seed=1), before=400),
    Case("temporal memory, eviction and synapse caps",
         lambda: TemporalMemory(2048, SMALL_TM, seed=18),
         _tm_step, TemporalMemory.from_state,
         lambda: TemporalMemory(2048, dataclasses.replace(SMALL_TM, initial_permanence=0.0), seed=1), before=400),
    Case("predictor, value target, two steps",
         lambda: Predictor(PredictorParams(steps=(2, 4), max_classes=12, slots_per_cell=3)),
         _predictor_step, Predictor.from_state,
         lambda: Predictor(PredictorParams(steps=(0,)))),
    Case("predictor, change target with context",
         lambda: Predictor(dataclasses.replace(forecast_predictor(3), time_of_week_width=0)),
         _predictor_step, Predictor.from_state,
         lambda: Predictor(PredictorParams(features="pixels"))),
    Case("likelihood, window not yet full", lambda: AnomalyLikelihood(TINY_LIKELIHOOD),
         lambda m, i: m.update(abs(math.sin(i)), wave(i)), AnomalyLikelihood.from_state,
         lambda: AnomalyLikelihood(AnomalyLikelihoodParams(historic_window_size=0)), before=3, after=40),
    Case("likelihood, window wrapped", lambda: AnomalyLikelihood(TINY_LIKELIHOOD),
         lambda m, i: m.update(abs(math.sin(i)), wave(i)), AnomalyLikelihood.from_state,
         lambda: AnomalyLikelihood(AnomalyLikelihoodParams(averaging_window=0)), before=30, after=40),
    Case("spatial anomaly", lambda: SpatialAnomaly(SpatialAnomalyParams(min_samples=5)),
         lambda m, i: m.update(wave(i) * (3 if i % 37 == 0 else 1)), SpatialAnomaly.from_state,
         lambda: SpatialAnomaly(SpatialAnomalyParams(tolerance=-1.0))),
    Case("contextual detector",
         lambda: ContextualAnomaly(ContextualAnomalyParams(rest_samples=20, probation_samples=50), -4.0, 7.3),
         lambda m, i: m.step(wave(i) / 10 + (3.0 if i == 250 else 0.0)), ContextualAnomaly.from_state,
         lambda: ContextualAnomaly(ContextualAnomalyParams(levels=0), 0.0, 1.0), before=200, after=200),
    Case("model (small preset, forecast head on columns)",
         lambda: HtmModel(preset_params("small", warmup_samples=20,
                                        predictor=forecast_predictor(1)), seed=8),
         _model_step, HtmModel.from_state,
         lambda: HtmModel(preset_params("small", sp=SpatialPoolerParams(column_count=0), min_value=0.0,
                                        max_value=1.0), seed=1)),
    Case("model (compact preset, anomaly heads)",
         lambda: HtmModel(preset_params("compact", warmup_samples=20), seed=8),
         _model_step, HtmModel.from_state,
         lambda: HtmModel(preset_params("compact", tm=TemporalMemoryParams(cells_per_column=0), min_value=0.0,
                                        max_value=1.0), seed=1)),
    Case("model (compact preset, forecast head on columns)",
         lambda: HtmModel(prediction_params(preset_params("compact", warmup_samples=20), 1), seed=8),
         _model_step, HtmModel.from_state,
         lambda: HtmModel(preset_params("compact", forget_after_days=0.0), seed=1)),
    Case("model (nab preset, warm-up not over)",
         lambda: HtmModel(preset_params("nab", warmup_samples=50, warmup_range_padding=0.25), seed=8),
         _model_step, HtmModel.from_state,
         lambda: HtmModel(preset_params("nab", tm=TemporalMemoryParams(max_synapses_per_segment=0),
                                        min_value=0.0, max_value=1.0), seed=1), before=30, after=60),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def test_bad_parameters_are_refused(case: Case) -> None:
    with pytest.raises((ValueError, ConfigurationError)):
        case.bad_params()


def test_state_round_trip_continues_identically(case: Case) -> None:
    original = case.build()
    for i in range(case.before):
        case.step(original, i)
    restored = case.restore(codec(original.get_state()))
    assert pack(restored.get_state()) == pack(original.get_state())
    for i in range(case.before, case.before + case.after):
        assert case.step(restored, i) == case.step(original, i), f"outputs differ at sample {i}"
    assert pack(restored.get_state()) == pack(original.get_state())


def test_fresh_component_round_trips(case: Case) -> None:
    fresh = case.build()
    restored = case.restore(codec(fresh.get_state()))
    assert case.step(restored, 0) == case.step(fresh, 0)


def test_state_missing_a_field_raises_corrupt_data(case: Case) -> None:
    component = case.build()
    for i in range(min(case.before, 40)):
        case.step(component, i)
    state = codec(component.get_state())
    for key in list(state):
        if key in ("contextual", "previous_tail", "history_values", "level", "calibration",
                   "time_marks") or state[key] is None:
            continue  # optional (absent in states written before they existed), or absent = None
        truncated = {k: v for k, v in state.items() if k != key}
        with pytest.raises(CorruptData):
            case.restore(truncated)


def test_memory_is_reported(case: Case) -> None:
    component = case.build()
    for i in range(min(case.before, 40)):
        case.step(component, i)
    report = getattr(component, "memory_bytes", None)
    if report is None:
        pytest.skip(f"{case.name} holds only a few scalars and does not report memory")
    assert report() > 0
