"""The provisioned Grafana dashboard against a real graphite-web holding Pensu's real output.

A `MetricAnalyzer` (the service's own, configured through the service's recipe) runs over three
days of a NAB series shifted to end now; its analyses are rendered by the service's
`OutputFormatter` and `NamespaceTracker` into the carbon lines Logstash forwards to Graphite, and
sent, with the raw input lines, to carbon-cache. graphite-web (Debian's, private config: see
tests/stack/graphite_stack.py) then answers every dashboard target through /render with
`format=json`, after expanding the `$metric` variable the way Grafana does. One panel is also
rendered as PNG to tests/artifacts/ (gitignored) for a human look.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.analyzer_settings import analyzer_config
from pensu.carbon import parse_line
from pensu.namespaces import NamespaceTracker
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.settings import load_settings
from tests.stack.graphite_stack import GraphiteWeb
from tests.stack.stack_files import GRAFANA_DASHBOARD
from tests.stack.test_grafana import all_panels, graphite_targets, substitute

REPO = Path(__file__).resolve().parents[2]
NAB_DATA = Path(os.environ.get("PENSU_NAB_DATA", REPO.parent / "shared" / "nab" / "data"))
NAB_FILE = NAB_DATA / "realKnownCause" / "machine_temperature_system_failure.csv"
ARTIFACTS = REPO / "tests" / "artifacts"
METRIC = "stack.nab.machine_temperature_system_failure"
STEP = 300  # NAB's 5-minute samples; the fixture's archive has 5-minute points
SAMPLES = 3 * 24 * 12  # three days


def nab_series(path: Path, count: int) -> list[tuple[int, float]]:
    """The first `count` (timestamp, value) rows of a NAB CSV, as unix seconds (UTC)."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            ts = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            rows.append((int(ts.timestamp()), float(row["value"])))
            if len(rows) == count:
                break
    return rows


def shifted_to_now(rows: list[tuple[int, float]], step: int = STEP) -> list[tuple[int, float]]:
    """The rows moved in time (spacing kept) so the last one is the last full step before now."""
    last = (int(time.time()) // step) * step - step
    offset = last - rows[-1][0]
    return [(ts + offset, value) for ts, value in rows]


def pensu_carbon_lines(metric: str, samples: list[tuple[int, float]]) -> list[bytes]:
    """What reaches Graphite for `samples`: the raw input lines (Logstash forwards the metrics
    topic) and Pensu's carbon outputs (anomaly, prediction and anomaly-rate lines)."""
    settings = load_settings({"PENSU_ANOMALY_MODEL_PRESET": "small", "PENSU_PREDICTION_MODEL_PRESET": "small",
                              "PENSU_WARMUP_SAMPLES": "30"})
    analyzer = MetricAnalyzer(metric, analyzer_config(settings))
    topics = OutputTopics("anomaly_metrics", "predictions", "anomalies")
    namespaces = NamespaceTracker(settings.namespace_depth, settings.incident_window_seconds)
    formatter = OutputFormatter(topics, settings.metric_names_template, analyzer.thresholds, "stack-test",
                                report_fields=namespaces.report_fields)
    lines = []
    for ts, value in samples:
        lines.append(f"{metric} {value!r} {ts}".encode())
        analysis = analyzer.process(ts, value)
        namespaces.observe(analysis)
        lines += [r.value.rstrip(b"\n") for r in formatter.records(analysis)
                  if r.topic in (topics.anomaly_metrics, topics.prediction_metrics)]
        lines += [line.rstrip(b"\n") for _ns, line in namespaces.rate_lines(ts)]
    return lines


def grafana_range(expr: str) -> str:
    """Grafana's relative time ("now-6h") as Graphite's ("-6h")."""
    assert expr.startswith("now-"), expr
    return expr[len("now"):]


def range_seconds(expr: str) -> int:
    """Seconds of a Graphite relative time such as "-6h" or "-2d"."""
    m = re.fullmatch(r"-(\d+)(min|h|d)", expr)
    assert m, f"unexpected dashboard time range {expr!r}"
    return int(m.group(1)) * {"min": 60, "h": 3600, "d": 86400}[m.group(2)]


def points(series: dict[str, Any]) -> list[tuple[int, float]]:
    return [(int(ts), v) for v, ts in series["datapoints"] if v is not None]


def expand_variable(web: GraphiteWeb, variable: dict[str, Any], start: str) -> list[str]:
    """The variable's values as Grafana computes them for a "Metric Name" query: the series
    names the query target renders to, passed through the variable's regex."""
    query = variable["query"]["target"]
    regex = variable["regex"]
    pattern = re.compile(regex[1:regex.rindex("/")])
    names = [s["target"] for s in web.render_json(query, start)]
    return sorted({m.group(1) for name in names if (m := pattern.search(name))})


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(GRAFANA_DASHBOARD.read_text())


def store_pensu_output(graphite: GraphiteWeb) -> list[tuple[int, float]]:
    """Send the NAB series and Pensu's carbon lines for it to carbon, wait until every point is
    stored, and return the input samples."""
    if not NAB_FILE.is_file():
        pytest.skip(f"NAB data not found at {NAB_FILE} (set PENSU_NAB_DATA)")
    samples = shifted_to_now(nab_series(NAB_FILE, SAMPLES))
    lines = pensu_carbon_lines(METRIC, samples)
    expected: dict[str, dict[int, float]] = {}
    for line in lines:
        sample = parse_line(line)
        expected.setdefault(sample.metric, {})[int(sample.timestamp)] = sample.value
    graphite.carbon.send(b"\n".join(lines) + b"\n")
    graphite.carbon.wait_stored(expected)
    return samples


@pytest.mark.slow
def test_every_dashboard_target_renders_pensu_output(graphite: GraphiteWeb, dashboard: dict[str, Any]) -> None:
    samples = store_pensu_output(graphite)

    start = grafana_range(dashboard["time"]["from"])
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "metric")
    values = expand_variable(graphite, variable, start)
    assert values == [METRIC], values
    # The same glob through /metrics/find (the browser's and a "Default" query's way).
    found = graphite.find(variable["query"]["target"], start)
    assert found == [f"pensu.anomaly_score.metrics_analyzer.{METRIC}"], found

    window_start = int(time.time()) - range_seconds(start)
    for target in graphite_targets(dashboard):
        expr = substitute(target, values[0])
        series = graphite.render_json(expr, start)
        assert series, f"{expr!r}: no series"
        assert all(points(s) for s in series), f"{expr!r}: a series without a single point: {series}"
    # The raw input panel shows the input exactly (5-minute archive, aligned timestamps).
    raw_target = next(t for t in graphite_targets(dashboard) if t.startswith("alias($metric,"))
    (raw,) = graphite.render_json(substitute(raw_target, METRIC), start)
    shown = dict(points(raw))
    sent = {ts: v for ts, v in samples if ts > window_start}
    assert shown and set(shown) <= set(sent)
    assert all(shown[ts] == sent[ts] for ts in shown)
    assert len(shown) >= len(sent) - 1  # the window's first step may fall just outside it


@pytest.mark.slow
def test_value_panel_renders_as_png(graphite: GraphiteWeb, dashboard: dict[str, Any]) -> None:
    store_pensu_output(graphite)
    panel = next(p for p in all_panels(dashboard) if p["id"] == 1)
    targets = [substitute(t["target"], METRIC) for t in panel["targets"]]
    status, content_type, body = graphite.get("/render", [
        *[("target", t) for t in targets], ("from", "-3d"), ("until", "now"), ("width", 1000), ("height", 400),
        ("title", panel["title"]), ("format", "png")])
    assert status == 200 and content_type.startswith("image/png"), (status, content_type, body[:300])
    assert body.startswith(b"\x89PNG\r\n\x1a\n")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "graphite-panel-value-vs-prediction.png"
    path.write_bytes(body)
    # A blank chart (no series) is a small, mostly uniform PNG; a plotted one holds far more detail.
    blank_status, _, blank = graphite.get("/render", [("target", "no.such.series"), ("from", "-3d"),
                                                      ("width", 1000), ("height", 400), ("format", "png")])
    assert blank_status == 200 and len(body) > 2 * len(blank), (len(body), len(blank))
    print(f"\nPNG of panel 1 written to {path}")
