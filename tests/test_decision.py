"""pensu.decision: the rule on the final score, episodes, suppression, reasons, expected range, state."""

from __future__ import annotations

import dataclasses
import random

import pytest

from pensu.decision import (
    BOTH,
    EXPECTED_RANGE_WIDTH,
    OPENED,
    OUT_OF_RANGE,
    RESOLVED,
    TEMPORAL,
    DecisionConfig,
    EpisodeTracker,
    Observation,
    expected_range,
)
from pensu.errors import CorruptData
from pensu.htm.likelihood import log_likelihood

HIGH, LOW = 0.9, 0.1  # final scores above / below the default gate (0.5)


def obs(i: int, final: float = LOW, *, spatial: bool = False, raw: float = 0.3, value: float = 50.0,
        predicted: float | None = 50.0, confidence: float = 0.5, warming_up: bool = False) -> Observation:
    """One sample's model outputs; a spatial anomaly has final score 1.0 as the model sets it."""
    return Observation(timestamp=1000.0 + 60 * i, value=value, raw_score=raw,
                       log_likelihood=final, final_score=1.0 if spatial else final, spatial_anomaly=spatial,
                       warming_up=warming_up, predicted_value=predicted, prediction_confidence=confidence,
                       previous_value=value)


def run(tracker: EpisodeTracker, finals: list[float]) -> list:
    return [tracker.step(obs(i, f)) for i, f in enumerate(finals)]


def events(decisions: list) -> list[tuple[int, str]]:
    return [(i, d.event.event) for i, d in enumerate(decisions) if d.event is not None]


def test_likelihood_threshold_keeps_raw_units_and_gates_the_final_score() -> None:
    assert DecisionConfig().anomaly_likelihood == 0.99997
    assert DecisionConfig().final_score_threshold == pytest.approx(0.4523, abs=1e-4)  # log10(3e-5) / -10
    assert DecisionConfig(anomaly_likelihood=0.99999).final_score_threshold == pytest.approx(0.5, abs=1e-5)
    assert DecisionConfig(anomaly_likelihood=0.999999).final_score_threshold == pytest.approx(0.6, abs=1e-5)
    gate = DecisionConfig().final_score_threshold
    tracker = EpisodeTracker("m", DecisionConfig(quiet_samples=0))
    assert tracker.step(obs(0, gate)).anomalous
    assert not tracker.step(obs(1, gate - 1e-9)).anomalous
    # Above 1 nothing is anomalous, not even a value outside the range seen (final score 1.0).
    never = EpisodeTracker("m", DecisionConfig(anomaly_likelihood=1.01))
    assert not never.step(obs(0, spatial=True)).anomalous


def test_without_episodes_reports_are_exactly_the_thresholded_final_score() -> None:
    # quiet_samples=0 is the original per-sample behaviour: the detections NAB scores at the gate.
    rng = random.Random(7)
    finals = [rng.random() for _ in range(2000)]
    config = DecisionConfig(quiet_samples=0)
    decisions = run(EpisodeTracker("m", config), finals)
    assert [d.reported for d in decisions] == [f >= config.final_score_threshold for f in finals]
    assert not any(d.event.event == RESOLVED for d in decisions if d.event)


def test_an_episode_opens_once_and_resolves_after_the_quiet_period() -> None:
    config = DecisionConfig(quiet_samples=3)
    # anomalous 5-9 (with a normal gap at 7-8 shorter than the quiet period), normal after
    finals = [LOW] * 5 + [HIGH, HIGH, LOW, LOW, HIGH] + [LOW] * 6
    decisions = run(EpisodeTracker("m", config), finals)
    assert events(decisions) == [(5, OPENED), (12, RESOLVED)]  # 3rd normal sample after the last anomalous (9)
    assert [i for i, d in enumerate(decisions) if d.reported] == [5]
    assert [i for i, d in enumerate(decisions) if d.anomalous] == [5, 6, 9]
    opened, resolved = decisions[5].event, decisions[12].event
    assert opened.episode_id == resolved.episode_id == "m@1300"
    assert (opened.anomalous_samples, opened.samples) == (1, 1)
    assert (resolved.anomalous_samples, resolved.samples) == (3, 8)
    assert resolved.opened_at == opened.opened_at == 1300.0


def test_a_gap_as_long_as_the_quiet_period_starts_a_new_episode() -> None:
    finals = [HIGH] + [LOW] * 3 + [HIGH] + [LOW] * 3
    decisions = run(EpisodeTracker("m", DecisionConfig(quiet_samples=3)), finals)
    assert events(decisions) == [(0, OPENED), (3, RESOLVED), (4, OPENED), (7, RESOLVED)]
    assert decisions[0].event.episode_id != decisions[4].event.episode_id


def test_suppression_blocks_new_episodes_for_n_samples_after_a_resolution() -> None:
    config = DecisionConfig(quiet_samples=2, suppression_samples=4)
    # episode 0-0 resolves at 2; anomalies at 3..6 fall in the suppression window; 7 opens anew
    finals = [HIGH, LOW, LOW, HIGH, HIGH, LOW, HIGH, HIGH, LOW, LOW]
    decisions = run(EpisodeTracker("m", config), finals)
    assert events(decisions) == [(0, OPENED), (2, RESOLVED), (7, OPENED), (9, RESOLVED)]
    assert all(decisions[i].anomalous and not decisions[i].reported for i in (3, 4, 6))
    # The same input without suppression opens at 3 already.
    free = run(EpisodeTracker("m", DecisionConfig(quiet_samples=2)), finals)
    assert events(free)[:3] == [(0, OPENED), (2, RESOLVED), (3, OPENED)]


def test_suppression_without_episodes_counts_from_each_report() -> None:
    decisions = run(EpisodeTracker("m", DecisionConfig(quiet_samples=0, suppression_samples=2)), [HIGH] * 7)
    assert [i for i, d in enumerate(decisions) if d.reported] == [0, 3, 6]


def test_reasons_and_the_raw_score_gate() -> None:
    config = DecisionConfig(anomaly_score=0.5, quiet_samples=0)
    tracker = EpisodeTracker("m", config)
    temporal = tracker.step(obs(0, HIGH, raw=0.8))
    low_raw = tracker.step(obs(1, HIGH, raw=0.3))  # the raw gate hides a low-raw temporal surprise...
    spike = tracker.step(obs(2, LOW, spatial=True, raw=0.3, value=500.0))  # ...never a value out of range
    both = tracker.step(obs(3, HIGH, spatial=True, raw=0.9, value=-500.0))
    assert (temporal.event.reason, temporal.direction) == (TEMPORAL, 0)  # value == prediction
    assert not low_raw.anomalous and low_raw.event is None
    assert spike.reported and spike.event.reason == OUT_OF_RANGE and spike.event.severity == 1.0
    assert spike.direction == 1 and both.direction == -1
    assert both.event.reason == BOTH


def test_resolved_record_carries_peak_severity_and_all_reasons() -> None:
    tracker = EpisodeTracker("m", DecisionConfig(quiet_samples=1))
    first = tracker.step(obs(0, 0.7))
    tracker.step(obs(1, spatial=True, value=900.0))
    resolved = tracker.step(obs(2, LOW)).event
    assert (first.event.severity, first.event.reason) == (0.7, TEMPORAL)
    assert (resolved.event, resolved.severity, resolved.reason) == (RESOLVED, 1.0, BOTH)


def test_warm_up_and_minimum_confidence_gate_everything() -> None:
    tracker = EpisodeTracker("m", DecisionConfig(minimum_confidence=0.6, quiet_samples=0))
    assert not tracker.step(obs(0, spatial=True, warming_up=True)).anomalous
    assert not tracker.step(obs(1, spatial=True, confidence=0.5)).anomalous
    assert tracker.step(obs(2, spatial=True, confidence=0.6)).reported


def test_expected_range_is_the_prediction_plus_minus_the_running_error() -> None:
    assert expected_range(None, None, 1.0) is None and expected_range(10.0, 9.0, None) is None
    assert expected_range(10.0, 9.0, 2.0) == (10.0 - 2 * EXPECTED_RANGE_WIDTH, 10.0 + 2 * EXPECTED_RANGE_WIDTH)
    assert expected_range(None, 9.0, 1.0) == (9.0 - EXPECTED_RANGE_WIDTH, 9.0 + EXPECTED_RANGE_WIDTH)
    assert expected_range(1e308, None, 1e308) is None  # an overflowing band is not reported
    tracker = EpisodeTracker("m", DecisionConfig(quiet_samples=0))
    for i in range(200):  # normal samples always 2 off their prediction
        tracker.step(obs(i, value=52.0 if i % 2 else 48.0, predicted=50.0))
    # An anomalous sample far off its prediction does not widen the range reported after it.
    tracker.step(obs(200, spatial=True, value=5000.0, predicted=50.0))
    band = tracker.step(obs(201, spatial=True, value=6000.0, predicted=50.0)).event.expected_range
    assert band == pytest.approx((50.0 - 2 * EXPECTED_RANGE_WIDTH, 50.0 + 2 * EXPECTED_RANGE_WIDTH))


@pytest.mark.parametrize("split", [3, 6, 9, 14])
def test_state_round_trip_continues_identically(split: int) -> None:
    config = DecisionConfig(quiet_samples=3, suppression_samples=4)
    rng = random.Random(split)
    inputs = [obs(i, HIGH if rng.random() < 0.3 else LOW, value=rng.uniform(0, 100)) for i in range(40)]
    reference = EpisodeTracker("m.x", config)
    expected = [reference.step(o) for o in inputs]
    first = EpisodeTracker("m.x", config)
    for o in inputs[:split]:
        first.step(o)
    state = first.get_state()
    restored = EpisodeTracker.from_state("m.x", config, state)
    assert restored.get_state() == state
    assert [restored.step(o) for o in inputs[split:]] == expected[split:]


def test_restored_state_follows_the_current_settings_and_rejects_garbage() -> None:
    tracker = EpisodeTracker("m", DecisionConfig(quiet_samples=1, suppression_samples=100))
    run(tracker, [HIGH, LOW])  # resolved: 100 samples of suppression started
    shorter = EpisodeTracker.from_state("m", DecisionConfig(quiet_samples=1, suppression_samples=2),
                                        tracker.get_state())
    assert [d.reported for d in run(shorter, [HIGH] * 3)] == [False, False, True]
    assert not EpisodeTracker.from_state("m", DecisionConfig(), None).in_episode  # version-1 checkpoints
    good = EpisodeTracker("m", DecisionConfig())
    good.step(obs(0, HIGH))
    state = good.get_state()
    for broken in ({}, {**state, "episode": [1.0, 2.0]}, {**state, "episode": [1, 1, 9, 1, 1, 0]},
                   {**state, "suppressed": "x"}, {**state, "mean_abs_error": []}, [1, 2]):
        with pytest.raises(CorruptData):
            EpisodeTracker.from_state("m", DecisionConfig(), broken)  # type: ignore[arg-type]


def test_config_refuses_negative_periods() -> None:
    with pytest.raises(ValueError):
        DecisionConfig(quiet_samples=-1)
    assert dataclasses.replace(DecisionConfig(), suppression_samples=5).suppression_samples == 5
    assert log_likelihood(0.99997) == DecisionConfig().final_score_threshold


def test_a_contextual_anomaly_opens_an_episode_though_the_likelihood_is_low() -> None:
    tracker = EpisodeTracker("m", DecisionConfig())
    low = log_likelihood(0.9)
    plain = Observation(timestamp=0.0, value=1.0, raw_score=0.2, log_likelihood=low, final_score=0.6,
                        spatial_anomaly=False, warming_up=False, predicted_value=None, prediction_confidence=0.0,
                        previous_value=None)
    assert tracker.classify(plain) == 0  # a final score the likelihood does not explain is not enough
    decision = tracker.step(dataclasses.replace(plain, contextual_anomaly=True))
    assert decision.reported and decision.event is not None and decision.event.reason == TEMPORAL
