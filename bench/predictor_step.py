"""Per-sample cost and memory of the Predictor on a real, noisy NAB series.

Active cells come from the real HTM pipeline (`HtmModel`, `nab` preset, prediction head) when
`pensu.htm.temporal_memory` is available; otherwise (or with `--synthetic`) from a stand-in for
the temporal memory: the 40 active columns of each sample are hashed from its RDSE bucket
(neighbouring buckets share columns), and a column activates one context cell when it was seen
after the same previous bucket before, else bursts (all 32 cells), as an untrained TM would.
The cells are recorded first; then only `infer` + `learn` are timed.

    python bench/predictor_step.py [--file realKnownCause/nyc_taxi.csv] [--samples 5000]
                                   [--synthetic] [--steps 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nab_data import NAB_DATA, load_series  # noqa: E402

from pensu.htm.predictor import Predictor, PredictorParams  # noqa: E402

COLUMNS, CELLS_PER_COLUMN, ACTIVE_COLUMNS = 2048, 32, 40


def synthetic_cells(rows: list[tuple[float, float]]) -> list[tuple[np.ndarray, int, float]]:
    """TM stand-in: (active cells, bucket, value) per sample."""
    values = np.array([v for _, v in rows])
    resolution = max(1e-9, float(values.max() - values.min()) / 130.0)
    seen: set[tuple[int, int]] = set()
    previous = None
    out = []
    for value in values:
        bucket = int(np.floor(value / resolution))
        # a window of 40 consecutive "bucket positions", each hashed to a column: neighbours overlap
        positions = np.arange(bucket, bucket + ACTIVE_COLUMNS, dtype=np.int64)
        columns = np.unique((positions * 2654435761) % COLUMNS)
        cells = []
        for column in columns.tolist():
            if previous is not None and (column, previous) in seen:
                cells.append(column * CELLS_PER_COLUMN + (hash((column, previous)) % CELLS_PER_COLUMN))
            else:
                cells.extend(range(column * CELLS_PER_COLUMN, (column + 1) * CELLS_PER_COLUMN))
                if previous is not None:
                    seen.add((column, previous))
        out.append((np.array(sorted(cells), dtype=np.int32), bucket, float(value)))
        previous = bucket
    return out


def htm_cells(rows: list[tuple[float, float]], steps: int,
              wanted: int) -> list[tuple[np.ndarray, int, float]]:
    """Active cells of the real prediction model for `wanted` samples after its warm-up."""
    from pensu.htm.model import HtmModel
    from pensu.htm.presets import prediction_params, preset_params

    model = HtmModel(prediction_params(preset_params("nab"), steps), seed=1)
    out = []
    for ts, value in rows:
        model.step(ts, value)
        if model.tm is not None and model.rdse is not None:
            out.append((np.array(model.tm.active_cells, dtype=np.int32), model.rdse.bucket(value), value))
            if len(out) == wanted:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="realKnownCause/nyc_taxi.csv")
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--slots", type=int, default=PredictorParams().slots_per_cell)
    args = parser.parse_args()

    rows = load_series(NAB_DATA / args.file)
    source = "synthetic TM stand-in"
    if not args.synthetic:
        try:
            samples = htm_cells(rows, args.steps, args.samples)
            source = "HtmModel nab preset"
        except ImportError as exc:
            print(f"(real TM unavailable: {exc}; using the stand-in)")
            samples = synthetic_cells(rows[: args.samples])
    else:
        samples = synthetic_cells(rows[: args.samples])

    predictor = Predictor(PredictorParams(steps=(args.steps,), slots_per_cell=args.slots))
    cells0, bucket0, value0 = samples[0]
    for _ in range(args.steps + 1):  # compile / load the numba kernels outside the timing
        predictor.infer(cells0)
        predictor.learn(cells0, bucket0, value0)
    predictor = Predictor(PredictorParams(steps=(args.steps,), slots_per_cell=args.slots))
    times = np.empty(len(samples), dtype=np.float64)
    predicted = np.full(len(samples), np.nan)
    for i, (cells, bucket, value) in enumerate(samples):
        started = time.perf_counter_ns()
        guess = predictor.infer(cells)[args.steps]
        predictor.learn(cells, bucket, value)
        times[i] = (time.perf_counter_ns() - started) / 1000.0
        if guess.value is not None and i + args.steps < len(samples):
            predicted[i + args.steps] = guess.value
    sizes = np.array([c.size for c, _, _ in samples])
    table = predictor._tables[args.steps]
    print(f"series {args.file}: {len(samples)} samples, cells from {source}")
    print(f"active cells per sample: median {int(np.median(sizes))}, max {int(sizes.max())}")
    print(f"infer+learn µs: median {np.median(times):.1f}, p99 {np.percentile(times, 99):.1f}, "
          f"max {times.max():.1f}")
    print(f"classes {predictor.n_classes}, weight rows {table.rows_used} "
          f"(allocated {table.row_class.shape[0]})")
    actual = np.array([v for _, _, v in samples])
    half = len(samples) // 2  # score the second half, after the predictor had time to learn
    mae = np.nanmean(np.abs(predicted[half:] - actual[half:]))
    persistence = np.mean(np.abs(actual[half:] - actual[half - args.steps:len(actual) - args.steps]))
    print(f"MAE of {args.steps}-step predictions over the second half: {mae:.4g} "
          f"(persistence baseline {persistence:.4g})")
    print(f"memory_bytes after {len(samples)} samples: {predictor.memory_bytes():,}")


if __name__ == "__main__":
    main()
