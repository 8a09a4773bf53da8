"""NAB score of the *reports* Pensu would send: the decision rule and episodes applied to a run.

    python bench/nab_reports.py RESULTS_DIR [--likelihood 0.99999] [--quiet 10] [--suppression 0]
    python bench/nab_reports.py RESULTS_DIR --grid     # a small grid of thresholds and periods
    python bench/nab_reports.py RESULTS_DIR --grid --files even   # choose on half the files ...
    python bench/nab_reports.py RESULTS_DIR --likelihood L --quiet Q --files odd  # ... check on the rest

RESULTS_DIR is the output of `bench/nab_run.py` (columns timestamp, value, anomaly_score = the
final score, raw_score). Each file's rows go through `pensu.decision.EpisodeTracker` — the code
`MetricAnalyzer` runs in the service and in `pensu replay` — and the rows where an episode opens
(the service's reports) are scored as detections (score 1, every other row 0, threshold 0.5) with
the standard profile. With the default raw-score gate (0) and minimum confidence (0) this is
exactly the service's decision; a value outside the range seen is taken to be a row whose final
score is 1.0 (what the spatial-anomaly rule sets), which only matters for a raw-score gate > 0.
The warm-up rows (neutral outputs) are the first PENSU_WARMUP_SAMPLES of a file (--warmup).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nab_scorer_lib import PROFILES, load_corpus, null_and_perfect, score_file  # noqa: E402

from pensu.decision import (  # noqa: E402
    DEFAULT_LIKELIHOOD_THRESHOLD,
    DEFAULT_QUIET_SAMPLES,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SUPPRESSION_SAMPLES,
    DecisionConfig,
    EpisodeTracker,
    Observation,
)

NAB = ROOT.parent / "shared" / "nab"


def load_run(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, final score, raw score) columns of one result file."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return (np.array([float(r["value"]) for r in rows]), np.array([float(r["anomaly_score"]) for r in rows]),
            np.array([float(r["raw_score"]) for r in rows]))


def reports(run: tuple[np.ndarray, np.ndarray, np.ndarray], config: DecisionConfig, warmup: int) -> np.ndarray:
    """1.0 on the rows where an episode opens, else 0.0."""
    values, finals, raws = run
    tracker = EpisodeTracker("nab", config)
    out = np.zeros(len(values))
    previous = None
    for i, (value, final, raw) in enumerate(zip(values.tolist(), finals.tolist(), raws.tolist())):
        spatial = final == 1.0
        obs = Observation(timestamp=float(i), value=value, raw_score=raw, log_likelihood=final, final_score=final,
                          spatial_anomaly=spatial, warming_up=i < warmup - 1, predicted_value=None,
                          prediction_confidence=1.0, previous_value=previous)
        out[i] = tracker.step(obs).reported
        previous = value
    return out


def score(runs: dict, corpus: dict, config: DecisionConfig, warmup: int) -> tuple[float, int, int, int]:
    """(normalised standard score, TP, FP, FN) of the reports over the corpus."""
    profile = PROFILES["standard"]
    null, perfect = null_and_perfect(corpus, profile)
    raw = 0.0
    tp = fp = fn = 0
    for name, labelled in corpus.items():
        counts = score_file(labelled, reports(runs[name], config, warmup), 0.5, profile)
        raw += counts.raw_score
        tp, fp, fn = tp + counts.tp, fp + counts.fp, fn + counts.fn
    return 100 * (raw - null) / (perfect - null), tp, fp, fn


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    """Score one decision configuration, or a grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--likelihood", type=float, default=DEFAULT_LIKELIHOOD_THRESHOLD)
    parser.add_argument("--score", type=float, default=DEFAULT_SCORE_THRESHOLD)
    parser.add_argument("--quiet", type=int, default=DEFAULT_QUIET_SAMPLES)
    parser.add_argument("--suppression", type=int, default=DEFAULT_SUPPRESSION_SAMPLES)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--grid-likelihoods", default="0.9999,0.99999,0.999999",
                        help="likelihood thresholds of the grid (comma-separated)")
    parser.add_argument("--grid-quiet", default="0,5,10,30,100", help="quiet periods of the grid")
    parser.add_argument("--grid-suppression", default="0,100,500", help="suppression periods of the grid")
    parser.add_argument("--files", choices=["all", "even", "odd"], default="all",
                        help="score only every other file (sorted names) to choose on one half, check on the other")
    args = parser.parse_args()
    corpus = load_corpus(NAB / "data", NAB / "combined_windows.json")
    if args.files != "all":
        names = sorted(corpus)[0 if args.files == "even" else 1::2]
        corpus = {name: corpus[name] for name in names}
    runs = {name: load_run(Path(args.results) / name) for name in corpus}
    if args.grid:
        configs = [DecisionConfig(anomaly_score=args.score, anomaly_likelihood=lik, quiet_samples=q,
                                  suppression_samples=s)
                   for lik in _floats(args.grid_likelihoods) for q in _ints(args.grid_quiet)
                   for s in _ints(args.grid_suppression)]
    else:
        configs = [DecisionConfig(anomaly_score=args.score, anomaly_likelihood=args.likelihood,
                                  quiet_samples=args.quiet, suppression_samples=args.suppression)]
    for config in configs:
        value, tp, fp, fn = score(runs, corpus, config, args.warmup)
        print(f"likelihood={config.anomaly_likelihood:<9g} (final {config.final_score_threshold:.2f}) "
              f"score_gate={config.anomaly_score:g} quiet={config.quiet_samples:<4} "
              f"suppression={config.suppression_samples:<4} standard={value:6.2f} tp={tp} fp={fp} fn={fn}",
              flush=True)


if __name__ == "__main__":
    main()
