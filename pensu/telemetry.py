"""Prometheus metrics of one Pensu service instance, and a rate-limited logger for noisy events."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pensu import __version__

# Model steps take tens of microseconds to a few milliseconds; 1 s would already be pathological.
STEP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServiceMetrics:
    """Every Prometheus metric of one service instance, registered on its own registry."""

    def __init__(self, registry: CollectorRegistry, version: str = __version__) -> None:
        self.registry = registry
        r = registry
        # Throughput
        self.samples_processed = Counter(
            "pensu_samples_processed", "Samples fed to a model.", registry=r)
        self.rejected_lines = Counter(
            "pensu_rejected_lines", "Input lines rejected, by reason.", ["reason"], registry=r)
        self.duplicate_samples_skipped = Counter(
            "pensu_duplicate_samples_skipped",
            "Replayed samples at or before a model's checkpointed offset, not learned again.", registry=r)
        self.over_quota = Counter(
            "pensu_over_quota", "Models swapped out because PENSU_MAX_ALLOWED_MODELS were resident (nothing is "
                                "refused; the same events as pensu_model_evictions, kept for dashboards).",
            registry=r)
        self.reports_emitted = Counter(
            "pensu_reports_emitted", "Anomaly reports emitted.", registry=r)
        self.outputs_produced = Counter(
            "pensu_outputs_produced", "Output messages handed to the producer, by topic.", ["topic"], registry=r)
        self.model_step_seconds = Histogram(
            "pensu_model_step_seconds", "Wall time of one analyzer step.", buckets=STEP_BUCKETS, registry=r)
        # Model residency
        self.resident_models = Gauge(
            "pensu_resident_models", "Analyzers currently held in memory.", registry=r)
        self.tracked_metrics = Gauge(
            "pensu_tracked_metrics", "Distinct metrics this instance knows (resident or checkpointed).",
            registry=r)
        self.model_evictions = Counter(
            "pensu_model_evictions", "Analyzers checkpointed and dropped from memory.", registry=r)
        self.model_loads = Counter(
            "pensu_model_loads", "Analyzers brought into memory, by source (checkpoint|fresh).", ["source"],
            registry=r)
        # Checkpoints
        self.checkpoint_saves = Counter(
            "pensu_checkpoint_saves", "Checkpoints written.", registry=r)
        self.checkpoint_failures = Counter(
            "pensu_checkpoint_failures", "Checkpoint operations that failed, by operation (save|load).",
            ["operation"], registry=r)
        self.checkpoints_quarantined = Counter(
            "pensu_checkpoints_quarantined", "Corrupt checkpoints moved to quarantine.", registry=r)
        # Kafka
        self.consumer_lag = Gauge(
            "pensu_consumer_lag", "Messages between the committed/consumed position and the high watermark.",
            ["topic", "partition"], registry=r)
        self.kafka_delivery_errors = Counter(
            "pensu_kafka_delivery_errors", "Produced messages whose delivery failed.", registry=r)
        self.kafka_errors = Counter(
            "pensu_kafka_errors", "Errors reported by the Kafka client, by error code name.", ["code"], registry=r)
        # Service
        self.ready = Gauge(
            "pensu_ready", "1 when the instance is ready to serve (assigned and consuming), else 0.", registry=r)
        self.build_info = Gauge(
            "pensu_build_info", "Always 1; the version label names the running build.", ["version"], registry=r)
        self.build_info.labels(version=version).set(1)
        # Known label values start at zero so dashboards and rate() see them before the first event.
        for source in ("checkpoint", "fresh"):
            self.model_loads.labels(source=source)
        for operation in ("save", "load"):
            self.checkpoint_failures.labels(operation=operation)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition this instance no longer owns."""
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass  # never reported: nothing to drop


class RateLimitedLog:
    """Emit a log record at most once per interval; the next emitted one says how many were dropped."""

    def __init__(self, logger: logging.Logger, min_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: float | None = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` unless one was emitted less than `min_interval_s` ago; return whether it was."""
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.min_interval_s:
                self._suppressed += 1
                return False
            self._last = now
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            self.logger.log(level, msg + " (%d similar messages suppressed)", *args, suppressed)
        else:
            self.logger.log(level, msg, *args)
        return True


LIBRDKAFKA_LOG_INTERVAL_S = 30.0  # per facility (FAIL, REQTMOUT, ...): one line, then a count


class RateLimitFilter(logging.Filter):
    """Lets one record per key through every `min_interval_s`; the next one says how many were dropped.

    The key is the record's first argument when it has one (librdkafka's facility, e.g. FAIL),
    else its message template, so one noisy kind of line cannot hide the others.
    """

    def __init__(self, min_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """False for records inside their key's quiet interval."""
        args = record.args if isinstance(record.args, tuple) else ()
        key = str(args[0]) if args else str(record.msg)
        with self._lock:
            now = self.clock()
            last = self._last.get(key)
            if last is not None and now - last < self.min_interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.msg = f"{record.msg} (%d similar messages suppressed)"
            record.args = (*args, suppressed)
        return True


def librdkafka_logger(name: str = "pensu.kafka.librdkafka",
                      min_interval_s: float = LIBRDKAFKA_LOG_INTERVAL_S) -> logging.Logger:
    """The logger handed to librdkafka clients (`logger` config key): rate-limited per facility."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
        logger.addFilter(RateLimitFilter(min_interval_s))
    return logger
