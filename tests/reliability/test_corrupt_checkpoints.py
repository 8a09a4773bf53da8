"""Corrupt checkpoints met by a running service: truncated, bit-flipped, wrong format version,
another metric inside, unusable payload. Each is quarantined, its metric restarts with a fresh
model, one log line names it, and pensu_checkpoints_quarantined_total counts it."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.checkpoint import CheckpointHeader, LocalCheckpointStore
from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.service_harness import ServiceThread, carbon_by_metric, carbon_of, expected_records, lines_for, service_env
from tests.support import series

pytestmark = pytest.mark.kafka

CORRUPT = ("cut.m", "flip.m", "version.m", "other.m", "payload.m")


def save_trained(store: LocalCheckpointStore, settings, metric: str, samples) -> None:
    """Checkpoint an analyzer of `metric` that learned `samples` (what a previous run left)."""
    analyzer = MetricAnalyzer(metric, analyzer_config(settings))
    for ts, value in samples:
        analyzer.process(ts, value)
    store.save(CheckpointHeader(metric, analyzer.sample_count, analyzer.last_timestamp, {}, 0.0),
               analyzer.to_bytes())


def corrupt(store: LocalCheckpointStore) -> None:
    """Damage each file of CORRUPT in its own way, on disk."""
    cut = store.path_for("cut.m")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    flip = store.path_for("flip.m")
    data = bytearray(flip.read_bytes())
    data[len(data) // 2] ^= 0x10
    flip.write_bytes(bytes(data))
    version = store.path_for("version.m")
    data = bytearray(version.read_bytes())
    data[8:10] = struct.pack(">H", 99)
    version.write_bytes(bytes(data))
    store.path_for("other.m").write_bytes(store.path_for("good.m").read_bytes())
    # A valid file (checksum and header fine) whose payload is not a model.
    store.save(CheckpointHeader("payload.m", 40, None, {}, 0.0), b"\x93not a model")


def test_corrupt_checkpoints_are_quarantined_through_the_service(kafka: KafkaCluster, tmp_path: Path,
                                                                 caplog) -> None:
    models = tmp_path / "models"
    env = service_env(kafka, models)
    settings = load_settings(env)
    samples = series(80)
    store = LocalCheckpointStore(models)
    for metric in CORRUPT + ("good.m",):
        save_trained(store, settings, metric, samples[:40])
    corrupt(store)
    topic, anomaly_topic = env["PENSU_METRICS_KAFKA_TOPIC"], env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]
    metrics = CORRUPT + ("good.m",)
    messages = [(m.encode(), line) for m in metrics for line in lines_for(m, samples[40:])]
    with ServiceThread(env) as running, caplog.at_level(logging.INFO):
        kafka.produce(topic, messages)
        got = kafka.consume_all([anomaly_topic], expected=3 * 40 * len(metrics), timeout=90)
        prom = running.service.prom
    by_metric = carbon_by_metric(got, anomaly_topic)
    for metric in CORRUPT:  # a fresh model learned only the new samples
        assert by_metric[metric] == carbon_of(expected_records(settings, metric, samples[40:]), anomaly_topic)
    good = carbon_of(expected_records(settings, "good.m", samples), anomaly_topic)
    assert by_metric["good.m"] == good[3 * 40:]  # the intact checkpoint resumed exactly
    assert prom.get_sample_value("pensu_checkpoints_quarantined_total") == len(CORRUPT)
    assert len(list((models / "quarantine").iterdir())) == len(CORRUPT)
    for metric in CORRUPT:
        lines = [r for r in caplog.records if repr(metric) in r.getMessage()]
        assert len(lines) == 1 and "quarantine" in lines[0].getMessage(), [r.getMessage() for r in lines]
    quarantine_lines = [r for r in caplog.records if "quarantine" in r.getMessage()]
    assert len(quarantine_lines) == len(CORRUPT)
    # The fresh models were checkpointed again on shutdown, and read back as themselves.
    for metric in CORRUPT:
        header, _ = LocalCheckpointStore(models).load(metric)
        assert header.metric == metric and header.sample_count == 40
