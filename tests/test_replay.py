"""`pensu replay` decides like the service: same PENSU_* settings, same code, `reported` per row."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.errors import ConfigurationError
from pensu.feedback_io import FeedbackUnavailable, replay_rules
from pensu.replay import OUTPUT_COLUMNS, build_analyzer, run_replay
from pensu.settings import load_settings
from tests.conftest import KafkaCluster
from tests.support import series

FAST = {"PENSU_ANOMALY_MODEL_PRESET": "small", "PENSU_PREDICTION_MODEL_PRESET": "small",
        "PENSU_WARMUP_SAMPLES": "30"}


def samples_with_outliers() -> list[tuple[float, float]]:
    """Two days of a learned periodic signal at 5 min, then a spike, then a dip a day later."""
    samples = series(600)
    samples[450] = (samples[450][0], 1000.0)
    samples[560] = (samples[560][0], -1000.0)
    return samples


def write_csv(path: Path, samples: list[tuple[float, float]]) -> Path:
    path.write_text("timestamp,value\n" + "".join(f"{int(ts)},{v!r}\n" for ts, v in samples))
    return path


def replay_rows(tmp_path: Path, env: dict[str, str], samples: list[tuple[float, float]],
                **kwargs: object) -> tuple[list[dict[str, str]], str]:
    err = io.StringIO()
    out = tmp_path / "out.csv"
    code = run_replay(write_csv(tmp_path / "in.csv", samples), out, env=env, err=err, **kwargs)  # type: ignore[arg-type]
    assert code == 0, err.getvalue()
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == OUTPUT_COLUMNS
    return rows, err.getvalue()


@pytest.mark.parametrize("extra", [{},
                                   {"PENSU_EPISODE_QUIET_SAMPLES": "0", "PENSU_ANOMALY_LIKELIHOOD_THRESHOLD": "0.999"},
                                   {"PENSU_EPISODE_SUPPRESSION_SAMPLES": "200", "PENSU_EPISODE_QUIET_SAMPLES": "3"}],
                         ids=["defaults", "per-sample", "suppression"])
def test_reported_column_is_the_service_analyzers_decision(tmp_path: Path, extra: dict[str, str]) -> None:
    env = {**FAST, **extra}
    samples = samples_with_outliers()
    rows, _ = replay_rows(tmp_path, env, samples, metric="web.latency")
    service_analyzer = MetricAnalyzer("web.latency", analyzer_config(load_settings(env)))
    expected = [service_analyzer.process(ts, v) for ts, v in samples]
    assert [r["reported"] for r in rows] == [str(int(a.reported)) for a in expected]
    assert [r["event"] for r in rows] == [a.event.event if a.event else "" for a in expected]
    assert [float(r["anomaly_score"]) for r in rows] == [a.final_score for a in expected]


def test_thresholds_from_the_environment_change_what_is_reported(tmp_path: Path) -> None:
    samples = samples_with_outliers()
    default_rows, default_err = replay_rows(tmp_path, FAST, samples)
    opened = [i for i, r in enumerate(default_rows) if r["reported"] == "1"]
    assert 450 in opened and 560 in opened  # the spike and the dip, each reported
    assert all(default_rows[i]["reported"] == "0" for i in range(451, 460))  # ...once
    chatty_rows, chatty_err = replay_rows(tmp_path, {**FAST, "PENSU_EPISODE_QUIET_SAMPLES": "0",
                                                     "PENSU_ANOMALY_LIKELIHOOD_THRESHOLD": "0"}, samples)
    assert sum(r["reported"] == "1" for r in chatty_rows) == len(samples) - 29  # every modelled row
    assert f"{len(opened)} reported anomalies" in default_err
    assert f"{len(samples) - 29} reported anomalies" in chatty_err


def test_alerts_per_day_are_printed(tmp_path: Path) -> None:
    samples = samples_with_outliers()
    rows, err = replay_rows(tmp_path, FAST, samples)
    days: dict[str, int] = {}
    for (ts, _), row in zip(samples, rows):
        day = datetime.fromtimestamp(ts, UTC).date().isoformat()
        days[day] = days.get(day, 0) + int(row["reported"])
    total = sum(days.values())
    assert f"alerts per day: {total} alerts over {len(days)} days" in err
    for day, n in days.items():
        assert (f"replay:   {day} {n}\n" in err) == (n > 0)


def test_metric_ranges_apply_through_the_metric_name() -> None:
    env = {**FAST, "PENSU_METRIC_RANGES": json.dumps({"cpu\\.": [0, 100]})}
    fixed = build_analyzer(env, metric="cpu.user")
    free = build_analyzer(env, metric="mem.used")
    assert not fixed.anomaly_model.warming_up and free.anomaly_model.warming_up
    assert build_analyzer(env, min_value=0, max_value=10, metric="mem.used").anomaly_model.resolution is not None
    # Command-line overrides win over the environment.
    assert build_analyzer({**FAST, "PENSU_PREDICTION_STEPS": "3"}, steps=2).prediction_steps == 2
    assert build_analyzer({**FAST, "pensu_prediction_steps": "3"}, steps=2).prediction_steps == 2


def test_a_bad_setting_stops_replay_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="PENSU_EPISODE_QUIET_SAMPLES"):
        build_analyzer({**FAST, "PENSU_EPISODE_QUIET_SAMPLES": "-1"})



def write_rules(path: Path, records: list[dict]) -> Path:
    path.write_text("# feedback rules, one JSON record per line\n" + "".join(json.dumps(r) + "\n" for r in records))
    return path


def test_feedback_rules_apply_to_replay_as_in_the_service(tmp_path: Path) -> None:
    samples = samples_with_outliers()
    env = {**FAST, "PENSU_EPISODE_QUIET_SAMPLES": "10"}
    plain, _ = replay_rules_run(tmp_path, env, samples, None)
    assert plain[450]["reported"] == "1" and plain[560]["reported"] == "1"
    spike_end = next(i for i in range(451, 560) if plain[i]["event"] == "resolved")
    assert spike_end < 500
    rules = write_rules(tmp_path / "rules.jsonl", [
        {"id": "deploy", "kind": "mute", "pattern": "web\\.", "until": samples[450][0] + 1, "reason": "deploy"},
        {"id": "outage", "kind": "maintenance", "pattern": "web\\.", "start": samples[500][0],
         "end": datetime.fromtimestamp(samples[510][0], UTC).isoformat(), "learn": False},
        {"id": "old", "kind": "ignore_below", "pattern": "web\\.", "threshold": -5000},
        {"id": "old", "kind": "delete"},  # a later record with the same id deletes it, as on the topic
    ])
    rows, err = replay_rules_run(tmp_path, env, samples, rules)
    assert (rows[450]["reported"], rows[450]["event"]) == ("0", "")  # muted opening...
    assert rows[spike_end]["event"] == ""  # ...and its resolution
    assert rows[449] == plain[449]  # before the rules act, the same
    assert all(rows[i]["anomaly_score"] == "" for i in range(500, 510))  # not learned
    assert rows[510]["anomaly_score"] != "" and rows[560]["reported"] == "1"  # the dip is still reported
    assert (f"feedback rules from {rules}: 2 rules; 1 report not sent (deploy: 1); 10 samples not learned"
            in err)
    assert f"{sum(r['reported'] == '1' for r in rows)} reported anomalies" in err


def test_a_false_positive_copied_from_a_report_keeps_it_and_its_like_back(tmp_path: Path) -> None:
    samples = samples_with_outliers()
    plain, _ = replay_rules_run(tmp_path, FAST, samples, None)
    dip = plain[560]
    rules = tmp_path / "rules.json"  # a JSON array works too
    rules.write_text(json.dumps([{"id": "fp-1", "kind": "false_positive", "metric": "web.latency",
                                  "value": float(dip["value"]), "predicted_value": float(dip["prediction"]),
                                  "timestamp": samples[560][0]}]))
    rows, err = replay_rules_run(tmp_path, FAST, samples, rules)
    assert rows[450]["reported"] == "1"  # the other side of the prediction: still reported
    assert rows[560]["reported"] == "0"
    assert "1 report not sent (fp-1: 1)" in err


def test_a_bad_rules_file_is_refused_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pensu.cli import main

    samples = series(40)
    rules = write_rules(tmp_path / "rules.jsonl", [{"id": "a", "kind": "mute", "pattern": "x", "until": 5},
                                                   {"id": "b", "kind": "mute", "pattern": "(", "until": 5}])
    code = main(["replay", str(write_csv(tmp_path / "in.csv", samples)), "-o", str(tmp_path / "out.csv"),
                 "--rules", str(rules)])
    assert code == 1
    assert f"{rules}:3: pattern: invalid regular expression" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def replay_rules_run(tmp_path: Path, env: dict[str, str], samples: list[tuple[float, float]],
                     rules_path: Path | None) -> tuple[list[dict[str, str]], str]:
    rules = replay_rules(rules_path, False, env)
    return replay_rows(tmp_path, env, samples, metric="web.latency", rules=rules)


@pytest.mark.kafka
def test_rules_are_read_from_the_feedback_topic(kafka: KafkaCluster) -> None:
    topic = kafka.unique("feedback")
    kafka.produce(topic, [(b"deploy", json.dumps({"kind": "mute", "pattern": "web\\.", "until": 10}).encode()),
                          (b"gone", json.dumps({"kind": "mute", "pattern": "db\\.", "until": 10}).encode()),
                          (b"gone", b""),  # tombstone
                          (b"broken", b"{not json")])  # refused, logged, counted: the rest still applies
    env = {"PENSU_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "PENSU_FEEDBACK_KAFKA_TOPIC": topic}
    rules = replay_rules(None, True, env, timeout=60)
    assert rules is not None and [r.id for r in rules.rules.rules()] == ["deploy"]
    assert rules.source == f"topic {topic}"
    with pytest.raises(FeedbackUnavailable, match="PENSU_FEEDBACK_KAFKA_TOPIC"):
        replay_rules(None, True, {"PENSU_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers})
