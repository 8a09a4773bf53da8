"""Alertmanager alerts: payload schema, firing → resolved, re-sends, retries and an unreachable receiver."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from pensu.alerting import ALERT_NAME, AlertSender, alert_for, alerts_url, rfc3339, severity_label
from pensu.analyzer import Analysis
from pensu.decision import OPENED, RESOLVED, EpisodeEvent
from tests.alert_receiver import AlertReceiver, check_postable_alerts, parse_time
from tests.conftest import free_port

OPENED_AT = 1_600_000_000.0


def analysis(kind: str | None, ts: float, value: float = 50.0, severity: float = 0.8,
             metric: str = "web.front.latency") -> Analysis:
    event = None if kind is None else EpisodeEvent(
        event=kind, episode_id=f"{metric}@{int(OPENED_AT)}", opened_at=OPENED_AT, severity=severity,
        reason="out_of_range", expected_range=(1.0, 3.0), anomalous_samples=1, samples=1)
    return Analysis(metric=metric, timestamp=ts, value=value, anomaly_score=0.4, anomaly_likelihood=0.99,
                    log_likelihood=0.6, final_score=severity, spatial_anomaly=False, predicted_value=2.0,
                    prediction_confidence=0.5, forecast=None, forecast_confidence=0.0, forecast_timestamp=None,
                    direction=1, reported=kind == OPENED, model_age=300, warming_up=False,
                    anomalous=kind == OPENED, event=event)


def test_alert_labels_and_annotations() -> None:
    alert = alert_for(analysis(OPENED, OPENED_AT), "web.front", "web.front@1600000000", "node-a")
    payload = alert.payload(OPENED_AT + 240)
    check_postable_alerts([payload])
    assert payload["labels"] == {"alertname": ALERT_NAME, "metric": "web.front.latency", "namespace": "web.front",
                                 "severity": "warning"}
    notes = payload["annotations"]
    assert (notes["value"], notes["prediction"], notes["expected_range"]) == ("50", "2", "1..3")
    assert (notes["score"], notes["likelihood"], notes["reason"]) == ("0.8", "0.99", "out_of_range")
    assert notes["incident"] == "web.front@1600000000" and notes["pensu_instance"] == "node-a"
    assert payload["startsAt"] == "2020-09-13T12:26:40.000Z" == rfc3339(OPENED_AT)
    assert parse_time(payload["endsAt"]) == OPENED_AT + 240
    assert severity_label(1.0) == "critical" and severity_label(0.99) == "warning"


def test_ends_at_never_precedes_starts_at() -> None:
    alert = alert_for(analysis(OPENED, OPENED_AT), "web.front", None, "a")
    payload = alert.payload(OPENED_AT - 1000)  # sample time ahead of the wall clock
    check_postable_alerts([payload])
    assert payload["endsAt"] == payload["startsAt"]


def test_alerts_url() -> None:
    assert alerts_url("http://am:9093") == "http://am:9093/api/v2/alerts"
    assert alerts_url("http://am:9093/prefix/") == "http://am:9093/prefix/api/v2/alerts"
    assert alerts_url("http://am:9093/api/v2/alerts") == "http://am:9093/api/v2/alerts"


def sender(url: str, registry: CollectorRegistry, resend: float = 3600.0,
           delays: tuple[float, ...] = (0.05, 0.05)) -> AlertSender:
    return AlertSender(url, registry, "node-a", resend_interval=resend, retry_delays=delays)


def test_firing_then_resolved_with_the_same_labels() -> None:
    registry = CollectorRegistry()
    with AlertReceiver() as receiver:
        alerts = sender(receiver.url, registry)
        alerts.start()
        try:
            alerts.episode_event(analysis(OPENED, OPENED_AT, severity=1.0), "web.front", "inc-1")
            alerts.episode_event(analysis(RESOLVED, OPENED_AT + 600), "web.front", "inc-1")
            got = receiver.wait_for(lambda a: len(a) >= 2)
        finally:
            alerts.stop()
    assert receiver.paths[0] == "/api/v2/alerts"
    check_postable_alerts(got)
    firing, resolved = got
    assert firing["labels"] == resolved["labels"] and firing["labels"]["severity"] == "critical"
    assert parse_time(firing["endsAt"]) > time.time() + 3600  # firing: endsAt 4 re-send intervals ahead
    assert parse_time(resolved["endsAt"]) == OPENED_AT + 600
    assert registry.get_sample_value("pensu_alerts_sent_total") == 2


def test_resolution_of_an_unseen_opening_resolves_both_severities() -> None:
    with AlertReceiver() as receiver:
        alerts = sender(receiver.url, CollectorRegistry())
        alerts.start()
        try:
            alerts.episode_event(analysis(RESOLVED, OPENED_AT + 600), "web.front", None)
            got = receiver.wait_for(lambda a: len(a) >= 2)
        finally:
            alerts.stop()
    check_postable_alerts(got)
    assert sorted(a["labels"]["severity"] for a in got) == ["critical", "warning"]
    assert all(parse_time(a["endsAt"]) == OPENED_AT + 600 for a in got)


def test_open_episodes_are_re_sent_until_resolved_or_forgotten() -> None:
    with AlertReceiver() as receiver:
        alerts = sender(receiver.url, CollectorRegistry(), resend=1.0)
        alerts.start()
        try:
            alerts.episode_event(analysis(OPENED, OPENED_AT), "web.front", None)
            alerts.episode_event(analysis(OPENED, OPENED_AT, metric="db.main.qps"), "db.main", None)
            receiver.wait_for(lambda a: sum(x["labels"]["metric"] == "web.front.latency" for x in a) >= 3,
                              timeout=20)
            alerts.forget("db.main.qps")  # its partition moved away
            alerts.episode_event(analysis(RESOLVED, OPENED_AT + 60), "web.front", None)
            seen = len(receiver.wait_for(lambda a: parse_time(a[-1]["endsAt"]) == OPENED_AT + 60))
            time.sleep(2.5)  # two more re-send intervals: nothing is firing any more
        finally:
            alerts.stop()
    got = receiver.alerts()
    check_postable_alerts(got)
    assert len(got) == seen
    assert parse_time(got[-1]["endsAt"]) == OPENED_AT + 60  # the resolution came last


def test_retries_after_server_errors() -> None:
    registry = CollectorRegistry()
    with AlertReceiver() as receiver:
        receiver.status = 503
        alerts = sender(receiver.url, registry, delays=(0.2, 0.2, 5.0))
        alerts.start()
        try:
            alerts.episode_event(analysis(OPENED, OPENED_AT), "web.front", None)
            deadline = time.monotonic() + 10
            while len(receiver.paths) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            receiver.status = 200
            got = receiver.wait_for(lambda a: len(a) == 1)
        finally:
            alerts.stop()
    assert len(receiver.paths) >= 3 and got[0]["labels"]["metric"] == "web.front.latency"
    assert registry.get_sample_value("pensu_alertmanager_post_failures_total") >= 2
    assert registry.get_sample_value("pensu_alerts_sent_total") == 1


def test_unreachable_alertmanager_never_blocks_and_is_counted() -> None:
    registry = CollectorRegistry()
    alerts = sender(f"http://127.0.0.1:{free_port()}", registry, delays=(0.01,))
    alerts.start()
    try:
        started = time.monotonic()
        for i in range(200):
            alerts.episode_event(analysis(OPENED, OPENED_AT + i, metric=f"web.m{i}"), "web", None)
        assert time.monotonic() - started < 1.0  # submitting only queues
        deadline = time.monotonic() + 20
        while (registry.get_sample_value("pensu_alerts_dropped_total", {"reason": "unreachable"}) or 0) < 200:
            assert time.monotonic() < deadline, "alerts were never given up"
            time.sleep(0.05)
    finally:
        alerts.stop()
    assert registry.get_sample_value("pensu_alertmanager_post_failures_total") >= 2
    assert registry.get_sample_value("pensu_alerts_sent_total") == 0


def test_a_refused_payload_is_not_retried() -> None:
    registry = CollectorRegistry()
    with AlertReceiver() as receiver:
        receiver.status = 400
        alerts = sender(receiver.url, registry, delays=(0.01, 0.01))
        alerts.start()
        try:
            alerts.episode_event(analysis(OPENED, OPENED_AT), "web.front", None)
            deadline = time.monotonic() + 10
            while registry.get_sample_value("pensu_alerts_dropped_total", {"reason": "refused"}) != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            alerts.stop()
    assert len(receiver.paths) == 1
