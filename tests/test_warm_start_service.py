"""End to end through `pensu run`: warm start from a real graphite-web, and its cold fallback.

The warm test puts three days of a NAB series (shifted to end now) plus the live part after it
into carbon-cache, as Logstash would forward the input, then produces only the live part to
Kafka. The service must fetch the PENSU_WARM_START_DAYS before the first live sample from
graphite-web, learn exactly those points (none of the live ones), and then emit for the live
samples exactly what a reference analyzer that learned the same history emits: lower anomaly
scores than a cold start's.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.carbon import parse_line
from pensu.settings import load_settings
from pensu.warm_start import history_request
from tests.conftest import KafkaCluster, free_port
from tests.service_harness import http_get, lines_for, running_service, service_env, stop_service
from tests.stack.graphite_stack import GraphiteWeb, graphite, graphite_web_python_fixture  # noqa: F401 - fixtures
from tests.stack.test_graphite_web import NAB_FILE, nab_series, shifted_to_now
from tests.support import series

pytestmark = pytest.mark.kafka

METRIC = "servers.nab.machine_temperature"
HISTORY_IN_GRAPHITE = 3 * 288  # three days of 5-minute points
LIVE = 200
WARM_DAYS = 2


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of the Prometheus text exposition (0 when absent)."""
    pattern = re.compile(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", re.M)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def scores(messages: list, metric: str) -> list[tuple[float, float]]:
    """(timestamp, value) of the anomaly_score lines of `metric`, in timestamp order."""
    out = []
    for m in messages:
        sample = parse_line(m.value().rstrip(b"\n"))
        if sample.metric == f"pensu.anomaly_score.metrics_analyzer.{metric}":
            out.append((sample.timestamp, sample.value))
    return sorted(out)


@pytest.mark.slow
def test_new_metric_learns_its_graphite_history_before_live_samples(
        kafka: KafkaCluster, graphite: GraphiteWeb, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    if not NAB_FILE.is_file():
        pytest.skip(f"NAB data not found at {NAB_FILE} (set PENSU_NAB_DATA)")
    rows = shifted_to_now(nab_series(NAB_FILE, HISTORY_IN_GRAPHITE + LIVE))
    history, live = rows[:HISTORY_IN_GRAPHITE], rows[HISTORY_IN_GRAPHITE:]
    # Graphite holds the whole series, live part included (Logstash forwards every input line).
    graphite.carbon.send(b"".join(f"{METRIC} {v!r} {ts}\n".encode() for ts, v in rows))
    graphite.carbon.wait_stored({METRIC: dict(rows)})

    env = service_env(kafka, tmp_path / "models", PENSU_GRAPHITE_URL=graphite.url,
                      PENSU_WARM_START_DAYS=str(WARM_DAYS), PENSU_WARM_START_TIMEOUT="60")
    settings = load_settings(env)
    # What the service should learn: the render answer for the days before the first live sample.
    request = history_request(METRIC, live[0][0], WARM_DAYS)
    assert request is not None
    (answer,) = graphite.render_json(request.target, request.start, request.until)
    expected_history = [(ts, v) for v, ts in answer["datapoints"] if v is not None and ts < live[0][0]]
    window = [(ts, v) for ts, v in history if ts > live[0][0] - WARM_DAYS * 86400]
    assert expected_history == window  # exactly the window's points: none of the live ones
    assert len(window) == WARM_DAYS * 288 - 1  # the window starts at a step boundary (exclusive)

    warm = MetricAnalyzer(METRIC, analyzer_config(settings))
    for ts, v in window:
        warm.process(ts, v)
    cold = MetricAnalyzer(METRIC, analyzer_config(settings))
    warm_analyses = [warm.process(ts, v) for ts, v in live]
    cold_analyses = [cold.process(ts, v) for ts, v in live]
    warm_scores = [(a.timestamp, a.anomaly_score) for a in warm_analyses]
    cold_scores = [(a.timestamp, a.anomaly_score) for a in cold_analyses]
    # Useful at once: the warm model forecasts from the first live sample; a cold one warms up first.
    assert not warm_analyses[0].warming_up and warm_analyses[0].forecast is not None
    assert cold_analyses[0].warming_up and cold_analyses[0].forecast is None

    with running_service(env) as proc:
        kafka.produce(settings.metrics_kafka_topic, [(METRIC.encode(), line) for line in lines_for(METRIC, live)])
        messages = kafka.consume_all([settings.reported_anomalies_kafka_topic], expected=3 * LIVE,
                                     timeout=120, idle=2.0)
        predictions = kafka.consume_all([settings.prediction_metrics_kafka_topic], expected=2 * LIVE,
                                        timeout=60, idle=1.0)
        status, exposition = http_get(int(env["PENSU_HTTP_PORT"]), "/metrics")
        output = stop_service(proc)

    assert status == 200
    forecast_name = f"pensu.prediction.metrics_analyzer.{METRIC}"
    first_forecast = min(s.timestamp for s in (parse_line(m.value().rstrip(b"\n")) for m in predictions)
                         if s.metric == forecast_name)
    assert first_forecast == live[0][0] + 300  # forecast made at the first live sample
    assert metric_value(exposition, "pensu_warm_start_samples_learned_total") == len(window)
    assert metric_value(exposition, "pensu_warm_starts_total", 'outcome="warm"') == 1
    assert metric_value(exposition, "pensu_warm_starts_total", 'outcome="cold"') == 0
    assert metric_value(exposition, "pensu_samples_processed_total") == LIVE  # history is not "processed"
    assert "warm start of 'servers.nab.machine_temperature'" in output
    got = scores(messages, METRIC)
    assert [ts for ts, _ in got] == [float(ts) for ts, _ in live]  # one output per live sample, none for history
    assert got == [(float(ts), s) for ts, s in warm_scores]  # the model that learned the window first
    assert statistics.mean(s for _, s in got) < 0.6 * statistics.mean(s for _, s in cold_scores)


@pytest.mark.slow
def test_unreachable_graphite_starts_cold_and_is_counted(kafka: KafkaCluster, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = service_env(kafka, tmp_path / "models", PENSU_GRAPHITE_URL=dead, PENSU_WARM_START_TIMEOUT="10")
    settings = load_settings(env)
    samples = series(60)
    cold = MetricAnalyzer("web.cold", analyzer_config(settings))
    expected = [(ts, cold.process(ts, v).anomaly_score) for ts, v in samples]

    with running_service(env) as proc:
        kafka.produce(settings.metrics_kafka_topic, [(b"web.cold", line) for line in lines_for("web.cold", samples)])
        messages = kafka.consume_all([settings.reported_anomalies_kafka_topic], expected=3 * len(samples),
                                     timeout=90, idle=2.0)
        status, exposition = http_get(int(env["PENSU_HTTP_PORT"]), "/metrics")
        output = stop_service(proc)

    assert status == 200
    assert metric_value(exposition, "pensu_warm_start_failures_total", 'reason="unreachable"') == 1
    assert metric_value(exposition, "pensu_warm_starts_total", 'outcome="cold"') == 1
    assert metric_value(exposition, "pensu_warm_start_samples_learned_total") == 0
    assert scores(messages, "web.cold") == expected  # every held sample processed, cold, in order
    failures = [line for line in output.splitlines() if "warm start of 'web.cold' failed" in line]
    assert len(failures) == 1 and "unreachable" in failures[0] and dead in failures[0], output[-2000:]
