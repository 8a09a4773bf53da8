"""Three `pensu run` processes in one consumer group: every metric has one owner at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.scaleout.cluster import (
    METRIC_COUNT,
    Group,
    RoundProducer,
    by_metric,
    expected_lines,
    group_env,
    instance_runs,
    lines,
    metric_names,
    outputs_of,
    produce_keyed,
    workload,
)
from tests.service_harness import expected_records

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def fresh_and_checkpoint_loads(group: Group) -> tuple[float, float]:
    """Models created fresh and models loaded from checkpoints, summed over running instances."""
    fresh = sum(i.metric("pensu_model_loads_total", 'source="fresh"') for i in group.running())
    loaded = sum(i.metric("pensu_model_loads_total", 'source="checkpoint"') for i in group.running())
    return fresh, loaded


def test_three_instances_analyse_every_sample_exactly_once(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = group_env(kafka, tmp_path / "models", PENSU_MODELS_AUTOSAVE_INTERVAL="3600")
    settings = load_settings(env)
    anomaly_topic = settings.reported_anomalies_kafka_topic
    # Samples keep flowing while the members join one by one, so partitions are handed over
    # mid-stream: the first member owns everything, then gives partitions to the next two.
    # A round every 0.5 s: the librdkafka mock cluster keeps at most 5 MB per partition and drops
    # the oldest records beyond; three slow joins at 4 rounds/s once overflowed the output topic.
    kafka.create_topics(settings.metrics_kafka_topic)  # 4 partitions (a real broker may auto-create 1)
    feed = RoundProducer(kafka.bootstrap_servers, settings.metrics_kafka_topic, metric_names(), period=0.5)
    feed.produce_round()  # creates the topic on the mock cluster before anyone subscribes
    with Group(env, tmp_path) as group:
        feed.start()
        for members, name in enumerate(("a", "b", "c"), start=1):
            group.add(name)
            group.wait_settled(members)
        settled_at = feed.rounds
        group.wait_until(lambda: feed.rounds >= settled_at + 8, 60, "more rounds after settling")
        data = feed.stop()
        rounds = feed.rounds
        msgs = kafka.consume_all([anomaly_topic], expected=3 * rounds * METRIC_COUNT, timeout=300, idle=3.0)
        statuses = group.statuses()
        fresh, _loaded = fresh_and_checkpoint_loads(group)
    assert all(s is not None and s["assigned"] >= 1 for s in statuses.values()), statuses
    # Each metric resident on exactly one instance, each created fresh exactly once in the group.
    assert sum(s["models"] for s in statuses.values() if s) == METRIC_COUNT, statuses
    assert fresh == METRIC_COUNT
    got = by_metric(outputs_of(msgs, anomaly_topic))
    assert set(got) == set(data)
    late_owners: set[str] = set()
    moved = 0
    for metric, samples in data.items():
        expected = expected_lines(expected_records(settings, metric, samples), anomaly_topic)
        # Exactly once per sample, in order, and equal to one uninterrupted analyzer's outputs:
        # a handover continued the learned state; two owners at once would duplicate or diverge.
        assert lines(got[metric]) == expected, metric
        runs = instance_runs(got[metric])
        assert len(runs) == len(set(runs)), (metric, runs)  # ownership moved, never interleaved
        moved += len(runs) > 1
        late_owners.add(got[metric][-1].instance)
    assert late_owners == {"a", "b", "c"}  # once settled, all three instances do the work
    assert moved > 0  # some metrics changed owner mid-stream (their outputs still matched above)


def test_added_instance_takes_partitions_and_continues_their_models(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = group_env(kafka, tmp_path / "models", PENSU_MODELS_AUTOSAVE_INTERVAL="3600")
    settings = load_settings(env)
    anomaly_topic = settings.reported_anomalies_kafka_topic
    data = workload(50)
    produce_keyed(kafka, settings.metrics_kafka_topic, {m: s[:30] for m, s in data.items()})
    with Group(env, tmp_path) as group:
        group.add("a")
        group.add("b")
        kafka.consume_all([anomaly_topic], expected=3 * 30 * METRIC_COUNT, timeout=300, idle=0.5)
        group.wait_settled(2)
        before = group.statuses()
        newcomer = group.add("c")
        group.wait_settled(3)
        produce_keyed(kafka, settings.metrics_kafka_topic, {m: s[30:] for m, s in data.items()})
        msgs = kafka.consume_all([anomaly_topic], expected=3 * 50 * METRIC_COUNT, timeout=300, idle=3.0)
        after = group.statuses()
        fresh, _loaded = fresh_and_checkpoint_loads(group)
        newcomer_loads = newcomer.metric("pensu_model_loads_total", 'source="checkpoint"')
        newcomer_fresh = newcomer.metric("pensu_model_loads_total", 'source="fresh"')
    assert sum(s["models"] for s in before.values() if s) == METRIC_COUNT, before
    assert after["c"] is not None and after["c"]["assigned"] >= 1 and after["c"]["models"] >= 1, after
    assert sum(s["models"] for s in after.values() if s) == METRIC_COUNT, after  # released by the old owners
    assert sum(s["assigned"] for s in after.values() if s) == 4
    assert fresh == METRIC_COUNT and newcomer_fresh == 0
    got = by_metric(outputs_of(msgs, anomaly_topic))
    moved = [m for m, outs in got.items() if outs[-1].instance == "c"]
    assert len(moved) == newcomer_loads == after["c"]["models"]  # every moved model came from its checkpoint
    for metric, samples in data.items():
        expected = expected_lines(expected_records(settings, metric, samples), anomaly_topic)
        assert lines(got[metric]) == expected, metric
    for metric in moved:
        runs = instance_runs(got[metric])
        assert len(runs) == 2 and runs[0] in ("a", "b") and runs[1] == "c", (metric, runs)
        # The newcomer's first output is the first sample it received: it continued at sample 31.
        first_c = next(i for i, o in enumerate(got[metric]) if o.instance == "c")
        assert first_c == 3 * 30, (metric, first_c)
