"""Warm start figures: gate overhead per line, history learning speed and stall per loop chunk,
and how much a learned history lowers a new metric's first anomaly scores.

    python bench/warm_start.py [--preset small|nab] [--days 2] [--live 200]

1. `admit` on lines of resident metrics (the steady state with PENSU_GRAPHITE_URL set): µs per
   line, next to `parse_message` alone (what the pipeline pays anyway);
2. learning a history through the gate's `_learn` (the service's path): samples/s and the loop
   time one LEARN_BATCH chunk takes;
3. NAB machine_temperature_system_failure: `--days` of history learned, then `--live` samples,
   warm vs cold, per window of 150: samples still warming up, samples with a prediction, the
   predictions' mean absolute error, mean raw and final anomaly score.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from pensu.analyzer import MetricAnalyzer  # noqa: E402
from pensu.analyzer_settings import analyzer_config  # noqa: E402
from pensu.carbon import DEFAULT_NAME_TEMPLATE, parse_message  # noqa: E402
from pensu.checkpoint import LocalCheckpointStore  # noqa: E402
from pensu.delivery import Batch  # noqa: E402
from pensu.outputs import OutputFormatter, OutputTopics  # noqa: E402
from pensu.pipeline import Pipeline  # noqa: E402
from pensu.registry import ModelRegistry  # noqa: E402
from pensu.settings import load_settings  # noqa: E402
from pensu.warm_start_gate import LEARN_BATCH, WarmStartGate  # noqa: E402

NAB_DATA = Path(os.environ.get("PENSU_NAB_DATA", ROOT.parent / "shared" / "nab" / "data"))
NAB_FILE = NAB_DATA / "realKnownCause" / "machine_temperature_system_failure.csv"


def nab_rows(count: int) -> list[tuple[float, float]]:
    rows = []
    with NAB_FILE.open(newline="") as handle:
        for row in csv.DictReader(handle):
            ts = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            rows.append((ts.timestamp(), float(row["value"])))
            if len(rows) == count:
                break
    return rows


def make_gate(preset: str, models: Path) -> tuple[WarmStartGate, ModelRegistry]:
    settings = load_settings({"PENSU_GRAPHITE_URL": "http://127.0.0.1:9", "PENSU_ANOMALY_MODEL_PRESET": preset,
                              "PENSU_PREDICTION_MODEL_PRESET": preset})
    config = analyzer_config(settings)
    registry = ModelRegistry(LocalCheckpointStore(models), config, capacity=1000)
    formatter = OutputFormatter(OutputTopics("a", "p", "r"), DEFAULT_NAME_TEMPLATE, config.thresholds, "bench")
    pipeline = Pipeline(registry, formatter, re.compile(".*"))
    return WarmStartGate(settings, registry, pipeline, CollectorRegistry()), registry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("small", "nab", "nupic"))
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--live", type=int, default=200)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min), "
          f"preset {args.preset}")

    with tempfile.TemporaryDirectory() as tmp:
        gate, registry = make_gate(args.preset, Path(tmp))
        try:
            metrics = [f"host{i:03d}.cpu.user" for i in range(100)]
            for m in metrics:
                registry.get(m).process(1_600_000_000.0, 1.0)  # resident and not new: pass-through
            payloads = [f"{m} {i % 97}.5 {1_600_000_300 + i}".encode() for i in range(200) for m in metrics]
            batch = Batch()
            started = time.perf_counter()
            for p in payloads:
                gate.admit(p, "metrics:0", 1, None, batch)
            admit_us = (time.perf_counter() - started) / len(payloads) * 1e6
            started = time.perf_counter()
            for p in payloads:
                parse_message(p)
            parse_us = (time.perf_counter() - started) / len(payloads) * 1e6
            print(f"1. admit, pass-through: {admit_us:.1f} us/line (parse_message alone {parse_us:.1f} us/line), "
                  f"{len(payloads)} one-line messages")

            rows = nab_rows(int(args.days * 288) + args.live + 288)
            history, live = rows[288:288 + int(args.days * 288)], rows[288 + int(args.days * 288):]
            registry.get("nab.machine_temperature")
            started = time.perf_counter()
            for i in range(0, len(history), LEARN_BATCH):
                gate._learn("nab.machine_temperature", history[i:i + LEARN_BATCH])
            seconds = time.perf_counter() - started
            print(f"2. history learning: {len(history)} samples in {seconds:.2f} s = {len(history) / seconds:.0f} "
                  f"samples/s; one {LEARN_BATCH}-sample chunk holds the loop "
                  f"{seconds / len(history) * LEARN_BATCH * 1e3:.0f} ms")
        finally:
            gate.close()

    config = analyzer_config(load_settings({"PENSU_ANOMALY_MODEL_PRESET": args.preset,
                                            "PENSU_PREDICTION_MODEL_PRESET": args.preset}))
    warm, cold = MetricAnalyzer("m", config), MetricAnalyzer("m", config)
    for ts, v in history:
        warm.process(ts, v)
    w = [warm.process(ts, v) for ts, v in live]
    c = [cold.process(ts, v) for ts, v in live]
    print(f"3. {len(live)} live samples after {args.days:g} days of history, by window of 150 (warm | cold):")
    print("   each side: samples warming up / samples with a prediction / mean |error| of the predictions / "
          "mean raw score / mean final score (0.030: likelihood still in probation)")

    def row(name: str, xs: list) -> str:
        errors = [abs(a.predicted_value - a.value) for a in xs if a.predicted_value is not None]
        err = f"{statistics.mean(errors):.2f}" if errors else "-"
        return (f"{sum(a.warming_up for a in xs)} / {sum(a.predicted_value is not None for a in xs)} / {err} / "
                f"{statistics.mean(a.anomaly_score for a in xs):.3f} / "
                f"{statistics.mean(a.final_score for a in xs):.3f}")

    for lo in range(0, len(live), 150):
        hi = min(lo + 150, len(live))
        print(f"   {lo:4d}-{hi - 1:<4d} | {row('warm', w[lo:hi])} | {row('cold', c[lo:hi])}")

if __name__ == "__main__":
    main()
