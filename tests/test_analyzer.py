"""MetricAnalyzer: decision rule, direction, ordering, replay bookkeeping, exact round trip."""

from __future__ import annotations

import dataclasses
import json
import math

import msgpack
import pytest

from pensu.analyzer import MODEL_SEED, MetricAnalyzer, Thresholds
from pensu.errors import CorruptData, LineRejected, UnsupportedFormatVersion
from pensu.replay import build_analyzer
from tests.support import INTERVAL, START_TS, fast_config, series

NEVER = Thresholds(anomaly_score=1.01, anomaly_likelihood=1.01, minimum_confidence=0.0)
ALWAYS = Thresholds(anomaly_score=0.0, anomaly_likelihood=0.0, minimum_confidence=0.0)
# Every modelled sample anomalous and, without episodes, every one reported.
EVERY = Thresholds(anomaly_score=0.0, anomaly_likelihood=0.0, minimum_confidence=0.0, quiet_samples=0)


def run(analyzer: MetricAnalyzer, samples: list[tuple[float, float]]) -> list:
    return [analyzer.process(ts, value) for ts, value in samples]


def test_fresh_models_are_identical_on_every_instance_and_share_the_pooler_wiring() -> None:
    first, second = MetricAnalyzer("a.b", fast_config()), MetricAnalyzer("a.c", fast_config())
    assert first.anomaly_model.seed == second.anomaly_model.seed == MODEL_SEED
    out = run(first, series(60))
    assert out == [dataclasses.replace(a, metric="a.b") for a in run(second, series(60))]
    assert first.anomaly_model.sp is not None and second.anomaly_model.sp is not None
    assert first.anomaly_model.sp._wiring is second.anomaly_model.sp._wiring


def test_warmup_is_neutral_then_models_run() -> None:
    analyzer = MetricAnalyzer("m", fast_config(warmup=30))
    out = run(analyzer, series(60))
    assert all(a.warming_up and not a.reported for a in out[:29])
    assert not out[-1].warming_up
    assert [a.model_age for a in out] == list(range(1, 61))


def test_thresholds_gate_reports() -> None:
    samples = series(150)
    never = run(MetricAnalyzer("m", fast_config(NEVER)), samples)
    always = run(MetricAnalyzer("m", fast_config(ALWAYS)), samples)
    assert not any(a.reported or a.anomalous for a in never)
    # With zero thresholds every modelled sample is anomalous; warm-up samples never are. They
    # form one episode that never resolves: one report.
    assert all(a.anomalous == (not a.warming_up) for a in always)
    assert [a.event.event for a in always if a.event] == ["opened"] and sum(a.reported for a in always) == 1
    every = run(MetricAnalyzer("m", fast_config(EVERY)), samples)
    assert all(a.reported == (not a.warming_up) for a in every)  # quiet_samples=0: every one reported
    # Thresholds do not change what the models compute.
    assert [a.anomaly_score for a in never] == [a.anomaly_score for a in always]


def test_minimum_confidence_blocks_unconfident_reports() -> None:
    strict = Thresholds(anomaly_score=0.0, anomaly_likelihood=0.0, minimum_confidence=0.999999)
    out = run(MetricAnalyzer("m", fast_config(strict)), series(150))
    assert all(a.anomalous == (not a.warming_up and a.prediction_confidence >= 0.999999) for a in out)
    assert not all(a.anomalous for a in out if not a.warming_up)


def test_direction_follows_the_prediction_made_for_the_sample() -> None:
    out = run(MetricAnalyzer("m", fast_config(EVERY)), series(200))
    checked = 0
    for prev, a in zip(out, out[1:]):
        if not a.reported:
            assert a.direction == 0
            continue
        reference = a.predicted_value if a.predicted_value is not None else prev.value
        expected = (a.value > reference) - (a.value < reference)
        assert a.direction == expected
        checked += a.predicted_value is not None
    assert checked > 50  # the prediction model produced predictions for most samples


def test_forecast_timestamp_uses_observed_interval_and_steps() -> None:
    analyzer = MetricAnalyzer("m", fast_config(steps=3))
    out = run(analyzer, series(80))
    assert out[0].forecast_timestamp is None
    assert all(a.forecast_timestamp == a.timestamp + 3 * INTERVAL for a in out[1:])


def test_prediction_for_a_sample_is_the_forecast_made_steps_earlier() -> None:
    out = run(MetricAnalyzer("m", fast_config(steps=2)), series(120))
    for earlier, later in zip(out, out[2:]):
        assert later.predicted_value == earlier.forecast
        assert later.prediction_confidence == earlier.forecast_confidence
        assert (later.predicted_lower, later.predicted_upper) == (earlier.forecast_lower, earlier.forecast_upper)
    banded = [a for a in out if a.forecast is not None]
    assert banded and all(a.forecast_lower <= a.forecast <= a.forecast_upper for a in banded)


def test_out_of_order_and_duplicate_timestamps_are_rejected_without_learning() -> None:
    analyzer = MetricAnalyzer("m", fast_config())
    run(analyzer, series(5))
    before = analyzer.to_bytes()
    last_ts = START_TS + 4 * INTERVAL
    with pytest.raises(LineRejected) as dup:
        analyzer.process(last_ts, 1.0)
    assert dup.value.reason == "duplicate"
    with pytest.raises(LineRejected) as old:
        analyzer.process(last_ts - 1, 1.0)
    assert old.value.reason == "out_of_order"
    with pytest.raises(LineRejected) as bad:
        analyzer.process(last_ts + 1, float("nan"))
    assert bad.value.reason == "value_not_finite"
    assert analyzer.to_bytes() == before


def test_already_applied_tracks_offsets_and_lines_per_source() -> None:
    analyzer = MetricAnalyzer("m", fast_config())
    analyzer.process(START_TS, 1.0, "metrics:0", 10, 2)
    assert analyzer.already_applied("metrics:0", 10, 2)
    assert analyzer.already_applied("metrics:0", 9, 7)
    assert not analyzer.already_applied("metrics:0", 10, 3)
    assert not analyzer.already_applied("metrics:1", 1, 0)


@pytest.mark.parametrize("split", [10, 45, 160])
def test_round_trip_continues_bit_identically(split: int) -> None:
    samples = series(260)
    reference = MetricAnalyzer("m.x", fast_config(ALWAYS, steps=2))
    expected = run(reference, samples)
    first = MetricAnalyzer("m.x", fast_config(ALWAYS, steps=2))
    run(first, samples[:split])
    restored = MetricAnalyzer.from_bytes(first.to_bytes(), ALWAYS, expected_metric="m.x")
    resumed = run(restored, samples[split:])
    assert [dataclasses.astuple(a) for a in resumed] == [dataclasses.astuple(a) for a in expected[split:]]


@pytest.mark.parametrize(("ranged", "split"), [(True, 0), (True, 3), (False, 20), (True, 400), (False, 400)])
def test_service_analyzer_round_trips_exactly_at_every_age(ranged: bool, split: int) -> None:
    """The service's default analyzer, fresh, young (3 samples), still warming up (no pooler or
    memory yet) and mature: restoring gives the same bytes back and the same outputs after."""
    env = {"PENSU_METRIC_RANGES": json.dumps({"m.x": [0, 100]})} if ranged else {}
    samples = [(START_TS + INTERVAL * i, 50 + 30 * math.sin(i / 20) + (i % 7)) for i in range(split + 60)]
    expected = run(build_analyzer(env=env, metric="m.x"), samples)
    first = build_analyzer(env=env, metric="m.x")
    run(first, samples[:split])
    blob = first.to_bytes()
    restored = MetricAnalyzer.from_bytes(blob, first.thresholds, expected_metric="m.x")
    assert restored.anomaly_model.warming_up == (not ranged and split < 150)
    assert restored.to_bytes() == blob
    resumed = run(restored, samples[split:])
    assert [dataclasses.astuple(a) for a in resumed] == [dataclasses.astuple(a) for a in expected[split:]]


def test_restored_analyzer_takes_thresholds_from_current_settings() -> None:
    analyzer = MetricAnalyzer("m", fast_config(ALWAYS))
    run(analyzer, series(50))
    restored = MetricAnalyzer.from_bytes(analyzer.to_bytes(), NEVER)
    assert not restored.process(START_TS + INTERVAL * 50, 50.0).reported


def test_bad_bytes_raise_clear_errors() -> None:
    analyzer = MetricAnalyzer("m", fast_config())
    run(analyzer, series(40))
    blob = analyzer.to_bytes()
    with pytest.raises(CorruptData):
        MetricAnalyzer.from_bytes(blob[: len(blob) // 2], ALWAYS)
    with pytest.raises(CorruptData):
        MetricAnalyzer.from_bytes(b"\x00garbage", ALWAYS)
    with pytest.raises(CorruptData):
        MetricAnalyzer.from_bytes(blob, ALWAYS, expected_metric="other")
    envelope = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    envelope["version"] = 99
    with pytest.raises(UnsupportedFormatVersion):
        MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), ALWAYS)
    del envelope["analyzer"]["anomaly_model"]
    envelope["version"] = 1
    with pytest.raises(CorruptData):
        MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), ALWAYS)


def test_shared_core_equals_two_separate_models() -> None:
    from pensu.htm.model import HtmModel

    config = fast_config(ALWAYS, steps=2)
    analyzer = MetricAnalyzer("m.shared", config)
    assert analyzer.shares_core
    anomaly = HtmModel(config.anomaly_params, seed=MODEL_SEED)
    prediction = HtmModel(config.prediction_params, seed=MODEL_SEED)
    for ts, value in series(150):
        got = analyzer.process(ts, value)
        a, p = anomaly.step(ts, value), prediction.step(ts, value)
        assert (got.anomaly_score, got.log_likelihood, got.spatial_anomaly) == (a.raw_score, a.log_likelihood,
                                                                              a.spatial_anomaly)
        assert (got.forecast, got.forecast_confidence) == (p.prediction, p.confidence)


def test_different_presets_keep_two_models() -> None:
    from pensu.analyzer import AnalyzerConfig
    from pensu.htm.presets import prediction_params, preset_params

    config = AnalyzerConfig(preset_params("small", warmup_samples=20),
                            prediction_params(preset_params("nab", warmup_samples=20), 1), ALWAYS)
    analyzer = MetricAnalyzer("m", config)
    assert not analyzer.shares_core
    out = run(analyzer, series(40))
    restored = MetricAnalyzer.from_bytes(analyzer.to_bytes(), ALWAYS)
    assert not restored.shares_core
    assert [dataclasses.astuple(restored.process(ts, v)) for ts, v in series(20, start=40)] == \
        [dataclasses.astuple(analyzer.process(ts, v)) for ts, v in series(20, start=40)]
    assert out[-1].forecast is not None


# --- Anomaly episodes with the service's default thresholds ---------------------------------------

@pytest.mark.parametrize("outlier, direction", [(1000.0, 1), (-1000.0, -1)], ids=["spike", "dip"])
def test_out_of_range_spike_or_dip_on_a_learned_series_is_one_episode(outlier: float, direction: int) -> None:
    config = fast_config(Thresholds())  # the defaults: final-score gate 0.452, raw gate off
    analyzer = MetricAnalyzer("m", config)
    learned = run(analyzer, series(400))
    assert not analyzer.decision.in_episode and not any(a.reported for a in learned[-100:])
    after = series(60, start=401)
    out = run(analyzer, [(START_TS + INTERVAL * 400, outlier)] + after)
    hit = out[0]
    assert hit.spatial_anomaly and hit.final_score == 1.0
    assert hit.reported and hit.direction == direction and hit.event.event == "opened"
    assert hit.event.reason in ("out_of_range", "both") and hit.event.severity == 1.0
    low, high = hit.event.expected_range  # the prediction for the sample ± the recent error level
    assert low < high and (low + high) / 2 == pytest.approx(hit.predicted_value) and not low <= outlier <= high
    # One report for the episode, then one resolved record once the quiet period has passed.
    quiet = config.thresholds.quiet_samples
    events = [(i, a.event.event) for i, a in enumerate(out) if a.event is not None]
    assert events[:2] == [(0, "opened"), (events[1][0], "resolved")]
    assert events[1][0] >= quiet and sum(a.reported for a in out) == len([e for e in events if e[1] == "opened"])
    resolved = out[events[1][0]].event
    assert resolved.episode_id == hit.event.episode_id == f"m@{int(START_TS + INTERVAL * 400)}"
    assert resolved.severity == 1.0


def test_original_raw_score_gate_no_longer_hides_an_out_of_range_spike() -> None:
    # 0.5 was the original default: a spike on a learned series has a raw score below it.
    analyzer = MetricAnalyzer("m", fast_config(Thresholds(anomaly_score=0.5)))
    run(analyzer, series(400))
    spike = analyzer.process(START_TS + INTERVAL * 400, 1000.0)
    assert spike.anomaly_score < 0.5 and spike.reported and spike.event.reason == "out_of_range"


def test_round_trip_inside_an_episode_resolves_as_uninterrupted() -> None:
    samples = series(300) + [(START_TS + INTERVAL * 300, 1000.0)] + series(60, start=301)  # > quiet period
    expected = run(MetricAnalyzer("m", fast_config()), samples)
    first = MetricAnalyzer("m", fast_config())
    run(first, samples[:303])
    assert first.decision.in_episode
    restored = MetricAnalyzer.from_bytes(first.to_bytes(), Thresholds(), expected_metric="m")
    resumed = run(restored, samples[303:])
    assert [dataclasses.astuple(a) for a in resumed] == [dataclasses.astuple(a) for a in expected[303:]]
    assert any(a.event is not None and a.event.event == "resolved" for a in resumed)


def test_version_1_checkpoints_restore_with_no_episode_open() -> None:
    samples = series(300) + [(START_TS + INTERVAL * 300, 1000.0)] + series(60, start=301)  # > quiet period
    reference = MetricAnalyzer("m", fast_config())
    expected = run(reference, samples)
    first = MetricAnalyzer("m", fast_config())
    run(first, samples[:303])
    envelope = msgpack.unpackb(first.to_bytes(), raw=False, strict_map_key=False)
    assert envelope["version"] == 4
    del envelope["analyzer"]["decision"]
    with pytest.raises(CorruptData):  # versions 2 to 4 must carry the decision state
        MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), Thresholds())
    envelope["version"] = 1
    restored = MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), Thresholds())
    assert not restored.decision.in_episode
    resumed = run(restored, samples[303:])
    # The models continue exactly; only the episode (unknown to version 1) is gone.
    assert [(a.anomaly_score, a.final_score, a.forecast) for a in resumed] == \
        [(a.anomaly_score, a.final_score, a.forecast) for a in expected[303:]]
    assert not any(a.event is not None and a.event.event == "resolved" for a in resumed)


def test_format_1_analyzer_loads_with_unbanded_pending_predictions() -> None:
    """Version 1 kept pending predictions as [value, confidence]; they load with no band."""
    analyzer = MetricAnalyzer("m", fast_config(steps=2))
    run(analyzer, series(60))
    envelope = msgpack.unpackb(analyzer.to_bytes(), raw=False, strict_map_key=False)
    envelope["version"] = 1
    envelope["analyzer"]["pending"] = [p[:2] for p in envelope["analyzer"]["pending"]]
    restored = MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), ALWAYS)
    first = restored.process(START_TS + INTERVAL * 60, 50.0)
    assert first.predicted_value is not None and first.predicted_lower is None
    later = run(restored, series(3, start=61))
    assert later[-1].predicted_lower is not None


@pytest.mark.slow
def test_default_prediction_model_learns_a_weekly_series_and_beats_persistence() -> None:
    """The service's default prediction model (as `pensu run` / `pensu replay` build it) learns a
    noisy weekly demand pattern (30-minute samples, quieter weekends) better than persistence,
    and its 80 % band covers about 80 % of the values."""
    import math

    import numpy as np

    from pensu.replay import build_analyzer

    rng = np.random.default_rng(9)
    start = 1_404_172_800.0  # a Tuesday 00:00 UTC
    samples = []
    for i in range(48 * 7 * 6):
        ts = start + 1800.0 * i
        day = int((ts // 86400 + 3) % 7)  # Monday = 0
        hour = (ts % 86400) / 3600.0
        level = 600.0 if day >= 5 else 1000.0
        samples.append((ts, level + 0.6 * level * math.sin(2 * math.pi * (hour - 9) / 24) + rng.normal(0, 30)))
    analyzer = build_analyzer(env={}, preset="nab", steps=1)  # default settings
    out = run(analyzer, samples)
    late = range(48 * 7 * 5, len(samples))
    values = np.array([v for _, v in samples])
    mae = np.mean([abs(out[t].predicted_value - values[t]) for t in late])
    persistence = np.mean([abs(values[t - 1] - values[t]) for t in late])
    assert mae < 0.8 * persistence
    inside = np.mean([out[t].predicted_lower <= values[t] <= out[t].predicted_upper for t in late])
    assert 0.7 <= inside <= 0.9


def test_episode_notes_are_checkpointed_from_format_4() -> None:
    """The analyzer keeps the service's episode notes as they are (pensu.episode_notes interprets them)."""
    analyzer = MetricAnalyzer("m", fast_config())
    run(analyzer, series(40))
    notes = {"episode": "m@1", "opened_at": 1.0, "incident": "x@1", "suppressed_by": None,
             "alert": {"labels": {"alertname": "PensuAnomaly"}, "annotations": {}, "starts_at": 1.0}}
    analyzer.episode_notes = notes
    envelope = msgpack.unpackb(analyzer.to_bytes(), raw=False, strict_map_key=False)
    assert envelope["version"] == 4
    assert MetricAnalyzer.from_bytes(analyzer.to_bytes(), ALWAYS).episode_notes == notes
    envelope["version"] = 3  # format 3 had no notes
    del envelope["analyzer"]["episode_notes"]
    assert MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), ALWAYS).episode_notes is None
    envelope["version"] = 4
    envelope["analyzer"]["episode_notes"] = ["not", "a", "map"]
    with pytest.raises(CorruptData, match="episode_notes"):
        MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), ALWAYS)
