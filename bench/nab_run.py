"""Run Pensu's anomaly model over the whole NAB corpus and score it with the NAB v1.1 rules.

Three lines per run (each with the standard / low FP / low FN profiles):

* ``streaming`` — what the service computes: models built through `pensu.analyzer.MetricAnalyzer`
  exactly as `pensu replay` / the service build them (default preset, default settings: warm-up
  range rule, the service's likelihood probation `presets.SERVICE_LIKELIHOOD`), knowing neither a
  file's range nor its length. Scored on `Analysis.final_score` with NAB's optimal threshold.
* ``reports`` — the same run's `Analysis.reported` scored as detections (1 on a reported row,
  0 elsewhere, fixed threshold 0.5): what users get from the service's decision rule.
* ``file`` — NAB's convention for every scoreboard detector (encoder range from the file's
  min/max, likelihood probation from the file length: 15 %, at most 750 rows, half learning,
  half estimation), for comparison with the scoreboard.

    python bench/nab_run.py [--mode all|streaming|file] [--preset nab] [--seed 42] [--jobs 1]
                            [--out /tmp/pensu-nab] [--only SUBSTRING]

Results land in `<out>/streaming/`, `<out>/reports/` and `<out>/file/` (one csv per data file,
NAB layout); `bench/nab_reports.py <out>/streaming` scores other decision settings (threshold,
quiet period) on them without re-running the models. The run also prints the number of reports
per file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from nab_data import NAB_DATA, load_rows  # noqa: E402

NAB = NAB_DATA.parent
REPORT_THRESHOLD = 0.5  # reports are 0/1, so any threshold in (0, 1] scores them the same


def probation(rows: int) -> tuple[int, int]:
    """NAB's probationary period split into (learning period, estimation samples)."""
    period = min(int(0.15 * rows), 750)
    learning = period // 2
    return learning, period - learning


def run_streaming(args: tuple[str, str, str, int]) -> tuple[str, int, float, int]:
    """Run one file through a MetricAnalyzer built like the service's; write streaming + reports csvs."""
    import pensu.analyzer
    from pensu.errors import LineRejected
    from pensu.replay import build_analyzer

    relative, out_dir, preset, seed = args
    pensu.analyzer.MODEL_SEED = seed  # the service uses one seed for every metric; vary it for the spread
    _apply_experiment_overrides()
    rows = load_rows(NAB_DATA / relative)
    analyzer = build_analyzer(env={}, preset=preset, metric=relative)  # default settings
    started = time.perf_counter()
    streaming = Path(out_dir) / "streaming" / relative
    reports = Path(out_dir) / "reports" / relative
    streaming.parent.mkdir(parents=True, exist_ok=True)
    reports.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with streaming.open("w", newline="") as fh, reports.open("w", newline="") as rh:
        writer = csv.writer(fh, lineterminator="\n")
        report_writer = csv.writer(rh, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "raw_score", "likelihood", "spatial", "reported"])
        report_writer.writerow(["timestamp", "anomaly_score"])
        for text_ts, ts, value in rows:
            try:
                out = analyzer.process(ts, value)
            except LineRejected:
                # the service rejects a repeated or older timestamp (a few NAB files have them):
                # no output, so nothing is detected on that row
                writer.writerow([text_ts, value, "0.0", "0.0", "0.5", 0, 0])
                report_writer.writerow([text_ts, "0"])
                continue
            count += out.reported
            writer.writerow([text_ts, value, repr(out.final_score), repr(out.anomaly_score),
                             repr(out.anomaly_likelihood), int(out.spatial_anomaly), int(out.reported)])
            report_writer.writerow([text_ts, "1" if out.reported else "0"])
    return relative, len(rows), time.perf_counter() - started, count


def _apply_experiment_overrides() -> None:
    """PENSU_NAB_OVERRIDES='{"field": value}' changes top-level preset fields (experiments only)."""
    import json

    import pensu.analyzer
    from pensu.htm.presets import preset_params

    overrides = json.loads(os.environ.get("PENSU_NAB_OVERRIDES", "{}"))
    if overrides:
        pensu.analyzer.preset_params = lambda name, **kw: preset_params(name, **{**kw, **overrides})


def run_file_range(args: tuple[str, str, str, int]) -> tuple[str, int, float, int]:
    """Score one NAB file the scoreboard's way (file min/max and file-length probation)."""
    from pensu.htm.model import HtmModel
    from pensu.htm.presets import preset_params

    relative, out_dir, preset, seed = args
    rows = load_rows(NAB_DATA / relative)
    learning, estimation = probation(len(rows))
    values = [r[2] for r in rows]
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1.0
    params = preset_params(preset, min_value=lo, max_value=hi)
    if params.likelihood is not None:
        params = params.replace(likelihood=dataclasses.replace(
            params.likelihood, learning_period=learning, estimation_samples=estimation))
    model = HtmModel(params, seed=seed)
    started = time.perf_counter()
    target = Path(out_dir) / "file" / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "raw_score"])
        for text_ts, ts, value in rows:
            out = model.step(ts, value)
            writer.writerow([text_ts, value, repr(out.anomaly_score), repr(out.raw_score)])
    return relative, len(rows), time.perf_counter() - started, 0


def score_line(label: str, results_dir: Path, fixed_threshold: float | None = None) -> None:
    """Print one line: the three profiles' normalised scores (optimal or fixed threshold)."""
    from nab_scorer_lib import PROFILES, load_corpus, load_results, null_and_perfect, score_corpus, score_file

    windows = NAB / "combined_windows.json"
    corpus = load_corpus(NAB_DATA, windows)
    results = load_results(results_dir, corpus.keys())
    if len(results) != len(corpus):
        print(f"{label:<10} only {len(results)} of {len(corpus)} files: not scored")
        return
    parts = []
    if fixed_threshold is None:
        for name, result in score_corpus(results, corpus, PROFILES.values()).items():
            tp = sum(c.tp for c in result.files.values())
            fp = sum(c.fp for c in result.files.values())
            fn = sum(c.fn for c in result.files.values())
            parts.append(f"{name} {result.score:5.1f} (thr {result.threshold:.4g}, TP {tp} FP {fp} FN {fn})")
    else:
        for name, profile in PROFILES.items():
            counts = [score_file(lab, results[n], fixed_threshold, profile) for n, lab in corpus.items()]
            null, perfect = null_and_perfect(corpus, profile)
            raw = sum(c.raw_score for c in counts)
            score = 100.0 * (raw - null) / (perfect - null)
            parts.append(f"{name} {score:5.1f} (TP {sum(c.tp for c in counts)} FP {sum(c.fp for c in counts)} "
                         f"FN {sum(c.fn for c in counts)})")
    print(f"{label:<10} " + " | ".join(parts), flush=True)


def main() -> None:
    """Run the corpus in the chosen modes, then score each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["all", "streaming", "file"], default="all",
                        help="all: streaming + reports + file range; streaming: streaming + reports only")
    parser.add_argument("--preset", default="nab")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="/tmp/pensu-nab")
    parser.add_argument("--only", default="", help="substring filter on file paths (for quick looks; not scored)")
    parser.add_argument("--quiet", action="store_true", help="no per-file lines")
    args = parser.parse_args()
    files = sorted(str(p.relative_to(NAB_DATA)) for p in NAB_DATA.rglob("*.csv") if args.only in str(p))
    out = Path(args.out)
    modes = {"all": ["streaming", "file"], "streaming": ["streaming"], "file": ["file"]}[args.mode]
    report_counts: dict[str, int] = {}
    for mode in modes:
        worker = run_streaming if mode == "streaming" else run_file_range
        started = time.perf_counter()
        total_rows = 0
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            jobs = [(f, args.out, args.preset, args.seed) for f in files]
            for relative, n, seconds, reports in pool.map(worker, jobs):
                total_rows += n
                report_counts[relative] = reports
                if not args.quiet:
                    print(f"{mode:<9} {relative:<66} {n:>6} rows {1e6 * seconds / n:6.0f} µs/row", flush=True)
        print(f"{mode}: {len(files)} files, {total_rows} rows in {time.perf_counter() - started:.0f}s "
              f"with {args.jobs} jobs (preset {args.preset}, seed {args.seed})", flush=True)
        if mode == "streaming":
            print("reports per file:", " ".join(f"{Path(f).stem}={c}" for f, c in report_counts.items()))
            print(f"reports in total: {sum(report_counts.values())}")
    if args.only:
        return
    print(f"\nNAB v1.1 scores (preset {args.preset}, seed {args.seed}):")
    for mode in modes:
        if mode == "streaming":
            score_line("streaming", out / "streaming")
            score_line("reports", out / "reports", fixed_threshold=REPORT_THRESHOLD)
        else:
            score_line("file", out / "file")


if __name__ == "__main__":
    main()
