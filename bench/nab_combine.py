"""Offline experiment: the HTM final score combined with a cheap streaming contextual detector.

    python bench/nab_combine.py RUN_DIR [RUN_DIR ...] [--files all|even|odd] [--variants NAME,...]

RUN_DIR is the `streaming/` tree of `bench/nab_run.py --mode streaming` (columns timestamp, value,
anomaly_score = the final score, raw_score). For each detector variant and combination rule the
script computes the detector's score per row from the `value` column only (streaming: each row
sees only the rows before it; no labels, no file range, no file length), combines it with the
saved final score, and prints

* the streaming line: NAB standard / low FP / low FN at the optimal corpus threshold, and
* the reports line: `pensu.decision.EpisodeTracker` with the default decision settings applied
  to the combined score (as `bench/nab_reports.py` does), standard / low FP / low FN.

Detectors (written for Pensu from published descriptions, no code copied):

* ``ctx`` — contextual novelty. Values are binned on a fixed grid whose step is the range of the
  first `warmup` values / `levels` (as the service fixes its encoder resolution after the
  warm-up; bins beyond the warm-up range simply get new indices). The context of a row is the
  set of pairs (level of an earlier row among the last `span` distinct level events, current
  level); the score is the share of those pairs never seen before on this stream. All pairs
  are then remembered.
* ``engine`` — `pensu.htm.contextual` with its defaults, fed as `HtmModel` feeds it (grid
  from the warm-up, warm-up values primed, probation, rest); ``engine-p0`` / ``engine-p600``
  with another probation. Only its firings count (0 or 1), so use it with ``--rules max:0.6``.
* ``mad`` — robust z-score of the first difference against an exponentially weighted median
  and MAD (sign-step updates), squashed to [0, 1) by 1 - exp(-z / scale).

Combinations: ``max`` (max(final, w·d)), ``add`` (min(1, final + w·d)), ``lift`` (final + w·d
only when final is already above 0.3, i.e. the detector lifts likelihood peaks).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nab_reports import reports  # noqa: E402
from nab_scorer_lib import PROFILES, load_corpus, null_and_perfect, score_corpus, score_file  # noqa: E402

from pensu.decision import DecisionConfig  # noqa: E402
from pensu.htm.contextual import ContextualAnomaly, ContextualAnomalyParams  # noqa: E402
from pensu.htm.model import (  # noqa: E402
    FLAT_WARMUP_FACTOR,
    MIN_RESOLUTION,
    RESOLUTION_DIVISOR,
    resolution_for_range,
)

NAB = ROOT.parent / "shared" / "nab"
WARMUP = 150


def contextual_novelty(values: np.ndarray, levels: int = 20, span: int = 6, warmup: int = WARMUP,
                       base: float = 0.0, rest: int = 0) -> np.ndarray:
    """Share of the current (earlier level event, current level) pairs never seen before.

    Scores under `base` are reported as 0; after a score ≥ `base` the next `rest` rows score 0.
    """
    out = np.zeros(len(values))
    if len(values) <= warmup:
        return out
    head = values[:warmup]
    width = float(head.max() - head.min())
    if width <= 0.0:
        width = max(abs(float(head[0])), 1.0)
    step = width / levels
    origin = float(head.min())
    seen: set[tuple[int, int]] = set()
    recent: list[int] = []  # the last `span` distinct level events (a level change is an event)
    resting = 0
    for i, v in enumerate(values.tolist()):
        if resting:
            resting -= 1
        level = math.floor((v - origin) / step)
        if recent and recent[-1] == level:
            # no new event: the context is unchanged, nothing new to score
            continue
        pairs = {(earlier, level) for earlier in recent}
        if i >= warmup and pairs and not resting:
            novelty = sum(p not in seen for p in pairs) / len(pairs)
            if novelty >= base and novelty > 0:
                out[i] = novelty
                resting = rest
        seen.update(pairs)
        recent.append(level)
        if len(recent) > span:
            del recent[0]
    return out


def robust_difference_z(values: np.ndarray, rate: float = 0.02, scale: float = 6.0,
                        warmup: int = WARMUP) -> np.ndarray:
    """1 - exp(-z/scale), z = |Δv - median| / MAD with sign-step EW median and MAD."""
    out = np.zeros(len(values))
    if len(values) < 3:
        return out
    diffs = np.diff(values, prepend=values[0])
    head = diffs[1:warmup] if len(diffs) > 2 else diffs
    median = float(np.median(head))
    mad = float(np.median(np.abs(head - median))) or 1e-9
    floor = 1e-9 + 1e-6 * float(np.abs(values[:warmup]).max())
    for i in range(1, len(values)):
        d = float(diffs[i])
        z = abs(d - median) / max(mad, floor)
        if i >= warmup:
            out[i] = 1.0 - math.exp(-z / scale)
        step = rate * max(mad, floor)
        median += step if d > median else (-step if d < median else 0.0)
        mad += rate * mad * (1.0 if abs(d - median) > mad else -1.0) if mad > 0 else abs(d - median)
    return out


def engine_contextual(values: np.ndarray, rejected: np.ndarray, params: ContextualAnomalyParams) -> np.ndarray:
    """1.0 where `pensu.htm.contextual` fires inside an HtmModel fed these values, else 0.

    Mirrors `HtmModel`: the warm-up buffer (150 values; a flat warm-up continues up to 1,500)
    fixes the grid (origin = minimum, width = resolution × 130), the buffered values are primed,
    the value that completes the warm-up is the first one scored. Rows the service rejects
    (repeated timestamps) never reach the model.
    """
    out = np.zeros(len(values))
    detector = None
    buffered: list[float] = []
    for i, v in enumerate(values.tolist()):
        if rejected[i]:
            continue
        if detector is None:
            buffered.append(v)
            n = len(buffered)
            if n < WARMUP:
                continue
            lo, hi = min(buffered), max(buffered)
            if hi > lo:
                resolution = resolution_for_range(lo, hi)
            elif n >= FLAT_WARMUP_FACTOR * WARMUP:
                resolution = max(MIN_RESOLUTION, abs(v) * 0.01)
            else:
                continue
            detector = ContextualAnomaly(params, lo, resolution * RESOLUTION_DIVISOR)
            for b in buffered[:-1]:
                detector.prime(b)
        out[i] = float(detector.step(v))
    return out


def combine(final: np.ndarray, detector: np.ndarray, rule: str, weight: float) -> np.ndarray:
    """The combined final score (1.0 stays reserved to the spatial rule's rows)."""
    if rule == "max":
        out = np.maximum(final, weight * detector)
    elif rule == "add":
        out = final + weight * detector
    elif rule == "alone":
        out = weight * detector
    elif rule == "gate":
        # the likelihood counts in full only near a contextual novelty (last 10 rows); elsewhere × weight
        near = np.convolve(detector > 0, np.ones(10), mode="full")[: len(detector)] > 0
        out = np.where(near, final, weight * final)
    elif rule == "lift":
        out = np.where(final >= 0.3, final + weight * detector, final)
    else:
        raise ValueError(rule)
    out = np.where(final == 1.0, 1.0, np.minimum(out, 0.999999))
    return out


def load_runs(run_dir: Path, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(value, final score, raw score) per file."""
    runs = {}
    for name in names:
        with (run_dir / name).open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        runs[name] = (np.array([float(r["value"]) for r in rows]), np.array([float(r["anomaly_score"]) for r in rows]),
                      np.array([float(r["raw_score"]) for r in rows]),
                      # rows the service rejected (bench/nab_run.py writes score 0.0, likelihood 0.5)
                      np.array([r["anomaly_score"] == "0.0" and r["likelihood"] == "0.5" for r in rows]))
    return runs


def report_scores(runs: dict, corpus: dict, config: DecisionConfig) -> list[float]:
    """Normalised score of the reports per profile."""
    rows = {name: reports(runs[name][:3], config, WARMUP) for name in corpus}
    out = []
    for profile in PROFILES.values():
        null, perfect = null_and_perfect(corpus, profile)
        raw = sum(score_file(lab, rows[name], 0.5, profile).raw_score for name, lab in corpus.items())
        out.append(100 * (raw - null) / (perfect - null))
    return out


def evaluate(runs: dict, corpus: dict, with_reports: bool) -> str:
    """'standard/lowFP/lowFN (thr) | reports standard/lowFP/lowFN'."""
    scored = score_corpus({n: runs[n][1] for n in corpus}, corpus, PROFILES.values())
    s = scored["standard"]
    text = " / ".join(f"{r.score:5.1f}" for r in scored.values()) + f" (thr {s.threshold:.3f})"
    if with_reports:
        text += " | reports " + " / ".join(f"{v:5.1f}" for v in report_scores(runs, corpus, DecisionConfig()))
    return text


VARIANTS: dict[str, tuple] = {}
for _levels in (10, 20, 40):
    for _span in (3, 6, 12):
        VARIANTS[f"ctx-L{_levels}-S{_span}"] = (contextual_novelty, {"levels": _levels, "span": _span})
for _levels in (8, 16):
    for _span in (4, 7):
        for _rest in (0, 50, 150, 300, 600):
            for _base in (0.75, 1.0):
                VARIANTS[f"ctx-L{_levels}-S{_span}-b{_base:g}-r{_rest}"] = (
                    contextual_novelty, {"levels": _levels, "span": _span, "base": _base, "rest": _rest})
VARIANTS["engine"] = (engine_contextual, {"params": ContextualAnomalyParams()})
VARIANTS["engine-p0"] = (engine_contextual, {"params": ContextualAnomalyParams(probation_samples=0)})
VARIANTS["engine-p600"] = (engine_contextual, {"params": ContextualAnomalyParams(probation_samples=600)})
for _rate in (0.01, 0.05):
    for _scale in (3.0, 10.0):
        VARIANTS[f"mad-r{_rate}-s{_scale}"] = (robust_difference_z, {"rate": _rate, "scale": _scale})
RULES = [("max", w) for w in (0.5, 0.6, 0.7)] + [("add", w) for w in (0.05, 0.1, 0.2, 0.3)] + \
        [("lift", w) for w in (0.1, 0.2, 0.3)]


def main() -> None:
    """Score the saved runs as they are, then each variant × rule."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--files", choices=["all", "even", "odd"], default="all")
    parser.add_argument("--variants", default="", help="comma-separated variant names (default all)")
    parser.add_argument("--rules", default="", help="comma-separated rule:weight (default all)")
    parser.add_argument("--reports", action="store_true", help="also score the reports (slower)")
    args = parser.parse_args()
    corpus = load_corpus(NAB / "data", NAB / "combined_windows.json")
    if args.files != "all":
        corpus = {n: corpus[n] for n in sorted(corpus)[0 if args.files == "even" else 1::2]}
    names = sorted(corpus)
    variants = [v for v in args.variants.split(",") if v] or list(VARIANTS)
    rules = [(r.split(":")[0], float(r.split(":")[1])) for r in args.rules.split(",") if r] or RULES
    all_runs = [load_runs(d, names) for d in args.runs]
    for d, runs in zip(args.runs, all_runs):
        print(f"{'baseline':<22} {d}: {evaluate(runs, corpus, args.reports)}", flush=True)
    for variant in variants:
        fn, kwargs = VARIANTS[variant]
        if fn is engine_contextual:
            detector = {n: fn(all_runs[0][n][0], all_runs[0][n][3], **kwargs) for n in names}
        else:
            detector = {n: fn(all_runs[0][n][0], **kwargs) for n in names}  # values are the same in every run
        for rule, weight in rules:
            for d, runs in zip(args.runs, all_runs):
                combined = {n: (runs[n][0], combine(runs[n][1], detector[n], rule, weight), runs[n][2]) for n in names}
                print(f"{variant:<16} {rule}:{weight:<5g} {d.parent.name}: {evaluate(combined, corpus, args.reports)}",
                      flush=True)


if __name__ == "__main__":
    main()
