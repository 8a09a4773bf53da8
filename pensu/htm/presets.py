"""Named parameter presets for `HtmModel`.

* ``nab``: the community re-tune of htm.core's NAB detector given in the engine spec
  (RDSE 400/21, time of day 21 bits radius 9.49 h, SP 2048 columns at 2.5 %, TM 32 cells).
* ``nupic``: NuPIC's NAB parameter set (40 active columns, TM threshold 13, initial
  permanence 0.21, min threshold 10, 20 new synapses, inc/dec 0.1, 32 synapses per segment).
  It was tuned for NuPIC's backtracking TM; on the plain TM it is a reference point.
* ``small``: a lighter model for high-cardinality deployments (1024 columns × 16 cells,
  smaller RDSE), roughly a quarter of the memory and time of ``nab``.
* ``compact``: the density preset of issue #16 (256 columns × 12 cells, forgetting after 3 days,
  small encoders): under 1 MB resident and 0.5 MB of checkpoint per mature analyzer, for
  about 4 NAB points on the streaming line and 2-3 on the reports (see `_compact`).

Each preset is an anomaly model (likelihood + spatial-anomaly heads). `prediction_params`
turns any preset into a prediction model (predictor head, no likelihood).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pensu.htm.contextual import ContextualAnomalyParams
from pensu.htm.encoders import DateEncoderParams
from pensu.htm.likelihood import AnomalyLikelihoodParams, SpatialAnomalyParams
from pensu.htm.model import ModelParams
from pensu.htm.predictor import PredictorParams
from pensu.htm.spatial_pooler import SpatialPoolerParams
from pensu.htm.temporal_memory import TemporalMemoryParams

# A service cannot know a file's length the way NAB does (probation = 15 % of the file, at
# most 750 rows, split half learning / half estimation); 300 + 300 matches NAB for a
# 4,000-row series at 5-minute resolution (about two days of data).
# The moving average of raw scores spans 20 samples, not NuPIC's 10: in streaming mode (range
# from the warm-up) the 10-sample average is too noisy and the likelihood alone is weak;
# 20 raised NAB streaming from 64.6 to 69.7 standard (seed 42; 15: 67.3, 25: 68.3, 30: 69.4,
# chosen on half the files, checked on the other half; bench/nab_run.py, docs/nab.md).
SERVICE_LIKELIHOOD = AnomalyLikelihoodParams(learning_period=300, estimation_samples=300, averaging_window=20)


def _nab() -> ModelParams:
    return ModelParams(
        rdse_size=400,
        rdse_active_bits=21,
        date=DateEncoderParams(time_of_day_width=21, time_of_day_radius=9.49),
        sp=SpatialPoolerParams(),
        tm=TemporalMemoryParams(),
        likelihood=SERVICE_LIKELIHOOD,
        spatial_anomaly=SpatialAnomalyParams(),
        contextual=ContextualAnomalyParams(),
    )


def _nupic() -> ModelParams:
    return ModelParams(
        rdse_size=400,
        rdse_active_bits=21,
        date=DateEncoderParams(time_of_day_width=21, time_of_day_radius=9.49),
        sp=SpatialPoolerParams(column_count=2048, potential_pct=0.8, local_area_density=40 / 2048,
                               syn_perm_active_inc=0.003, syn_perm_inactive_dec=0.0005,
                               syn_perm_connected=0.2, boost_strength=0.0),
        tm=TemporalMemoryParams(cells_per_column=32, activation_threshold=13, initial_permanence=0.21,
                                connected_permanence=0.5, min_threshold=10, max_new_synapse_count=20,
                                permanence_increment=0.1, permanence_decrement=0.1,
                                predicted_segment_decrement=0.0, max_segments_per_cell=128,
                                max_synapses_per_segment=32),
        likelihood=SERVICE_LIKELIHOOD,
        spatial_anomaly=SpatialAnomalyParams(),
        contextual=ContextualAnomalyParams(),
    )


def _small() -> ModelParams:
    return ModelParams(
        rdse_size=200,
        rdse_active_bits=15,
        date=DateEncoderParams(time_of_day_width=15, time_of_day_radius=9.49),
        sp=SpatialPoolerParams(column_count=1024, local_area_density=0.03),
        tm=TemporalMemoryParams(cells_per_column=16, activation_threshold=13, min_threshold=9,
                                max_new_synapse_count=20, max_segments_per_cell=64,
                                max_synapses_per_segment=64),
        likelihood=SERVICE_LIKELIHOOD,
        spatial_anomaly=SpatialAnomalyParams(),
        contextual=ContextualAnomalyParams(),
    )


# The density preset (issue #16): <= 1 MB resident per mature analyzer and a <= 0.5 MB checkpoint.
# Measured with bench/density.py --preset compact (machine_temperature, 20,000 samples, anomaly +
# prediction model on one shared core) and NAB streaming (bench/nab_run.py --mode streaming).
# Mature analyzer: 0.698 MB of arrays (SP 0.085, TM 0.424 for 26,599 synapses on 1,900 segments,
# predictor 0.166, likelihood 0.023), 0.910 MB RSS per analyzer with 2,001 held (--count 2000;
# `nab`: 3.71 MB), checkpoint 0.435 MB (`nab`: 2.16 MB). NAB streaming (standard / low FP / low
# FN) 69.1 / 59.8 / 74.3 at seed 42 and 66.7 / 60.1 / 71.5 at seed 7, reports 70.6 / 61.8 / 75.5
# and 67.3 / 58.3 / 72.2 (`nab`: 72.7 / 62.9 / 77.8, 71.0 / 62.1 / 76.4; reports 72.4 / 61.5 /
# 77.9, 70.2 / 58.7 / 75.8). Forecasts as `nab`'s (the head reads columns and time of week):
# taxi 5-step MAPE 0.079 (0.077), 1-step MAE nyc_taxi 586.4 (594.6), machine_temperature 0.798
# (0.798), speed_6005 7.128 (7.135) (bench/forecast.py --preset compact). Engine CPU per sample
# of a metric pair: median 346-477 µs vs 973-990 µs for `nab` (bench/htm_step.py, interleaved,
# loaded 2-core machine).
# How it was chosen: 14 candidates (9 within the memory targets) were compared on the even-indexed
# half of the NAB files at seed 42 (streaming standard: this one 68.8, `nab` 70.6), the winner
# checked on the odd half (70.1) and on all files with seeds 42 and 7 (docs/scaling.md lists
# every candidate with its bytes and scores). Faster metrics keep more samples of segments (forgetting
# goes by time): at 60 s per sample 0.90 MB of arrays and a 0.54 MB checkpoint after 20,000 samples.
# What bought the density, in order of bytes: forgetting segments idle 3 days instead of 35
# (the TM's segments are what grows: 6,590 → 1,843 segments at 512 columns; at 5-minute data 3
# days act like 3-7 because the forgetting marks come every 1,000 samples); fewer synapses per
# segment (10 new, at most 16; the NAB score did not move between 10/16 and 16/32 at 1,024
# columns); small encoders (the pooler keeps a uint16 row of all inputs per touched column:
# 120 + 28 inputs); a likelihood window of 2,880 records (10 days at 5 minutes) instead of
# 8,640. Fewer columns then scored *better* at the same active count (≈20): 1,024 → 64.5,
# 512 → 65.8-67.7, 384 → 67.7, 256 → 68.8, 192 → 66.6, 128 → 64.4 on the even half.
def _compact() -> ModelParams:
    return ModelParams(
        rdse_size=120,
        rdse_active_bits=11,
        date=DateEncoderParams(time_of_day_width=11, time_of_day_radius=9.49),
        sp=SpatialPoolerParams(column_count=256, local_area_density=0.08),
        tm=TemporalMemoryParams(cells_per_column=12, activation_threshold=7, min_threshold=5,
                                max_new_synapse_count=10, max_segments_per_cell=32,
                                max_synapses_per_segment=16),
        likelihood=dataclasses.replace(SERVICE_LIKELIHOOD, historic_window_size=2880),
        spatial_anomaly=SpatialAnomalyParams(),
        contextual=ContextualAnomalyParams(),
        forget_after_days=3.0,
    )


PRESETS: dict[str, Callable[[], ModelParams]] = {"nab": _nab, "nupic": _nupic, "small": _small,
                                                 "compact": _compact}


def preset_params(name: str, **overrides: Any) -> ModelParams:
    """Return the named preset's parameters with top-level fields overridden."""
    try:
        params = PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return params.replace(**overrides) if overrides else params


# Weight slots per cell of the predictor: 16 closes about a third of the forecast-error gap
# between the 6-slot default and a dense softmax (nyc_taxi 1-step MAE 1,980 → 1,858; dense
# 1,576) for about 0.3 MB more per model (bench/predictor_step.py --slots).
PREDICTOR_SLOTS_PER_CELL = 16


def forecast_predictor(steps: int) -> PredictorParams:
    """The prediction model's head: what makes Pensu's forecasts beat the naive baselines.

    Measured with bench/forecast.py (docs/forecast.md), choices made on the taxi task's tuning
    rows (predictions made at records 2,000-9,999) and the three 1-step NAB series:

    * target "change" anchored on an exponential moving average of the values (level_alpha 0.7)
      and estimate "mean": the classic value-bucket classifier behaved like a lagged copy of the
      input (taxi 5-step MAPE 0.34, worse than persistence); predicting the change from the
      level turns "nothing learnt" into "about the current level" instead of "some remembered
      bucket". Level 0.7 rather than the last value: machine_temperature 1-step MAE 0.798 vs
      0.847, speed_6005 7.12 vs 7.49, taxi tuning rows 0.0913 vs 0.0912.
    * a time-of-week context (21 bits, radius 0.06 day ≈ 1.4 h, i.e. a bucket every 4 min over
      the week) next to the cells: demand series repeat weekly and the cells of the shared core
      (time of day only, 9.49 h radius) cannot tell a Monday from a Sunday. Coarser radii lost:
      0.125 day → tuning-row MAPE 0.17 vs 0.107 (dense softmax on the context alone).
    * learning rates: context bits 0.3 (each is seen once a week and must learn from few
      samples; 0.1 → 0.174, 0.6 → 0.137 on the tuning rows), cells 0.03 (cells are active all
      the time and would drown the context: in a dense-softmax sweep, cells at the context's
      rate gave tuning-row MAPE 0.208, at 0.3² of it 0.089).
    * a calibrated gain and error-quantile band (see `pensu.htm.predictor._Calibration`).
    * features: the active *columns* (plus the context), not the active cells. Same forecasts
      (taxi 5-step MAPE 0.077 vs 0.078; 1-step MAE nyc_taxi 595 vs 610, machine_temperature
      0.798 vs 0.798, speed_6005 7.14 vs 7.11) for a weight table of at most 2,048 + context
      rows instead of one per cell ever active: 0.16 MB instead of 2.1 MB after 20,000 samples
      (bench/density.py, docs/scaling.md).

    Only the head differs from the anomaly model, so the analyzer still runs one shared core
    (the anomaly model's behaviour, hence NAB, is untouched; heads never feed back).
    """
    return PredictorParams(steps=(int(steps),), alpha=0.03, slots_per_cell=PREDICTOR_SLOTS_PER_CELL,
                           target="change", estimate="mean", level_alpha=0.7, context_alpha=0.3,
                           band=(0.1, 0.9), time_of_week_width=21, time_of_week_radius=0.06,
                           features="columns")


def prediction_params(params: ModelParams, steps: int) -> ModelParams:
    """Turn anomaly-model parameters into a prediction model predicting `steps` ahead."""
    return params.replace(likelihood=None, spatial_anomaly=None, contextual=None, predictor=forecast_predictor(steps))
