"""End to end through `pensu run`: Alertmanager alerts, incident ids in reports, namespace anomaly rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.carbon import parse_line
from pensu.decision import OPENED, RESOLVED
from pensu.settings import load_settings
from tests.alert_receiver import AlertReceiver, check_postable_alerts, parse_time
from tests.conftest import KafkaCluster
from tests.service_harness import lines_for, running_service, service_env, stop_service
from tests.support import INTERVAL, START_TS, series

pytestmark = pytest.mark.kafka

SPIKE_AT = START_TS + 200 * INTERVAL
END_AT = START_TS + 240 * INTERVAL


def workload() -> dict[str, list[tuple[float, float]]]:
    """web.front.a/b spike together and recover; web.front.c stays normal; db.main.c spikes last."""
    normal = series(241)
    spiked = [(ts, 500.0) if ts == SPIKE_AT else (ts, v) for ts, v in normal]
    last_spike = series(240) + [(END_AT, 500.0)]
    return {"web.front.a": spiked, "web.front.b": spiked, "web.front.c": normal, "db.main.c": last_spike}


def test_pensu_run_alerts_incidents_and_namespace_rates(kafka: KafkaCluster, tmp_path: Path) -> None:
    with AlertReceiver() as receiver:
        env = service_env(kafka, tmp_path / "models", PENSU_ALERTMANAGER_URL=receiver.url,
                          PENSU_EPISODE_QUIET_SAMPLES="3", PENSU_ANOMALY_RATE_INTERVAL="1",
                          PENSU_INCIDENT_WINDOW_SECONDS="600",
                          PENSU_ALERTMANAGER_RESEND_INTERVAL="3600")
        settings = load_settings(env)
        data = workload()
        # The episodes an uninterrupted analyzer with the same settings opens and resolves.
        events = {}
        for metric, samples in data.items():
            analyzer = MetricAnalyzer(metric, analyzer_config(settings))
            events[metric] = [(a.timestamp, a.event) for a in (analyzer.process(ts, v) for ts, v in samples)
                              if a.event is not None]
        opened = [(m, ts) for m, evs in events.items() for ts, e in evs if e.event == OPENED]
        resolved = [(m, ts) for m, evs in events.items() for ts, e in evs if e.event == RESOLVED]
        assert ("web.front.a", SPIKE_AT) in opened and ("web.front.b", SPIKE_AT) in opened
        assert ("db.main.c", END_AT) in opened
        open_at_end = {m for m, evs in events.items() if evs and evs[-1][1].event == OPENED}
        assert "db.main.c" in open_at_end

        with running_service(env) as proc:
            messages = [(m.encode(), line) for m, samples in data.items() for line in lines_for(m, samples)]
            kafka.produce(settings.metrics_kafka_topic, messages)
            reports = kafka.consume_all([settings.anomalies_metrics_kafka_topic],
                                        expected=len(opened) + len(resolved), timeout=120, idle=3.0)
            alerts = receiver.wait_for(lambda a: len(a) >= len(opened) + len(resolved), timeout=30)
            lines = kafka.consume_all([settings.reported_anomalies_kafka_topic], expected=4 * 241 * 3 + 4,
                                      timeout=60, idle=2.5)
            stop_service(proc)

    # Reports: the two simultaneous openings in web.front share an incident; db.main has its own.
    parsed = [json.loads(m.value()) for m in reports]
    assert sorted((r["metric"], r["timestamp"]) for r in parsed if r["event"] == OPENED) == sorted(opened)
    by_key = {(r["metric"], r["event"], r["timestamp"]): r for r in parsed}
    a = by_key[("web.front.a", OPENED, SPIKE_AT)]
    b = by_key[("web.front.b", OPENED, SPIKE_AT)]
    assert a["namespace"] == b["namespace"] == "web.front"
    assert a["incident"] == b["incident"] == f"web.front@{int(SPIKE_AT)}"
    assert by_key[("db.main.c", OPENED, END_AT)]["incident"] == f"db.main@{int(END_AT)}"
    for r in parsed:
        if r["event"] == RESOLVED:
            opening = next(o for o in parsed if o["event"] == OPENED and o["episode_id"] == r["episode_id"])
            assert r["incident"] == opening["incident"]

    # Alertmanager: a firing alert per opening, the same labels with endsAt at each resolution.
    check_postable_alerts(alerts)
    firing = [x for x in alerts if parse_time(x["endsAt"]) > END_AT]
    ended = [x for x in alerts if parse_time(x["endsAt"]) <= END_AT]
    assert sorted((x["labels"]["metric"], parse_time(x["startsAt"])) for x in firing) == sorted(opened)
    assert sorted((x["labels"]["metric"], parse_time(x["endsAt"])) for x in ended) == sorted(resolved)
    spike_alert = next(x for x in firing if x["labels"]["metric"] == "web.front.a")
    assert spike_alert["labels"] == {"alertname": "PensuAnomaly", "metric": "web.front.a",
                                     "namespace": "web.front", "severity": "critical"}
    assert spike_alert["annotations"]["value"] == "500" and spike_alert["annotations"]["incident"] == a["incident"]
    for x in ended:
        assert any(f["labels"] == x["labels"] for f in firing)

    # Anomaly rate per namespace: the last line of each namespace reflects the episodes open at the end.
    rates: dict[str, float] = {}
    parts: dict[str, float] = {}  # this instance's counts, summed over instances by the dashboard
    for m in lines:
        sample = parse_line(m.value().rstrip(b"\n"))
        if sample.metric.startswith("pensu.anomaly_rate."):
            rates[sample.metric.removeprefix("pensu.anomaly_rate.")] = sample.value
        elif sample.metric.startswith("pensu.anomaly_rate_parts."):
            parts[sample.metric.removeprefix("pensu.anomaly_rate_parts.")] = sample.value
    web = [m for m in data if m.startswith("web.front.")]
    assert rates == {"web.front": sum(m in open_at_end for m in web) / len(web),
                     "db.main": 1.0}
    assert parts == {"anomalous.test.web.front": sum(m in open_at_end for m in web), "total.test.web.front": len(web),
                     "anomalous.test.db.main": 1, "total.test.db.main": 1}


@pytest.mark.slow
def test_pensu_run_resolves_after_a_restart_the_alert_it_fired_before(kafka: KafkaCluster, tmp_path: Path) -> None:
    """An episode opens, `pensu run` stops (SIGTERM) and starts again on the same models dir and
    group: the resolution carries the alert's labels and the incident of the opening (episode notes
    in the checkpoint), instead of guessing both severities with `incident: null`."""
    metric = "web.front.a"
    data = workload()[metric]
    spike = next(i for i, (ts, _v) in enumerate(data) if ts == SPIKE_AT)
    with AlertReceiver() as receiver:
        env = service_env(kafka, tmp_path / "models", PENSU_ALERTMANAGER_URL=receiver.url,
                          PENSU_EPISODE_QUIET_SAMPLES="3", PENSU_ANOMALY_RATE_INTERVAL="0",
                          PENSU_ALERTMANAGER_RESEND_INTERVAL="3600")
        settings = load_settings(env)
        analyzer = MetricAnalyzer(metric, analyzer_config(settings))
        expected = [(a.event.event, a.timestamp) for a in (analyzer.process(ts, v) for ts, v in data)
                    if a.event is not None]
        assert expected[0] == (OPENED, SPIKE_AT) and expected[1][0] == RESOLVED and len(expected) == 2
        resolved_at = expected[1][1]
        assert resolved_at > data[spike + 1][0]  # the episode is still open at the restart

        with running_service(env) as proc:
            kafka.produce(settings.metrics_kafka_topic,
                          [(metric.encode(), line) for line in lines_for(metric, data[:spike + 2])])
            kafka.consume_all([settings.anomalies_metrics_kafka_topic], expected=1, timeout=120, idle=1.0)
            fired = receiver.wait_for(lambda a: len(a) >= 1)[0]
            stop_service(proc)
        with running_service(env) as proc:
            kafka.produce(settings.metrics_kafka_topic,
                          [(metric.encode(), line) for line in lines_for(metric, data[spike + 2:])])
            reports = kafka.consume_all([settings.anomalies_metrics_kafka_topic], expected=2, timeout=120, idle=2.0)
            receiver.wait_for(lambda a: len(a) >= 2)
            out = stop_service(proc)
        got = receiver.alerts()

    parsed = [json.loads(m.value()) for m in reports]
    assert [(r["event"], r["timestamp"]) for r in parsed] == expected, out[-3000:]
    opening, resolution = parsed
    assert opening["incident"] == resolution["incident"] == f"web.front@{int(SPIKE_AT)}"
    check_postable_alerts(got)
    assert len(got) == 2, got  # the firing alert, then its resolution only (not one per severity)
    assert got[1]["labels"] == fired["labels"] and fired["labels"]["severity"] == "critical"
    assert got[1]["startsAt"] == fired["startsAt"] and parse_time(got[1]["endsAt"]) == resolved_at
    assert parse_time(fired["endsAt"]) > resolved_at  # the first copy was firing
