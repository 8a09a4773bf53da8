"""Tests for `pensu.settings`: defaults, env parsing, errors, pass-through, masking, helpers."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from pensu.carbon import DEFAULT_NAME_TEMPLATE
from pensu.errors import ConfigurationError
from pensu.settings import (
    MASK,
    Settings,
    describe_settings,
    effective_settings,
    load_settings,
    settings_table_markdown,
    unknown_variables,
)

EXPECTED_DEFAULTS: dict[str, Any] = {
    "kafka_bootstrap_servers": None,
    "kafka_consumer_server": None,
    "kafka_producer_server": None,
    "kafka_consumer_group_id": "pensu",
    "kafka_consumer_client_id": "pensu-consumer-{{#instance_id}}-{{#time_started}}",
    "kafka_producer_client_id": "pensu-producer-{{#instance_id}}-{{#time_started}}",
    "kafka_session_timeout_ms": 45000,
    "kafka_security_protocol": None,
    "kafka_sasl_mechanism": None,
    "kafka_sasl_username": None,
    "kafka_sasl_password": None,
    "kafka_ssl_ca_location": None,
    "kafka_ssl_certificate_location": None,
    "kafka_ssl_key_location": None,
    "kafka_ssl_key_password": None,
    "metrics_kafka_topic": "metrics",
    "anomaly_scores_kafka_topic": "pensu.htm.anomaly_metrics",
    "prediction_metrics_kafka_topic": "pensu.htm.predictions",
    "anomaly_reports_kafka_topic": "pensu_anomalies",
    "topics_kafka_topic": "pensu_topics",
    "topics_report_interval": 60.0,
    "dead_letter_kafka_topic": None,
    "repartition": False,
    "repartition_kafka_topic": "pensu.internal.repartition",
    "metric_names_template": DEFAULT_NAME_TEMPLATE,
    "allowed_to_work_on_metrics": ".*",
    "anomaly_score_threshold": 0.0,
    "anomaly_likelihood_threshold": 0.99997,
    "minimum_confidence_for_reporting": 0.0,
    "episode_quiet_samples": 36,
    "episode_suppression_samples": 0,
    "prediction_steps": 1,
    "anomaly_model_preset": "nab",
    "prediction_model_preset": "nab",
    "max_allowed_models": 1000,
    "min_seconds_between_over_quota_log_msg": 60.0,
    "max_tracked_metrics": 100000,
    "models_dir": Path("models"),
    "checkpoint_store": "local",
    "checkpoint_sync_interval": 0.0,
    "checkpoint_kafka_topic": "pensu.checkpoints",
    "checkpoint_kafka_quarantine_topic": "pensu.checkpoints.quarantine",
    "models_autosave_interval": 300.0,
    "metric_ranges": {},
    "warmup_samples": 150,
    "alertmanager_url": None,
    "alertmanager_resend_interval": 60.0,
    "namespace_depth": 2,
    "incident_window_seconds": 300.0,
    "anomaly_rate_interval": 60.0,
    "graphite_url": None,
    "warm_start_days": 7.0,
    "warm_start_timeout": 30.0,
    "warm_start_concurrency": 4,
    "warm_start_buffer": 1000,
    "feedback_kafka_topic": None,
    "feedback_token": None,
    "feedback_false_positive_seconds": 604800.0,
    "ping_listen_host": "0.0.0.0",
    "ping_listen_port": 9999,
    "http_host": "0.0.0.0",
    "http_port": 8000,
    "logging_format": "%(asctime)s %(levelname)s %(name)s %(message)s",
    "log_level": "INFO",
    "instance_id": socket.gethostname(),
}

# field -> (environment text, parsed value); every field must appear here.
ENV_VALUES: dict[str, tuple[str, Any]] = {
    "kafka_bootstrap_servers": ("k1:9092,k2:9092", "k1:9092,k2:9092"),
    "kafka_consumer_server": ("in1:9092,in2:9092", "in1:9092,in2:9092"),
    "kafka_producer_server": ("out:9092", "out:9092"),
    "kafka_consumer_group_id": ("group-7", "group-7"),
    "kafka_consumer_client_id": ("c-{{#instance_id}}", "c-{{#instance_id}}"),
    "kafka_producer_client_id": ("p-{{#time_started}}", "p-{{#time_started}}"),
    "kafka_session_timeout_ms": ("12000", 12000),
    "kafka_security_protocol": ("SASL_SSL", "SASL_SSL"),
    "kafka_sasl_mechanism": ("SCRAM-SHA-512", "SCRAM-SHA-512"),
    "kafka_sasl_username": ("alice", "alice"),
    "kafka_sasl_password": ("s3cret-pw", SecretStr("s3cret-pw")),
    "kafka_ssl_ca_location": ("/etc/ca.pem", "/etc/ca.pem"),
    "kafka_ssl_certificate_location": ("/etc/cert.pem", "/etc/cert.pem"),
    "kafka_ssl_key_location": ("/etc/key.pem", "/etc/key.pem"),
    "kafka_ssl_key_password": ("key-pw", SecretStr("key-pw")),
    "metrics_kafka_topic": ("in.metrics", "in.metrics"),
    "anomaly_scores_kafka_topic": ("out.a", "out.a"),
    "prediction_metrics_kafka_topic": ("out.p", "out.p"),
    "anomaly_reports_kafka_topic": ("out.r", "out.r"),
    "topics_kafka_topic": ("out.t", "out.t"),
    "topics_report_interval": ("0", 0.0),
    "dead_letter_kafka_topic": ("dlq", "dlq"),
    "repartition": ("true", True),
    "repartition_kafka_topic": ("re.part", "re.part"),
    "metric_names_template": ("x.{{#anomaly_metric}}", "x.{{#anomaly_metric}}"),
    "allowed_to_work_on_metrics": (r"web\..*", r"web\..*"),
    "anomaly_score_threshold": ("0.25", 0.25),
    "anomaly_likelihood_threshold": ("0.9", 0.9),
    "minimum_confidence_for_reporting": ("1", 1.0),
    "episode_quiet_samples": ("0", 0),
    "episode_suppression_samples": ("288", 288),
    "prediction_steps": ("100", 100),
    "anomaly_model_preset": ("small", "small"),
    "prediction_model_preset": ("nupic", "nupic"),
    "max_allowed_models": ("3", 3),
    "min_seconds_between_over_quota_log_msg": ("2.5", 2.5),
    "max_tracked_metrics": ("5000", 5000),
    "models_dir": ("/var/lib/pensu", Path("/var/lib/pensu")),
    "checkpoint_store": ("kafka", "kafka"),
    "checkpoint_sync_interval": ("1.5", 1.5),
    "checkpoint_kafka_topic": ("ckpt.v1", "ckpt.v1"),
    "checkpoint_kafka_quarantine_topic": ("ckpt.bad", "ckpt.bad"),
    "models_autosave_interval": ("0.5", 0.5),
    "metric_ranges": ('{"cpu\\\\..*": [0, 100]}', {r"cpu\..*": (0.0, 100.0)}),
    "warmup_samples": ("30", 30),
    "alertmanager_url": ("http://alertmanager:9093", "http://alertmanager:9093"),
    "alertmanager_resend_interval": ("30", 30.0),
    "namespace_depth": ("3", 3),
    "incident_window_seconds": ("0", 0.0),
    "anomaly_rate_interval": ("0", 0.0),
    "graphite_url": ("http://graphite:80/prefix", "http://graphite:80/prefix"),
    "warm_start_days": ("1.5", 1.5),
    "warm_start_timeout": ("2.5", 2.5),
    "warm_start_concurrency": ("2", 2),
    "warm_start_buffer": ("50", 50),
    "feedback_kafka_topic": ("pensu.feedback", "pensu.feedback"),
    "feedback_token": ("t0ken", SecretStr("t0ken")),
    "feedback_false_positive_seconds": ("3600", 3600.0),
    "ping_listen_host": ("127.0.0.1", "127.0.0.1"),
    "ping_listen_port": ("65535", 65535),
    "http_host": ("::1", "::1"),
    "http_port": ("0", 0),
    "logging_format": ("json", "json"),
    "log_level": ("debug", "DEBUG"),
    "instance_id": ("node-a", "node-a"),
}


def test_defaults_without_any_variable() -> None:
    s = load_settings({})
    assert set(EXPECTED_DEFAULTS) == set(Settings.model_fields)
    for name, expected in EXPECTED_DEFAULTS.items():
        assert getattr(s, name) == expected, name


@pytest.mark.parametrize("field", sorted(ENV_VALUES))
def test_every_field_is_settable_by_its_variable(field: str) -> None:
    text, expected = ENV_VALUES[field]
    s = load_settings({"PENSU_" + field.upper(): text})
    assert getattr(s, field) == expected
    # The others keep their defaults: the variable reached exactly one field.
    for other, default in EXPECTED_DEFAULTS.items():
        if other != field:
            assert getattr(s, other) == default, other


def test_value_table_covers_every_field() -> None:
    assert set(ENV_VALUES) == set(Settings.model_fields)


def test_all_variables_together() -> None:
    s = load_settings({"PENSU_" + f.upper(): text for f, (text, _) in ENV_VALUES.items()})
    for field, (_, expected) in ENV_VALUES.items():
        assert getattr(s, field) == expected, field


def test_explicit_mapping_ignores_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSU_HTTP_PORT", "1234")
    monkeypatch.setenv("PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS", "777")
    s = load_settings({"PENSU_PING_LISTEN_PORT": "4321"})
    assert (s.http_port, s.ping_listen_port) == (8000, 4321)
    assert "socket.timeout.ms" not in s.consumer_config("i", "0")


def test_default_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSU_HTTP_PORT", "1234")
    monkeypatch.setenv("PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS", "777")
    s = load_settings()
    assert s.http_port == 1234
    assert s.consumer_config("i", "0")["socket.timeout.ms"] == "777"
    assert Settings().http_port == 1234  # plain construction reads the environment too


def test_variable_names_are_case_insensitive_and_empty_means_unset() -> None:
    s = load_settings({"pensu_http_port": "81", "PENSU_DEAD_LETTER_KAFKA_TOPIC": "", "PENSU_PING_LISTEN_PORT": ""})
    assert s.http_port == 81
    assert s.dead_letter_kafka_topic is None
    assert s.ping_listen_port == 9999


def test_original_kafka_servers_alias() -> None:
    assert load_settings({"PENSU_KAFKA_SERVERS": "old:9092"}).kafka_bootstrap_servers == "old:9092"
    both = load_settings({"PENSU_KAFKA_SERVERS": "old:9092", "PENSU_KAFKA_BOOTSTRAP_SERVERS": "new:9092"})
    assert both.kafka_bootstrap_servers == "new:9092"
    assert Settings(kafka_bootstrap_servers="init:1").kafka_bootstrap_servers == "init:1"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("PENSU_PING_LISTEN_PORT", "abc", "PENSU_PING_LISTEN_PORT: expected an integer 1-65535, got 'abc'"),
        ("PENSU_PING_LISTEN_PORT", "0", "PENSU_PING_LISTEN_PORT: expected an integer 1-65535, got '0'"),
        ("PENSU_HTTP_PORT", "70000", "PENSU_HTTP_PORT: expected an integer 0-65535"),
        ("PENSU_ALERTMANAGER_URL", "alertmanager:9093",
         "PENSU_ALERTMANAGER_URL: expected an http:// or https:// URL, got 'alertmanager:9093'"),
        ("PENSU_GRAPHITE_URL", "graphite:80",
         "PENSU_GRAPHITE_URL: expected an http:// or https:// URL, got 'graphite:80'"),
        ("PENSU_WARM_START_DAYS", "0", "PENSU_WARM_START_DAYS: expected a number > 0 and <= 366, got '0'"),
        ("PENSU_WARM_START_CONCURRENCY", "0", "PENSU_WARM_START_CONCURRENCY: expected an integer 1-64"),
        ("PENSU_ALERTMANAGER_RESEND_INTERVAL", "0", "PENSU_ALERTMANAGER_RESEND_INTERVAL: expected a number 1-86400"),
        ("PENSU_NAMESPACE_DEPTH", "0", "PENSU_NAMESPACE_DEPTH: expected an integer 1-20"),
        ("PENSU_ANOMALY_SCORE_THRESHOLD", "1.5", "PENSU_ANOMALY_SCORE_THRESHOLD: expected a number 0-1"),
        ("PENSU_ANOMALY_LIKELIHOOD_THRESHOLD", "nan", "PENSU_ANOMALY_LIKELIHOOD_THRESHOLD: expected a number 0-1"),
        ("PENSU_MINIMUM_CONFIDENCE_FOR_REPORTING", "-0.1", "PENSU_MINIMUM_CONFIDENCE_FOR_REPORTING"),
        ("PENSU_PREDICTION_STEPS", "101", "PENSU_PREDICTION_STEPS: expected an integer 1-100"),
        ("PENSU_PREDICTION_STEPS", "0", "PENSU_PREDICTION_STEPS: expected an integer 1-100"),
        ("PENSU_ANOMALY_MODEL_PRESET", "huge",
         "PENSU_ANOMALY_MODEL_PRESET: expected one of nab, nupic, small, compact"),
        ("PENSU_PREDICTION_MODEL_PRESET", "NAB ", "PENSU_PREDICTION_MODEL_PRESET"),
        ("PENSU_MAX_ALLOWED_MODELS", "0", "PENSU_MAX_ALLOWED_MODELS: expected an integer >= 1"),
        ("PENSU_MODELS_AUTOSAVE_INTERVAL", "-1", "PENSU_MODELS_AUTOSAVE_INTERVAL: expected a number >= 0"),
        ("PENSU_TOPICS_REPORT_INTERVAL", "-1", "PENSU_TOPICS_REPORT_INTERVAL: expected a number >= 0"),
        ("PENSU_MIN_SECONDS_BETWEEN_OVER_QUOTA_LOG_MSG", "soon", "PENSU_MIN_SECONDS_BETWEEN_OVER_QUOTA_LOG_MSG"),
        ("PENSU_WARMUP_SAMPLES", "0", "PENSU_WARMUP_SAMPLES: expected an integer >= 1"),
        ("PENSU_KAFKA_SESSION_TIMEOUT_MS", "1e3", "PENSU_KAFKA_SESSION_TIMEOUT_MS: expected an integer"),
        ("PENSU_REPARTITION", "maybe", "PENSU_REPARTITION: expected true or false, got 'maybe'"),
        ("PENSU_LOG_LEVEL", "loud", "PENSU_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("PENSU_LOGGING_FORMAT", "plain text", "PENSU_LOGGING_FORMAT: expected 'json', a logging format"),
        ("PENSU_METRIC_NAMES_TEMPLATE", "pensu.static", "PENSU_METRIC_NAMES_TEMPLATE: expected"),
        ("PENSU_METRIC_NAMES_TEMPLATE", "bad name.{{#anomaly_metric}}", "PENSU_METRIC_NAMES_TEMPLATE"),
        ("PENSU_ALLOWED_TO_WORK_ON_METRICS", "web(", "PENSU_ALLOWED_TO_WORK_ON_METRICS: expected a Python regular"),
        ("PENSU_METRICS_KAFKA_TOPIC", "bad topic", "PENSU_METRICS_KAFKA_TOPIC: expected a Kafka topic name"),
        ("PENSU_DEAD_LETTER_KAFKA_TOPIC", "..", "PENSU_DEAD_LETTER_KAFKA_TOPIC: expected a Kafka topic name"),
        ("PENSU_KAFKA_CONSUMER_CLIENT_ID", "c-{{#host}}", "PENSU_KAFKA_CONSUMER_CLIENT_ID"),
        ("PENSU_KAFKA_SECURITY_PROTOCOL", "tls", "PENSU_KAFKA_SECURITY_PROTOCOL: expected one of plaintext"),
        ("PENSU_KAFKA_SASL_MECHANISM", "MAGIC", "PENSU_KAFKA_SASL_MECHANISM: expected one of"),
        ("PENSU_METRIC_RANGES", "{not json", "PENSU_METRIC_RANGES: expected a JSON object"),
        ("PENSU_METRIC_RANGES", "[[0, 1]]", "PENSU_METRIC_RANGES"),
        ("PENSU_METRIC_RANGES", '{"a": [5, 1]}', "PENSU_METRIC_RANGES"),
        ("PENSU_METRIC_RANGES", '{"a": [1, 1]}', "PENSU_METRIC_RANGES"),
        ("PENSU_METRIC_RANGES", '{"a": [0, 1, 2]}', "PENSU_METRIC_RANGES"),
        ("PENSU_METRIC_RANGES", '{"a": "0-1"}', "PENSU_METRIC_RANGES"),
        ("PENSU_METRIC_RANGES", '{"a(": [0, 1]}', "PENSU_METRIC_RANGES"),
        ("PENSU_METRIC_RANGES", '{"a": [0, Infinity]}', "PENSU_METRIC_RANGES"),
    ],
)
def test_bad_value_names_the_variable(var: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({var: value})
    message = str(info.value)
    assert expected in message
    assert message.count("PENSU_") == 1  # just the one variable, once


def test_several_bad_values_make_one_error_naming_each() -> None:
    env = {"PENSU_PING_LISTEN_PORT": "abc", "PENSU_HTTP_PORT": "-1", "PENSU_PREDICTION_STEPS": "x",
           "PENSU_KAFKA_OPT_GROUP_ID": "g", "PENSU_METRICS_KAFKA_TOPIC": "ok"}
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    message = str(info.value)
    for var in ("PENSU_PING_LISTEN_PORT", "PENSU_HTTP_PORT", "PENSU_PREDICTION_STEPS", "PENSU_KAFKA_OPT_GROUP_ID"):
        assert var in message
    assert "PENSU_METRICS_KAFKA_TOPIC" not in message


def test_error_names_the_alias_that_was_set() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({"PENSU_KAFKA_SERVERS": "k1:9092,,k2:9092"})
    assert "PENSU_KAFKA_SERVERS: expected host:port" in str(info.value)
    assert "PENSU_KAFKA_BOOTSTRAP_SERVERS" not in str(info.value)
    with pytest.raises(ConfigurationError, match="PENSU_KAFKA_BOOTSTRAP_SERVERS: expected host:port"):
        load_settings({"PENSU_KAFKA_BOOTSTRAP_SERVERS": "k1:9092, k2 9092"})


def test_tracked_metrics_must_cover_resident_models() -> None:
    with pytest.raises(ConfigurationError, match=r"PENSU_MAX_TRACKED_METRICS: expected an integer >= "
                                                 r"PENSU_MAX_ALLOWED_MODELS \(50\), got 10"):
        load_settings({"PENSU_MAX_ALLOWED_MODELS": "50", "PENSU_MAX_TRACKED_METRICS": "10"})
    s = load_settings({"PENSU_MAX_ALLOWED_MODELS": "50", "PENSU_MAX_TRACKED_METRICS": "50"})
    assert s.max_tracked_metrics == 50


def test_consumer_config_defaults_and_placeholders() -> None:
    s = load_settings({"PENSU_KAFKA_BOOTSTRAP_SERVERS": "k:9092", "PENSU_INSTANCE_ID": "ignored-here"})
    conf = s.consumer_config("node1", "1700000000")
    assert conf == {
        "bootstrap.servers": "k:9092",
        "client.id": "pensu-consumer-node1-1700000000",
        "group.id": "pensu",
        "session.timeout.ms": 45000,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "topic.metadata.refresh.interval.ms": 30000,
    }
    assert s.producer_config("node1", "1700000000") == {
        "bootstrap.servers": "k:9092", "client.id": "pensu-producer-node1-1700000000"}


def test_one_consumer_builder_serves_the_service_and_the_repartition_stage() -> None:
    s = load_settings({"PENSU_KAFKA_BOOTSTRAP_SERVERS": "k:9092", "PENSU_KAFKA_CONSUMER_GROUP_ID": "g",
                       "PENSU_KAFKA_OPT_AUTO_OFFSET_RESET": "latest"})
    service = s.consumer_config("i", "0")
    stage = s.consumer_config("i", "0", servers="embedded:1", group_suffix=".repartition")
    assert service["group.id"] == "g" and stage["group.id"] == "g.repartition"
    assert service["bootstrap.servers"] == "k:9092" and stage["bootstrap.servers"] == "embedded:1"
    assert {k: v for k, v in stage.items() if k not in ("group.id", "bootstrap.servers")} == \
        {k: v for k, v in service.items() if k not in ("group.id", "bootstrap.servers")}
    assert service["auto.offset.reset"] == "latest"  # a default: pass-through options win over it
    assert s.producer_config("i", "0", servers="embedded:1")["bootstrap.servers"] == "embedded:1"


def test_custom_client_ids_render_every_placeholder_occurrence() -> None:
    s = load_settings({"PENSU_KAFKA_CONSUMER_CLIENT_ID": "{{#instance_id}}/{{#instance_id}}@{{#time_started}}",
                       "PENSU_KAFKA_PRODUCER_CLIENT_ID": "static-producer"})
    assert s.consumer_config("a", "5")["client.id"] == "a/a@5"
    assert s.producer_config("a", "5")["client.id"] == "static-producer"


def test_bootstrap_omitted_when_not_configured() -> None:
    s = load_settings({})
    assert "bootstrap.servers" not in s.consumer_config("i", "0")
    assert "bootstrap.servers" not in s.producer_config("i", "0")


def test_security_options_reach_both_clients_unmasked() -> None:
    env = {"PENSU_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "PENSU_KAFKA_SASL_MECHANISM": "PLAIN",
           "PENSU_KAFKA_SASL_USERNAME": "u", "PENSU_KAFKA_SASL_PASSWORD": "pw1",
           "PENSU_KAFKA_SSL_CA_LOCATION": "/ca", "PENSU_KAFKA_SSL_CERTIFICATE_LOCATION": "/cert",
           "PENSU_KAFKA_SSL_KEY_LOCATION": "/key", "PENSU_KAFKA_SSL_KEY_PASSWORD": "pw2"}
    s = load_settings(env)
    expected = {"security.protocol": "sasl_ssl", "sasl.mechanism": "PLAIN", "sasl.username": "u",
                "sasl.password": "pw1", "ssl.ca.location": "/ca", "ssl.certificate.location": "/cert",
                "ssl.key.location": "/key", "ssl.key.password": "pw2"}
    for conf in (s.consumer_config("i", "0"), s.producer_config("i", "0")):
        assert {k: conf[k] for k in expected} == expected


def test_pass_through_options_and_precedence() -> None:
    env = {"PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS": "30000",
           "PENSU_KAFKA_OPT_STATISTICS_INTERVAL_MS": "1000",
           "PENSU_KAFKA_CONSUMER_OPT_STATISTICS_INTERVAL_MS": "2000",
           "PENSU_KAFKA_CONSUMER_OPT_FETCH_MAX_BYTES": "1048576",
           "PENSU_KAFKA_PRODUCER_OPT_LINGER_MS": "5",
           "PENSU_KAFKA_CONSUMER_OPT_PARTITION_ASSIGNMENT_STRATEGY": "range"}
    s = load_settings(env)
    consumer, producer = s.consumer_config("i", "0"), s.producer_config("i", "0")
    assert consumer["socket.timeout.ms"] == producer["socket.timeout.ms"] == "30000"
    assert consumer["statistics.interval.ms"] == "2000"  # client-specific wins
    assert producer["statistics.interval.ms"] == "1000"
    assert consumer["fetch.max.bytes"] == "1048576" and "fetch.max.bytes" not in producer
    assert producer["linger.ms"] == "5" and "linger.ms" not in consumer
    assert consumer["partition.assignment.strategy"] == "range"


def test_pass_through_survives_model_copy() -> None:
    s = load_settings({"PENSU_KAFKA_PRODUCER_OPT_LINGER_MS": "7"})
    copy = s.model_copy(update={"kafka_bootstrap_servers": "x:1"})
    assert copy.producer_config("i", "0") == {"client.id": "pensu-producer-i-0", "bootstrap.servers": "x:1",
                                              "linger.ms": "7"}


@pytest.mark.parametrize("var", ["PENSU_KAFKA_OPT_BOOTSTRAP_SERVERS", "PENSU_KAFKA_CONSUMER_OPT_GROUP_ID",
                                 "PENSU_KAFKA_PRODUCER_OPT_CLIENT_ID", "PENSU_KAFKA_OPT_SASL_PASSWORD",
                                 "PENSU_KAFKA_CONSUMER_OPT_ENABLE_AUTO_COMMIT",
                                 "PENSU_KAFKA_CONSUMER_OPT_ENABLE_AUTO_OFFSET_STORE", "PENSU_KAFKA_OPT_"])
def test_pass_through_of_typed_or_fixed_options_is_refused(var: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings({var: "x"})
    assert var in str(info.value)


def test_effective_settings_masks_secrets() -> None:
    env = {"PENSU_KAFKA_SASL_PASSWORD": "hunter2", "PENSU_KAFKA_SSL_KEY_PASSWORD": "keypw",
           "PENSU_KAFKA_SASL_USERNAME": "bob",
           "PENSU_KAFKA_OPT_SSL_KEYSTORE_PASSWORD": "kspw",
           "PENSU_KAFKA_PRODUCER_OPT_SASL_OAUTHBEARER_CLIENT_SECRET": "oauth",
           "PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS": "30000",
           "PENSU_METRIC_RANGES": '{"a": [0, 2.5]}'}
    shown = effective_settings(load_settings(env))
    text = "\n".join(f"{k}={v}" for k, v in shown.items())
    for secret in ("hunter2", "keypw", "kspw", "oauth"):
        assert secret not in text
    assert shown["PENSU_KAFKA_SASL_PASSWORD"] == MASK
    assert shown["PENSU_KAFKA_OPT_SSL_KEYSTORE_PASSWORD"] == MASK
    assert shown["PENSU_KAFKA_SASL_USERNAME"] == "bob"
    assert shown["PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS"] == "30000"
    assert json.loads(shown["PENSU_METRIC_RANGES"]) == {"a": [0, 2.5]}
    assert all(isinstance(v, str) for v in shown.values())
    assert {"PENSU_" + f.upper() for f in Settings.model_fields} <= set(shown)


def test_effective_settings_round_trip_through_load() -> None:
    """Unmasked effective values, fed back as variables, give the same settings."""
    first = load_settings({"PENSU_" + f.upper(): text for f, (text, _) in ENV_VALUES.items()})
    shown = {k: v for k, v in effective_settings(first).items() if v not in ("", MASK)}
    again = load_settings(shown)
    for field in Settings.model_fields:
        if not isinstance(getattr(first, field), SecretStr):
            assert getattr(again, field) == getattr(first, field), field


def test_metric_ranges_keep_order_and_types() -> None:
    s = load_settings({"PENSU_METRIC_RANGES": '{"web\\\\.a": [0, 1], "web\\\\..*": [-5, 5.5], "db": [1e3, 2e3]}'})
    assert list(s.metric_ranges) == [r"web\.a", r"web\..*", "db"]
    assert s.metric_ranges[r"web\..*"] == (-5.0, 5.5)
    assert all(isinstance(v, tuple) and len(v) == 2 for v in s.metric_ranges.values())


def test_allowed_metrics_pattern_compiles_as_given() -> None:
    s = load_settings({"PENSU_ALLOWED_TO_WORK_ON_METRICS": r"(web|db)\."})
    pattern = re.compile(s.allowed_to_work_on_metrics)
    # Start-anchored (re.match) semantics as documented, like the original Pensu.
    assert pattern.match("web.latency") and pattern.match("db.cpu")
    assert not pattern.match("app.web.latency")


def test_unknown_variables_are_reported_not_fatal() -> None:
    env = {"PENSU_HTTP_PROT": "81", "PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS": "1000", "PENSU_KAFKA_SERVERS": "k:1",
           "PENSU_KAFKA_CONSUMER_OPT_CHECK_CRCS": "true", "PENSU_PING_LISTEN_PORT": "81", "HOME": "/root",
           "PENSU_MAX_ALLOWED_MODEL": "5", "pensu_models_dir": "/m", "PENSU_TEST_KAFKA_BOOTSTRAP": "k:1"}
    assert unknown_variables(env) == ["PENSU_HTTP_PROT", "PENSU_MAX_ALLOWED_MODEL"]
    s = load_settings(env)  # typos do not stop start-up
    assert s.http_port == 8000 and s.max_allowed_models == 1000


def test_unknown_variables_default_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PENSU_PREDICTON_STEPS", "3")
    assert "PENSU_PREDICTON_STEPS" in unknown_variables()


def test_describe_settings_covers_every_field() -> None:
    rows = describe_settings()
    assert [r[0] for r in rows] == ["PENSU_" + f.upper() for f in Settings.model_fields]
    defaults = effective_settings(load_settings({}))
    for var, type_name, default, description in rows:
        assert type_name and description, var
        if var != "PENSU_INSTANCE_ID":  # documented as 'the host name', not this machine's
            assert default == defaults[var], var


def test_settings_table_markdown() -> None:
    table = settings_table_markdown()
    lines = table.strip().splitlines()
    assert lines[0] == "| Variable | Type | Default | Description |"
    body = lines[2:]
    for field in Settings.model_fields:
        assert sum(line.startswith(f"| `PENSU_{field.upper()}` |") for line in body) == 1
    assert any("PENSU_KAFKA_OPT_<NAME>" in line for line in body)
    for line in body:  # every row has exactly four cells (escaped pipes do not split)
        assert len(re.split(r"(?<!\\)\|", line)) == 6, line
