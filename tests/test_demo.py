"""`pensu demo`: report marking, precision/recall, and running it twice (issue #11)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pensu.demo import ReportJudge
from pensu.generator import SyntheticMetrics
from tests.test_cli import pensu


def test_judge_marks_reports_and_scores_the_run() -> None:
    gen = SyntheticMetrics(interval=60.0, start_time=1_700_000_000.0)
    injected = gen.injected(2000)
    assert injected and all(a.start >= gen.first_anomaly for a in injected)
    first = injected[0]
    judge = ReportJudge(gen, window=30)
    hit = judge.judge(first.series, gen.timestamp(first.start + 2))
    assert hit == first
    assert judge.judge(first.series, gen.timestamp(100)) is None          # long before any anomaly
    assert judge.judge("some.other.metric", gen.timestamp(first.start)) is None
    # The next anomaly of the schedule is another series' turn: this series has none then.
    other = next(a for a in injected if a.series != first.series)
    assert judge.judge(first.series, gen.timestamp(other.start)) is None
    precision, recall, found, total = judge.summary(gen.timestamp(2000))
    assert judge.reports == 4 and judge.true_reports == 1
    assert precision == pytest.approx(0.25)
    seen = [a for a in injected if a.end <= 2000 - 30]
    assert found == 1 and total == len(seen) and recall == pytest.approx(1 / len(seen))


@pytest.mark.slow
def test_demo_twice_in_the_same_models_dir_analyses_samples_both_times(tmp_path: Path) -> None:
    models = tmp_path / "demo-models"
    outputs = []
    for _ in range(2):
        result = pensu("demo", "--duration", "45", "--models-dir", str(models), timeout=400)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        outputs.append(result.stdout)
    first, second = outputs
    for text in outputs:
        assert "http://None" not in text and "('127.0.0.1'" not in text
        assert re.search(r"curl http://127\.0\.0\.1:\d+/ping", text)
        assert re.search(r"metrics http://127\.0\.0\.1:\d+/metrics", text)
        assert "compiling the HTM models" in text
        for line in text.splitlines():
            if line.startswith("ANOMALY"):
                assert "✓ injected" in line or "✗ no injected anomaly" in line
    assert "new samples continue from there" in second
    counts = [int(re.search(r"stopped after (\d+) samples analysed", t).group(1)) for t in outputs]  # type: ignore[union-attr]
    assert counts[0] > 0 and counts[1] > 0, outputs[1][-2000:]
    assert re.search(r"precision (n/a|\d\.\d\d), recall \d\.\d\d \(\d+ of \d+ injected", second), second[-1500:]
