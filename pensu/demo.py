"""`pensu demo`: embedded Kafka, a Pensu service, the synthetic generator and a live report view.

Everything runs in one process on loopback. The generator first backfills a day of history
per series (so the models leave their probation quickly), then streams live samples with an
anomaly injected every few minutes of data; reports are printed as they arrive.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer

from pensu.generator import SyntheticMetrics
from pensu.kafka_io import EmbeddedKafka, produce_synthetic
from pensu.service import PensuService
from pensu.settings import load_settings

BACKFILL = 1500
LIVE_RATE = 5.0  # samples per second per series after the backfill


def _format_report(report: dict[str, object]) -> str:
    ts = datetime.fromtimestamp(float(report["timestamp"]), tz=timezone.utc).strftime("%Y-%m-%d %H:%M")  # type: ignore[arg-type]
    predicted = report.get("predicted_value")
    arrow = {1: "↑", -1: "↓"}.get(int(report.get("direction", 0)), "·")  # type: ignore[call-overload]
    pred_text = "   n/a" if predicted is None else f"{float(predicted):10.2f}"  # type: ignore[arg-type]
    if report.get("event") == "resolved":
        return (f"resolved  {ts}  {report['metric']:<34} after {report.get('episode_samples')} samples "
                f"(peak severity {float(report['severity']):.2f}, {report.get('reason')})")  # type: ignore[arg-type]
    return (f"ANOMALY {arrow} {ts}  {report['metric']:<34} value={float(report['value']):10.2f} "  # type: ignore[arg-type]
            f"predicted={pred_text} severity={float(report.get('severity', 0.0)):.2f} "  # type: ignore[arg-type]
            f"{report.get('reason', '')}")


def run_demo(duration: float = 0.0, models_dir: Path | None = None) -> int:
    """Run the demo for `duration` seconds (0: until Ctrl-C); returns an exit code."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory(prefix="pensu-demo-") as tmp:
        base = load_settings({})
        settings = base.model_copy(update={
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "models_dir": models_dir or Path(tmp),
            "ping_listen_host": "127.0.0.1", "ping_listen_port": 0,
            "http_host": "127.0.0.1", "http_port": 0,
            "models_autosave_interval": 60.0, "topics_report_interval": 0,
        })
        service = PensuService(settings)
        service.start()
        print(f"pensu demo: embedded Kafka at {kafka.bootstrap_servers}", flush=True)
        print(f"pensu demo: ping {service.health.ping_address}, metrics http://{service.health.http_address}/metrics",
              flush=True)
        print(f"pensu demo: backfilling {BACKFILL} samples for each of 5 series, then {LIVE_RATE:g} samples/s; "
              "reports appear below (Ctrl-C to stop)", flush=True)
        worker = threading.Thread(target=service.run, name="pensu-service", daemon=True)
        worker.start()
        generator = SyntheticMetrics(interval=60.0, start_time=time.time() - BACKFILL * 60.0, seed=7)
        feeder = threading.Thread(
            target=produce_synthetic, name="pensu-generator", daemon=True,
            args=(kafka.bootstrap_servers, settings.metrics_kafka_topic, generator, BACKFILL, LIVE_RATE, 0, stop))
        feeder.start()
        viewer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "pensu-demo-viewer",
                           "auto.offset.reset": "earliest"})
        viewer.subscribe([settings.anomalies_metrics_kafka_topic])
        started = last_status = time.monotonic()
        reports = 0
        try:
            while not stop.is_set() and (not duration or time.monotonic() - started < duration):
                message = viewer.poll(0.5)
                if message is not None and message.error() is None:
                    reports += json.loads(message.value()).get("event") != "resolved"
                    print(_format_report(json.loads(message.value())), flush=True)
                if time.monotonic() - last_status >= 10:
                    last_status = time.monotonic()
                    samples = service.metrics.samples_processed._value.get()  # noqa: SLF001
                    print(f"... {int(samples)} samples analysed, {len(service.models)} models, "
                          f"{reports} anomalies reported", flush=True)
        finally:
            stop.set()
            viewer.close()
            service.request_stop()
            worker.join(timeout=30)
            feeder.join(timeout=5)
    print(f"pensu demo: stopped after {reports} reported anomalies", file=sys.stderr)
    return 0
