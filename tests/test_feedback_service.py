"""End to end through `pensu run`: feedback rules from the topic and POST /feedback, GET /rules, restarts."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pensu.decision import OPENED
from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.service_harness import http_get, lines_for, running_service, service_env, stop_service
from tests.support import INTERVAL, START_TS, series

pytestmark = pytest.mark.kafka

SPIKE_AT = START_TS + 200 * INTERVAL
TOKEN = "s3cret-token"


def http_post(port: int, path: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_rules(port: int, proc: subprocess.Popen, count: int, timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]  # type: ignore[union-attr]
        try:
            code, body = http_get(port, "/rules", timeout=2)
        except OSError:
            code, body = 0, ""
        if code == 200:
            listed = json.loads(body)
            if listed["loaded"] and len(listed["rules"]) >= count:
                return listed["rules"]
        time.sleep(0.2)
    raise AssertionError(f"rules never loaded on :{port}")


def test_pensu_run_applies_and_keeps_feedback_rules(kafka: KafkaCluster, tmp_path: Path) -> None:
    feedback_topic = kafka.unique("feedback")
    env = service_env(kafka, tmp_path / "models", PENSU_FEEDBACK_KAFKA_TOPIC=feedback_topic,
                      PENSU_FEEDBACK_TOKEN=TOKEN, PENSU_EPISODE_QUIET_SAMPLES="3")
    settings = load_settings(env)
    port = settings.http_port
    # A rule already in the topic (written by another instance earlier), and a broken record.
    mute = {"id": "mute-a", "kind": "mute", "pattern": r"web\.front\.a$", "until": "2099-01-01T00:00:00Z",
            "reason": "known noisy"}
    kafka.produce(feedback_topic, [(b"mute-a", json.dumps(mute).encode()), (b"broken", b"{not json")])
    spiked = [(ts, 500.0) if ts == SPIKE_AT else (ts, v) for ts, v in series(241)]
    with running_service(env) as proc:
        assert [r["id"] for r in wait_rules(port, proc, 1)] == ["mute-a"]
        window = {"id": "db-window", "kind": "maintenance", "pattern": "db", "start": 0,
                  "end": "2099-01-01T00:00:00Z", "learn": False, "reason": "migration"}
        assert http_post(port, "/feedback", json.dumps(window).encode())[0] == 401  # no token
        assert http_post(port, "/feedback", json.dumps(window).encode(), "wrong")[0] == 401
        code, answer = http_post(port, "/feedback", b'{"id": "x", "kind": "mute", "pattern": "("}', TOKEN)
        assert code == 400 and answer["error"].startswith("pattern: invalid regular expression")
        code, answer = http_post(port, "/feedback", json.dumps(window).encode(), TOKEN)
        assert code == 200 and answer["accepted"]["id"] == "db-window", answer
        listed = wait_rules(port, proc, 2)
        assert {r["id"]: r["kind"] for r in listed} == {"db-window": "maintenance", "mute-a": "mute"}
        kafka.produce(settings.metrics_kafka_topic,
                      [(m.encode(), line) for m in ("web.front.a", "web.front.b", "db.main.c")
                       for line in lines_for(m, spiked)])
        # web.front.b reports; web.front.a is muted; db.main.c is neither learned nor reported.
        reports = kafka.consume_all([settings.anomalies_metrics_kafka_topic], expected=2, timeout=120, idle=3.0)
        lines = kafka.consume_all([settings.reported_anomalies_kafka_topic], expected=2 * 241 * 3, timeout=60,
                                  idle=2.0)
        code, metrics = http_get(port, "/metrics")
        out = stop_service(proc)
    opened = [json.loads(m.value()) for m in reports]
    assert {(r["metric"], r["timestamp"]) for r in opened if r["event"] == OPENED} == {("web.front.b", SPIKE_AT)}
    assert {m.key() for m in lines} == {b"web.front.a", b"web.front.b"}  # scores of the muted metric go out
    assert "not reporting the anomaly of web.front.a" in out and "'mute-a' (mute: known noisy)" in out
    assert "feedback record at" in out and "refused: not JSON" in out
    assert 'pensu_feedback_rejected_total{source="topic"} 1.0' in metrics
    assert 'pensu_feedback_rejected_total{source="http"} 1.0' in metrics

    # Rules live in the topic: a restarted instance lists both, the HTTP one included.
    with running_service(dict(env, PENSU_HTTP_PORT=str(port))) as proc:
        assert {r["id"] for r in wait_rules(port, proc, 2)} == {"db-window", "mute-a"}
        stop_service(proc)
