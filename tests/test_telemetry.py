"""ServiceMetrics exposition and RateLimitedLog with a fake clock."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pensu import __version__
from pensu.telemetry import RateLimitedLog, ServiceMetrics

REQUIRED = [
    "pensu_samples_processed_total", "pensu_rejected_lines_total", "pensu_reports_emitted_total",
    "pensu_model_step_seconds_bucket", "pensu_resident_models", "pensu_model_evictions_total",
    "pensu_model_loads_total", "pensu_checkpoint_saves_total", "pensu_checkpoint_failures_total",
    "pensu_checkpoints_quarantined_total", "pensu_consumer_lag", "pensu_kafka_delivery_errors_total",
    "pensu_kafka_errors_total", "pensu_outputs_produced_total", "pensu_ready", "pensu_tracked_metrics",
    "pensu_over_quota_total", "pensu_duplicate_samples_skipped_total", "pensu_build_info",
]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exercise_labelled(m: ServiceMetrics) -> None:
    m.rejected_lines.labels(reason="bad_value").inc()
    m.consumer_lag.labels(topic="metrics", partition="0").set(5)
    m.kafka_errors.labels(code="_TRANSPORT").inc()
    m.outputs_produced.labels(topic="pensu_anomalies").inc()


def test_all_required_names_are_exposed() -> None:
    registry = CollectorRegistry()
    m = ServiceMetrics(registry)
    exercise_labelled(m)
    names = {name for name, _ in samples(registry)}
    missing = [n for n in REQUIRED if n not in names]
    assert missing == []


def test_labels_and_values() -> None:
    registry = CollectorRegistry()
    m = ServiceMetrics(registry, version="9.9.9")
    m.samples_processed.inc(3)
    m.rejected_lines.labels(reason="out_of_order").inc(2)
    m.rejected_lines.labels(reason="bad_name").inc()
    m.model_loads.labels(source="checkpoint").inc()
    m.checkpoint_failures.labels(operation="save").inc()
    m.consumer_lag.labels(topic="metrics", partition="3").set(42)
    m.ready.set(1)
    m.model_step_seconds.observe(0.0003)
    got = samples(registry)
    assert got[("pensu_samples_processed_total", ())] == 3
    assert got[("pensu_rejected_lines_total", (("reason", "out_of_order"),))] == 2
    assert got[("pensu_rejected_lines_total", (("reason", "bad_name"),))] == 1
    assert got[("pensu_model_loads_total", (("source", "checkpoint"),))] == 1
    assert got[("pensu_model_loads_total", (("source", "fresh"),))] == 0
    assert got[("pensu_checkpoint_failures_total", (("operation", "load"),))] == 0
    assert got[("pensu_checkpoint_failures_total", (("operation", "save"),))] == 1
    assert got[("pensu_consumer_lag", (("partition", "3"), ("topic", "metrics")))] == 42
    assert got[("pensu_ready", ())] == 1
    assert got[("pensu_build_info", (("version", "9.9.9"),))] == 1
    # 300 µs lands in the 500 µs bucket but not the 250 µs one.
    assert got[("pensu_model_step_seconds_bucket", (("le", "0.00025"),))] == 0
    assert got[("pensu_model_step_seconds_bucket", (("le", "0.0005"),))] == 1


def test_step_buckets_span_50us_to_1s() -> None:
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    bounds = sorted(float(dict(labels)["le"]) for name, labels in samples(registry)
                    if name == "pensu_model_step_seconds_bucket" and dict(labels)["le"] != "+Inf")
    assert bounds[0] == pytest.approx(50e-6) and bounds[-1] == 1.0


def test_default_version_label() -> None:
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    assert samples(registry)[("pensu_build_info", (("version", __version__),))] == 1


def test_forget_partition_drops_only_that_series() -> None:
    registry = CollectorRegistry()
    m = ServiceMetrics(registry)
    m.consumer_lag.labels(topic="metrics", partition="0").set(1)
    m.consumer_lag.labels(topic="metrics", partition="1").set(2)
    m.forget_partition("metrics", 0)
    m.forget_partition("metrics", 7)  # never reported: harmless
    lag = {dict(labels)["partition"] for n, labels in samples(registry) if n == "pensu_consumer_lag"}
    assert lag == {"1"}


def test_two_instances_on_separate_registries_do_not_clash() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = ServiceMetrics(first), ServiceMetrics(second)
    a.samples_processed.inc(5)
    b.samples_processed.inc(1)
    assert samples(first)[("pensu_samples_processed_total", ())] == 5
    assert samples(second)[("pensu_samples_processed_total", ())] == 1


def test_same_registry_twice_is_refused() -> None:
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    with pytest.raises(ValueError):
        ServiceMetrics(registry)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("pensu.test.ratelimit")
    clock = FakeClock()
    limited = RateLimitedLog(logger, min_interval_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=logger.name):
        assert limited.log(logging.WARNING, "over quota: %s", "a") is True
        clock.now += 1
        assert limited.log(logging.WARNING, "over quota: %s", "b") is False
        clock.now += 8
        assert limited.log(logging.WARNING, "over quota: %s", "c") is False
        clock.now += 1  # exactly the interval since the first emission
        assert limited.log(logging.WARNING, "over quota: %s", "d") is True
        clock.now += 10
        assert limited.log(logging.INFO, "over quota: %s", "e") is True
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages == [
        (logging.WARNING, "over quota: a"),
        (logging.WARNING, "over quota: d (2 similar messages suppressed)"),
        (logging.INFO, "over quota: e"),
    ]


def test_rate_limit_filter_limits_per_facility_and_counts_the_dropped() -> None:
    import logging as _logging

    from pensu.telemetry import RateLimitFilter

    now = [0.0]
    filt = RateLimitFilter(30.0, clock=lambda: now[0])

    def record(fac: str) -> _logging.LogRecord:
        return _logging.LogRecord("pensu.kafka.librdkafka", _logging.ERROR, "x", 1, "%s [%s] %s",
                                  (fac, "rdkafka#consumer-1", "Connect failed"), None)

    assert filt.filter(record("FAIL"))
    assert not any(filt.filter(record("FAIL")) for _ in range(21))
    assert filt.filter(record("REQTMOUT"))  # another facility is not hidden by a noisy one
    now[0] = 31.0
    again = record("FAIL")
    assert filt.filter(again)
    assert again.getMessage().endswith("(21 similar messages suppressed)")
