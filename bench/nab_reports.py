"""Choose the report threshold on the final score (and the episode quiet period) on NAB, honestly.

The service reports when the anomaly model's final score (log-likelihood, 1.0 on a spatial
anomaly) crosses a threshold, once per episode: `episode_reports` emulates that rule — a row is
reported when its score is at or above the threshold and no row of the previous `quiet` rows
was. Reports are scored as detections (1 on a reported row, 0 elsewhere).

The (threshold, quiet) pair is chosen on one half of the corpus (files in sorted order,
alternating) by the standard profile and checked on the other half, both ways round; the pair
chosen on the whole corpus is printed last with its three profiles.

    python bench/nab_reports.py RESULTS_DIR    # e.g. /tmp/pensu-nab/streaming from nab_run.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nab_data import NAB_DATA  # noqa: E402
from nab_scorer_lib import PROFILES, LabelledFile, load_corpus, load_results, null_and_perfect, row_values  # noqa: E402

THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
QUIET = (0, 12, 36, 72, 144, 288, 576)


def episode_reports(scores: np.ndarray, threshold: float, quiet: int) -> np.ndarray:
    """Rows reported by the episode rule: score ≥ threshold and none of the previous `quiet` rows was."""
    above = np.asarray(scores, dtype=np.float64) >= threshold
    reported = np.zeros(above.shape, dtype=bool)
    last_above = -quiet - 1  # index of the last row at or above the threshold
    for i in np.flatnonzero(above):
        if i - last_above > quiet:
            reported[i] = True
        last_above = int(i)
    return reported


class FixedScorer:
    """NAB v1.1 score of 0/1 detections on a subset of files (row values computed once)."""

    def __init__(self, corpus: Mapping[str, LabelledFile]) -> None:
        self.corpus = corpus
        self.rows = {p: {n: row_values(lab, prof) for n, lab in corpus.items()} for p, prof in PROFILES.items()}

    def score(self, detections: Mapping[str, np.ndarray], names: Iterable[str], profile: str) -> float:
        """Normalised score of `detections` over `names` for one profile."""
        names = list(names)
        prof = PROFILES[profile]
        null, perfect = null_and_perfect({n: self.corpus[n] for n in names}, prof)
        raw = 0.0
        for name in names:
            window_id, value = self.rows[profile][name]
            hit = detections[name]
            for w, (_, end) in enumerate(self.corpus[name].windows):
                if end < self.corpus[name].probation:
                    continue
                rows = np.flatnonzero(hit & (window_id == w))
                raw += float(value[rows[0]]) if rows.size else -prof.fn_weight
            raw += float(value[hit & (window_id == -1)].sum())
        return 100.0 * (raw - null) / (perfect - null)


def main(argv: list[str] | None = None) -> int:
    """Choose on each half, check on the other; print the whole-corpus choice."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    corpus = load_corpus(NAB_DATA, NAB_DATA.parent / "combined_windows.json")
    results = load_results(args.results, corpus.keys())
    if len(results) != len(corpus):
        print(f"only {len(results)} of {len(corpus)} files under {args.results}", file=sys.stderr)
        return 1
    scorer = FixedScorer(corpus)
    names = sorted(corpus)
    halves = {"A": names[0::2], "B": names[1::2]}
    grid = {(t, q): {n: episode_reports(results[n], t, q) for n in names} for t in THRESHOLDS for q in QUIET}
    table = {key: {h: scorer.score(det, files, "standard") for h, files in halves.items()}
             for key, det in grid.items()}
    for chosen_on, checked_on in (("A", "B"), ("B", "A")):
        best = max(table, key=lambda k: table[k][chosen_on])
        print(f"chosen on half {chosen_on}: threshold {best[0]}, quiet {best[1]}: "
              f"standard {table[best][chosen_on]:.1f} on {chosen_on}, {table[best][checked_on]:.1f} on {checked_on}")
    whole = {key: scorer.score(det, names, "standard") for key, det in grid.items()}
    print("\nstandard score on all files (rows: threshold, columns: quiet rows)")
    print("thr   " + " ".join(f"{q:>6}" for q in QUIET))
    for t in THRESHOLDS:
        print(f"{t:<5} " + " ".join(f"{whole[(t, q)]:6.1f}" for q in QUIET))
    best = max(whole, key=whole.get)
    det = grid[best]
    scores = {p: scorer.score(det, names, p) for p in PROFILES}
    print(f"\nbest on all files: threshold {best[0]}, quiet {best[1]}: " +
          " / ".join(f"{p} {s:.1f}" for p, s in scores.items()) +
          f"; {sum(int(d.sum()) for d in det.values())} reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
