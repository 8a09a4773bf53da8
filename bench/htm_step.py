"""Per-sample cost and size of HTM models on a real NAB series.

Prints median and p99 µs per step for the `nab` anomaly model and the prediction model (after
2,000 warm-up samples), serialized bytes and in-array memory per model after 5,000 samples, and
the same for a metric's pair as the service runs it (`MetricAnalyzer`: one shared core with
both heads when the two models differ only in their heads).

    python bench/htm_step.py [--file realKnownCause/machine_temperature_system_failure.csv]
                             [--preset nab] [--samples 7000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nab_data import NAB_DATA, load_series  # noqa: E402

from pensu.htm.model import HtmModel  # noqa: E402
from pensu.htm.presets import prediction_params, preset_params  # noqa: E402

WARMUP = 2000
SIZE_AT = 5000


def measure(name: str, model: HtmModel, rows: list[tuple[float, float]]) -> None:
    """Step through rows, timing each step after the warm-up; print the figures."""
    times = []
    size = memory = None
    for i, (ts, value) in enumerate(rows):
        started = time.perf_counter_ns()
        model.step(ts, value)
        elapsed = time.perf_counter_ns() - started
        if i >= WARMUP:
            times.append(elapsed / 1000.0)
        if i + 1 == SIZE_AT:
            blob = model.to_bytes()
            size, memory = len(blob), model.memory_bytes()
            save_ms = _best_ms(model.to_bytes)
            restore_ms = _best_ms(lambda: HtmModel.from_bytes(blob))
    arr = np.array(times)
    print(f"{name:<18} steps={len(arr):>6}  median={np.median(arr):8.1f} µs  p99={np.percentile(arr, 99):8.1f} µs  "
          f"mean={arr.mean():8.1f} µs")
    if size is not None:
        print(f"{'':<18} after {SIZE_AT} samples: serialized={size / 1e6:.2f} MB  "
              f"in-array memory={memory / 1e6:.2f} MB  "
              f"to_bytes={save_ms:.2f} ms  from_bytes={restore_ms:.2f} ms")


def _best_ms(action: Callable[[], object], repeat: int = 5) -> float:
    """Best of `repeat` wall times of `action`, in ms (what a swap costs without disk I/O)."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1000.0


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="realKnownCause/machine_temperature_system_failure.csv")
    parser.add_argument("--preset", default="nab")
    parser.add_argument("--samples", type=int, default=7000)
    parser.add_argument("--steps", type=int, default=1, help="prediction steps of the metric pair")
    args = parser.parse_args()
    rows = load_series(NAB_DATA / args.file)[: args.samples]
    print(f"series {args.file}: {len(rows)} samples; preset {args.preset}; cpu count {os.cpu_count()}")
    # Compile the numba kernels outside the measurement.
    warm = HtmModel(preset_params(args.preset, warmup_samples=10), seed=1)
    for ts, value in rows[:50]:
        warm.step(ts, value)
    measure("anomaly model", HtmModel(preset_params(args.preset), seed=1), rows)
    measure("prediction model", HtmModel(prediction_params(preset_params(args.preset), 1), seed=2), rows)
    measure_pair(args.preset, args.steps, rows)


def measure_pair(preset: str, steps: int, rows: list[tuple[float, float]]) -> None:
    """Time and size of one metric's analyzer (anomaly + prediction model) as the service builds it."""
    from pensu.replay import build_analyzer

    analyzer = build_analyzer(env={}, preset=preset, steps=steps)  # default settings
    times = []
    for i, (ts, value) in enumerate(rows):
        started = time.perf_counter_ns()
        analyzer.process(ts, value)
        if i >= WARMUP:
            times.append((time.perf_counter_ns() - started) / 1000.0)
        if i + 1 == SIZE_AT:
            size, memory = len(analyzer.to_bytes()), analyzer.memory_bytes()
    arr = np.array(times)
    name = f"metric pair ({'shared core' if analyzer.shares_core else 'two cores'}, {steps} step)"
    print(f"{name:<18} steps={len(arr):>6}  median={np.median(arr):8.1f} µs  p99={np.percentile(arr, 99):8.1f} µs  "
          f"mean={arr.mean():8.1f} µs")
    print(f"{'':<18} after {SIZE_AT} samples: serialized={size / 1e6:.2f} MB  in-array memory={memory / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
