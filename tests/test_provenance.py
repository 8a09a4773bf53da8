"""Replay check: samples are skipped as already learned only when provably so (issue #11)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer, Thresholds
from pensu.provenance import TopicIncarnation, replay_verdict
from tests.support import START_TS, fast_config, series
from tests.test_pipeline import lines, make_pipeline

A = TopicIncarnation("cluster-a", "topic-1").key()
A_RECREATED = TopicIncarnation("cluster-a", "topic-2").key()
B = TopicIncarnation("cluster-b", "topic-9").key()
MOCK = TopicIncarnation("mockCluster1", None).key()


def test_incarnation_keys_round_trip_and_only_complete_ones_prove() -> None:
    assert TopicIncarnation.from_key(A) == TopicIncarnation("cluster-a", "topic-1")
    assert TopicIncarnation.from_key(MOCK) == TopicIncarnation("mockCluster1", None)
    assert TopicIncarnation.from_key(None) == TopicIncarnation()
    assert TopicIncarnation.from_key(A).provable
    assert not TopicIncarnation.from_key(MOCK).provable


def test_same_provable_incarnation_skips_by_offset_even_with_newer_timestamps() -> None:
    verdict = replay_verdict((10, 0), A, A, 5, 0, timestamp=2e9, last_timestamp=1e9)
    assert verdict is not None and verdict.by == "offset"
    assert replay_verdict((10, 0), A, A, 11, 0, timestamp=2e9, last_timestamp=1e9) is None


@pytest.mark.parametrize("recorded_origin,origin", [(A, A_RECREATED), (A, B), (None, A), (MOCK, MOCK), (A, None)])
def test_unprovable_offsets_fall_back_to_timestamps(recorded_origin: str | None, origin: str | None) -> None:
    # Offsets at or before the checkpoint's, but from another (or an unknown) incarnation:
    # new data (newer timestamp) is learned, data not newer than the model's last sample is skipped.
    assert replay_verdict((500, 0), recorded_origin, origin, 3, 0, timestamp=2000.0, last_timestamp=1000.0) is None
    verdict = replay_verdict((500, 0), recorded_origin, origin, 3, 0, timestamp=900.0, last_timestamp=1000.0)
    assert verdict is not None and verdict.by == "timestamp"


def test_origins_survive_a_checkpoint_and_old_checkpoints_have_none() -> None:
    analyzer = MetricAnalyzer("m", fast_config())
    for i, (ts, value) in enumerate(series(5)):
        analyzer.process(ts, value, "metrics:0", i, 0, A)
    restored = MetricAnalyzer.from_bytes(analyzer.to_bytes(), Thresholds())
    assert restored.origins == {"metrics:0": A}
    assert restored.replay_verdict("metrics:0", 2, 0, START_TS + 1e6, A) is not None
    # A position recorded without an origin proves nothing: new data at low offsets is learned.
    analyzer.process(START_TS + 1e5, 1.0, "metrics:0", 7, 0, None)
    restored = MetricAnalyzer.from_bytes(analyzer.to_bytes(), Thresholds())
    assert restored.origins == {}
    assert restored.replay_verdict("metrics:0", 0, 0, START_TS + 2e5, A) is None


def test_pipeline_learns_new_data_from_a_new_cluster_and_logs_skips_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipeline, counts = make_pipeline(tmp_path)
    samples = series(60)
    for offset, (ts, value) in enumerate(samples[:30]):
        pipeline.process(lines("m", [(ts, value)]), "metrics:0", offset, A)
    assert counts["sample"] == 30
    caplog.set_level(logging.INFO, logger="pensu.pipeline")
    # A restored cluster: offsets restart at 0. Its first 10 messages replay old samples, the
    # rest are new; offsets 0..29 are all at or before the checkpoint's position.
    for offset, (ts, value) in enumerate(samples[20:50]):
        pipeline.process(lines("m", [(ts, value)]), "metrics:0", offset, B)
    assert counts["skipped:replayed"] == 10
    assert counts["sample"] == 30 + 20
    skip_logs = [r.getMessage() for r in caplog.records if "already learned" in r.getMessage()]
    assert len(skip_logs) == 1 and "timestamp" in skip_logs[0] and "cluster-b" in skip_logs[0]


def test_checkpoint_ahead_compares_offsets_only_within_one_provable_incarnation() -> None:
    from pensu.provenance import checkpoint_ahead
    src = "metrics:0"
    # Same provable incarnation: offsets decide, whatever the timestamps say.
    assert checkpoint_ahead({src: (20, 0)}, {src: A}, 100.0, {src: (10, 0)}, {src: A}, 200.0)
    assert not checkpoint_ahead({src: (10, 0)}, {src: A}, 300.0, {src: (10, 0)}, {src: A}, 200.0)
    assert checkpoint_ahead({src: (10, 2)}, {src: A}, 100.0, {src: (10, 1)}, {src: A}, 200.0)  # a later line
    # Another incarnation, or one without topic ids: the last timestamps decide.
    for stored_origin, local_origin in ((A, A_RECREATED), (MOCK, MOCK), (None, A)):
        so = {} if stored_origin is None else {src: stored_origin}
        assert not checkpoint_ahead({src: (900, 0)}, so, 100.0, {src: (5, 0)}, {src: local_origin}, 200.0)
        assert checkpoint_ahead({src: (5, 0)}, so, 300.0, {src: (900, 0)}, {src: local_origin}, 200.0)
    # A source the local analyzer never read: only a newer timestamp makes the stored one ahead.
    assert checkpoint_ahead({"metrics:1": (3, 0)}, {"metrics:1": A}, 300.0, {src: (9, 0)}, {src: A}, 200.0)
    assert not checkpoint_ahead({"metrics:1": (3, 0)}, {"metrics:1": A}, 100.0, {src: (9, 0)}, {src: A}, 200.0)
