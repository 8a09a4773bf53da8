"""End to end through the broker fixture: lines in → carbon outputs and reports out."""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from pensu.carbon import OUTPUT_KINDS, output_metric_name
from pensu.checkpoint import LocalCheckpointStore
from tests.conftest import KafkaCluster
from tests.service_harness import (
    ServiceThread,
    carbon_by_metric,
    carbon_of,
    expected_records,
    http_get,
    lines_for,
    output_topics,
    running_service,
    service_env,
    stop_service,
)
from tests.support import INTERVAL, START_TS, series

pytestmark = pytest.mark.kafka


def produce_lines(kafka: KafkaCluster, topic: str, per_metric: dict[str, list[tuple[float, float]]],
                  batch: int = 1) -> int:
    """Produce each metric's lines keyed by name, `batch` lines per message, interleaved."""
    messages = []
    for metric, samples in per_metric.items():
        lines = list(lines_for(metric, samples))
        for i in range(0, len(lines), batch):
            messages.append((metric.encode(), b"\n".join(lines[i:i + batch])))
    kafka.produce(topic, messages)
    return sum(len(s) for s in per_metric.values())


def test_spike_produces_all_seven_outputs_and_a_report(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = service_env(kafka, tmp_path / "models")
    samples = series(200) + [(START_TS + 200 * INTERVAL, 500.0)]
    with ServiceThread(env) as running:
        settings = running.settings
        # What an uninterrupted analyzer with the same settings emits, record for record.
        expected = expected_records(settings, "web.latency", samples)
        produce_lines(kafka, settings.metrics_kafka_topic, {"web.latency": samples}, batch=25)
        msgs = kafka.consume_all(output_topics(settings), expected=len(expected))
    anomaly_topic, prediction_topic, report_topic = output_topics(settings)
    counts = Counter(m.topic() for m in msgs)
    # 3 anomaly lines per sample; 4 prediction lines (value, confidence, lower, upper) per sample
    # once the 30-sample warm-up ends.
    assert counts[anomaly_topic] == 3 * 201 and counts[prediction_topic] == 4 * (201 - 29)
    assert counts == Counter(r.topic for r in expected)
    assert all(m.key() == b"web.latency" for m in msgs)
    names = {line[0] for topic in (anomaly_topic, prediction_topic)
             for line in carbon_by_metric(msgs, topic)["web.latency"]}
    assert names == {output_metric_name(settings.metric_names_template, k, "web.latency") for k in OUTPUT_KINDS}
    direction_name = output_metric_name(settings.metric_names_template, "anomaly_direction", "web.latency")
    anomaly_lines = carbon_by_metric(msgs, anomaly_topic)["web.latency"]
    assert all(v in (-1.0, 0.0, 1.0) for n, v, _ in anomaly_lines if n == direction_name)
    assert all(0.0 <= v <= 1.0 for n, v, _ in anomaly_lines if n != direction_name)
    reports = [json.loads(m.value()) for m in msgs if m.topic() == report_topic]
    spike = [r for r in reports if r["timestamp"] == START_TS + 200 * INTERVAL]
    assert len(spike) == 1, reports
    report = spike[0]
    assert report["metric"] == "web.latency" and report["value"] == 500.0 and report["direction"] == 1
    assert report["anomaly_score"] >= settings.anomaly_score_threshold
    assert report["anomaly_likelihood"] >= settings.anomaly_likelihood_threshold
    assert report["model_age"] == 201 and report["pensu_instance"] == "test"
    assert isinstance(report["predicted_value"], float) and isinstance(report["thresholds"], dict)
    assert anomaly_lines == carbon_of(expected, anomaly_topic)
    assert carbon_by_metric(msgs, prediction_topic)["web.latency"] == carbon_of(expected, prediction_topic)


def test_rejections_are_counted_dead_lettered_and_allow_list_applies(kafka: KafkaCluster, tmp_path: Path) -> None:
    base = kafka.unique("dlq")
    env = service_env(kafka, tmp_path / "models", PENSU_DEAD_LETTER_KAFKA_TOPIC=base,
                      PENSU_ALLOWED_TO_WORK_ON_METRICS=r"prod\.")
    payload = b"\n".join([b"prod.ok 1 1600000000", b"staging.ignored 1 1600000000", b"too many fields here x",
                          b"prod.bad nan 1600000000", b"prod.ok 2 1599999000"])
    with ServiceThread(env) as running:
        kafka.produce(running.settings.metrics_kafka_topic, [(None, payload)])
        dead = kafka.consume_all([base], expected=3, timeout=60)
        outputs = kafka.consume_all(output_topics(running.settings), expected=3, timeout=30)
        prom = running.service.prom
    assert sorted(dict(m.headers())["pensu-reason"] for m in dead) == [b"arity", b"out_of_order",
                                                                       b"value_not_finite"]
    assert {m.value() for m in dead} >= {b"too many fields here x"}
    for reason, n in (("arity", 1), ("value_not_finite", 1), ("out_of_order", 1)):
        assert prom.get_sample_value("pensu_rejected_lines_total", {"reason": reason}) == n
    assert {m.key() for m in outputs} == {b"prod.ok"}


def test_cap_of_three_models_serves_ten_metrics_exactly(kafka: KafkaCluster, tmp_path: Path) -> None:
    models = tmp_path / "models"
    env = service_env(kafka, models, PENSU_MAX_ALLOWED_MODELS="3")
    per_metric = {f"svc{i}.requests": [(ts, v + i) for ts, v in series(60)] for i in range(10)}
    with ServiceThread(env) as running:
        settings = running.settings
        total = produce_lines(kafka, settings.metrics_kafka_topic, per_metric, batch=1)
        msgs = kafka.consume_all([settings.reported_anomalies_kafka_topic], expected=3 * total, timeout=120)
        resident = len(running.service.models)
    got = carbon_by_metric(msgs, settings.reported_anomalies_kafka_topic)
    assert set(got) == set(per_metric)
    for metric, samples in per_metric.items():
        assert got[metric] == carbon_of(expected_records(settings, metric, samples),
                                        settings.reported_anomalies_kafka_topic), metric
    assert resident <= 3
    assert len(list(LocalCheckpointStore(models).entries())) == 10  # all saved on shutdown or eviction


def test_restart_resumes_from_checkpoints(kafka: KafkaCluster, tmp_path: Path) -> None:
    models = tmp_path / "models"
    env = service_env(kafka, models)
    samples = series(120)
    topic = env["PENSU_METRICS_KAFKA_TOPIC"]
    anomaly_topic = env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]
    with ServiceThread(env) as first:
        produce_lines(kafka, topic, {"db.qps": samples[:70]}, batch=10)
        kafka.consume_all([anomaly_topic], expected=3 * 70, timeout=60, idle=0.5)
    store = LocalCheckpointStore(models)
    header, _ = store.load("db.qps")
    assert header.sample_count == 70
    # A crash mid-write leaves a temp file; an old one is removed at start, a young one kept.
    stale, young = models / "00" / ".tmp-crashed", models / "00" / ".tmp-writing"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    young.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    with ServiceThread(env) as second:
        assert not stale.exists() and young.exists()
        produce_lines(kafka, topic, {"db.qps": samples[70:]}, batch=10)
        msgs = kafka.consume_all([anomaly_topic], expected=3 * 120, timeout=60)
        settings = second.settings
        lag = second.service.metrics.consumer_lag
    got = carbon_by_metric(msgs, anomaly_topic)["db.qps"]
    expected = carbon_of(expected_records(settings, "db.qps", samples), anomaly_topic)
    assert got == expected  # nothing learned twice, nothing lost, the restored model continued exactly
    assert first.exit_code == 0 and second.exit_code == 0
    # Every partition was handed over at shutdown: no lag series of a partition it no longer owns.
    assert [s for m in lag.collect() for s in m.samples] == []


def _ping(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line)
        return sock.recv(1024)


def test_health_endpoints_answer(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = service_env(kafka, tmp_path / "models")
    ping_port, http_port = int(env["PENSU_PING_LISTEN_PORT"]), int(env["PENSU_HTTP_PORT"])
    with ServiceThread(env) as running:
        assert _ping(ping_port, b"ping\n").strip() == b"pong"
        assert http_get(http_port, "/healthz")[0] == 200
        # (the mock cluster creates the input topic on first produce; only then can it be assigned)
        produce_lines(kafka, running.settings.metrics_kafka_topic, {"a.b": series(5)})
        running.wait_ready()
        kafka.consume_all([running.settings.reported_anomalies_kafka_topic], expected=15, timeout=60, idle=0.5)
        status, body = http_get(http_port, "/readyz")
        assert status == 200, body
        status, metrics = http_get(http_port, "/metrics")
        assert status == 200
        assert "pensu_samples_processed_total 5.0" in metrics
        assert "pensu_model_step_seconds_bucket" in metrics and "pensu_resident_models 1.0" in metrics
        running.stop()
    with pytest.raises(OSError):  # stopping closes the health ports
        _ping(ping_port, b"ping\n")


@pytest.mark.slow
def test_sigterm_saves_state_and_exits_zero(kafka: KafkaCluster, tmp_path: Path) -> None:
    models = tmp_path / "models"
    env = service_env(kafka, models, PENSU_MODELS_AUTOSAVE_INTERVAL="3600")
    with running_service(env) as proc:
        produce_lines(kafka, env["PENSU_METRICS_KAFKA_TOPIC"], {"x.y": series(40)}, batch=10)
        kafka.consume_all([env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]], expected=120, timeout=90, idle=0.5)
        stop_service(proc)
    loaded = LocalCheckpointStore(models).load("x.y")
    assert loaded is not None and loaded[0].sample_count == 40


def test_replay_reports_exactly_what_the_service_sends(kafka: KafkaCluster, tmp_path: Path) -> None:
    """`pensu replay` under the service's environment marks `reported` on exactly the samples the
    service sent an `opened` report for, and `resolved` where the service resolved the episode."""
    from pensu.replay import run_replay

    env = service_env(kafka, tmp_path / "models", PENSU_EPISODE_QUIET_SAMPLES="5")
    samples = series(500)
    samples[300] = (samples[300][0], 1000.0)  # a spike on the learned series
    samples[420] = (samples[420][0], -1000.0)  # a dip
    with ServiceThread(env) as running:
        settings = running.settings
        expected = expected_records(settings, "web.latency", samples)
        produce_lines(kafka, settings.metrics_kafka_topic, {"web.latency": samples}, batch=50)
        msgs = kafka.consume_all(output_topics(settings), expected=len(expected))
    reports = [json.loads(m.value()) for m in msgs if m.topic() == settings.anomalies_metrics_kafka_topic]
    assert all(m.key() == b"web.latency" for m in msgs if m.topic() == settings.anomalies_metrics_kafka_topic)
    sent = [(r["timestamp"], r["event"], r["episode_id"]) for r in reports]
    assert (samples[300][0], "opened", f"web.latency@{int(samples[300][0])}") in sent
    assert (samples[420][0], "opened", f"web.latency@{int(samples[420][0])}") in sent
    opened = {r["episode_id"] for r in reports if r["event"] == "opened"}
    assert opened <= {r["episode_id"] for r in reports if r["event"] == "resolved"} | {reports[-1]["episode_id"]}

    csv_in, csv_out = tmp_path / "in.csv", tmp_path / "out.csv"
    csv_in.write_text("timestamp,value\n" + "".join(f"{int(ts)},{v!r}\n" for ts, v in samples))
    assert run_replay(csv_in, csv_out, metric="web.latency", env=env) == 0
    with csv_out.open() as fh:
        rows = list(csv.DictReader(fh))
    replayed = [(float(r["timestamp"]), r["event"], f"web.latency@{r['timestamp']}") for r in rows if r["event"]]
    # Record for record: the same samples, the same events, in the same order (episode ids name
    # the opening sample, so the resolved records' ids are compared through the service's).
    assert [(ts, ev) for ts, ev, _ in sent] == [(ts, ev) for ts, ev, _ in replayed]
    assert [s[2] for s in sent if s[1] == "opened"] == [r[2] for r in replayed if r[1] == "opened"]
    assert [float(r["timestamp"]) for r in rows if r["reported"] == "1"] == \
        [r["timestamp"] for r in reports if r["event"] == "opened"]
