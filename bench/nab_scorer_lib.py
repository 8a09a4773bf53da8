"""NAB v1.1 scoring, written from the published description of the benchmark.

Rules implemented (NAB "Numenta Anomaly Benchmark" v1.1):

* Each data file has labelled anomaly windows (timestamp ranges, inclusive). A row is a
  detection when its anomaly score >= the threshold.
* Probationary period: the first min(floor(0.15 * rows), 0.15 * 5000 = 750) rows of a file are
  not scored (detections there are neither TP nor FP).
* Inside a window only the earliest detection counts. With the window's rows L..R (width
  w = R - L + 1) a detection at row i sits at position y = -(R - i + 1) / w in [-1, 0); it earns
  tp_weight * S(y) / S(-1), so the first row of a window earns exactly tp_weight.
  S(y) = 2 / (1 + e^(5y)) - 1 (the scaled sigmoid), and S(y) = -1 for y > 3.
* A window without a detection costs fn_weight.
* A detection outside every window costs fp_weight * S(y), with y = (i - R) / (w - 1) measured
  from the end R of the closest preceding window (width w): barely late detections cost almost
  nothing, those more than three window widths late cost the full fp_weight. A detection
  before the first window costs the full fp_weight.
* Profiles (NAB config/profiles.json): standard TP 1.0 / FP 0.11 / FN 1.0 / TN 1.0;
  reward_low_FP_rate TP 1.0 / FP 0.22 / FN 1.0; reward_low_FN_rate TP 1.0 / FP 0.11 / FN 2.0.
  TN weights do not enter the score.
* The raw score of a corpus is the sum over its files. It is normalised as
  100 * (raw - null) / (perfect - null), where the null detector detects nothing
  (null = -fn_weight * windows) and the perfect detector hits the first scored row of every
  window (perfect = tp_weight * windows when no window starts in probation).
* One threshold per profile is chosen over the whole corpus to maximise the raw score. Here the
  sweep is exact: every distinct anomaly score is tried (plus "detect nothing"); ties go to the
  highest threshold.

Windows lying wholly inside the probationary period are ignored (NAB's windows never do).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

PROBATION_PERCENT = 0.15
PROBATION_CAP_ROWS = 5000  # the cap is PROBATION_PERCENT of this many rows (750)


@dataclass(frozen=True)
class CostProfile:
    """Weights of one NAB application profile."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0


PROFILES: dict[str, CostProfile] = {
    "standard": CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": CostProfile("reward_low_FP_rate", tp_weight=1.0, fp_weight=0.22,
                                      fn_weight=1.0),
    "reward_low_FN_rate": CostProfile("reward_low_FN_rate", tp_weight=1.0, fp_weight=0.11,
                                      fn_weight=2.0),
}


@dataclass(frozen=True)
class LabelledFile:
    """A data file's row count, probationary rows and anomaly windows as inclusive row ranges."""

    name: str
    length: int
    probation: int
    windows: tuple[tuple[int, int], ...]

    @property
    def scored_windows(self) -> tuple[tuple[int, int], ...]:
        """Windows with at least one row after the probationary period."""
        return tuple(w for w in self.windows if w[1] >= self.probation)


@dataclass(frozen=True)
class FileCounts:
    """Outcome of one file at one threshold."""

    tp: int
    fp: int
    fn: int
    raw_score: float


@dataclass(frozen=True)
class ProfileScore:
    """Corpus result for one profile at its optimal threshold."""

    profile: CostProfile
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    files: dict[str, FileCounts] = field(default_factory=dict)


def probation_rows(length: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that are not scored."""
    return int(min(math.floor(percent * length), percent * PROBATION_CAP_ROWS))


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: +0.987 at -1 (window start), 0 at the window end, -> -1 after."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def label_file(name: str, timestamps: Sequence[datetime],
               windows: Iterable[tuple[datetime, datetime]]) -> LabelledFile:
    """Turn timestamp windows into row ranges of a file with the given row timestamps."""
    stamps = np.array([t.timestamp() for t in timestamps], dtype=np.float64)
    ranges = []
    for start, end in windows:
        # row-wise comparison, as NAB does: a few data files are not strictly time-ordered
        inside = np.flatnonzero((stamps >= start.timestamp()) & (stamps <= end.timestamp()))
        if inside.size:
            ranges.append((int(inside[0]), int(inside[-1])))
    ranges.sort()
    for (_, prev_end), (start, _) in zip(ranges, ranges[1:]):
        if start <= prev_end:
            raise ValueError(f"{name}: anomaly windows overlap")
    return LabelledFile(name, len(stamps), probation_rows(len(stamps)), tuple(ranges))


def row_values(labelled: LabelledFile, profile: CostProfile) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the window id it belongs to (-1 outside, -2 in probation) and what detecting it earns.

    For window rows the value is the TP credit; for the other rows the (negative) FP cost.
    """
    n = labelled.length
    window_id = np.full(n, -1, dtype=np.int64)
    value = np.zeros(n, dtype=np.float64)
    max_tp = scaled_sigmoid(-1.0)
    windows = labelled.windows
    next_window = 0
    previous: tuple[int, int] | None = None
    for i in range(n):
        while next_window < len(windows) and windows[next_window][1] < i:
            previous = windows[next_window]
            next_window += 1
        if next_window < len(windows) and windows[next_window][0] <= i:
            start, end = windows[next_window]
            width = end - start + 1
            window_id[i] = next_window
            value[i] = scaled_sigmoid(-(end - i + 1) / width) * profile.tp_weight / max_tp
        elif previous is None:
            value[i] = -1.0 * profile.fp_weight
        else:
            start, end = previous
            value[i] = scaled_sigmoid((i - end) / max(1, end - start)) * profile.fp_weight
    window_id[: labelled.probation] = -2
    value[: labelled.probation] = 0.0
    return window_id, value


def score_file(labelled: LabelledFile, scores: np.ndarray, threshold: float,
               profile: CostProfile) -> FileCounts:
    """Score one file's anomaly scores at `threshold`."""
    scores = _checked_scores(labelled, scores)
    window_id, value = row_values(labelled, profile)
    detected = scores >= threshold
    raw = 0.0
    tp = fn = 0
    for w, (start, end) in enumerate(labelled.windows):
        if end < labelled.probation:
            continue
        hits = np.flatnonzero(detected & (window_id == w))
        if hits.size:
            tp += 1
            raw += float(value[hits[0]])  # only the earliest detection in a window counts
        else:
            fn += 1
            raw -= profile.fn_weight
    false = detected & (window_id == -1)
    raw += float(value[false].sum())
    return FileCounts(tp=tp, fp=int(false.sum()), fn=fn, raw_score=raw)


def null_and_perfect(corpus: Mapping[str, LabelledFile], profile: CostProfile) -> tuple[float, float]:
    """Raw corpus scores of the detector that never fires and of the perfect detector."""
    null = perfect = 0.0
    for labelled in corpus.values():
        _, value = row_values(labelled, profile)
        for start, end in labelled.scored_windows:
            null -= profile.fn_weight
            perfect += float(value[max(start, labelled.probation)])
    return null, perfect


def best_threshold(corpus: Mapping[str, LabelledFile], results: Mapping[str, np.ndarray],
                   profile: CostProfile) -> tuple[float, float]:
    """(threshold, raw score) maximising the corpus raw score; exact sweep over all scores."""
    all_scores, all_values, all_windows = [], [], []
    n_windows = 0
    for name, labelled in corpus.items():
        scores = _checked_scores(labelled, results[name])
        window_id, value = row_values(labelled, profile)
        keep = window_id != -2
        # window ids made unique over the corpus
        ids = np.where(window_id[keep] >= 0, window_id[keep] + n_windows, -1)
        n_windows += len(labelled.windows)
        all_scores.append(scores[keep])
        all_values.append(value[keep])
        all_windows.append(ids)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    values = np.concatenate(all_values) if all_values else np.zeros(0)
    windows = np.concatenate(all_windows) if all_windows else np.zeros(0, dtype=np.int64)
    null, _ = null_and_perfect(corpus, profile)
    order = np.lexsort((np.arange(scores.size), -scores))  # descending score, stable
    best_credit = np.full(max(1, n_windows), -np.inf)
    total = null
    best = (math.inf, null)  # detect nothing
    i = 0
    while i < order.size:
        level = scores[order[i]]
        while i < order.size and scores[order[i]] == level:
            row = order[i]
            w = windows[row]
            if w < 0:
                total += values[row]
            elif values[row] > best_credit[w]:
                # earlier rows of a window earn more, so the best credit is the earliest hit
                total += values[row] - (best_credit[w] if best_credit[w] > -np.inf else -profile.fn_weight)
                best_credit[w] = values[row]
            i += 1
        if total > best[1]:
            best = (float(level), total)
    return best


def score_corpus(results: Mapping[str, Sequence[float] | np.ndarray],
                 corpus: Mapping[str, LabelledFile],
                 profiles: Iterable[CostProfile] = PROFILES.values()) -> dict[str, ProfileScore]:
    """Score `results` (file name -> one anomaly score per data row) over the files it names."""
    missing = sorted(set(results) - set(corpus))
    if missing:
        raise ValueError(f"results for files without labels: {missing[:5]}")
    used = {name: corpus[name] for name in sorted(results)}
    arrays = {name: np.asarray(results[name], dtype=np.float64) for name in used}
    out = {}
    for profile in profiles:
        threshold, raw = best_threshold(used, arrays, profile)
        null, perfect = null_and_perfect(used, profile)
        files = {name: score_file(lab, arrays[name], threshold, profile) for name, lab in used.items()}
        span = perfect - null
        score = 100.0 * (raw - null) / span if span > 0 else 0.0
        out[profile.name] = ProfileScore(profile, threshold, raw, null, perfect, score, files)
    return out


def _checked_scores(labelled: LabelledFile, scores: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (labelled.length,):
        raise ValueError(f"{labelled.name}: {array.shape[0] if array.ndim else 0} scores "
                         f"for {labelled.length} rows")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{labelled.name}: scores must be finite")
    return array


# -- files ------------------------------------------------------------------------------------
def parse_time(text: str) -> datetime:
    """Parse NAB timestamps ('2014-04-10 07:15:00' with optional fraction)."""
    return datetime.fromisoformat(text.strip())


def read_timestamps(path: Path) -> list[datetime]:
    """The `timestamp` column of a csv file."""
    with path.open(newline="") as fh:
        return [parse_time(row["timestamp"]) for row in csv.DictReader(fh)]


def load_corpus(data_dir: Path, windows_path: Path,
                names: Iterable[str] | None = None) -> dict[str, LabelledFile]:
    """Label the data files (all of the windows file, or only `names`)."""
    with Path(windows_path).open() as fh:
        raw_windows = json.load(fh)
    wanted = sorted(raw_windows) if names is None else sorted(names)
    corpus = {}
    for name in wanted:
        if name not in raw_windows:
            raise ValueError(f"{name}: no entry in {windows_path}")
        windows = [(parse_time(a), parse_time(b)) for a, b in raw_windows[name]]
        corpus[name] = label_file(name, read_timestamps(Path(data_dir) / name), windows)
    return corpus


def find_result_file(results_dir: Path, name: str) -> Path | None:
    """`<results>/<category>/<file>.csv`, or NAB's `<category>/<detector>_<file>.csv`."""
    direct = Path(results_dir) / name
    if direct.is_file():
        return direct
    category, file_name = Path(name).parent, Path(name).name
    matches = sorted((Path(results_dir) / category).glob(f"*_{file_name}"))
    return matches[0] if len(matches) == 1 else None


def load_results(results_dir: Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The `anomaly_score` column of each result file that exists for `names`."""
    out = {}
    for name in names:
        path = find_result_file(results_dir, name)
        if path is None:
            continue
        with path.open(newline="") as fh:
            out[name] = np.array([float(row["anomaly_score"]) for row in csv.DictReader(fh)])
    return out
