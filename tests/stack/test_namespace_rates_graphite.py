"""The dashboard's namespace panel, evaluated by a real graphite-web over the lines two instances write.

Two `NamespaceTracker`s stand for two members of a consumer group, each seeing only its own
metrics; their carbon lines (Pensu's own rendering) are stored in whisper files and the panel's
target, read from grafana/dashboards/pensu.json, is evaluated by Debian's graphite-web (its
render evaluator, the code behind `/render`, with Django set up on a temporary storage dir).
The result must be each namespace's exact anomaly rate over all metrics, at every interval, even
when one instance has not written the newest interval yet. graphite-web and python3-whisper
are installed with apt by the stack fixtures (tests/stack/graphite_stack.py) when missing and this
process may; otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pensu.carbon import parse_line
from pensu.namespaces import NamespaceTracker
from tests.stack.graphite_stack import clean_env, graphite_web_python
from tests.stack.stack_files import GRAFANA_DASHBOARD
from tests.test_alerting import analysis
from tests.test_namespaces import Clock, opening

INTERVAL = 60
PANEL_TITLE = "Most anomalous namespaces (now)"

SETTINGS = """
import os
STORAGE_DIR = os.environ["PENSU_TEST_GRAPHITE_STORAGE"]
WHISPER_DIR = os.path.join(STORAGE_DIR, "whisper")
STANDARD_DIRS = [WHISPER_DIR]
LOG_DIR = os.path.join(STORAGE_DIR, "log")
os.makedirs(LOG_DIR, exist_ok=True)
INDEX_FILE = os.path.join(STORAGE_DIR, "index")
SECRET_KEY = "pensu-test"
DEFAULT_XFILES_FACTOR = 0
FUNCTION_PLUGINS = []
DATABASES = {"default": {"NAME": os.path.join(STORAGE_DIR, "graphite.db"), "ENGINE": "django.db.backends.sqlite3"}}
"""

# Stores the points (whisper, one archive of INTERVAL-second points) and evaluates the target
# like GET /render does; prints {series name: [[timestamp, value], ...]}.
EVALUATE = """
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "graphite.settings"
os.environ["GRAPHITE_SETTINGS_MODULE"] = "pensu_test_graphite_settings"
import whisper
request = json.load(sys.stdin)
storage = os.environ["PENSU_TEST_GRAPHITE_STORAGE"]
for name, points in request["points"].items():
    path = os.path.join(storage, "whisper", *name.split(".")) + ".wsp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    whisper.create(path, [(request["step"], 1440)])
    whisper.update_many(path, [tuple(p) for p in points])
import django
django.setup()
from datetime import datetime, timezone
from graphite.render.evaluator import evaluateTarget
def at(ts):
    return datetime.fromtimestamp(ts, timezone.utc)
context = {"startTime": at(request["from"]), "endTime": at(request["until"]), "now": at(request["until"]),
           "localOnly": True, "data": [], "prefetched": {}, "tzinfo": timezone.utc, "xFilesFactor": 0,
           "template": {}, "sourceIdHeaders": {}}
out = {}
for series in evaluateTarget(context, request["target"]):
    out[series.name] = [[series.start + i * series.step, v] for i, v in enumerate(series) if v is not None]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def graphite_python() -> str:
    """The system python running graphite-web (the stack fixtures install it with apt when needed)."""
    return graphite_web_python()


def panel_target() -> str:
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    panel = next(p for p in dashboard["panels"] if p.get("title") == PANEL_TITLE)
    (target,) = panel["targets"]
    return target["target"]


def evaluate(python: str, tmp_path: Path, points: dict[str, list[tuple[int, float]]], target: str,
             start: int, until: int) -> dict[str, dict[int, float]]:
    (tmp_path / "pensu_test_graphite_settings.py").write_text(SETTINGS)
    storage = tmp_path / "storage"
    storage.mkdir()
    env = {**clean_env(), "PYTHONPATH": str(tmp_path), "PENSU_TEST_GRAPHITE_STORAGE": str(storage)}
    request = {"points": points, "step": INTERVAL, "from": start, "until": until, "target": target}
    proc = subprocess.run([python, "-c", EVALUATE], input=json.dumps(request), env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: {int(ts): v for ts, v in values} for name, values in json.loads(proc.stdout).items()}


def test_the_panel_combines_two_instances_into_the_exact_rate(graphite_python: str, tmp_path: Path) -> None:
    clock = Clock()
    instances = [NamespaceTracker(depth=2, incident_window=300, clock=clock, instance=name, rate_interval=INTERVAL)
                 for name in ("pensu-0", "pensu-1.example.com")]  # the second id has dots (a host name)
    truth = NamespaceTracker(depth=2, incident_window=300, clock=clock)  # one instance seeing everything
    owner = {"web.front.m0": 0, "web.front.m1": 0, "web.front.m2": 1, "web.front.m3": 1, "web.front.m4": 1,
             "db.main.qps": 1, "cache.x.hits": 0}
    opens = {1: "web.front.m2", 2: "cache.x.hits", 3: "web.front.m0"}  # interval -> metric opening an episode
    now = int(time.time())
    first = now - now % INTERVAL - 6 * INTERVAL
    points: dict[str, list[tuple[int, float]]] = {}
    expected: dict[int, dict[str, float]] = {}
    for k in range(6):
        stamp = first + k * INTERVAL
        for metric, who in owner.items():
            sample = opening(metric, stamp) if opens.get(k) == metric else analysis(None, float(stamp), metric=metric)
            instances[who].observe(sample)
            truth.observe(sample)
        expected[stamp] = truth.rates()
        # The last interval: the second instance has not written its lines yet (its clock phase).
        writers = instances if k < 5 else instances[:1]
        for tracker in writers:
            for _key, line in tracker.rate_lines(stamp + 17 * (1 + instances.index(tracker))):
                sample = parse_line(line.rstrip(b"\n"))
                points.setdefault(sample.metric, []).append((int(sample.timestamp), sample.value))
    assert expected[first + 5 * INTERVAL] == {"web.front": 0.4, "db.main": 0.0, "cache.x": 1.0}

    got = evaluate(graphite_python, tmp_path, points, panel_target(), first - INTERVAL, first + 6 * INTERVAL)

    assert set(got) == {"web.front", "db.main", "cache.x"}  # aliased to the namespace
    last = first + 5 * INTERVAL
    for namespace, series in got.items():
        assert {ts: v for ts, v in series.items() if ts <= last} == \
            {stamp: rates[namespace] for stamp, rates in expected.items()}, namespace
        # A point after the newest interval (the render window's end) carries the last counts.
        assert all(v == expected[last][namespace] for ts, v in series.items() if ts > last), namespace
