"""End to end through `pensu run`: Alertmanager alerts, incident ids in reports, namespace anomaly rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.carbon import parse_line
from pensu.decision import OPENED, RESOLVED
from pensu.analyzer_settings import analyzer_config
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
    for m in lines:
        sample = parse_line(m.value().rstrip(b"\n"))
        if sample.metric.startswith("pensu.anomaly_rate."):
            rates[sample.metric.removeprefix("pensu.anomaly_rate.")] = sample.value
    web = [m for m in data if m.startswith("web.front.")]
    assert rates == {"web.front": sum(m in open_at_end for m in web) / len(web),
                     "db.main": 1.0}
