"""Forecast quality of the service's prediction model against naive baselines and Cui et al. 2016.

Every forecast comes from `MetricAnalyzer` built as `pensu replay` / `pensu run` build it
(`pensu.replay.build_analyzer`: default presets, default settings, streaming, nothing known of
the future); the analyzer's ``predicted_value`` for a row is the forecast made ``steps`` rows
earlier.

1. **NYC-taxi task** (Cui, Ahmad & Hawkins 2016): ../shared/forecast/nyc_taxi_full.csv, 5 steps
   (2.5 h) ahead, error of the predictions made from record 10,000 on (0-based row index of the
   record the prediction is made at), "MAPE" = Σ|error| / Σ|actual|, NRMSE = RMSE / std of the
   whole series. Published: HTM 0.081, LSTM-6000 0.082, ESN 0.096, ELM 0.16, ARIMA 0.25;
   one week earlier 0.088, 5-step persistence 0.32. The same figures over predictions made at
   records 2,000 … 9,999 are printed beside: those are the rows to tune on.
2. **1-step table**: nyc_taxi, machine_temperature_system_failure, speed_6005 (NAB), MAE and
   MAPE after the first 15 % of rows, against persistence (last value), the value one day
   earlier and one week earlier (periods from the series' sampling interval).
3. **Bands**: share of actual values inside the forecast's [lower, upper] band (nominal 80 %).

    python bench/forecast.py [--only taxi|table] [--series nyc_taxi ...] [--all-nab] [--steps 5] [--seed N]
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

from pensu.errors import LineRejected  # noqa: E402
from pensu.replay import build_analyzer  # noqa: E402

TAXI_FULL = Path(__file__).resolve().parents[2] / "shared" / "forecast" / "nyc_taxi_full.csv"
TAXI_EVAL_FROM = 10_000
TAXI_TUNE = (2_000, TAXI_EVAL_FROM)
PUBLISHED = [("HTM (Cui et al. 2016)", 0.081), ("LSTM-6000", 0.082), ("ESN", 0.096), ("ELM", 0.16),
             ("ARIMA", 0.25)]
TABLE_SERIES = {
    "nyc_taxi": "realKnownCause/nyc_taxi.csv",
    "machine_temperature_system_failure": "realKnownCause/machine_temperature_system_failure.csv",
    "speed_6005": "realTraffic/speed_6005.csv",
}


def run_series(rows: list[tuple[float, float]], steps: int, preset: str) -> dict[str, np.ndarray]:
    """Stream rows through a fresh analyzer; per row: the forecast made for it and its band."""
    analyzer = build_analyzer(env={}, preset=preset, steps=steps)  # default settings
    n = len(rows)
    out = {k: np.full(n, np.nan) for k in ("prediction", "lower", "upper")}
    started = time.perf_counter()
    for i, (ts, value) in enumerate(rows):
        try:
            analysis = analyzer.process(ts, value)
        except LineRejected:  # out-of-order rows (machine_temperature has some): skipped, as replay does
            continue
        if analysis.predicted_value is not None:
            out["prediction"][i] = analysis.predicted_value
            lower = getattr(analysis, "predicted_lower", None)
            upper = getattr(analysis, "predicted_upper", None)
            if lower is not None and upper is not None:
                out["lower"][i], out["upper"][i] = lower, upper
    out["seconds"] = np.array(time.perf_counter() - started)
    out["shares_core"] = np.array(analyzer.shares_core)
    out["memory_bytes"] = np.array(analyzer.memory_bytes())
    out["checkpoint_bytes"] = np.array(len(analyzer.to_bytes()))
    return out


def mape(pred: np.ndarray, actual: np.ndarray) -> float:
    """Cui et al.'s "MAPE": Σ|error| / Σ|actual| (rows without a forecast count as missing)."""
    ok = ~np.isnan(pred)
    return float(np.abs(pred[ok] - actual[ok]).sum() / np.abs(actual[ok]).sum())


def coverage(result: dict[str, np.ndarray], actual: np.ndarray, rows: slice) -> str:
    """Share of actual values inside the band over `rows`, or '-' without bands."""
    lower, upper, act = result["lower"][rows], result["upper"][rows], actual[rows]
    ok = ~np.isnan(lower)
    if not ok.any():
        return "-"
    inside = (act[ok] >= lower[ok]) & (act[ok] <= upper[ok])
    width = float(np.mean(upper[ok] - lower[ok]))
    return f"{100 * inside.mean():.1f} % (mean width {width:.4g})"


def taxi_task(steps: int, preset: str) -> None:
    rows = load_series(TAXI_FULL)
    actual = np.array([v for _, v in rows])
    result = run_series(rows, steps, preset)
    print(f"\n## NYC-taxi task: {steps} steps ahead")
    print(f"{len(rows)} rows, {float(result['seconds']):.0f} s, "
          f"{1e6 * float(result['seconds']) / len(rows):.0f} µs/sample for the pair, "
          f"shared core: {bool(result['shares_core'])}, memory {int(result['memory_bytes']):,} B, "
          f"checkpoint {int(result['checkpoint_bytes']):,} B")
    print("| model | MAPE, tuning rows (records 2,000-9,999) | MAPE, evaluation (records 10,000 on) "
          "| NRMSE, evaluation |")
    print("|---|---|---|---|")
    # predicted_value at row t was made at record t - steps
    ranges = [slice(TAXI_TUNE[0] + steps, TAXI_TUNE[1] + steps), slice(TAXI_EVAL_FROM + steps, len(rows))]
    idx = [np.arange(len(rows))[r] for r in ranges]
    pred = [result["prediction"][r] for r in ranges]
    act = [actual[r] for r in ranges]
    nrmse = float(np.sqrt(np.nanmean((pred[1] - act[1]) ** 2)) / actual.std())
    print(f"| **Pensu** | {mape(pred[0], act[0]):.3f} | **{mape(pred[1], act[1]):.3f}** | {nrmse:.3f} |")
    for name, value in PUBLISHED:
        print(f"| {name} (published) | | {value:.3f} | |")
    for name, lag in (("one week earlier", 336), (f"{steps}-step persistence", steps)):
        print(f"| {name} (measured) | {mape(actual[idx[0] - lag], act[0]):.3f} "
              f"| {mape(actual[idx[1] - lag], act[1]):.3f} | |")
    print(f"80 % band coverage: tuning {coverage(result, actual, ranges[0])}, "
          f"evaluation {coverage(result, actual, ranges[1])}")


def one_step_table(names: list[str], preset: str) -> None:
    print("\n## 1-step forecasts, after the first 15 % of rows")
    print("| series | rows | Pensu MAE | persistence | one day | one week | Pensu MAPE | persistence MAPE "
          "| 80 % band coverage | µs/sample |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = load_series(NAB_DATA / TABLE_SERIES.get(name, name))
        actual = np.array([v for _, v in rows])
        interval = float(np.median(np.diff([ts for ts, _ in rows])))
        day, week = int(round(86400 / interval)), int(round(7 * 86400 / interval))
        result = run_series(rows, 1, preset)
        start = int(0.15 * len(rows))
        target = slice(start, len(rows))
        idx = np.arange(len(rows))[target]
        act = actual[target]
        pred = result["prediction"][target]
        ok = ~np.isnan(pred)

        def naive(lag: int) -> str:
            usable = idx - lag >= 0
            if not usable.all():
                return "-"
            return f"{np.mean(np.abs(actual[idx - lag] - act)):.4g}"

        print(f"| {name} | {len(rows)} | **{np.mean(np.abs(pred[ok] - act[ok])):.4g}** | {naive(1)} "
              f"| {naive(day)} | {naive(week)} | {mape(pred, act):.4f} | {mape(actual[idx - 1], act):.4f} "
              f"| {coverage(result, actual, target)} | {1e6 * float(result['seconds']) / len(rows):.0f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["taxi", "table"], default=None)
    parser.add_argument("--series", nargs="*", default=list(TABLE_SERIES))
    parser.add_argument("--all-nab", action="store_true", help="1-step table over every NAB series")
    parser.add_argument("--steps", type=int, default=5, help="steps ahead of the taxi task")
    parser.add_argument("--preset", default="nab")
    parser.add_argument("--seed", type=int, default=None,
                        help="model seed instead of the service's fixed one (a spread check only)")
    args = parser.parse_args()
    if args.seed is not None:
        import pensu.analyzer

        pensu.analyzer.MODEL_SEED = args.seed
    if args.only != "table":
        taxi_task(args.steps, args.preset)
    if args.only != "taxi":
        names = args.series
        if args.all_nab:
            names = sorted(str(p.relative_to(NAB_DATA)) for p in NAB_DATA.glob("*/*.csv"))
        one_step_table(names, args.preset)


if __name__ == "__main__":
    main()
