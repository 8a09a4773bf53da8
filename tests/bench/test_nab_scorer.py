import csv
import json
import math
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import nab_score  # noqa: E402
from nab_scorer_lib import (  # noqa: E402
    PROFILES,
    load_corpus,
    load_results,
    probation_rows,
    scaled_sigmoid,
    score_corpus,
)

T0 = datetime(2020, 1, 1)
STEP = timedelta(minutes=5)
# two files of 1,000 rows (probation 150); file a has two windows, file b one
WINDOWS = {"cat/a.csv": [(300, 349), (700, 739)], "cat/b.csv": [(500, 519)]}
LENGTH = 1000


def stamp(i):
    return (T0 + i * STEP).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture()
def corpus(tmp_path):
    data = tmp_path / "data"
    windows = {}
    for name, ranges in WINDOWS.items():
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "value"])
            for i in range(LENGTH):
                writer.writerow([stamp(i), i % 7])
        windows[name] = [[stamp(a) + ".000000", stamp(b) + ".000000"] for a, b in ranges]
    (tmp_path / "combined_windows.json").write_text(json.dumps(windows))
    return load_corpus(data, tmp_path / "combined_windows.json")


def detector(hits):
    """Scores of 1.0 at the given rows per file, 0 elsewhere."""
    out = {name: [0.0] * LENGTH for name in WINDOWS}
    for name, rows in hits.items():
        for row in rows:
            out[name][row] = 1.0
    return out


def perfect_hits():
    return {name: [a for a, _ in ranges] for name, ranges in WINDOWS.items()}


def test_windows_become_row_ranges(corpus):
    assert corpus["cat/a.csv"].windows == ((300, 349), (700, 739))
    assert corpus["cat/a.csv"].probation == 150


def test_probation_length():
    assert probation_rows(1000) == 150
    assert probation_rows(22695) == 750  # capped at 0.15 x 5000


def test_perfect_detector_scores_100(corpus):
    for result in score_corpus(detector(perfect_hits()), corpus).values():
        assert result.score == pytest.approx(100.0)
        assert sum(c.tp for c in result.files.values()) == 3
        assert sum(c.fp + c.fn for c in result.files.values()) == 0


def test_null_detector_scores_0(corpus):
    for scores in (detector({}), {n: [0.5] * LENGTH for n in WINDOWS}):
        for name, result in score_corpus(scores, corpus).items():
            assert result.score == pytest.approx(0.0), name
            assert result.raw == pytest.approx(-3 * PROFILES[name].fn_weight)


def test_early_detection_beats_late(corpus):
    early = score_corpus(detector({"cat/b.csv": [502]}), corpus)["standard"]
    late = score_corpus(detector({"cat/b.csv": [517]}), corpus)["standard"]
    assert early.score > late.score > 0.0
    # credit follows the scaled sigmoid of the position in the window
    credit = scaled_sigmoid(-(519 - 502 + 1) / 20) / scaled_sigmoid(-1.0)
    assert early.raw == pytest.approx(-3 + 1 + credit)


def test_only_the_first_detection_in_a_window_counts(corpus):
    once = score_corpus(detector({"cat/b.csv": [505]}), corpus)["standard"]
    many = score_corpus(detector({"cat/b.csv": [505, 506, 510, 519]}), corpus)["standard"]
    assert many.raw == pytest.approx(once.raw)
    assert many.files["cat/b.csv"].fp == 0


@pytest.mark.parametrize("profile", list(PROFILES))
def test_false_positive_costs_the_scaled_fp_weight(corpus, profile):
    weight = PROFILES[profile].fp_weight
    perfect = score_corpus(detector(perfect_hits()), corpus)[profile]
    hits = perfect_hits()
    hits["cat/a.csv"] = hits["cat/a.csv"] + [200]  # before any window: full FP weight
    before = score_corpus(detector(hits), corpus)[profile]
    assert before.raw == pytest.approx(perfect.raw - weight)
    assert before.score == pytest.approx(100.0 * (1 - weight / (perfect.perfect - perfect.null)))
    assert before.files["cat/a.csv"].fp == 1
    hits = perfect_hits()
    hits["cat/a.csv"] = hits["cat/a.csv"] + [359]  # 10 rows after a 50-row window
    after = score_corpus(detector(hits), corpus)[profile]
    expected = scaled_sigmoid(10 / 49) * weight
    assert after.raw == pytest.approx(perfect.raw + expected)
    assert -weight < expected < 0
    hits["cat/a.csv"] = hits["cat/a.csv"] + [600]  # > 3 widths after the window: full weight
    far = score_corpus(detector(hits), corpus)[profile]
    assert far.raw == pytest.approx(after.raw - weight)


def test_missed_window_costs_the_fn_weight(corpus):
    hits = perfect_hits()
    hits["cat/b.csv"] = []
    for name, result in score_corpus(detector(hits), corpus).items():
        weights = PROFILES[name]
        assert result.raw == pytest.approx(2 * weights.tp_weight - weights.fn_weight)
        assert result.files["cat/b.csv"].fn == 1


def test_probationary_period_is_ignored(corpus):
    hits = perfect_hits()
    hits["cat/a.csv"] = hits["cat/a.csv"] + list(range(0, 150))
    result = score_corpus(detector(hits), corpus)["standard"]
    assert result.score == pytest.approx(100.0)
    assert result.files["cat/a.csv"].fp == 0
    hits["cat/a.csv"].append(150)  # the first scored row is a normal FP
    assert score_corpus(detector(hits), corpus)["standard"].files["cat/a.csv"].fp == 1


def test_threshold_is_optimised_over_the_corpus(corpus):
    scores = {name: [0.1] * LENGTH for name in WINDOWS}
    for name, ranges in WINDOWS.items():
        for a, _ in ranges:
            scores[name][a] = 0.9
    scores["cat/a.csv"][200] = 0.8  # an FP scored below every true detection
    result = score_corpus(scores, corpus)["standard"]
    assert result.threshold == pytest.approx(0.9)
    assert result.score == pytest.approx(100.0)


def test_bad_result_length_is_rejected(corpus):
    with pytest.raises(ValueError):
        score_corpus({"cat/a.csv": [0.0] * (LENGTH - 1)}, corpus)


def test_cli_reads_a_results_directory(corpus, tmp_path, capsys):
    results = tmp_path / "results"
    scores = detector(perfect_hits())
    for name, values in scores.items():
        path = results / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["timestamp", "value", "anomaly_score"])
            for i, v in enumerate(values):
                writer.writerow([stamp(i), 0, v])
    loaded = load_results(results, WINDOWS)
    assert loaded["cat/b.csv"][500] == 1.0 and math.isclose(sum(loaded["cat/b.csv"]), 1.0)
    assert nab_score.main([str(results), "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "standard" in out and "100.00" in out and "cat/a.csv" in out
