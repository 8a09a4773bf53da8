"""logstash/pipeline/pensu.conf: parses, uses bundled plugins, reads the real topics, writes to Graphite,
and lets through exactly the carbon lines Pensu and its producers write."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from pensu.analyzer import Analysis, Thresholds
from pensu.decision import OPENED, TEMPORAL, EpisodeEvent
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.settings import Settings
from tests.stack.stack_files import (
    LogstashParser,
    Plugin,
    container_ports,
    iter_conditions,
    iter_plugins,
    load_compose,
    load_logstash_pipeline,
    service_env,
)

# Plugins shipped in the default Logstash 8 distribution that this pipeline may use.
BUNDLED = {
    "input": {"kafka"},
    "filter": {"split", "mutate", "drop", "json"},
    "output": {"tcp", "http"},
    "codec": {"plain", "line", "json"},
}


@pytest.fixture(scope="module")
def pipeline() -> dict[str, list[Any]]:
    return load_logstash_pipeline()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def stream_of(plugin: Plugin) -> str:
    return plugin.get("add_field", {})["[@metadata][stream]"]


def kafka_inputs(pipeline: dict[str, list[Any]]) -> dict[str, Plugin]:
    return {stream_of(p): p for p in iter_plugins(pipeline["input"]) if p.name == "kafka"}


def carbon_line_filter(pipeline: dict[str, list[Any]]):  # noqa: ANN201 - returns a function
    """The pipeline's carbon steps in Python: split on newlines, strip, squeeze blanks, then keep
    lines that the drop rule `[message] !~ /regex/` spares. After the split a message holds no
    newline, so Ruby's line anchors and Python's string anchors agree on `^...$`."""
    conditions = [c for c in iter_conditions(pipeline["filter"]) if c.startswith("[message] !~")]
    assert len(conditions) == 1
    regex = re.compile(conditions[0].split("!~", 1)[1].strip()[1:-1])

    def forwarded(message: str) -> list[str]:
        out = []
        for line in message.split("\n"):
            line = re.sub(r"[ \t]+", " ", line.strip())
            if regex.search(line) is not None:
                out.append(line)
        return out

    return forwarded


def analysis(metric: str, ts: float, *, reported: bool, value: float = 42.5) -> Analysis:
    return Analysis(metric=metric, timestamp=ts, value=value, anomaly_score=0.875, anomaly_likelihood=0.999995,
                    log_likelihood=0.61, final_score=0.61, spatial_anomaly=False, predicted_value=12.25,
                    prediction_confidence=0.3, forecast=13.0, forecast_confidence=0.25,
                    forecast_timestamp=ts + 60, direction=1 if reported else 0, reported=reported,
                    model_age=1200, warming_up=False, anomalous=reported,
                    event=EpisodeEvent(OPENED, f"{metric}@{ts:.0f}", ts, 0.61, TEMPORAL, (10.0, 14.5), 1, 1)
                    if reported else None)


def test_pipeline_parses_into_the_three_sections(pipeline: dict[str, list[Any]]) -> None:
    assert set(pipeline) == {"input", "filter", "output"}


def test_parser_rejects_broken_configs() -> None:
    for broken in ('input { kafka { topics => ["a"] }', 'filter { if [a] == "b" { drop {} }',
                   'output { tcp { host => "x }', 'nonsense { }'):
        with pytest.raises(ValueError):
            LogstashParser(broken).parse()


def test_only_bundled_plugins(pipeline: dict[str, list[Any]]) -> None:
    for section, nodes in pipeline.items():
        for plugin in iter_plugins(nodes):
            assert plugin.name in BUNDLED[section], f"{section} plugin {plugin.name}"
            for _, value in plugin.attrs:
                if isinstance(value, Plugin):
                    assert value.name in BUNDLED["codec"], value.name


def test_reads_the_real_topics(pipeline: dict[str, list[Any]], defaults: Settings) -> None:
    inputs = kafka_inputs(pipeline)
    assert set(inputs) == {"carbon", "report"}
    assert set(inputs["carbon"].get("topics")) == {
        defaults.metrics_kafka_topic, defaults.reported_anomalies_kafka_topic,
        defaults.prediction_metrics_kafka_topic}
    assert inputs["report"].get("topics") == [defaults.anomalies_metrics_kafka_topic]
    # Separate consumer groups, and history first (backfilled data reaches Graphite too).
    assert inputs["carbon"].get("group_id") != inputs["report"].get("group_id")
    assert all(p.get("auto_offset_reset") == "earliest" for p in inputs.values())


def test_kafka_address_matches_compose(pipeline: dict[str, list[Any]], compose: dict[str, Any]) -> None:
    bootstrap = service_env(compose["services"]["pensu"])["PENSU_KAFKA_BOOTSTRAP_SERVERS"]
    for plugin in kafka_inputs(pipeline).values():
        assert plugin.get("bootstrap_servers") == bootstrap


def test_writes_to_the_graphite_service(pipeline: dict[str, list[Any]], compose: dict[str, Any]) -> None:
    outputs = {p.name: p for p in iter_plugins(pipeline["output"])}
    graphite_ports = container_ports(compose["services"]["graphite"])

    tcp = outputs["tcp"]
    assert tcp.get("host") == "graphite" and "graphite" in compose["services"]
    assert tcp.get("port") == 2003 and 2003 in graphite_ports  # carbon plaintext receiver
    codec = tcp.get("codec")
    assert isinstance(codec, Plugin) and codec.name == "line" and codec.get("format") == "%{message}"

    http = outputs["http"]
    url = urlsplit(http.get("url"))
    assert url.hostname == "graphite" and (url.port or 80) in graphite_ports
    assert url.path == "/events/"
    assert http.get("http_method") == "post" and http.get("format") == "json"


def test_every_pensu_carbon_line_passes_the_filter(pipeline: dict[str, list[Any]], defaults: Settings,
                                                   sample_metric: str) -> None:
    forwarded = carbon_line_filter(pipeline)
    formatter = OutputFormatter(
        OutputTopics(defaults.reported_anomalies_kafka_topic, defaults.prediction_metrics_kafka_topic,
                     defaults.anomalies_metrics_kafka_topic),
        defaults.metric_names_template, Thresholds(), "pensu-test")
    carbon_topics = set(kafka_inputs(pipeline)["carbon"].get("topics"))
    lines = []
    for metric in (sample_metric, "a-b.c:d_e.F9"):
        for ts, value in ((1_700_000_000, 42.5), (1_700_000_060.5, -1e-05), (1_700_000_120, 3e20)):
            for record in formatter.records(analysis(metric, ts, reported=True, value=value)):
                if record.topic in carbon_topics:
                    lines.extend(record.value.decode().splitlines())
    assert len(lines) == 2 * 3 * 5
    # What a producer writes to the input topic (the generator's format), with CRLF and tabs.
    lines += [f"{sample_metric} {0.1!r} 1700000000", f"{sample_metric}\t7\t1700000000\r", " x.y 1 1700000000 "]
    for line in lines:
        assert forwarded(line) == [" ".join(line.split())], line
    # A message of several lines (one Kafka message may batch them) is forwarded line by line.
    assert forwarded("\n".join(lines[:5]) + "\n") == lines[:5]


def test_the_filter_drops_what_carbon_cannot_take(pipeline: dict[str, list[Any]]) -> None:
    forwarded = carbon_line_filter(pipeline)
    for bad in ("", "a.b", "a.b 1", "a.b one 1700000000", "a.b 1 1700000000 extra", "a..b 1 1700000000",
                "a b 1 1700000000", "a.b nan 1700000000", "a.b 1 -1700000000", "a/b 1 1700000000",
                "a.b\x0b1 1700000000", "a.b 1 1700000000;x"):
        assert forwarded(bad) == [], bad
    assert forwarded("bad line\nok.line 1 1700000000\n\n") == ["ok.line 1 1700000000"]


def test_reports_become_graphite_events(pipeline: dict[str, list[Any]], defaults: Settings,
                                        sample_metric: str) -> None:
    """The fields the report branch reads exist in Pensu's real JSON reports, with the types
    Graphite's /events/ endpoint needs (`when` a JSON number)."""
    formatter = OutputFormatter(
        OutputTopics(defaults.reported_anomalies_kafka_topic, defaults.prediction_metrics_kafka_topic,
                     defaults.anomalies_metrics_kafka_topic),
        defaults.metric_names_template, Thresholds(), "pensu-test")
    reports = [r for r in formatter.records(analysis(sample_metric, 1_700_000_000.0, reported=True))
               if r.topic == defaults.anomalies_metrics_kafka_topic]
    assert len(reports) == 1
    report = json.loads(reports[0].value)

    mutates = [p for p in iter_plugins(pipeline["filter"]) if p.name == "mutate"]
    copies = {k: v for p in mutates for k, v in (p.get("copy") or {}).items()}
    referenced = re.findall(r"\[@metadata\]\[report\]\[(\w+)\]", json.dumps(copies) + "".join(
        json.dumps(p.attrs) for p in mutates) + "".join(iter_conditions(pipeline["filter"])))
    assert referenced and set(referenced) <= set(report)
    when_source = next(src for src, dst in copies.items() if dst == "when")
    when_field = re.fullmatch(r"\[@metadata\]\[report\]\[(\w+)\]", when_source).group(1)
    assert isinstance(report[when_field], (int, float)) and report[when_field] == 1_700_000_000.0
    assert copies.get("message") == "data"  # the whole report is the event's text

    tags = [t for p in mutates for t in (p.get("add_tag") or [])]
    assert "pensu" in tags
    assert "%{[@metadata][report][metric]}" in tags  # lets Grafana filter events by metric
    whats = [p.get("add_field", {}).get("what") for p in mutates if "what" in p.get("add_field", {})]
    assert len(whats) == 1
