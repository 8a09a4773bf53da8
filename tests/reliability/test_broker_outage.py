"""Broker outages for real: the broker runs in a child process that is SIGSTOPped (it stops
answering, its state intact) and SIGCONTed — a Tansu broker (the suite's real-broker tier) when
it can start, else librdkafka's mock cluster hosted by a child Python process
(`PENSU_TEST_KAFKA_TIER=mock` forces the mock). The service starts with the broker unreachable, then
loses it mid-stream: it stays alive (/healthz 200), reports not ready (/readyz 503), waits without
a busy loop (CPU time measured), and resumes without losing or relearning anything."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pensu.checkpoint import LocalCheckpointStore
from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.reliability.faults import (
    BrokerProcess,
    cpu_seconds,
    http_get,
    prom_value,
    spawn_logged,
    stop_process,
    wait_until,
)
from tests.service_harness import expected_records, lines_for, service_env
from tests.support import series
from tests.tansu_broker import BrokerUnavailable, TansuBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

METRICS = [f"outage.m{i}" for i in range(4)]
N = 200
OUTAGE_SECONDS = 8.0
MAX_CPU_SHARE = 0.25  # of one core while waiting; a busy loop would use ~1.0


def status(port: int, path: str) -> int:
    """HTTP status of a health path (0 when the server does not answer)."""
    try:
        return http_get(port, path, timeout=2)[0]
    except OSError:
        return 0


def observe_outage(pid: int, port: int) -> float:
    """Over OUTAGE_SECONDS: alive and not ready at every probe; return the CPU share used."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < OUTAGE_SECONDS:
        assert status(port, "/healthz") == 200
        assert status(port, "/readyz") == 503
        time.sleep(0.5)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


@pytest.fixture
def outage_broker() -> Iterator[tuple[str, TansuBroker | BrokerProcess]]:
    """A broker of this test alone, in a process it can freeze: Tansu, else the mock in a child."""
    if os.environ.get("PENSU_TEST_KAFKA_TIER", "").strip().lower() != "mock":
        try:
            tansu = TansuBroker()
        except BrokerUnavailable as exc:
            if os.environ.get("PENSU_TEST_KAFKA_TIER", "").strip().lower() == "tansu":
                raise
            print(f"\nTansu unavailable ({exc}): outage on the mock cluster")
        else:
            with tansu:
                yield "tansu", tansu
            return
    with BrokerProcess() as mock:
        yield "mock", mock


def test_broker_unreachable_at_start_and_lost_mid_stream(
        tmp_path: Path, outage_broker: tuple[str, TansuBroker | BrokerProcess]) -> None:
    models = tmp_path / "models"
    samples = {m: [(ts, v + 3 * i) for ts, v in series(N)] for i, m in enumerate(METRICS)}

    def messages(lo: int, hi: int) -> list[tuple[bytes, bytes]]:
        return [(m.encode(), b"\n".join(lines_for(m, samples[m][i:i + 5]))) for i in range(lo, hi, 5)
                for m in METRICS]

    kind, broker = outage_broker
    kafka = KafkaCluster(broker.bootstrap_servers, kind)
    # Tansu's first group join takes about half the session timeout: keep it short.
    env = service_env(kafka, models, PENSU_MODELS_AUTOSAVE_INTERVAL="1", PENSU_KAFKA_SESSION_TIMEOUT_MS="6000",
                      PENSU_KAFKA_CONSUMER_OPT_HEARTBEAT_INTERVAL_MS="1000")
    settings = load_settings(env)
    port = int(env["PENSU_HTTP_PORT"])
    topic = settings.metrics_kafka_topic
    anomaly_topic = settings.reported_anomalies_kafka_topic
    kafka.produce(topic, messages(0, 50))
    broker.freeze()
    proc = spawn_logged(env, tmp_path / "service.log")
    try:
        wait_until(lambda: status(port, "/healthz") == 200, 60, "the health server")
        cpu_start_outage = observe_outage(proc.pid, port)
        broker.thaw()
        thawed = time.monotonic()
        wait_until(lambda: (prom_value(port, "pensu_samples_processed_total") or 0) >= 50 * len(METRICS),
                   120, "processing after the broker came up")
        recovered_start = time.monotonic() - thawed

        kafka.produce(topic, messages(50, N))
        wait_until(lambda: (prom_value(port, "pensu_samples_processed_total") or 0) >= 80 * len(METRICS),
                   60, "the second batch to start", interval=0.02)
        broker.freeze()  # mid-stream: outputs in flight, no acknowledgements
        wait_until(lambda: status(port, "/readyz") == 503, 30, "not-ready during the outage")
        assert proc.poll() is None
        cpu_mid_outage = observe_outage(proc.pid, port)
        broker.thaw()
        thawed = time.monotonic()
        ready_after = wait_until(lambda: status(port, "/readyz") == 200, 120, "ready after the return")
        wait_until(lambda: (prom_value(port, "pensu_samples_processed_total") or 0) >= N * len(METRICS),
                   120, "all samples processed")
        recovered_mid = time.monotonic() - thawed
        errors = prom_value(port, "pensu_kafka_delivery_errors_total")
    finally:
        code = stop_process(proc)
    log = (tmp_path / "service.log").read_text()
    assert code == 0, log[-3000:]
    got = kafka.consume_all([anomaly_topic], expected=3 * N * len(METRICS), timeout=60)
    assert cpu_start_outage < MAX_CPU_SHARE and cpu_mid_outage < MAX_CPU_SHARE, (cpu_start_outage, cpu_mid_outage)
    assert errors == 0  # outputs waited for the broker instead of failing
    allowed = {(r.key, r.value) for m in METRICS for r in expected_records(settings, m, samples[m])
               if r.topic == anomaly_topic}
    seen = {(m.key(), m.value()) for m in got}
    assert seen == allowed  # every sample's outputs, each the uninterrupted value
    store = LocalCheckpointStore(models)
    assert {m: store.load(m)[0].sample_count for m in METRICS} == {m: N for m in METRICS}
    print(f"\n{kind} broker unreachable at start: CPU {cpu_start_outage:.1%} of a core while waiting, processing "
          f"{recovered_start:.1f} s after the broker came up; lost mid-stream: CPU {cpu_mid_outage:.1%}, "
          f"ready {ready_after:.1f} s and caught up {recovered_mid:.1f} s after its return; "
          f"{len(got) - len(seen)} duplicate outputs")
