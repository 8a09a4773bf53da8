"""Drop-in for users of the original Pensu: its env file, variables, ping and log format (issue #11)."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from pensu.settings import (
    DEPRECATED_VARIABLES,
    RENAMED_VARIABLES,
    deprecation_warnings,
    known_variables,
    load_settings,
    unknown_variables,
)
from tests.conftest import KafkaCluster, free_port
from tests.service_harness import spawn_service
from tests.test_cli import pensu

ORIGINAL_ENV = Path(__file__).parent / "data" / "original-pensu.env"
README = Path(__file__).resolve().parents[1] / "README.md"


def original_env() -> dict[str, str]:
    env = {}
    for line in ORIGINAL_ENV.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def test_fixture_has_every_original_variable() -> None:
    assert len(original_env()) == 27


def test_every_original_line_is_accepted_with_its_meaning() -> None:
    env = original_env()
    assert unknown_variables(env) == []
    assert set(env) <= known_variables() | set(DEPRECATED_VARIABLES)
    s = load_settings(env)
    assert s.consumer_servers() == "kafka:9092" and s.producer_servers() == "kafka:9092"
    assert s.kafka_session_timeout_ms == 5000
    assert s.prediction_steps == 5 and s.max_allowed_models == 10 and s.ping_listen_port == 6666
    assert s.anomaly_score_threshold == 0.99 and s.minimum_confidence_for_reporting == 0.9
    assert s.topics_kafka_topic == "pensu_monitored_topics" and s.topics_report_interval == 10
    assert s.models_autosave_interval == 86400
    assert s.logging_format.startswith("timestamp=%s;module=smart-onion_%s")


def test_config_with_the_original_env_file_warns_once_per_deprecated_variable() -> None:
    result = pensu("config", env=original_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "unknown variable" not in result.stderr
    for name in [*DEPRECATED_VARIABLES, *RENAMED_VARIABLES]:
        lines = [line for line in result.stderr.splitlines() if name in line]
        assert len(lines) == 1 and "deprecated" in lines[0], result.stderr


def test_the_two_backwards_topic_names_still_work_and_the_new_names_win() -> None:
    old = {"PENSU_REPORTED_ANOMALIES_KAFKA_TOPIC": "old.scores", "PENSU_ANOMALIES_METRICS_KAFKA_TOPIC": "old.reports"}
    s = load_settings(old)
    assert (s.anomaly_scores_kafka_topic, s.anomaly_reports_kafka_topic) == ("old.scores", "old.reports")
    warnings = deprecation_warnings(old)
    assert any("PENSU_ANOMALY_SCORES_KAFKA_TOPIC" in w and "value is used" in w for w in warnings)
    both = {**old, "PENSU_ANOMALY_SCORES_KAFKA_TOPIC": "new.scores", "PENSU_ANOMALY_REPORTS_KAFKA_TOPIC": "new.reports"}
    s = load_settings(both)
    assert (s.anomaly_scores_kafka_topic, s.anomaly_reports_kafka_topic) == ("new.scores", "new.reports")
    assert sum("wins" in w for w in deprecation_warnings(both)) == 2
    assert deprecation_warnings({k: v for k, v in both.items() if k not in old}) == []


def test_readme_migration_table_lists_every_original_variable() -> None:
    text = README.read_text()
    section = text[text.index("## Migrating from Pensu"):]
    for name in original_env():
        assert re.search(rf"^\| `{name}` \|", section, re.M), name


@pytest.mark.kafka
@pytest.mark.slow
def test_the_original_env_file_starts_the_service(kafka: KafkaCluster, tmp_path: Path) -> None:
    env = original_env()
    topic = kafka.unique("orig.metrics")
    ping_port = free_port()
    # Only what must differ on a test machine: where the clusters, ports, topics and models are.
    env.update({
        "PENSU_KAFKA_CONSUMER_SERVER": kafka.bootstrap_servers, "PENSU_KAFKA_PRODUCER_SERVER": kafka.bootstrap_servers,
        "PENSU_PING_LISTEN_HOST": "127.0.0.1", "PENSU_PING_LISTEN_PORT": str(ping_port),
        "PENSU_METRICS_KAFKA_TOPIC": topic, "PENSU_KAFKA_CONSUMER_GROUP_ID": kafka.unique("orig.group"),
        "PENSU_REPORTED_ANOMALIES_KAFKA_TOPIC": kafka.unique("orig.anom"),
        "PENSU_PREDICTION_METRICS_KAFKA_TOPIC": kafka.unique("orig.pred"),
        "PENSU_ANOMALIES_METRICS_KAFKA_TOPIC": kafka.unique("orig.reports"),
        "PENSU_TOPICS_KAFKA_TOPIC": kafka.unique("orig.topics"),
        "PENSU_MODELS_DIR": str(tmp_path / "models"), "PENSU_HTTP_PORT": "0", "PENSU_ANOMALY_MODEL_PRESET": "small",
        "PENSU_PREDICTION_MODEL_PRESET": "small", "PENSU_KAFKA_CONSUMER_OPT_TOPIC_METADATA_REFRESH_INTERVAL_MS": "500",
    })
    proc = spawn_service(env)
    try:
        kafka.produce(topic, [(b"orig.cpu", f"orig.cpu {i % 7} {1_700_000_000 + 60 * i}".encode())
                              for i in range(20)])
        body: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ping_port}/ping", timeout=5) as resp:
                    assert resp.status == 200
                    body = json.loads(resp.read())
            except OSError:
                body = {}
            if body.get("service_specific_info", {}).get("samples_processed") == 20:
                break
            time.sleep(0.5)
        assert body.get("response") == "PONG", body
        assert body["service_specific_info"]["samples_processed"] == 20, body
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "unknown variable" not in text and "Traceback" not in text
    # Logs in the original key=%s format, the module filled in.
    assert re.search(r"^timestamp=[^;]+;module=smart-onion_pensu[.\w]*;method=\w*;severity=(INFO|WARNING);", text,
                     re.M), text[-3000:]
