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
