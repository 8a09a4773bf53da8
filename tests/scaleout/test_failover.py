"""One of three instances stops (SIGTERM) or crashes (SIGKILL) mid-stream: its partitions move
and the survivors continue its metrics from their checkpoints."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.settings import Settings, load_settings
from tests.conftest import KafkaCluster
from tests.scaleout.cluster import (
    METRIC_COUNT,
    Group,
    by_metric,
    expected_lines,
    group_env,
    instance_runs,
    kafka_store_env,
    lines,
    outputs_of,
    produce_keyed,
    workload,
)
from tests.scaleout.cluster import (
    checkpoint_counts as stored_counts,
)
from tests.service_harness import expected_records, output_topics
from tests.support import INTERVAL, START_TS

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIRST, TOTAL = 30, 70


def resumed_lines(settings: Settings, metric: str, samples: list[tuple[float, float]], learned: int,
                  resume_at: int) -> list[tuple[str, float, float]]:
    """Anomaly lines of a model that learned samples[:learned] (its checkpoint) and then
    samples[resume_at:] (what the new owner consumed after the last committed offset)."""
    analyzer = MetricAnalyzer(metric, analyzer_config(settings))
    for ts, value in samples[:learned]:
        analyzer.process(ts, value)
    formatter = OutputFormatter(OutputTopics(*output_topics(settings)), settings.metric_names_template,
                                analyzer.thresholds, settings.instance_id)
    records = [r for ts, value in samples[resume_at:] for r in formatter.records(analyzer.process(ts, value))]
    return expected_lines(records, settings.reported_anomalies_kafka_topic)


def sample_index(timestamp: float) -> int:
    """Position of a workload timestamp in its series."""
    return round((timestamp - START_TS) / INTERVAL)


@pytest.mark.parametrize("store", ["local", "kafka"])
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_stopped_instance_hands_its_metrics_to_the_survivors(kafka: KafkaCluster, tmp_path: Path,
                                                             how: str, store: str) -> None:
    """`local`: one shared models directory; `kafka`: PENSU_CHECKPOINT_STORE=kafka and a separate
    directory per instance, so the state can only travel through the checkpoint topic."""
    models = tmp_path / "models"
    env = group_env(kafka, models, PENSU_MODELS_AUTOSAVE_INTERVAL="2",
                    **(kafka_store_env(kafka) if store == "kafka" else {}))
    settings = load_settings(env)
    anomaly_topic = settings.reported_anomalies_kafka_topic
    data = workload(TOTAL)
    produce_keyed(kafka, settings.metrics_kafka_topic, {m: s[:FIRST] for m, s in data.items()})

    def checkpoint_counts(metrics: list[str]) -> dict[str, int]:
        return stored_counts(models, metrics, env)
    with Group(env, tmp_path) as group:
        for name in ("a", "b", "c"):
            group.add(name)
        first = kafka.consume_all([anomaly_topic], expected=3 * FIRST * METRIC_COUNT, timeout=300, idle=0.5)
        group.wait_settled(3)
        owner = {m: outs[-1].instance for m, outs in by_metric(outputs_of(first, anomaly_topic)).items()}
        statuses = group.statuses()
        victim = group.instances[max(statuses, key=lambda n: statuses[n]["assigned"])]  # type: ignore[index]
        moved = sorted(m for m, name in owner.items() if name == victim.name)
        group.wait_until(lambda: min(checkpoint_counts(list(data)).values()) == FIRST, 60,
                         "phase-1 autosave")
        processed = victim.metric("pensu_samples_processed_total")
        victim_fresh = victim.metric("pensu_model_loads_total", 'source="fresh"')
        produce_keyed(kafka, settings.metrics_kafka_topic, {m: s[FIRST:] for m, s in data.items()}, 2)
        # Stop the victim in the middle of its share of the second phase.
        group.wait_until(lambda: victim.metric("pensu_samples_processed_total") >= processed + 300, 120,
                         "victim progress")
        if how == "sigkill":
            victim.stop(signal.SIGKILL)
            at_kill = checkpoint_counts(moved)  # nobody writes them until the group notices
        else:
            assert victim.stop(signal.SIGTERM) == 0, victim.log_tail()
        stopped_at = time.monotonic()
        group.wait_settled(2)
        msgs = kafka.consume_all([anomaly_topic], expected=3 * TOTAL * METRIC_COUNT, timeout=300, idle=3.0)
        survivors = group.statuses()
        loaded = sum(i.metric("pensu_model_loads_total", 'source="checkpoint"') for i in group.running())
        fresh = sum(i.metric("pensu_model_loads_total", 'source="fresh"') for i in group.running())
    final = checkpoint_counts(list(data))
    assert 0 < len(moved) < METRIC_COUNT
    got = by_metric(outputs_of(msgs, anomaly_topic))
    lost = replayed = 0
    for metric, samples in data.items():
        expected = expected_lines(expected_records(settings, metric, samples), anomaly_topic)
        outs = got[metric]
        if metric not in moved or how == "sigterm":
            # Clean handovers (and metrics that never moved): every sample exactly once, and the
            # outputs of one uninterrupted analyzer.
            assert lines(outs) == expected, metric
            assert final[metric] == TOTAL, metric
            if metric in moved:
                runs = instance_runs(outs)
                assert runs[0] == victim.name and len(runs) == 2, (metric, runs)
            continue
        # A crash: the victim's outputs are the uninterrupted ones up to where it died; the new
        # owner continues the victim's last checkpoint from the last committed offset. Samples
        # between the two are lost to learning (bounded by the autosave interval); samples
        # whose outputs the victim produced without committing are analysed again (a new epoch).
        runs = instance_runs(outs)
        assert runs[0] == victim.name and len(runs) == 2, (metric, runs)
        split = next(i for i, o in enumerate(outs) if o.instance != victim.name)
        assert lines(outs[:split]) == expected[:split], metric
        victim_samples = split // 3
        resume_at = sample_index(outs[split].timestamp)
        learned = at_kill[metric]
        assert FIRST <= learned <= resume_at <= victim_samples <= TOTAL, (metric, learned, resume_at, victim_samples)
        assert lines(outs[split:]) == resumed_lines(settings, metric, samples, learned, resume_at), metric
        assert final[metric] == learned + TOTAL - resume_at, metric
        lost += resume_at - learned
        replayed += victim_samples - resume_at
    assert sum(s["models"] for s in survivors.values() if s) == METRIC_COUNT, survivors
    # Every metric was created fresh exactly once in the whole group: the moved ones were loaded.
    assert victim_fresh + fresh == METRIC_COUNT and loaded >= len(moved)
    print(f"{how}: {len(moved)} metrics moved; {lost} samples not learned and {replayed} analysed "
          f"again after the crash; "
          f"outputs complete {time.monotonic() - stopped_at:.1f} s after the stop")
