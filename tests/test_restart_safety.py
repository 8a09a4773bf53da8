"""Restarts against new brokers and topic incarnations learn the new data (issue #11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pensu.checkpoint import LocalCheckpointStore
from pensu.kafka_io import EmbeddedKafka
from tests.conftest import KafkaCluster
from tests.service_harness import ServiceThread, carbon_by_metric, service_env
from tests.support import series
from tests.test_service import produce_lines

pytestmark = pytest.mark.kafka


def _metric_value(running: ServiceThread, name: str) -> float:
    return running.service.prom.get_sample_value(name) or 0.0


def test_restart_against_a_fresh_broker_learns_new_data(kafka: KafkaCluster, tmp_path: Path) -> None:
    """The same models dir, a brand-new cluster (offsets restart at 0), newer samples: all learned."""
    models = tmp_path / "models"
    samples = series(100)
    with EmbeddedKafka() as first_broker:
        first = KafkaCluster(first_broker.bootstrap_servers, "mock")
        env = service_env(first, models)
        topic, anomaly_topic = env["PENSU_METRICS_KAFKA_TOPIC"], env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]
        with ServiceThread(env):
            produce_lines(first, topic, {"web.rps": samples[:60]}, batch=5)
            first.consume_all([anomaly_topic], expected=3 * 60, timeout=90, idle=0.5)
    assert LocalCheckpointStore(models).load("web.rps")[0].sample_count == 60
    with EmbeddedKafka() as second_broker:
        second = KafkaCluster(second_broker.bootstrap_servers, "mock")
        env["PENSU_KAFKA_BOOTSTRAP_SERVERS"] = second.bootstrap_servers
        with ServiceThread(env) as running:
            # Offsets 0..7 on the new cluster: before #11 every one was skipped as a "replay".
            produce_lines(second, topic, {"web.rps": samples[60:]}, batch=5)
            msgs = second.consume_all([anomaly_topic], expected=3 * 40, timeout=90, idle=1.0)
            skipped = _metric_value(running, "pensu_duplicate_samples_skipped_total")
    got = carbon_by_metric(msgs, anomaly_topic)["web.rps"]
    assert len(got) == 3 * 40
    assert skipped == 0
    assert LocalCheckpointStore(models).load("web.rps")[0].sample_count == 100


def test_separate_consumer_and_producer_clusters(tmp_path: Path) -> None:
    """PENSU_KAFKA_CONSUMER_SERVER / PENSU_KAFKA_PRODUCER_SERVER: input from one cluster, outputs to the other."""
    with EmbeddedKafka() as inbound, EmbeddedKafka() as outbound:
        source, sink = KafkaCluster(inbound.bootstrap_servers, "mock"), KafkaCluster(outbound.bootstrap_servers, "mock")
        env = service_env(source, tmp_path / "models")
        del env["PENSU_KAFKA_BOOTSTRAP_SERVERS"]
        env["PENSU_KAFKA_CONSUMER_SERVER"] = source.bootstrap_servers
        env["PENSU_KAFKA_PRODUCER_SERVER"] = sink.bootstrap_servers
        with ServiceThread(env):
            produce_lines(source, env["PENSU_METRICS_KAFKA_TOPIC"], {"db.cpu": series(20)}, batch=5)
            msgs = sink.consume_all([env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]], expected=3 * 20, timeout=90,
                                    idle=0.5)
        assert len(carbon_by_metric(msgs, env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"])["db.cpu"]) == 3 * 20


def test_topic_deleted_and_recreated_learns_new_data(kafka: KafkaCluster, tmp_path: Path) -> None:
    """Same cluster, same topic name, a new incarnation (new topic id, offsets from 0)."""
    if kafka.kind == "mock":
        pytest.skip("librdkafka's mock cluster cannot delete topics (a real broker runs this test)")
    from confluent_kafka.admin import AdminClient

    models = tmp_path / "models"
    env = service_env(kafka, models)
    topic, anomaly_topic = env["PENSU_METRICS_KAFKA_TOPIC"], env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]
    kafka.create_topics(topic, partitions=1)
    samples = series(100)
    with ServiceThread(env):
        produce_lines(kafka, topic, {"q.len": samples[:60]}, batch=5)
        kafka.consume_all([anomaly_topic], expected=3 * 60, timeout=90, idle=0.5)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(timeout=40)
    kafka.create_topics(topic, partitions=1)
    with ServiceThread(env):
        produce_lines(kafka, topic, {"q.len": samples[60:]}, batch=5)
        msgs = kafka.consume_all([anomaly_topic], expected=3 * 100, timeout=90, idle=1.0)
    assert len(carbon_by_metric(msgs, anomaly_topic)["q.len"]) == 3 * 100
