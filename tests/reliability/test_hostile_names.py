"""Hostile metric names: no file outside PENSU_MODELS_DIR, no name can pose as another, no output
injection (extra carbon lines or JSON keys)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pensu.analyzer import MetricAnalyzer
from pensu.carbon import format_line, format_report, output_metric_name
from pensu.checkpoint import CheckpointCorrupt, CheckpointHeader, LocalCheckpointStore, checkpoint_key
from pensu.errors import CheckpointError, LineRejected
from pensu.outputs import OutputFormatter, OutputTopics
from pensu.pipeline import Pipeline
from pensu.registry import ModelRegistry
from tests.support import fast_config, series

HOSTILE = [
    "../../etc/x", "/etc/passwd", "..", ".", "", "a/b", "a\\b", "C:\\x", "a\x00b", "quarantine", "../quarantine/x",
    "A.b", "a.B", "a.b", "x" * 10_000, "\u00e9t\u00e9", "e\u0301te", "\n", "a b 1 2\nc", "AA", "aa",
]


def all_files(root: Path) -> set[Path]:
    """Every path under `root` (files, directories and links)."""
    return {Path(d) / n for d, dirs, files in os.walk(root) for n in dirs + files}


def test_hostile_names_only_touch_files_inside_the_models_dir(tmp_path: Path) -> None:
    models = tmp_path / "deep" / "er" / "models"
    store = LocalCheckpointStore(models)
    before = all_files(tmp_path)
    for i, name in enumerate(HOSTILE):
        store.save(CheckpointHeader(name, i, None, {"in:0": i}, 0.0), name.encode("utf-8", "surrogatepass"))
    with pytest.raises(CheckpointError):  # a lone surrogate (never parsed from UTF-8) is refused, not stored
        store.save(CheckpointHeader("\ud800", 0, None, {}, 0.0), b"x")
    created = all_files(tmp_path) - before
    assert created and all(models in p.parents for p in created)
    names = {p.name for p in created if p.is_file()}
    assert names == {checkpoint_key(n) + ".ckpt" for n in HOSTILE}  # one distinct file per name
    for i, name in enumerate(HOSTILE):  # each reads back as itself: case and normalisation kept apart
        header, payload = store.load(name)
        assert header.metric == name and header.sample_count == i
        assert payload == name.encode("utf-8", "surrogatepass")
    for name in HOSTILE:
        store.quarantine(name, "test")
    assert all(models in p.parents for p in all_files(tmp_path) - before)


def test_a_file_holding_another_metric_is_never_used_as_it(tmp_path: Path) -> None:
    """Stand-in for a hash collision: metric B's path holds metric A's checkpoint."""
    store = LocalCheckpointStore(tmp_path / "models")
    store.save(CheckpointHeader("a.b", 5, None, {}, 0.0), b"model of a.b")
    target = store.path_for("A.b")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.path_for("a.b").read_bytes())
    with pytest.raises(CheckpointCorrupt, match="metric mismatch"):
        store.load("A.b")
    assert not target.exists() and store.load("a.b")[1] == b"model of a.b"
    assert len(list((tmp_path / "models" / "quarantine").iterdir())) == 1


def test_case_variants_get_separate_models_through_the_pipeline(tmp_path: Path) -> None:
    config = fast_config()
    registry = ModelRegistry(LocalCheckpointStore(tmp_path / "models"), config, capacity=1)  # forces swaps
    formatter = OutputFormatter(OutputTopics(), "pensu.{{#anomaly_metric}}.metrics_analyzer", config.thresholds, "t")
    pipeline = Pipeline(registry, formatter, re.compile(".*"))
    names = ["Web.Latency", "web.latency", "WEB.LATENCY"]
    samples = series(40)
    for offset, (ts, value) in enumerate(samples):
        payload = b"\n".join(f"{n} {value + i} {int(ts)}".encode() for i, n in enumerate(names))
        result = pipeline.process(payload, "in:0", offset)
        assert result.samples == 3 and not result.rejections
    for i, name in enumerate(names):
        analyzer = registry.get(name)
        expected = MetricAnalyzer(name, config)
        for offset, (ts, value) in enumerate(samples):
            expected.process(ts, value + i, "in:0", offset, i)
        assert analyzer.metric == name and analyzer.sample_count == 40
        assert analyzer.to_bytes() == expected.to_bytes()  # learned only its own samples


@pytest.mark.parametrize("metric", ["a\nb", "a b", "a\rb", "a\tb", "a.b 1 2\nevil.x", "a\x00b", "a\u2028b",
                                    "\u00e9", "a..b", ".a", "x" * 2000])
def test_output_names_refuse_anything_that_could_split_a_carbon_line(metric: str) -> None:
    with pytest.raises(LineRejected):
        output_metric_name("pensu.{{#anomaly_metric}}.metrics_analyzer", "anomaly_score", metric)
    with pytest.raises(LineRejected):
        format_line(metric, 1.0, 1_700_000_000)


@pytest.mark.parametrize("metric", ['a","x":1,"y', 'a\\"}', "a\n{", "\u2028", "</script>", "\u00e9\u6e29"])
def test_reports_keep_their_keys_whatever_the_strings(metric: str) -> None:
    report = {"metric": metric, "timestamp": 1, "value": 1.0, "pensu_instance": 'i","evil":"1'}
    text = format_report(report)
    assert text.count(b"\n") == 0  # one message, one object, no line breaks for line-based readers
    decoded = json.loads(text)
    assert decoded == report and list(decoded) == list(report)
