"""`pensu replay` decides like the service: same PENSU_* settings, same code, `reported` per row."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.errors import ConfigurationError
from pensu.replay import OUTPUT_COLUMNS, build_analyzer, run_replay
from pensu.settings import load_settings
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


@pytest.mark.parametrize("extra", [{}, {"PENSU_EPISODE_QUIET_SAMPLES": "0", "PENSU_ANOMALY_LIKELIHOOD_THRESHOLD": "0.999"},
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
        day = datetime.fromtimestamp(ts, timezone.utc).date().isoformat()
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

