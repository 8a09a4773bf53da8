import dataclasses

import numpy as np
import pytest

from pensu.htm.model import HtmModel, resolution_for_range
from pensu.htm.presets import forecast_predictor, preset_params


def feed(model: HtmModel, values, start: float = 1.4e9):
    return [model.step(start + 300.0 * i, v) for i, v in enumerate(values)]


@pytest.mark.parametrize("padding", [0.0, 0.5])
def test_warmup_range_sets_resolution_with_padding(padding):
    params = preset_params("small", warmup_samples=20, warmup_range_padding=padding)
    model = HtmModel(params, seed=3)
    values = list(np.linspace(10.0, 36.0, 20))
    outs = feed(model, values)
    assert all(o.warming_up for o in outs[:-1]) and not outs[-1].warming_up
    assert model.resolution == pytest.approx(resolution_for_range(10.0 - 26.0 * padding, 36.0 + 26.0 * padding))
    assert model.resolution == pytest.approx(26.0 * (1 + 2 * padding) / 130.0)


def test_forecast_model_round_trips_exactly_with_its_band():
    """The prediction model's head (change target, time-of-week context, calibration) survives
    to_bytes/from_bytes: the restored model's forecasts and bands are identical."""
    from pensu.htm.presets import prediction_params

    params = prediction_params(preset_params("small", warmup_samples=10), 3)
    rng = np.random.default_rng(5)
    values = list(np.sin(np.arange(140) / 4.0) * 10 + rng.normal(0, 0.5, 140))
    model = HtmModel(params, seed=8)
    feed(model, values[:90])
    restored = HtmModel.from_bytes(model.to_bytes())
    assert restored.to_bytes() == model.to_bytes()
    a = feed(model, values[90:], start=1.4e9 + 90 * 300.0)
    b = feed(restored, values[90:], start=1.4e9 + 90 * 300.0)
    assert a == b
    assert all(o.prediction_lower <= o.prediction <= o.prediction_upper for o in a)


def test_format_1_model_still_loads_and_behaves_as_before():
    """A version-1 payload (no forecast fields) loads; its value-target head keeps predicting."""
    import msgpack

    from pensu.htm.predictor import PredictorParams

    params = preset_params("small", warmup_samples=10).replace(predictor=PredictorParams(steps=(1,)))
    model = HtmModel(params, seed=8)
    values = list(np.sin(np.arange(80) / 4.0) * 10)
    feed(model, values[:60])
    envelope = msgpack.unpackb(model.to_bytes(), raw=False, strict_map_key=False)
    state = envelope["model"]
    # what version 1 wrote: no forecast parameters, no history values, level or calibration
    for key in ("target", "estimate", "context_alpha", "band", "level_alpha", "time_of_week_width",
                "time_of_week_radius"):
        del state["params"]["predictor"][key]
        del state["predictor"]["params"][key]
    for key in ("history_values", "level", "calibration"):
        del state["predictor"][key]
    old = msgpack.packb({"format": envelope["format"], "version": 1, "model": state}, use_bin_type=True)
    restored = HtmModel.from_bytes(old)
    a = feed(model, values[60:], start=1.4e9 + 60 * 300.0)
    b = feed(restored, values[60:], start=1.4e9 + 60 * 300.0)
    assert a == b


def test_forecast_head_on_columns_keeps_one_weight_row_per_column_or_context_bit():
    """The forecast head learns from active columns (+ time of week), so its weight table is
    bounded by the columns, not by the cells ever active (docs/scaling.md, Memory per metric)."""
    params = preset_params("small", warmup_samples=20, predictor=forecast_predictor(1))
    model = HtmModel(params, seed=5)
    rng = np.random.default_rng(6)
    feed(model, list(np.sin(np.arange(600) / 9.0) * 10 + rng.normal(0, 2, 600)))
    assert model.predictor is not None and model.tm is not None
    table = model.predictor._tables[1]
    columns = params.sp.column_count
    cells = np.flatnonzero(table.cell_row >= 0)
    assert table.rows_used == cells.size > 0
    assert cells[cells < columns].size <= columns and cells.max() < columns + model.week_encoder.size
    cell_params = params.replace(predictor=dataclasses.replace(forecast_predictor(1), features="cells"))
    cell_features = HtmModel(cell_params, seed=5)
    feed(cell_features, list(np.sin(np.arange(600) / 9.0) * 10 + np.random.default_rng(6).normal(0, 2, 600)))
    assert cell_features.predictor._tables[1].rows_used > 3 * table.rows_used  # one row per cell ever active


def _two_regimes(days_a: float, days_b: float, step_s: float = 600.0) -> list[tuple[float, float]]:
    """A daily wave, then a different weekly-only shape: the first regime's transitions stop recurring."""
    rows, t = [], 1.4e9
    while t < 1.4e9 + days_a * 86_400:
        rows.append((t, 50 + 40 * np.sin(2 * np.pi * t / 86_400)))
        t += step_s
    while t < 1.4e9 + (days_a + days_b) * 86_400:
        rows.append((t, 20 + 5 * ((t // 3600) % 3)))
        t += step_s
    return rows


def test_segments_idle_for_forget_after_days_of_timestamps_are_destroyed():
    rows = _two_regimes(10, 14)
    kept = HtmModel(preset_params("small", min_value=0, max_value=100, forget_after_days=None), seed=5)
    forgetting = HtmModel(preset_params("small", min_value=0, max_value=100, forget_after_days=3), seed=5)
    for ts, v in rows:
        kept.step(ts, v)
        forgetting.step(ts, v)
    assert kept.tm is not None and forgetting.tm is not None
    forgetting.tm.check_invariants()
    assert forgetting.tm.num_segments() < 0.8 * kept.tm.num_segments()
    # every segment left was active within the horizon's mark (3 days + at most one mark interval)
    marks = forgetting._time_marks
    assert marks and rows[-1][0] - marks[0][1] >= 3 * 86_400
    segl = forgetting.tm._segl[:int(forgetting.tm._meta[2])]
    live = forgetting.tm._segi[:int(forgetting.tm._meta[2]), 0] >= 0
    assert (segl[live, 1] >= marks[0][0] - 1000).all()


def test_forgetting_is_by_time_not_by_sample_count():
    # the same 2,100 samples (a wave, then a new regime from sample 1,000): 30 minutes apart they
    # span 44 days and the wave's segments, idle since sample 1,000, are forgotten; one minute
    # apart they span 1.5 days and nothing is
    values = [50 + 40 * np.sin(2 * np.pi * i / 48) if i < 1000 else 95.0 - (i % 7) for i in range(2100)]
    for step_s, forgets in ((1800.0, True), (60.0, False)):
        models = [HtmModel(preset_params("small", min_value=0, max_value=100, forget_after_days=days), seed=5)
                  for days in (2, None)]
        outputs: list[list] = [[], []]
        for i, v in enumerate(values):
            for model, out in zip(models, outputs):
                out.append(model.step(1.4e9 + step_s * i, v))
        forgetting, keeping = (m.tm for m in models)
        assert forgetting is not None and keeping is not None
        if forgets:
            assert forgetting.num_segments() < keeping.num_segments()
        else:
            assert forgetting.num_segments() == keeping.num_segments() and outputs[0] == outputs[1]


def test_time_marks_survive_a_round_trip_and_bad_ones_are_refused():
    from pensu.errors import CorruptData

    rows = _two_regimes(6, 6)
    model = HtmModel(preset_params("small", min_value=0, max_value=100, forget_after_days=2), seed=5)
    for ts, v in rows[:400]:
        model.step(ts, v)
    restored = HtmModel.from_bytes(model.to_bytes())
    assert restored._time_marks == model._time_marks
    for ts, v in rows[400:]:
        assert restored.step(ts, v) == model.step(ts, v)
    assert restored.to_bytes() == model.to_bytes()
    state = model.get_state()
    state["time_marks"] = [[2000, 1.5e9], [1000, 1.4e9]]
    with pytest.raises(CorruptData):
        HtmModel.from_state(state)


@pytest.mark.parametrize("days", [0, -1.0, float("nan"), float("inf")])
def test_forget_after_days_must_be_a_positive_number_of_days(days):
    with pytest.raises(ValueError, match="forget_after_days"):
        preset_params("small", forget_after_days=days)


def test_compact_preset_holds_a_fraction_of_the_small_presets_bytes():
    # the density preset (issue #16) must stay much lighter than `small` on the same stream:
    # fewer columns and cells, small encoders, short likelihood window, forgetting after 3 days
    rows = _two_regimes(6, 6)
    models = {name: HtmModel(preset_params(name, min_value=0, max_value=100), seed=5) for name in ("small", "compact")}
    for ts, v in rows:
        for model in models.values():
            model.step(ts, v)
    compact, small = models["compact"], models["small"]
    assert compact.memory_bytes() < 0.5 * small.memory_bytes()
    assert len(compact.to_bytes()) < 0.5 * len(small.to_bytes())
