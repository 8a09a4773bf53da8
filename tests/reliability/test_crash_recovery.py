"""SIGKILL of `python -m pensu run` in the middle of a stream, then a restart.

Asserts: every input sample has its outputs (at least once); every output ever emitted equals
what an uninterrupted analyzer emits for that sample (so no model learned a sample twice or
skipped one, and the restored models continued exactly from their checkpoints); the restarted
service loaded models from checkpoints and skipped replayed samples; the final checkpoints
count each sample once. Prints the recovery time for docs/reliability.md.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pensu.checkpoint import LocalCheckpointStore
from pensu.checkpoint_log import LOG_DIR, LogCheckpointStore
from pensu.errors import CheckpointError
from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.reliability.faults import http_get, prom_value, spawn_logged, stop_process, wait_until
from tests.service_harness import expected_records, lines_for, service_env
from tests.support import series

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

METRICS = [f"crash.m{i}" for i in range(6)]
N = 300


def checkpoint_counts(models: Path) -> dict[str, int]:
    """Sample count of each metric's checkpoint on disk (absent ones left out), either store."""
    for _ in range(5):
        log_store = (models / LOG_DIR).is_dir()
        store = LogCheckpointStore(models, read_only=True) if log_store else LocalCheckpointStore(models)
        try:
            loaded = {metric: store.load(metric) for metric in METRICS}
        except CheckpointError:
            if not log_store:
                raise
            continue  # the writer compacted a segment away since this view was opened
        return {metric: found[0].sample_count for metric, found in loaded.items() if found is not None}
    raise AssertionError("the checkpoint log kept changing under five reads")


# `log`: the same SIGKILL against the append-only store (a torn record at the end is cut off).
@pytest.mark.parametrize("store_kind", ["local", "log"])
def test_sigkill_mid_stream_then_restart(kafka: KafkaCluster, tmp_path: Path, store_kind: str) -> None:
    models = tmp_path / "models"
    # The killed member holds its partitions until its session times out (librdkafka default
    # 45 s, measured: restart ready after 45 s); a short session keeps the test quick.
    env = service_env(kafka, models, PENSU_MODELS_AUTOSAVE_INTERVAL="0.5",
                      PENSU_KAFKA_SESSION_TIMEOUT_MS="6000", PENSU_CHECKPOINT_STORE=store_kind)
    settings = load_settings(env)
    port = int(env["PENSU_HTTP_PORT"])
    samples = {m: [(ts, v + 7 * i) for ts, v in series(N)] for i, m in enumerate(METRICS)}
    def messages(lo: int, hi: int) -> list[tuple[bytes, bytes]]:
        return [(m.encode(), next(lines_for(m, samples[m][i:i + 1]))) for i in range(lo, hi) for m in METRICS]
    total, half = N * len(METRICS), N // 2
    topic = env["PENSU_METRICS_KAFKA_TOPIC"]
    kafka.produce(topic, messages(0, half))  # topic exists before the group joins

    first = spawn_logged(env, tmp_path / "first.log")
    try:
        # Every metric must be present: partitions are consumed unevenly, so "all present ones at
        # half" can hold while a metric's partition has not been read at all yet.
        wait_until(lambda: checkpoint_counts(models) == {m: half for m in METRICS}, 120,
                   "checkpoints of the first half")
        kafka.produce(topic, messages(half, N))
        wait_until(lambda: (prom_value(port, "pensu_samples_processed_total") or 0) >= total * 0.6, 60,
                   "the middle of the second half", interval=0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = prom_value(port, "pensu_samples_processed_total")  # None: the process is gone
    at_kill = checkpoint_counts(models)
    assert killed_at is None and all(half <= n <= N for n in at_kill.values()), at_kill
    assert sum(at_kill.values()) < total, at_kill  # killed mid-stream: some samples not checkpointed

    restarted = time.monotonic()
    second = spawn_logged(env, tmp_path / "second.log")
    try:
        ready_after = wait_until(lambda: _ready(port), 90, "readiness after restart", interval=0.05)
        anomaly_topic = settings.reported_anomalies_kafka_topic
        prediction_topic = settings.prediction_metrics_kafka_topic
        expected = {m: expected_records(settings, m, samples[m]) for m in METRICS}
        want = {topic: {(r.key, r.value) for m in METRICS for r in expected[m] if r.topic == topic}
                for topic in (anomaly_topic, prediction_topic)}
        got: list = []

        def complete() -> bool:
            got[:] = kafka.consume_all([anomaly_topic, prediction_topic],
                                       expected=sum(len(w) for w in want.values()), timeout=20, idle=0.5)
            seen = {(m.topic(), m.key(), m.value()) for m in got}
            return all((t, k, v) in seen for t, pairs in want.items() for k, v in pairs)
        wait_until(complete, 180, "outputs for every input sample", interval=0.5)
        caught_up_after = time.monotonic() - restarted
        loads = prom_value(port, "pensu_model_loads_total", 'source="checkpoint"')
        skipped = prom_value(port, "pensu_duplicate_samples_skipped_total")
    finally:
        code = stop_process(second)
    assert code == 0, (tmp_path / "second.log").read_text()[-3000:]
    # Every output ever emitted (first run, replays included) is the uninterrupted one.
    allowed = {(t, k, v) for t, pairs in want.items() for k, v in pairs}
    stray = [(m.topic(), m.key(), m.value()) for m in got if (m.topic(), m.key(), m.value()) not in allowed]
    assert not stray, stray[:5]
    duplicates = len(got) - len({(m.topic(), m.key(), m.value()) for m in got})
    assert loads == len(METRICS)  # every model resumed from its checkpoint
    assert checkpoint_counts(models) == {m: N for m in METRICS}  # each sample learned exactly once
    replays = sum(1 for m in got if m.topic() == anomaly_topic) // 3 - total

    # Committed offsets lost (new group): the whole topic replays; checkpoint offsets skip it all.
    third_env = dict(env, PENSU_KAFKA_CONSUMER_GROUP_ID=kafka.unique("lost-offsets"))
    third = spawn_logged(third_env, tmp_path / "third.log")
    try:
        wait_until(lambda: (prom_value(port, "pensu_duplicate_samples_skipped_total") or 0) >= total, 120,
                   "the replay of every sample to be skipped")
        relearned = prom_value(port, "pensu_samples_processed_total")
    finally:
        assert stop_process(third) == 0, (tmp_path / "third.log").read_text()[-3000:]
    assert relearned == 0 and checkpoint_counts(models) == {m: N for m in METRICS}
    print(f"\nSIGKILL after {sum(at_kill.values())} checkpointed samples of {total}; restart ready in "
          f"{ready_after:.1f} s, all outputs present {caught_up_after:.1f} s after restart; "
          f"{skipped:.0f} replayed samples skipped, {duplicates} duplicate outputs (at least once), "
          f"{replays} samples re-output")


def _ready(port: int) -> bool:
    try:
        return http_get(port, "/readyz", timeout=1)[0] == 200
    except OSError:
        return False
