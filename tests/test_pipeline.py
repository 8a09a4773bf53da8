"""Pipeline: one message → parsed, filtered, routed, analysed and rendered records."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from pensu.analyzer import Thresholds
from pensu.carbon import DEFAULT_NAME_TEMPLATE, OUTPUT_KINDS, output_metric_name, parse_line
from pensu.checkpoint import LocalCheckpointStore
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.pipeline import Pipeline, PipelineEvents
from pensu.registry import ModelRegistry
from tests.support import INTERVAL, fast_config, series

ALWAYS = Thresholds(anomaly_score=0.0, anomaly_likelihood=0.0)
TOPICS = OutputTopics("anom", "pred", "reports")


def make_pipeline(tmp_path: Path, allowed: str = ".*", dead_letter: str | None = None,
                  thresholds: Thresholds = ALWAYS) -> tuple[Pipeline, Counter]:
    counts: Counter = Counter()
    events = PipelineEvents(
        sample=lambda s: counts.update(["sample"]),
        rejected=lambda reason: counts.update([f"rejected:{reason}"]),
        skipped=lambda reason: counts.update([f"skipped:{reason}"]),
        reported=lambda: counts.update(["reported"]),
    )
    registry = ModelRegistry(LocalCheckpointStore(tmp_path), fast_config(thresholds), capacity=10)
    formatter = OutputFormatter(TOPICS, DEFAULT_NAME_TEMPLATE, thresholds, "test-instance")
    return Pipeline(registry, formatter, re.compile(allowed), dead_letter, events), counts


def lines(metric: str, samples: list[tuple[float, float]]) -> bytes:
    return b"\n".join(f"{metric} {v!r} {int(ts)}".encode() for ts, v in samples)


def test_multi_line_message_produces_all_outputs_keyed_by_metric(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path)
    result = pipeline.process(lines("a.b", series(60)), "metrics:0", 5)
    assert result.samples == 60 and result.metrics == {"a.b"} and counts["sample"] == 60
    assert all(r.key == b"a.b" for r in result.records)
    by_topic = Counter(r.topic for r in result.records)
    # 3 anomaly lines per sample; 4 prediction lines (value, confidence, band) per sample from
    # the end of the 30-sample warm-up on (no forecast exists before the model is built).
    assert by_topic["anom"] == 180 and by_topic["pred"] == 4 * (60 - 30 + 1)
    names = {parse_line(r.value.rstrip(b"\n")).metric for r in result.records if r.topic != "reports"}
    assert names == {output_metric_name(DEFAULT_NAME_TEMPLATE, kind, "a.b") for kind in OUTPUT_KINDS}
    reports = [json.loads(r.value) for r in result.records if r.topic == "reports"]
    assert len(reports) == counts["reported"] > 0
    assert set(reports[0]) == {"metric", "timestamp", "value", "predicted_value", "prediction_confidence",
                               "predicted_lower", "predicted_upper",
                               "anomaly_score", "anomaly_likelihood", "direction", "thresholds",
                               "model_age", "pensu_instance", "event", "episode_id", "episode_opened_at",
                               "severity", "reason", "expected_range", "episode_samples", "anomalous_samples"}
    assert reports[0]["event"] == "opened" and reports[0]["episode_id"].startswith("a.b@")
    assert reports[0]["pensu_instance"] == "test-instance" and reports[0]["metric"] == "a.b"


def test_prediction_lines_carry_the_forecast_timestamp(tmp_path: Path) -> None:
    pipeline, _ = make_pipeline(tmp_path)
    result = pipeline.process(lines("a.b", series(40)), "metrics:0", 0)
    preds = [parse_line(r.value.rstrip(b"\n")) for r in result.records if r.topic == "pred"]
    anoms = [parse_line(r.value.rstrip(b"\n")) for r in result.records if r.topic == "anom"]
    assert max(p.timestamp for p in preds) == max(a.timestamp for a in anoms) + INTERVAL


def test_bad_lines_are_rejected_counted_and_dead_lettered(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path, dead_letter="dlq")
    payload = b"\n".join([b"good.metric 1 1600000000", b"only two", b"bad..name 1 1600000000",
                          b"x nan 1600000000", b"\xff\xfe 1 2", b"good.metric 2 1599999999"])
    result = pipeline.process(payload, "metrics:1", 7)
    reasons = sorted(k.split(":", 1)[1] for k in counts if k.startswith("rejected:"))
    assert reasons == sorted(["arity", "name_illegal", "value_not_finite", "decode", "out_of_order"])
    dead = [r for r in result.records if r.topic == "dlq"]
    assert len(dead) == 5
    headers = {dict(r.headers)["pensu-reason"] for r in dead}
    assert headers == {b"arity", b"name_illegal", b"value_not_finite", b"decode", b"out_of_order"}
    assert all(dict(r.headers)["pensu-source"] == b"metrics:1@7" for r in dead)
    assert result.samples == 1


def test_no_dead_letter_records_when_disabled(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path)
    result = pipeline.process(b"one two", "metrics:0", 0)
    assert result.records == [] and counts["rejected:arity"] == 1


def test_allow_list_and_own_outputs_are_not_modelled(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path, allowed=r"prod\.")
    payload = (b"prod.cpu 1 1600000000\nstaging.cpu 1 1600000000\n"
               b"pensu.anomaly_score.metrics_analyzer.prod.cpu 1 1600000000")
    result = pipeline.process(payload, "metrics:0", 0)
    assert result.metrics == {"prod.cpu"}
    assert counts["skipped:not_allowed"] == 1 and counts["skipped:own_output"] == 1
    assert "staging.cpu" not in pipeline.registry


def test_own_outputs_are_recognised_from_the_configured_name_template(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalCheckpointStore(tmp_path), fast_config(ALWAYS), capacity=10)
    skipped: Counter = Counter()
    formatter = OutputFormatter(TOPICS, "htm.{{#anomaly_metric}}", ALWAYS, "test-instance",
                                other_output_prefixes=("pensu.anomaly_rate.",))
    events = PipelineEvents(skipped=lambda reason: skipped.update([reason]))
    pipeline = Pipeline(registry, formatter, re.compile(".*"), events=events)
    first = pipeline.process(b"web.cpu 1 1600000000", "metrics:0", 0)
    echoed = b"\n".join(r.value.rstrip(b"\n") for r in first.records)  # its outputs come back as input
    again = pipeline.process(echoed + b"\npensu.anomaly_rate.web 0.5 1600000000", "metrics:0", 1)
    assert again.samples == 0 and skipped["own_output"] == len(first.records) + 1
    # With this template a `pensu.` name is an ordinary metric, modelled like any other.
    other = pipeline.process(b"pensu.anomaly_score.metrics_analyzer.web.cpu 1 1600000000", "metrics:0", 2)
    assert other.metrics == {"pensu.anomaly_score.metrics_analyzer.web.cpu"}


def test_a_value_beyond_the_encoders_range_is_rejected_before_anything_learns_it(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path, dead_letter="dead")
    result = pipeline.process(lines("m", series(3)) + b"\nm 1e300 1700000000", "metrics:0", 0)
    assert result.samples == 3 and counts["rejected:value_out_of_range"] == 1
    assert pipeline.registry.get("m").sample_count == 3
    (dead,) = [r for r in result.records if r.topic == "dead"]
    assert dead.value == b"m 1e+300 1700000000.0"


def test_replayed_offsets_are_skipped_not_learned_twice(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path)
    payload = lines("m", series(3))
    first = pipeline.process(payload, "metrics:0", 42)
    again = pipeline.process(payload, "metrics:0", 42)
    assert first.samples == 3 and again.samples == 0 and again.records == []
    assert counts["skipped:replayed"] == 3
    assert pipeline.registry.get("m").sample_count == 3


@pytest.mark.parametrize("payload", [None, b"", b"\n\n", b"   \r\n"])
def test_empty_messages_produce_nothing(tmp_path: Path, payload: bytes | None) -> None:
    pipeline, counts = make_pipeline(tmp_path)
    result = pipeline.process(payload, "metrics:0", 0)
    assert result.records == [] and result.rejections == [] and not counts


def test_reports_follow_thresholds(tmp_path: Path) -> None:
    never = Thresholds(anomaly_score=1.01, anomaly_likelihood=1.01)
    pipeline, counts = make_pipeline(tmp_path, thresholds=never)
    result = pipeline.process(lines("m", series(80)), "metrics:0", 0)
    assert not [r for r in result.records if r.topic == "reports"] and counts["reported"] == 0


def test_an_episode_sends_one_report_then_a_resolved_record(tmp_path: Path) -> None:
    pipeline, counts = make_pipeline(tmp_path, thresholds=Thresholds(quiet_samples=3))
    samples = series(300)
    spike_ts = samples[250][0]
    samples[250] = (spike_ts, 1000.0)
    result = pipeline.process(lines("web.latency", samples), "metrics:0", 0)
    reports = [json.loads(r.value) for r in result.records if r.topic == "reports"]
    assert all(r.key == b"web.latency" for r in result.records if r.topic == "reports")
    at_spike = [r for r in reports if r["episode_id"] == f"web.latency@{int(spike_ts)}"]
    assert [r["event"] for r in at_spike] == ["opened", "resolved"]
    opened, resolved = at_spike
    assert opened["timestamp"] == spike_ts and opened["value"] == 1000.0 and opened["direction"] == 1
    assert opened["reason"] in ("out_of_range", "both") and opened["severity"] == 1.0
    low, high = opened["expected_range"]
    assert low < opened["predicted_value"] < high < 1000.0
    assert resolved["timestamp"] > spike_ts and resolved["direction"] == 0 and resolved["severity"] == 1.0
    assert resolved["episode_opened_at"] == spike_ts and resolved["episode_samples"] >= 4
    assert counts["reported"] == sum(r["event"] == "opened" for r in reports)
    # The carbon direction line is non-zero exactly on the samples that opened an episode.
    direction = output_metric_name(DEFAULT_NAME_TEMPLATE, "anomaly_direction", "web.latency")
    moved = [parse_line(r.value.rstrip(b"\n")) for r in result.records if r.topic == "anom"]
    assert sorted(s.timestamp for s in moved if s.metric == direction and s.value != 0) == \
        sorted(r["timestamp"] for r in reports if r["event"] == "opened")
