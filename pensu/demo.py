"""`pensu demo`: embedded Kafka, a Pensu service, the synthetic generator and a live report view.

Everything runs in one process on loopback. The generator first backfills a day of history
per series (so the models leave their probation quickly), then streams live samples with an
anomaly injected every few minutes of data; reports are printed as they arrive, each marked
as matching an injected anomaly or not, and the run ends with its own precision and recall.

The models directory persists between runs (default `.pensu-demo-models/`). Each run has a new
embedded broker, so the generator continues after the newest sample those models have learned:
older samples could not be learned again (the order check refuses them).
"""

from __future__ import annotations

import json
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer

from pensu.checkpoint import LocalCheckpointStore
from pensu.errors import CheckpointError
from pensu.generator import Anomaly, SyntheticMetrics
from pensu.kafka_io import EmbeddedKafka, produce_synthetic
from pensu.service import PensuService
from pensu.settings import load_settings
from pensu.telemetry import librdkafka_logger

BACKFILL = 1500
LIVE_RATE = 5.0  # samples per second per series after the backfill
INTERVAL = 60.0
# A report up to this many samples after an injected anomaly ends counts as detecting it
# (level shifts and noise bursts are often reported some samples in).
MATCH_WINDOW = 30


@dataclass
class ReportJudge:
    """Marks reports as matching an injected anomaly or not; precision and recall of a run."""

    generator: SyntheticMetrics
    window: int = MATCH_WINDOW
    reports: int = 0
    true_reports: int = 0
    detected: set[tuple[str, int]] = field(default_factory=set)

    def judge(self, metric: str, timestamp: float) -> Anomaly | None:
        """Count one report; the injected anomaly it matches, or None (a false report)."""
        self.reports += 1
        pos = self.generator.series_position(metric)
        index = self.generator.index_at(timestamp)
        if pos is not None:
            for back in range(self.window + 1):
                anomaly = self.generator.anomaly_at(index - back, pos)
                if anomaly is not None and anomaly.start <= index <= anomaly.end + self.window:
                    self.true_reports += 1
                    self.detected.add((anomaly.series, anomaly.start))
                    return anomaly
        return None

    def summary(self, last_timestamp: float | None) -> tuple[float | None, float | None, int, int]:
        """(precision, recall, detected, injected) over anomalies whose window the run has seen."""
        precision = self.true_reports / self.reports if self.reports else None
        if last_timestamp is None:
            return precision, None, 0, 0
        seen_until = self.generator.index_at(last_timestamp) - self.window
        injected = [a for a in self.generator.injected(seen_until + 1) if a.end <= seen_until]
        found = sum((a.series, a.start) in self.detected for a in injected)
        recall = found / len(injected) if injected else None
        return precision, recall, found, len(injected)


def _clock_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _format_report(report: dict[str, object], match: Anomaly | None, generator: SyntheticMetrics) -> str:
    predicted = report.get("predicted_value")
    arrow = {1: "↑", -1: "↓"}.get(int(report.get("direction", 0)), "·")  # type: ignore[call-overload]
    pred_text = "   n/a" if predicted is None else f"{float(predicted):10.2f}"  # type: ignore[arg-type]
    ts = _clock_text(float(report["timestamp"]))  # type: ignore[arg-type]
    if report.get("event") == "resolved":
        return (f"resolved  {ts}  {report['metric']:<34} after {report.get('episode_samples')} samples "
                f"(peak severity {float(report['severity']):.2f}, {report.get('reason')})")  # type: ignore[arg-type]
    verdict = ("✓ injected " + match.kind + " at " + _clock_text(generator.timestamp(match.start))
               if match is not None else "✗ no injected anomaly")
    return (f"ANOMALY {arrow} {ts}  {report['metric']:<34} value={float(report['value']):10.2f} "  # type: ignore[arg-type]
            f"predicted={pred_text} severity={float(report.get('severity', 0.0)):.2f} "  # type: ignore[arg-type]
            f"{report.get('reason', '')}  {verdict}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def last_learned_timestamp(models_dir: Path, generator: SyntheticMetrics) -> float | None:
    """The newest sample timestamp the demo series' checkpoints in `models_dir` hold, if any."""
    store = LocalCheckpointStore(models_dir)
    newest = None
    for spec in generator.series:
        try:
            loaded = store.load(spec.name)
        except (CheckpointError, OSError):
            continue  # the service quarantines it and starts that metric fresh
        if loaded is not None and loaded[0].last_timestamp is not None:
            newest = max(newest or loaded[0].last_timestamp, loaded[0].last_timestamp)
    return newest


def _samples(service: PensuService) -> int:
    return int(service.prom.get_sample_value("pensu_samples_processed_total") or 0)


def _newest_timestamp(service: PensuService) -> float | None:
    """The newest sample any resident model has learned (read while the service thread runs)."""
    for _ in range(10):
        try:
            stamps = [a.last_timestamp for _, a in list(service.models.items()) if a.last_timestamp is not None]
        except RuntimeError:  # the registry changed while we listed it; try again
            continue
        return max(stamps) if stamps else None
    return None



def run_demo(duration: float = 0.0, models_dir: Path | None = None) -> int:
    """Run the demo for `duration` seconds (0: until Ctrl-C); returns an exit code."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory(prefix="pensu-demo-") as tmp:
        directory = models_dir or Path(tmp)
        start_time = time.time() - BACKFILL * INTERVAL
        learned = last_learned_timestamp(directory, SyntheticMetrics(interval=INTERVAL, seed=7))
        if learned is not None and learned + INTERVAL > start_time:
            start_time = learned + INTERVAL
            print(f"pensu demo: models in {directory} have learned up to {_clock_text(learned)}; "
                  f"new samples continue from there", flush=True)
        generator = SyntheticMetrics(interval=INTERVAL, start_time=start_time, seed=7)
        judge = ReportJudge(generator)
        ping_port, http_port = _free_port(), _free_port()
        base = load_settings({})
        settings = base.model_copy(update={
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "models_dir": directory,
            "ping_listen_host": "127.0.0.1", "ping_listen_port": ping_port,
            "http_host": "127.0.0.1", "http_port": http_port,
            "models_autosave_interval": 60.0, "topics_report_interval": 0,
        })
        service = PensuService(settings)
        service.start()
        print(f"pensu demo: embedded Kafka at {kafka.bootstrap_servers} (topic {settings.metrics_kafka_topic!r})",
              flush=True)
        print(f"pensu demo: ping  curl http://127.0.0.1:{ping_port}/ping   (or: echo ping | nc 127.0.0.1 {ping_port})",
              flush=True)
        print(f"pensu demo: metrics http://127.0.0.1:{http_port}/metrics", flush=True)
        print(f"pensu demo: backfilling {BACKFILL} samples for each of {len(generator.series)} series, then "
              f"{LIVE_RATE:g} samples/s; an anomaly is injected every {generator.anomaly_every} samples, taking "
              "turns across series; reports appear below (Ctrl-C to stop)", flush=True)
        print("pensu demo: compiling the HTM models (numba; about a minute the first time, cached after)...",
              flush=True)
        worker = threading.Thread(target=service.run, name="pensu-service", daemon=True)
        worker.start()
        feeder = threading.Thread(
            target=produce_synthetic, name="pensu-generator", daemon=True,
            args=(kafka.bootstrap_servers, settings.metrics_kafka_topic, generator, BACKFILL, LIVE_RATE, 0, stop))
        feeder.start()
        viewer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "pensu-demo-viewer",
                           "auto.offset.reset": "earliest", "logger": librdkafka_logger()})
        viewer.subscribe([settings.anomalies_metrics_kafka_topic])
        started = last_status = time.monotonic()
        compiled = False
        try:
            while not stop.is_set() and (not duration or time.monotonic() - started < duration):
                message = viewer.poll(0.5)
                payload = message.value() if message is not None and message.error() is None else None
                if payload is not None:
                    report = json.loads(payload)
                    match = None
                    if report.get("event") != "resolved":  # a resolution closes a report already judged
                        match = judge.judge(str(report["metric"]), float(report["timestamp"]))
                    print(_format_report(report, match, generator), flush=True)
                if not compiled and _samples(service) > 0:
                    compiled = True
                    print(f"pensu demo: models compiled after {time.monotonic() - started:.0f} s; analysing",
                          flush=True)
                if time.monotonic() - last_status >= 10:
                    last_status = time.monotonic()
                    print(f"... {_samples(service)} samples analysed, {len(service.models)} models, "
                          f"{judge.reports} anomalies reported ({judge.true_reports} matching an injected one)",
                          flush=True)
        finally:
            newest = _newest_timestamp(service)
            stop.set()
            viewer.close()
            service.request_stop()
            worker.join(timeout=30)
            feeder.join(timeout=5)
    precision, recall, found, injected = judge.summary(newest)
    samples = _samples(service)
    p_text = "n/a" if precision is None else f"{precision:.2f}"
    r_text = "n/a" if recall is None else f"{recall:.2f} ({found} of {injected} injected anomalies)"
    print(f"pensu demo: stopped after {samples} samples analysed and {judge.reports} reports "
          f"({judge.true_reports} matching an injected anomaly); precision {p_text}, recall {r_text}", flush=True)
    return 0
