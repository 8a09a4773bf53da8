"""Service settings: every `PENSU_*` environment variable, validated once at start-up.

Reading rules
-------------
* A field `x` is read from `PENSU_X` (names are case-insensitive, as pydantic-settings does).
  An empty value counts as unset, so `PENSU_DEAD_LETTER_KAFKA_TOPIC=` keeps the default.
* `PENSU_KAFKA_SERVERS` (the original service's name) is accepted for
  `PENSU_KAFKA_BOOTSTRAP_SERVERS`; the new name wins when both are set.
* librdkafka options pass through unchanged: `PENSU_KAFKA_OPT_<NAME>` goes to both clients,
  `PENSU_KAFKA_CONSUMER_OPT_<NAME>` / `PENSU_KAFKA_PRODUCER_OPT_<NAME>` to one (and win over
  the shared one). `<NAME>` is lower-cased with `_` turned into `.`, so
  `PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS=30000` becomes `socket.timeout.ms=30000`. An option that
  a typed setting already controls is refused, so each knob has exactly one variable.
* `PENSU_ALLOWED_TO_WORK_ON_METRICS` uses `re.match` semantics like the original Pensu: the
  pattern is anchored at the start of the metric name only (`web` allows `web.latency`;
  append `$` to anchor the end too).
* `PENSU_METRIC_RANGES` is a JSON object `{"regex": [min, max], ...}`; the first pattern (in
  the object's order) that matches a metric (`re.match`) fixes its encoder range.

`load_settings` turns every problem into one `ConfigurationError` naming each bad variable
with the form it expects.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from pensu.carbon import DEFAULT_NAME_TEMPLATE, validate_name_template
from pensu.decision import (
    DEFAULT_LIKELIHOOD_THRESHOLD,
    DEFAULT_QUIET_SAMPLES,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SUPPRESSION_SAMPLES,
)
from pensu.errors import ConfigurationError
from pensu.htm.presets import PRESETS

__all__ = [
    "ModelPreset",
    "Settings",
    "describe_settings",
    "effective_settings",
    "load_settings",
    "settings_table_markdown",
    "unknown_variables",
]

ENV_PREFIX = "PENSU_"
EMBEDDED = "embedded"  # PENSU_KAFKA_BOOTSTRAP_SERVERS value asking for the in-process test broker
# The preset names have one source, pensu.htm.presets.PRESETS (a tuple subscript of Literal is
# the same as listing its items; type checkers, which cannot evaluate it, see a plain str).
if TYPE_CHECKING:
    ModelPreset = str
else:
    ModelPreset = Literal[tuple(PRESETS)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# Prefix of pass-through librdkafka options -> which client(s) receive them.
OPTION_PREFIXES: dict[str, str] = {
    "PENSU_KAFKA_OPT_": "both",
    "PENSU_KAFKA_CONSUMER_OPT_": "consumer",
    "PENSU_KAFKA_PRODUCER_OPT_": "producer",
}
# PENSU_* variables read by tests and benchmarks, not by the service: never typos.
TOOL_VARIABLES = frozenset({"PENSU_TEST_KAFKA_BOOTSTRAP", "PENSU_TEST_KAFKA_TIER", "PENSU_TEST_TANSU_LOG",
                            "PENSU_NAB_DATA", "PENSU_NAB_PRESET"})

MASK = "********"
_SENSITIVE_OPTION_WORDS = ("password", "secret", "token", "key.pem", "oauthbearer.config", "jaas")
_PLACEHOLDER = re.compile(r"\{\{#([^}]*)\}\}")
_CLIENT_ID_PLACEHOLDERS = ("instance_id", "time_started")
_TOPIC = re.compile(r"[A-Za-z0-9._\-]{1,249}")
_TOPIC_FORM = "a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)"
_SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
_SASL_MECHANISMS = ("GSSAPI", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")

# The environment mapping the settings being constructed read from (None: os.environ).
_SOURCE_ENV: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("pensu_source_env",
                                                                                      default=None)


def _source_env() -> Mapping[str, str]:
    env = _SOURCE_ENV.get()
    return os.environ if env is None else env


class _MappingEnvSource(EnvSettingsSource):
    """The env source, reading the mapping handed to `load_settings` instead of os.environ."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _source_env()
        # Case-insensitive like the stock source: keys lower-cased, empty values dropped.
        return {k.lower(): v for k, v in env.items() if v != ""}


# Variables of the original Pensu read under a new name, because the old one misleads: still
# read (the new name wins when both are set), each with a one-line deprecation warning.
RENAMED_VARIABLES: dict[str, str] = {
    "PENSU_REPORTED_ANOMALIES_KAFKA_TOPIC": "PENSU_ANOMALY_SCORES_KAFKA_TOPIC",  # carries score lines
    "PENSU_ANOMALIES_METRICS_KAFKA_TOPIC": "PENSU_ANOMALY_REPORTS_KAFKA_TOPIC",  # carries JSON reports
}


def _topic(default: str, description: str, renamed_from: str | None = None) -> Any:
    """A topic field; `renamed_from`: a deprecated variable still read (RENAMED_VARIABLES)."""
    if renamed_from is None:
        return Field(default, description=description, json_schema_extra={"expected": _TOPIC_FORM})
    new = RENAMED_VARIABLES[renamed_from]
    return Field(default, validation_alias=AliasChoices(new, renamed_from),
                 description=f"{description}; also read from the deprecated {renamed_from}.",
                 json_schema_extra={"expected": _TOPIC_FORM})


class Settings(BaseSettings):
    """Every setting of a Pensu instance; build it with `load_settings` for clear errors."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, env_ignore_empty=True,
                                      validate_by_name=True, validate_by_alias=True, extra="ignore")

    # --- Kafka connection -------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        None, validation_alias=AliasChoices("PENSU_KAFKA_BOOTSTRAP_SERVERS", "PENSU_KAFKA_SERVERS"),
        description="Kafka bootstrap servers (host:port,...) of both clients; also read from PENSU_KAFKA_SERVERS. "
                    "'embedded' runs an in-process test broker (librdkafka's mock cluster, data lost on exit). "
                    "Required unless PENSU_KAFKA_CONSUMER_SERVER and PENSU_KAFKA_PRODUCER_SERVER are both set.",
        json_schema_extra={"expected": "host:port[,host:port...] or 'embedded'"})
    kafka_consumer_server: str | None = Field(
        None, description="Bootstrap servers of the cluster the input topic is consumed from (the original "
                          "Pensu's variable); overrides PENSU_KAFKA_BOOTSTRAP_SERVERS for the consumer.",
        json_schema_extra={"expected": "host:port[,host:port...]"})
    kafka_producer_server: str | None = Field(
        None, description="Bootstrap servers of the cluster outputs are produced to (the original Pensu's "
                          "variable); overrides PENSU_KAFKA_BOOTSTRAP_SERVERS for the producer.",
        json_schema_extra={"expected": "host:port[,host:port...]"})
    kafka_consumer_group_id: str = Field("pensu", min_length=1,
                                         description="Consumer group shared by all Pensu instances.")
    kafka_consumer_client_id: str = Field(
        "pensu-consumer-{{#instance_id}}-{{#time_started}}", min_length=1,
        description="Consumer client.id; {{#instance_id}} and {{#time_started}} are replaced.",
        json_schema_extra={"expected": "a string with only {{#instance_id}}/{{#time_started}} placeholders"})
    kafka_producer_client_id: str = Field(
        "pensu-producer-{{#instance_id}}-{{#time_started}}", min_length=1,
        description="Producer client.id; {{#instance_id}} and {{#time_started}} are replaced.",
        json_schema_extra={"expected": "a string with only {{#instance_id}}/{{#time_started}} placeholders"})
    kafka_session_timeout_ms: int = Field(
        45000, ge=1, le=3_600_000,
        validation_alias=AliasChoices("PENSU_KAFKA_SESSION_TIMEOUT_MS", "PENSU_KAFKA_CONSUMER_SESSION_TIMEOUT_MS"),
        description="Consumer session.timeout.ms; also read from PENSU_KAFKA_CONSUMER_SESSION_TIMEOUT_MS.")
    kafka_security_protocol: str | None = Field(
        None, description="security.protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.",
        json_schema_extra={"expected": "one of " + ", ".join(_SECURITY_PROTOCOLS)})
    kafka_sasl_mechanism: str | None = Field(
        None, description="sasl.mechanism, e.g. PLAIN or SCRAM-SHA-512.",
        json_schema_extra={"expected": "one of " + ", ".join(_SASL_MECHANISMS)})
    kafka_sasl_username: str | None = Field(None, description="sasl.username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="sasl.password (masked in output).")
    kafka_ssl_ca_location: str | None = Field(None, description="ssl.ca.location (CA certificate file).")
    kafka_ssl_certificate_location: str | None = Field(None, description="ssl.certificate.location.")
    kafka_ssl_key_location: str | None = Field(None, description="ssl.key.location (client private key).")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="ssl.key.password (masked in output).")

    # --- Topics -------------------------------------------------------------------------
    metrics_kafka_topic: str = _topic("metrics", "Input topic of carbon lines.")
    # The original Pensu's names of the next two read backwards (REPORTED_ANOMALIES carried the
    # score lines, ANOMALIES_METRICS the JSON reports); they are still read, with a deprecation
    # line (RENAMED_VARIABLES), and the new name wins when both are set.
    anomaly_scores_kafka_topic: str = _topic(
        "pensu.htm.anomaly_metrics", "Output topic of anomaly score, likelihood and direction lines",
        renamed_from="PENSU_REPORTED_ANOMALIES_KAFKA_TOPIC")
    prediction_metrics_kafka_topic: str = _topic(
        "pensu.htm.predictions", "Output topic of prediction and prediction-confidence lines.")
    anomaly_reports_kafka_topic: str = _topic(
        "pensu_anomalies", "Output topic of JSON reports (episode opened / resolved)",
        renamed_from="PENSU_ANOMALIES_METRICS_KAFKA_TOPIC")
    topics_kafka_topic: str = _topic("pensu_topics", "Topic of the periodic list of monitored metrics.")
    topics_report_interval: float = Field(60.0, ge=0, allow_inf_nan=False,
                                          description="Seconds between monitored-metric lists; 0 disables.")
    dead_letter_kafka_topic: str | None = Field(
        None, description="Topic receiving rejected lines with their reason; unset: off.",
        json_schema_extra={"expected": _TOPIC_FORM})
    repartition: bool = Field(False, description="Run the repartition step that re-keys unkeyed input by "
                                                 "metric name.")
    repartition_kafka_topic: str = _topic("pensu.internal.repartition",
                                          "Internal topic of the repartition step.")

    # --- Outputs and decisions ------------------------------------------------------------
    metric_names_template: str = Field(
        DEFAULT_NAME_TEMPLATE, description="Output name prefix; {{#anomaly_metric}} becomes the output kind.",
        json_schema_extra={"expected": "a dotted carbon name containing {{#anomaly_metric}}"})
    allowed_to_work_on_metrics: str = Field(
        ".*", description="Regex of metrics to model, matched at the start of the name (re.match).",
        json_schema_extra={"expected": "a Python regular expression"})
    anomaly_score_threshold: float = Field(
        DEFAULT_SCORE_THRESHOLD, ge=0, le=1,
        description="Minimum raw anomaly score of a temporal-surprise sample (0: off); values outside "
                    "the range seen pass regardless. README: Decision rule.")
    anomaly_likelihood_threshold: float = Field(
        DEFAULT_LIKELIHOOD_THRESHOLD, ge=0, le=1,
        description="Minimum anomaly likelihood (raw units), applied to the final score as its log-scale "
                    "equivalent (0.99999 = final score 0.5).")
    minimum_confidence_for_reporting: float = Field(
        0.0, ge=0, le=1, description="Minimum confidence of the prediction made for a sample to count it "
                                     "anomalous.")
    # --- anomaly episodes (pensu.decision) ---
    episode_quiet_samples: int = Field(
        DEFAULT_QUIET_SAMPLES, ge=0, le=1_000_000,
        description="Consecutive normal samples that resolve an anomaly episode; 0: no episodes, every "
                    "anomalous sample is reported.")
    episode_suppression_samples: int = Field(
        DEFAULT_SUPPRESSION_SAMPLES, ge=0, le=1_000_000,
        description="Samples after an episode resolves during which no new episode opens.")
    prediction_steps: int = Field(1, ge=1, le=100, description="How many samples ahead to predict.")
    anomaly_model_preset: ModelPreset = Field("nab", description="HTM parameter preset of the anomaly model.")
    prediction_model_preset: ModelPreset = Field("nab",
                                                 description="HTM parameter preset of the prediction model.")

    # --- Models and state ---------------------------------------------------------------------
    max_allowed_models: int = Field(1000, ge=1,
                                    description="Analyzers resident in memory; beyond it the least recently "
                                                "used is checkpointed and swapped out.")
    min_seconds_between_over_quota_log_msg: float = Field(
        60.0, ge=0, allow_inf_nan=False, description="Minimum seconds between 'over quota' log messages.")
    max_tracked_metrics: int = Field(100_000, ge=1,
                                     description="Checkpoints kept on disk; the longest idle are deleted "
                                                 "beyond it (at least PENSU_MAX_ALLOWED_MODELS).")
    models_dir: Path = Field(Path("models"), description="Directory of model checkpoints.",
                             json_schema_extra={"expected": "a directory path"})
    checkpoint_store: Literal["local", "log", "kafka"] = Field(
        "local", description="Where checkpoints live: 'local' (a file per metric in PENSU_MODELS_DIR; shared volume "
                             "for several instances), 'log' (append-only segment files in PENSU_MODELS_DIR, one "
                             "instance per directory: swapping at disk speed when metrics far outnumber "
                             "PENSU_MAX_ALLOWED_MODELS) or 'kafka' (compacted topic PENSU_CHECKPOINT_KAFKA_TOPIC on "
                             "the input cluster, PENSU_MODELS_DIR only a cache). docs/scaling.md: Checkpoint store.")
    checkpoint_sync_interval: float = Field(
        0.0, ge=0, allow_inf_nan=False,
        description="Seconds between file-system syncs of local checkpoints; 0 syncs every save before it returns. "
                    "Above 0 (group commit) swapping runs at disk speed, but a host crash can lose that many seconds "
                    "of saves. docs/scaling.md: Swapping.")
    checkpoint_kafka_topic: str = _topic(
        "pensu.checkpoints", "Compacted topic of checkpoints with PENSU_CHECKPOINT_STORE=kafka (created with the "
                             "input topic's partition count).")
    checkpoint_kafka_quarantine_topic: str = _topic(
        "pensu.checkpoints.quarantine", "Topic receiving corrupt checkpoint records (with their reason) with "
                                        "PENSU_CHECKPOINT_STORE=kafka.")
    models_autosave_interval: float = Field(300.0, ge=0, allow_inf_nan=False,
                                            description="Seconds between checkpoints of changed models; 0 disables "
                                                        "the periodic save (eviction, hand-over and shutdown "
                                                        "still save).")
    metric_ranges: Annotated[dict[str, tuple[float, float]], NoDecode] = Field(
        default_factory=dict,
        description='JSON {"regex": [min, max]}: fixed encoder range for matching metrics (first match wins).',
        json_schema_extra={"expected": 'a JSON object {"regex": [min, max], ...} with min < max',
                           "default_doc": "{}"})
    warmup_samples: int = Field(150, ge=1,
                                description="Samples used to estimate a metric's range when none is configured.")

    # --- Alerting and namespaces (pensu.alerting, pensu.namespaces) ---------------------------
    alertmanager_url: str | None = Field(
        None, description="Alertmanager base URL (alerts go to <url>/api/v2/alerts); unset: off. README: Alerting.",
        json_schema_extra={"expected": "an http:// or https:// URL"})
    alertmanager_resend_interval: float = Field(
        60.0, ge=1, le=86400, allow_inf_nan=False,
        description="Seconds between re-sends of the firing alerts of open episodes; a firing alert's endsAt is "
                    "4 intervals ahead, so alerts of a stopped instance resolve on their own.")
    namespace_depth: int = Field(
        2, ge=1, le=20, description="Leading name segments that form a metric's namespace (at most all but the "
                                    "last segment).")
    incident_window_seconds: float = Field(
        300.0, ge=0, allow_inf_nan=False,
        description="Episodes opening in one namespace within this many seconds (sample time) of the "
                    "previous opening share an incident id; 0: every episode is its own incident.")
    anomaly_rate_interval: float = Field(
        60.0, ge=0, allow_inf_nan=False,
        description="Seconds between the namespace rate lines (pensu.anomaly_rate.<namespace> and this "
                    "instance's pensu.anomaly_rate_parts.{anomalous,total}.<instance>.<namespace> counts); "
                    "0 disables.")

    # --- Warm start (pensu.warm_start, README: Warm start) ------------------------------------
    graphite_url: str | None = Field(
        None, description="graphite-web base URL; a new metric's first sample fetches its last "
                          "PENSU_WARM_START_DAYS from <url>/render and learns them (no outputs) before its live "
                          "samples. Unset: off. README: Warm start.",
        json_schema_extra={"expected": "an http:// or https:// URL"})
    warm_start_days: float = Field(
        7.0, gt=0, le=366, allow_inf_nan=False,
        description="Days of history before a new metric's first sample fetched for its warm start.")
    warm_start_timeout: float = Field(
        30.0, gt=0, le=3600, allow_inf_nan=False,
        description="Seconds from a new metric's first sample within which its history must arrive (queueing "
                    "included); later, it starts cold. Also the HTTP connect/read timeout.")
    warm_start_concurrency: int = Field(4, ge=1, le=64, description="History fetches running at once.")
    warm_start_buffer: int = Field(
        1000, ge=1, le=1_000_000,
        description="Live samples held per metric while its warm start is in flight; one more starts it cold "
                    "(held samples are then processed first, in order).")

    feedback_kafka_topic: str | None = Field(
        None, description="Topic of feedback rules (false positive, mute, maintenance, ignore_below), keyed by rule "
                          "id; read from the start by every instance. Unset: no rules. README: Feedback.",
        json_schema_extra={"expected": _TOPIC_FORM})
    feedback_token: SecretStr | None = Field(
        None, description="Bearer token POST /feedback requires; unset: POST /feedback is refused (masked in "
                          "output).")
    feedback_false_positive_seconds: float = Field(
        7 * 86400.0, ge=0, allow_inf_nan=False,
        description="How long (sample time) a report marked false positive keeps similar deviations of its "
                    "metric from being reported, unless the record gives 'until'.")

    # --- Health, logging, identity ----------------------------------------------------------
    ping_listen_host: str = Field("0.0.0.0", min_length=1, description="Address of the TCP ping server.")
    ping_listen_port: int = Field(9999, ge=1, le=65535, description="Port of the TCP ping server.")
    http_host: str = Field("0.0.0.0", min_length=1, description="Address of /healthz, /readyz and /metrics.")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics; 0 disables.")
    logging_format: str = Field(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        description="Python logging format, or 'json' for one JSON object per line, or the original Pensu's "
                    "'key=%s;key=%s' form (keys timestamp, module, method, severity, state, metric, "
                    "exception_msg, exception_type, message; others stay empty).",
        json_schema_extra={"expected": "'json', a logging format with %(...)s fields, or 'key=%s;...'"})
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1,
                             description="Name of this instance in client ids and reports.",
                             json_schema_extra={"default_doc": "the host name"})

    # Pass-through librdkafka options (scope -> {option: value}) and their variables.
    _kafka_options: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)
    _kafka_option_vars: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor arguments, then the environment (or the mapping given to load_settings)."""
        return init_settings, _MappingEnvSource(settings_cls)

    # --- Field checks ---------------------------------------------------------------------------
    @field_validator("metrics_kafka_topic", "anomaly_scores_kafka_topic", "prediction_metrics_kafka_topic",
                     "anomaly_reports_kafka_topic", "topics_kafka_topic", "repartition_kafka_topic",
                     "dead_letter_kafka_topic", "feedback_kafka_topic", "checkpoint_kafka_topic",
                     "checkpoint_kafka_quarantine_topic")
    @classmethod
    def _check_topic(cls, value: str | None) -> str | None:
        if value is not None and (_TOPIC.fullmatch(value) is None or value in (".", "..")):
            raise ValueError("not a legal topic name")
        return value

    @field_validator("kafka_bootstrap_servers", "kafka_consumer_server", "kafka_producer_server")
    @classmethod
    def _check_servers(cls, value: str | None) -> str | None:
        if value is not None and any(not item.strip() or len(item.strip().split()) != 1
                                     for item in value.split(",")):
            raise ValueError("empty or blank-containing server entry")
        return value

    @field_validator("kafka_consumer_client_id", "kafka_producer_client_id")
    @classmethod
    def _check_client_id(cls, value: str) -> str:
        unknown = [p for p in _PLACEHOLDER.findall(value) if p not in _CLIENT_ID_PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown placeholder {{{{#{unknown[0]}}}}}")
        return value

    @field_validator("kafka_security_protocol")
    @classmethod
    def _check_protocol(cls, value: str | None) -> str | None:
        if value is not None and value.lower() not in _SECURITY_PROTOCOLS:
            raise ValueError("unknown protocol")
        return value

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _check_mechanism(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in _SASL_MECHANISMS:
            raise ValueError("unknown mechanism")
        return value

    @field_validator("metric_names_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        try:
            validate_name_template(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("alertmanager_url", "graphite_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("not an http(s) URL with a host")
        return value

    @field_validator("allowed_to_work_on_metrics")
    @classmethod
    def _check_regex(cls, value: str) -> str:
        _compile(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        # Accept any case; leave unknown values untouched so the error shows what was given.
        if isinstance(value, str) and value.upper() in typing.get_args(LogLevel):
            return value.upper()
        return value

    @field_validator("logging_format")
    @classmethod
    def _check_format(cls, value: str) -> str:
        if value != "json" and not is_legacy_logging_format(value):
            try:
                logging.Formatter(value, validate=True)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("metric_ranges", mode="before")
    @classmethod
    def _decode_ranges(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON ({exc.msg} at position {exc.pos})") from None
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        return value

    @field_validator("metric_ranges")
    @classmethod
    def _check_ranges(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for pattern, (lo, hi) in value.items():
            try:
                _compile(pattern)
            except ValueError as exc:
                raise ValueError(f"pattern {pattern!r}: {exc}") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"range of {pattern!r} must be finite with min < max, got [{lo}, {hi}]")
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Settings:
        self._kafka_options, self._kafka_option_vars, problems = _collect_options(_source_env())
        problems += _librdkafka_problems(self._kafka_options, self._kafka_option_vars)
        if self.kafka_bootstrap_servers == EMBEDDED and (self.kafka_consumer_server or self.kafka_producer_server):
            problems.append("PENSU_KAFKA_BOOTSTRAP_SERVERS: expected host:port[,host:port...] when "
                            "PENSU_KAFKA_CONSUMER_SERVER or PENSU_KAFKA_PRODUCER_SERVER is set, got 'embedded'")
        if self.max_tracked_metrics < self.max_allowed_models:
            # Fewer checkpoints than resident models would delete swapped-out models' state.
            problems.insert(0, f"PENSU_MAX_TRACKED_METRICS: expected an integer >= PENSU_MAX_ALLOWED_MODELS "
                               f"({self.max_allowed_models}), got {self.max_tracked_metrics}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # --- Deprecated attribute names (code written against the original variable names) ------
    @property
    def reported_anomalies_kafka_topic(self) -> str:
        """Deprecated: `anomaly_scores_kafka_topic` (score, likelihood and direction lines)."""
        return self.anomaly_scores_kafka_topic

    @property
    def anomalies_metrics_kafka_topic(self) -> str:
        """Deprecated: `anomaly_reports_kafka_topic` (JSON reports)."""
        return self.anomaly_reports_kafka_topic

    # --- librdkafka configurations -----------------------------------------------------------
    @property
    def embedded_broker(self) -> bool:
        """True when PENSU_KAFKA_BOOTSTRAP_SERVERS=embedded asks for the in-process test broker."""
        return self.kafka_bootstrap_servers == EMBEDDED

    def consumer_servers(self) -> str | None:
        """Bootstrap servers of the consumer (None: not configured, or the embedded broker)."""
        return self.kafka_consumer_server or (None if self.embedded_broker else self.kafka_bootstrap_servers)

    def producer_servers(self) -> str | None:
        """Bootstrap servers of the producer (None: not configured, or the embedded broker)."""
        return self.kafka_producer_server or (None if self.embedded_broker else self.kafka_bootstrap_servers)

    def missing_broker_problem(self) -> str | None:
        """The one-line message `pensu run` stops with when no cluster is configured, else None."""
        if self.embedded_broker:
            return None
        missing = [name for name, servers in (("PENSU_KAFKA_CONSUMER_SERVER", self.consumer_servers()),
                                              ("PENSU_KAFKA_PRODUCER_SERVER", self.producer_servers()))
                   if not servers]
        if not missing:
            return None
        if len(missing) == 2:
            return ("no Kafka cluster configured: set PENSU_KAFKA_BOOTSTRAP_SERVERS=host:port (or "
                    "PENSU_KAFKA_CONSUMER_SERVER and PENSU_KAFKA_PRODUCER_SERVER), or "
                    "PENSU_KAFKA_BOOTSTRAP_SERVERS=embedded for an in-process test broker")
        return (f"{missing[0]}: expected host:port[,host:port...] (or set PENSU_KAFKA_BOOTSTRAP_SERVERS), "
                f"got nothing")

    def _common_config(self, client_id_template: str, instance_id: str, time_started: str,
                       servers: str | None = None) -> dict[str, Any]:
        conf: dict[str, Any] = {"client.id": render_client_id(client_id_template, instance_id, time_started)}
        if servers:
            conf["bootstrap.servers"] = servers
        conf.update(self._security_config())
        conf.update(self._kafka_options.get("both", {}))
        return conf

    def _security_config(self) -> dict[str, str]:
        pairs: dict[str, str | SecretStr | None] = {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": self.kafka_sasl_password,
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
            "ssl.key.password": self.kafka_ssl_key_password,
        }
        return {k: v.get_secret_value() if isinstance(v, SecretStr) else v
                for k, v in pairs.items() if v is not None}

    def consumer_config(self, instance_id: str, time_started: str, *, servers: str | None = None,
                        group_suffix: str = "") -> dict[str, Any]:
        """The one librdkafka consumer configuration, layered in this order (later wins):

        1. defaults an operator may change with a pass-through option;
        2. connection: client.id, bootstrap.servers (`servers` replaces the configured ones,
           e.g. the embedded broker), security settings, then PENSU_KAFKA_OPT_*;
        3. PENSU_KAFKA_CONSUMER_OPT_*;
        4. keys owned by a typed setting or fixed by Pensu (pass-through refuses them).

        `group_suffix` names a separate consumer group (the repartition stage's). Callers add
        only callables (logger, error_cb).
        """
        return {
            # 1. defaults
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # An input topic created after start-up is noticed within this (librdkafka: 5 min).
            "topic.metadata.refresh.interval.ms": 30000,
            # 2. and 3.
            **self._common_config(self.kafka_consumer_client_id, instance_id, time_started,
                                  servers or self.consumer_servers()),
            **self._kafka_options.get("consumer", {}),
            # 4. Offsets are committed by Pensu only after outputs are delivered.
            "group.id": self.kafka_consumer_group_id + group_suffix,
            "session.timeout.ms": self.kafka_session_timeout_ms,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }

    def producer_config(self, instance_id: str, time_started: str, *, servers: str | None = None) -> dict[str, Any]:
        """The librdkafka producer configuration: connection (`servers` replaces the configured
        bootstrap servers), security, PENSU_KAFKA_OPT_*, then PENSU_KAFKA_PRODUCER_OPT_*.

        `pensu.kafka_io.OutputProducer` puts its delivery defaults (idempotence, unbounded retry)
        under these; callers add only callables (logger, error_cb).
        """
        return {**self._common_config(self.kafka_producer_client_id, instance_id, time_started,
                                      servers or self.producer_servers()),
                **self._kafka_options.get("producer", {})}

    def kafka_options(self) -> dict[str, str]:
        """The pass-through variables these settings picked up: env var name -> value."""
        return dict(self._kafka_option_vars)


# librdkafka options owned by a typed setting (or fixed by the service) -> who owns them.
_RESERVED_OPTIONS: dict[str, str] = {
    "bootstrap.servers": "use PENSU_KAFKA_BOOTSTRAP_SERVERS or PENSU_KAFKA_CONSUMER_SERVER / "
                         "PENSU_KAFKA_PRODUCER_SERVER",
    "metadata.broker.list": "use PENSU_KAFKA_BOOTSTRAP_SERVERS",
    "logger": "Pensu routes librdkafka's logs to its own logging",
    "group.id": "use PENSU_KAFKA_CONSUMER_GROUP_ID",
    "client.id": "use PENSU_KAFKA_CONSUMER_CLIENT_ID / PENSU_KAFKA_PRODUCER_CLIENT_ID",
    "session.timeout.ms": "use PENSU_KAFKA_SESSION_TIMEOUT_MS",
    "log.queue": "Pensu routes librdkafka's logs to its own logging",
    "security.protocol": "use PENSU_KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "use PENSU_KAFKA_SASL_MECHANISM",
    "sasl.mechanisms": "use PENSU_KAFKA_SASL_MECHANISM",
    "sasl.username": "use PENSU_KAFKA_SASL_USERNAME",
    "sasl.password": "use PENSU_KAFKA_SASL_PASSWORD",
    "ssl.ca.location": "use PENSU_KAFKA_SSL_CA_LOCATION",
    "ssl.certificate.location": "use PENSU_KAFKA_SSL_CERTIFICATE_LOCATION",
    "ssl.key.location": "use PENSU_KAFKA_SSL_KEY_LOCATION",
    "ssl.key.password": "use PENSU_KAFKA_SSL_KEY_PASSWORD",
    "enable.auto.commit": "Pensu commits offsets itself, after outputs are delivered",
    "enable.auto.offset.store": "Pensu commits offsets itself, after outputs are delivered",
}


# Variables of the original Pensu that have no setting here: accepted (never "typos"), each
# with a one-line deprecation warning saying what replaces it. Their values are not used.
DEPRECATED_VARIABLES: dict[str, str] = {
    "PENSU_ANOMALYCALC_FILENAME": "has no effect: each metric's anomaly-likelihood state is saved inside its "
                                  "checkpoint under PENSU_MODELS_DIR",
    "PENSU_LOG_MINIMUM_SEVERITY": "has no effect: use PENSU_LOG_LEVEL (DEBUG, INFO, WARNING, ERROR, CRITICAL)",
    "PENSU_LOG_TO_CONSOLE": "has no effect: logs always go to stderr (format: PENSU_LOGGING_FORMAT)",
    "PENSU_LOG_TO_SYSLOG": "has no effect: Pensu logs to stderr only; forward it with your log collector",
}
# Kafka brokers refuse session timeouts below group.min.session.timeout.ms (6000 by default).
BROKER_MIN_SESSION_TIMEOUT_MS = 6000


def deprecation_warnings(env: Mapping[str, str] | None = None, settings: Settings | None = None) -> list[str]:
    """One line per deprecated or doubtful variable that is set in `env` (default: os.environ)."""
    source = os.environ if env is None else env
    upper = {k.upper(): v for k, v in source.items()}
    lines = [f"{name} is deprecated and {why}" for name, why in DEPRECATED_VARIABLES.items() if name in upper]
    for old, new in RENAMED_VARIABLES.items():
        if old in upper:
            lines.append(f"{old} is deprecated (its name reads backwards): rename it {new}"
                         + (f"; both are set and {new} wins" if upper.get(new) else "; its value is used"))
    if settings is not None and settings.kafka_session_timeout_ms < BROKER_MIN_SESSION_TIMEOUT_MS:
        lines.append(f"{_variable_used('kafka_session_timeout_ms', source)}={settings.kafka_session_timeout_ms} is "
                     f"below Kafka's default group.min.session.timeout.ms ({BROKER_MIN_SESSION_TIMEOUT_MS}): the "
                     f"broker may refuse to let the consumer join")
    return lines


def is_legacy_logging_format(fmt: str) -> bool:
    """True for the original Pensu's positional 'key=%s;key=%s' logging format."""
    return "%s" in fmt and "%(" not in fmt


def _librdkafka_problems(options: dict[str, dict[str, str]], variables: dict[str, str]) -> list[str]:
    """Ask librdkafka itself about each pass-through option (unknown names, bad values)."""
    from confluent_kafka import Consumer, KafkaException, Producer

    by_option: dict[tuple[str, str], str] = {}
    for var in variables:
        found = _option_scope(var)
        if found is not None:
            by_option[found] = var
    problems = []
    for scope, scoped in options.items():
        for option, value in scoped.items():
            var = by_option.get((scope, option), option)
            # A client is only configured here, never connected or polled (its log lines are never served).
            conf: dict[str, Any] = {"logger": _QUIET_LOGGER, option: value}
            try:
                if scope == "consumer":
                    Consumer({"group.id": "pensu-settings-check", **conf}).close()
                else:
                    Producer(conf)
            except (KafkaException, ValueError, TypeError) as exc:
                err = exc.args[0] if exc.args else exc
                reason = " ".join((err.str() if hasattr(err, "str") else str(err)).split())
                problems.append(f"{var}: librdkafka refused {option}={value!r} ({reason})")
    return problems


_QUIET_LOGGER = logging.getLogger("pensu.settings.librdkafka_check")


def _option_scope(name: str) -> tuple[str, str] | None:
    """(scope, librdkafka name) of a pass-through variable, None if it is not one."""
    upper = name.upper()
    for prefix, scope in OPTION_PREFIXES.items():
        if upper.startswith(prefix):
            return scope, upper[len(prefix):].lower().replace("_", ".")
    return None


def _collect_options(env: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, str], list[str]]:
    options: dict[str, dict[str, str]] = {"both": {}, "consumer": {}, "producer": {}}
    variables: dict[str, str] = {}
    problems: list[str] = []
    for name in sorted(env):
        found = _option_scope(name)
        value = env[name]
        if found is None or value == "":
            continue
        scope, option = found
        var = name.upper()
        if not option.strip("."):
            problems.append(f"{var}: expected PENSU_KAFKA_[CONSUMER_|PRODUCER_]OPT_<NAME> with a librdkafka "
                            f"option name, got an empty name")
        elif option in _RESERVED_OPTIONS:
            problems.append(f"{var}: {option} cannot be passed through ({_RESERVED_OPTIONS[option]})")
        else:
            options[scope][option] = value
            variables[var] = value
    return options, variables, problems


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None


def render_client_id(template: str, instance_id: str, time_started: str) -> str:
    """Replace `{{#instance_id}}` and `{{#time_started}}` in a client id template."""
    return template.replace("{{#instance_id}}", instance_id).replace("{{#time_started}}", time_started)


# --- Loading and errors ---------------------------------------------------------------------------

def env_var(field_name: str) -> str:
    """The environment variable of a settings field."""
    return ENV_PREFIX + field_name.upper()


def _field_for_loc(head: Any) -> str | None:
    """Field name of an error location head (a field name or one of its aliases)."""
    if head in Settings.model_fields:
        return str(head)
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and head in alias.choices:
            return name
    return None


def _variable_used(field_name: str, env: Mapping[str, str]) -> str:
    """The variable that carried a field's value (an alias when that is what was set)."""
    info = Settings.model_fields[field_name]
    upper = {k.upper() for k, v in env.items() if v != ""}
    if isinstance(info.validation_alias, AliasChoices):
        for choice in info.validation_alias.choices:
            if isinstance(choice, str) and choice.upper() in upper:
                return choice.upper()
    return env_var(field_name)


def _bound_text(metadata: list[Any]) -> tuple[Any, Any, bool, bool]:
    lo = hi = None
    lo_strict = hi_strict = False
    for m in metadata:
        for attr, strict, is_lo in (("ge", False, True), ("gt", True, True), ("le", False, False),
                                    ("lt", True, False)):
            v = getattr(m, attr, None)
            if v is not None:
                if is_lo:
                    lo, lo_strict = v, strict
                else:
                    hi, hi_strict = v, strict
    return lo, hi, lo_strict, hi_strict


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def expected_form(field_name: str) -> str:
    """Human description of the values a field accepts, e.g. 'an integer 1-65535'."""
    info = Settings.model_fields[field_name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "expected" in extra:
        return str(extra["expected"])
    annotation = _strip_optional(info.annotation)
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        noun = "an integer" if annotation is int else "a number"
        lo, hi, lo_strict, hi_strict = _bound_text(info.metadata)
        if lo is not None and hi is not None and not lo_strict and not hi_strict:
            return f"{noun} {_num(lo)}-{_num(hi)}"
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_strict else '>='} {_num(lo)}")
        if hi is not None:
            parts.append(f"{'<' if hi_strict else '<='} {_num(hi)}")
        return f"{noun} {' and '.join(parts)}".rstrip()
    if annotation is SecretStr:
        return "a string (secret)"
    if annotation is Path:
        return "a path"
    return "a non-empty string"


def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if args and type(None) in args and len(args) == 2:
        return next(a for a in args if a is not type(None))
    return annotation


def _shown(value: Any, secret: bool) -> str:
    if secret:
        return "(hidden)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe_error(error: Mapping[str, Any], env: Mapping[str, str]) -> str:
    loc = error.get("loc") or ()
    field = _field_for_loc(loc[0]) if loc else None
    reason = ""
    if error.get("type") in ("value_error", "assertion_error"):
        reason = str(error.get("ctx", {}).get("error", ""))
    if field is None:
        # Whole-model checks already phrase their messages with variable names.
        return reason or str(error.get("msg", "invalid settings"))
    secret = _strip_optional(Settings.model_fields[field].annotation) is SecretStr
    variable = _variable_used(field, env)
    # Show the text as given in the environment; nested errors' inputs are only fragments.
    raw = {k.upper(): v for k, v in env.items()}.get(variable, error.get("input"))
    message = f"{variable}: expected {expected_form(field)}, got {_shown(raw, secret)}"
    return f"{message} ({reason})" if reason else message


def _error_order(error: Mapping[str, Any]) -> int:
    """Declaration index of the erring field, so messages follow the settings table."""
    loc = error.get("loc") or ()
    field = _field_for_loc(loc[0]) if loc else None
    return list(Settings.model_fields).index(field) if field else len(Settings.model_fields)


def _problem_text(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} invalid settings:\n  " + "\n  ".join(problems)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: os.environ); any problem is one ConfigurationError."""
    source = os.environ if env is None else env
    token = _SOURCE_ENV.set(dict(source))
    try:
        return Settings()
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=_error_order)
        problems = [_describe_error(e, source) for e in errors]
        if all(e.get("loc") for e in errors):
            # Whole-model checks did not run; still report bad pass-through options now.
            problems += _collect_options(source)[2]
        problems = list(dict.fromkeys(line for p in problems for line in p.split("\n")))
        raise ConfigurationError(_problem_text(problems)) from None
    except SettingsError as exc:
        raise ConfigurationError(str(exc)) from None
    finally:
        _SOURCE_ENV.reset(token)


def known_variables() -> set[str]:
    """Every variable name Settings reads (fields and aliases), upper-case."""
    names = {env_var(name) for name in Settings.model_fields}
    for info in Settings.model_fields.values():
        if isinstance(info.validation_alias, AliasChoices):
            names.update(c.upper() for c in info.validation_alias.choices if isinstance(c, str))
    return names


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """PENSU_* variables that are neither settings nor pass-through options (likely typos)."""
    source = os.environ if env is None else env
    known = known_variables() | TOOL_VARIABLES | set(DEPRECATED_VARIABLES)
    unknown = []
    for name in source:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        found = _option_scope(upper)
        if found is not None and found[1].strip("."):
            continue
        unknown.append(name)
    return sorted(unknown)


# --- Describing ----------------------------------------------------------------------------------

def _type_name(field_name: str) -> str:
    info = Settings.model_fields[field_name]
    annotation = info.annotation
    optional = _strip_optional(annotation) is not annotation
    base = _strip_optional(annotation)
    if typing.get_origin(base) is Literal:
        text = " | ".join(str(a) for a in typing.get_args(base))
    elif base is SecretStr:
        text = "secret"
    elif typing.get_origin(base) is dict:
        text = "JSON object"
    elif base is Path:
        text = "path"
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} (optional)" if optional else text


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) or abs(value) < 1e-3 else repr(value)
    if isinstance(value, dict):
        return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in value.items()})
    return str(value)


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(env var, type, default, description) of every field of the class, in declaration order."""
    rows = []
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "default_doc" in extra:
            default = str(extra["default_doc"])
        else:
            default = _format_value(info.get_default(call_default_factory=True))
        rows.append((env_var(name), _type_name(name), default, info.description or ""))
    return rows


def effective_settings(s: Settings) -> dict[str, str]:
    """Every setting's variable and value as text, secrets and sensitive options masked."""
    out = {env_var(name): _format_value(getattr(s, name)) for name in Settings.model_fields}
    for var, value in sorted(s.kafka_options().items()):
        found = _option_scope(var)
        sensitive = found is not None and any(w in found[1] for w in _SENSITIVE_OPTION_WORDS)
        out[var] = MASK if sensitive else value
    return out


_PASS_THROUGH_ROWS = (
    ("PENSU_KAFKA_OPT_<NAME>", "str", "", "Any librdkafka option for both clients; NAME lower-cased, _ -> . "
                                          "(PENSU_KAFKA_OPT_SOCKET_TIMEOUT_MS -> socket.timeout.ms)."),
    ("PENSU_KAFKA_CONSUMER_OPT_<NAME>", "str", "", "librdkafka option for the consumer only (wins over "
                                                   "PENSU_KAFKA_OPT_)."),
    ("PENSU_KAFKA_PRODUCER_OPT_<NAME>", "str", "", "librdkafka option for the producer only (wins over "
                                                   "PENSU_KAFKA_OPT_)."),
)


def _cell(text: str) -> str:
    # Pipes would split a Markdown table cell; braces and underscores are fine inside code.
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table_markdown() -> str:
    """The settings as a Markdown table (Variable, Type, Default, Description) for the README."""
    lines = ["| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for var, type_name, default, description in [*describe_settings(), *_PASS_THROUGH_ROWS]:
        shown_default = f"`{_cell(default)}`" if default else ""
        lines.append(f"| `{var}` | {_cell(type_name)} | {shown_default} | {_cell(description)} |")
    return "\n".join(lines) + "\n"
