"""Unkeyed / wrongly keyed input through the repartition stage of three instances."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.scaleout.cluster import (
    METRIC_COUNT,
    Group,
    by_metric,
    expected_lines,
    group_env,
    instance_runs,
    lines,
    outputs_of,
    produce_like_relays,
    workload,
)
from tests.service_harness import expected_records

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_relay_input_repartitioned_gives_the_keyed_outputs(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = group_env(kafka, tmp_path / "models", PENSU_REPARTITION="true",
                    PENSU_REPARTITION_KAFKA_TOPIC=kafka.unique("repartition"),
                    PENSU_MODELS_AUTOSAVE_INTERVAL="3600")
    settings = load_settings(env)
    anomaly_topic = settings.reported_anomalies_kafka_topic
    data = workload(40)
    kafka.create_topics(settings.metrics_kafka_topic, settings.repartition_kafka_topic)  # 4 partitions each
    # Two relays' messages carry every metric of the relay (one key, or none) on 1-2 partitions:
    # without the stage one instance would analyse everything those partitions carry.
    produce_like_relays(kafka.bootstrap_servers, settings.metrics_kafka_topic, {m: s[:20] for m, s in data.items()})
    with Group(env, tmp_path) as group:
        for name in ("a", "b", "c"):
            group.add(name)
        kafka.consume_all([anomaly_topic], expected=3 * 20 * METRIC_COUNT, timeout=300, idle=0.5)
        group.wait_settled(3)  # the analyzers share the internal topic's partitions
        produce_like_relays(kafka.bootstrap_servers, settings.metrics_kafka_topic,
                            {m: s[20:] for m, s in data.items()})
        msgs = kafka.consume_all([anomaly_topic], expected=3 * 40 * METRIC_COUNT, timeout=300, idle=3.0)
        statuses = group.statuses()
    got = by_metric(outputs_of(msgs, anomaly_topic))
    assert set(got) == set(data)
    owners: set[str] = set()
    for metric, samples in data.items():
        # What keyed input gives (an uninterrupted analyzer per metric), every sample once.
        assert lines(got[metric]) == expected_lines(expected_records(settings, metric, samples), anomaly_topic), metric
        runs = instance_runs(got[metric])
        assert len(runs) == len(set(runs)), (metric, runs)
        owners.add(got[metric][-1].instance)
    assert owners == {"a", "b", "c"}  # metrics spread by name, not by the relays' keys
    assert sum(s["models"] for s in statuses.values() if s) == METRIC_COUNT, statuses
