"""Run a real `PensuService` against the test cluster (in a thread or a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.carbon import parse_line
from pensu.outputs import OutputFormatter, OutputRecord, OutputTopics
from pensu.service import PensuService
from pensu.settings import Settings, load_settings
from tests.conftest import KafkaCluster, free_port

REPO = Path(__file__).resolve().parents[1]


def service_env(kafka: KafkaCluster, models_dir: Path, **extra: str) -> dict[str, str]:
    """PENSU_* variables for one test service: unique topics and group, fast small models."""
    base = kafka.unique("t")
    env = {
        "PENSU_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "PENSU_KAFKA_CONSUMER_GROUP_ID": f"{base}.group",
        "PENSU_METRICS_KAFKA_TOPIC": f"{base}.metrics",
        "PENSU_ANOMALY_SCORES_KAFKA_TOPIC": f"{base}.anomaly_metrics",
        "PENSU_PREDICTION_METRICS_KAFKA_TOPIC": f"{base}.predictions",
        "PENSU_ANOMALY_REPORTS_KAFKA_TOPIC": f"{base}.anomalies",
        "PENSU_TOPICS_KAFKA_TOPIC": f"{base}.topics",
        "PENSU_TOPICS_REPORT_INTERVAL": "0",
        "PENSU_MODELS_DIR": str(models_dir),
        "PENSU_PING_LISTEN_HOST": "127.0.0.1",
        "PENSU_PING_LISTEN_PORT": str(free_port()),
        "PENSU_HTTP_HOST": "127.0.0.1",
        "PENSU_HTTP_PORT": str(free_port()),
        "PENSU_ANOMALY_MODEL_PRESET": "small",
        "PENSU_PREDICTION_MODEL_PRESET": "small",
        "PENSU_WARMUP_SAMPLES": "30",
        "PENSU_INSTANCE_ID": "test",
        "PENSU_KAFKA_CONSUMER_OPT_TOPIC_METADATA_REFRESH_INTERVAL_MS": "500",
    }
    env.update(extra)
    return env


def output_topics(settings: Settings) -> list[str]:
    """The three output topics of a service."""
    return [settings.reported_anomalies_kafka_topic, settings.prediction_metrics_kafka_topic,
            settings.anomalies_metrics_kafka_topic]


class ServiceThread:
    """A `PensuService` running its loop in a background thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.settings = load_settings(env)
        self.service = PensuService(self.settings)
        self.thread = threading.Thread(target=self._run, name="pensu-service", daemon=True)
        self.exit_code: int | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.exit_code = self.service.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the test through .error
            self.error = exc

    def __enter__(self) -> ServiceThread:
        self.service.start()
        self.thread.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the service reports ready (partitions assigned)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.service.status().ready:
                return
            if self.error is not None:
                raise self.error
            time.sleep(0.1)
        raise AssertionError(f"service not ready after {timeout}s: {self.service.status()}")

    def stop(self, timeout: float = 60.0) -> None:
        """Request a clean stop and wait for the loop to exit."""
        self.service.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "service loop did not stop"
        if self.error is not None:
            raise self.error

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()


def expected_records(settings: Settings, metric: str, samples: list[tuple[float, float]]) -> list[OutputRecord]:
    """What an uninterrupted analyzer built from `settings` emits for `samples` of `metric`."""
    analyzer = MetricAnalyzer(metric, analyzer_config(settings))
    formatter = OutputFormatter(OutputTopics(*output_topics(settings)), settings.metric_names_template,
                                analyzer.thresholds, settings.instance_id)
    out: list[OutputRecord] = []
    for ts, value in samples:
        out.extend(formatter.records(analyzer.process(ts, value)))
    return out


def carbon_by_metric(messages: list, topic: str) -> dict[str, list[tuple[str, float, float]]]:
    """Group consumed carbon lines of `topic` by message key, in consumption order."""
    grouped: dict[str, list[tuple[str, float, float]]] = {}
    for msg in messages:
        if msg.topic() != topic:
            continue
        sample = parse_line(msg.value().rstrip(b"\n"))
        grouped.setdefault(msg.key().decode(), []).append((sample.metric, sample.value, sample.timestamp))
    return grouped


def carbon_of(records: list[OutputRecord], topic: str) -> list[tuple[str, float, float]]:
    """Parsed carbon lines of `records` on `topic`, in order."""
    out = []
    for r in records:
        if r.topic == topic:
            s = parse_line(r.value.rstrip(b"\n"))
            out.append((s.metric, s.value, s.timestamp))
    return out


def spawn_service(env: dict[str, str], *args: str) -> subprocess.Popen:
    """Start `pensu run` (or other args) as a separate process with `env` added."""
    full = dict(os.environ)
    full.update(env)
    full.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen([sys.executable, "-m", "pensu", *(args or ("run",))], env=full, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@contextmanager
def running_service(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen]:
    """`spawn_service`, killed on the way out if the test did not stop it (a failed assertion)."""
    proc = spawn_service(env, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_service(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """SIGTERM a spawned service, assert it exits 0, and return its output."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def lines_for(metric: str, samples: list[tuple[float, float]]) -> Iterator[bytes]:
    """Carbon lines for samples of one metric."""
    for ts, value in samples:
        yield f"{metric} {value!r} {int(ts)}".encode()


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:<port><path> (HTTP errors included; OSError if no answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
