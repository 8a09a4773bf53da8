"""Cost of swapping one analyzer out and in: `MetricAnalyzer.to_bytes` / `from_bytes`, by part.

When a process holds more metrics than its resident cap, every sample of a non-resident metric
swaps: the least recently used analyzer is serialized and the incoming one rebuilt from its
bytes (issue #16 asks for >= 1,000 swapped samples/s on one instance, ~1 ms per sample for
everything). This benchmark builds the service's default analyzer for one metric with a
configured range (so the HTM core exists from the first sample), teaches it `samples` samples
of a sine wave, then times per call (µs, best-of-`--repeat` means over `--reps` calls):

* `to_bytes` and `from_bytes` of the whole analyzer;
* the decode's parts: msgpack unpacking, parameter rebuilding, each component's `from_state`
  and `HtmModel.from_state` as a whole;
* the encode's parts: each component's `get_state`;
* and the packed size of each component's state.

    .venv/bin/python bench/analyzer_codec.py 3       # a young model
    .venv/bin/python bench/analyzer_codec.py 2000    # a mature one
    .venv/bin/python bench/analyzer_codec.py 2000 --warmup   # no range: warm-up (no SP/TM yet) if < 150

The timings are per call on one core; the machine's load changes them, so compare runs made
side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from pensu.analyzer import MetricAnalyzer  # noqa: E402
from pensu.errors import LineRejected  # noqa: E402
from pensu.htm.contextual import ContextualAnomaly  # noqa: E402
from pensu.htm.likelihood import AnomalyLikelihood  # noqa: E402
from pensu.htm.model import HtmModel, params_from_dict  # noqa: E402
from pensu.htm.predictor import Predictor  # noqa: E402
from pensu.htm.spatial_pooler import SpatialPooler  # noqa: E402
from pensu.htm.temporal_memory import TemporalMemory  # noqa: E402
from pensu.replay import build_analyzer  # noqa: E402


def trained_analyzer(samples: int, with_range: bool) -> MetricAnalyzer:
    """The service's default analyzer of metric "x", taught `samples` samples of a sine wave."""
    env = {"PENSU_METRIC_RANGES": json.dumps({"x": [0, 100]})} if with_range else {}
    analyzer = build_analyzer(env=env, metric="x")
    for i in range(samples):
        try:
            analyzer.process(1_700_000_000 + 300 * i, 50 + 30 * math.sin(i / 20))
        except LineRejected:
            pass
    return analyzer


def timed(label: str, call: Callable[[], Any], reps: int, repeat: int) -> float:
    """Print and return the best mean time per call (µs) over `repeat` runs of `reps` calls."""
    call()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(reps):
            call()
        best = min(best, (time.perf_counter() - start) / reps * 1e6)
    print(f"{label:28s} {best:9.1f} µs")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=int, nargs="?", default=3, help="samples learned before serializing")
    parser.add_argument("--reps", type=int, default=30, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=30, help="timing runs (the best is printed)")
    parser.add_argument("--warmup", action="store_true", help="no configured range: the model warms up first")
    parser.add_argument("--parts", action=argparse.BooleanOptionalAction, default=True,
                        help="time the components' parts too")
    args = parser.parse_args()

    analyzer = trained_analyzer(args.samples, not args.warmup)
    blob = analyzer.to_bytes()
    print(f"{len(blob)} bytes after {analyzer.sample_count} samples")
    thresholds = analyzer.thresholds
    t = lambda label, call: timed(label, call, args.reps, args.repeat)  # noqa: E731
    t("to_bytes", analyzer.to_bytes)
    t("from_bytes", lambda: MetricAnalyzer.from_bytes(blob, thresholds))
    if not args.parts:
        return
    envelope = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    t("  msgpack.unpackb", lambda: msgpack.unpackb(blob, raw=False, strict_map_key=False))
    state = envelope["analyzer"]["anomaly_model"]
    t("  params_from_dict", lambda: params_from_dict(state["params"]))
    parts: list[tuple[str, Any, str]] = [("sp", SpatialPooler, "sp"), ("tm", TemporalMemory, "tm"),
                                         ("predictor", Predictor, "predictor"),
                                         ("likelihood", AnomalyLikelihood, "likelihood"),
                                         ("contextual", ContextualAnomaly, "contextual")]
    for key, klass, _ in parts:
        if state.get(key) is not None:
            t(f"  {klass.__name__}.from_state", lambda k=klass, s=state[key]: k.from_state(s))
    t("  HtmModel.from_state", lambda: HtmModel.from_state(state))
    model = analyzer.anomaly_model
    t("  HtmModel.get_state", model.get_state)
    for key, _, attr in parts:
        part = getattr(model, attr)
        if part is not None:
            t(f"  {type(part).__name__}.get_state", part.get_state)
    for key, _, _ in parts:
        if state.get(key) is not None:
            print(f"{key:12s} {len(msgpack.packb(state[key], use_bin_type=True)):9d} bytes packed")


if __name__ == "__main__":
    main()
