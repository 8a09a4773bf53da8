"""Run Pensu's anomaly model over the whole NAB corpus and score it with bench/nab_score.py.

Every file is run with the same preset (no per-file tuning). As in NAB's own detector
harness, the likelihood's probation is derived from the file length (15 %, at most 750 rows,
half learning, half estimation) and, with ``--range file`` (NAB's convention for every
detector), the encoder range comes from the file's min/max; ``--range warmup`` uses the
service's warm-up estimate instead (nothing known up front).

    python bench/nab_run.py [--preset nab] [--range file|warmup] [--jobs 2] [--out /tmp/pensu-nab]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from nab_data import NAB_DATA, load_rows  # noqa: E402


def probation(rows: int) -> tuple[int, int]:
    """NAB's probationary period split into (learning period, estimation samples)."""
    period = min(int(0.15 * rows), 750)
    learning = period // 2
    return learning, period - learning


def run_file(args: tuple[str, str, str, int]) -> tuple[str, int, float]:
    """Score one NAB file; write `<out>/<category>/<name>` with the anomaly score column."""
    from pensu.htm.likelihood import AnomalyLikelihoodParams
    from pensu.htm.model import HtmModel
    from pensu.htm.presets import preset_params

    relative, out_dir, range_mode, seed = args
    rows = load_rows(NAB_DATA / relative)
    learning, estimation = probation(len(rows))
    overrides: dict = {"likelihood": AnomalyLikelihoodParams(learning_period=learning, estimation_samples=estimation)}
    if range_mode == "file":
        values = [r[2] for r in rows]
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1.0
        pad = float(os.environ.get("PENSU_NAB_PAD", "0")) * (hi - lo)  # NuPIC's NAB detector pads 20 %
        overrides.update(min_value=lo - pad, max_value=hi + pad)
    elif float(os.environ.get("PENSU_NAB_PAD", "0")):
        overrides.update(warmup_range_padding=float(os.environ["PENSU_NAB_PAD"]))
    model = HtmModel(preset_params(os.environ.get("PENSU_NAB_PRESET", "nab"), **overrides), seed=seed)
    started = time.perf_counter()
    target = Path(out_dir) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "raw_score"])
        for text_ts, ts, value in rows:
            out = model.step(ts, value)
            writer.writerow([text_ts, value, repr(out.anomaly_score), repr(out.raw_score)])
    return relative, len(rows), time.perf_counter() - started


def main() -> None:
    """Run the corpus, then score it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nab")
    parser.add_argument("--range", choices=["file", "warmup"], default="file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="/tmp/pensu-nab")
    parser.add_argument("--pad", type=float, default=0.0,
                        help="widen the file range (--range file) or the warm-up range by this fraction on each side")
    parser.add_argument("--only", default="", help="substring filter on file paths (for quick looks)")
    args = parser.parse_args()
    os.environ["PENSU_NAB_PRESET"] = args.preset
    os.environ["PENSU_NAB_PAD"] = str(args.pad)
    files = sorted(str(p.relative_to(NAB_DATA)) for p in NAB_DATA.rglob("*.csv") if args.only in str(p))
    started = time.perf_counter()
    total_rows = 0
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [(f, args.out, args.range, args.seed) for f in files]
        for relative, n, seconds in pool.map(run_file, jobs):
            total_rows += n
            print(f"{relative:<70} {n:>6} rows {1e6 * seconds / n:7.0f} µs/row", flush=True)
    elapsed = time.perf_counter() - started
    print(f"{len(files)} files, {total_rows} rows in {elapsed:.0f}s with {args.jobs} jobs "
          f"(preset {args.preset}, range {args.range})")
    scorer = ROOT / "bench" / "nab_score.py"
    if scorer.exists() and not args.only:
        subprocess.run([sys.executable, str(scorer), args.out, "--data", str(NAB_DATA)], check=False)


if __name__ == "__main__":
    main()
