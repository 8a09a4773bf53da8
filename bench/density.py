"""Memory and checkpoint size of mature analyzers: how many metrics fit in a gigabyte.

A *mature* analyzer is the service's analyzer for one metric (anomaly + prediction model pair,
default settings, `nab` preset) after 20,000 samples of a real NAB series. The benchmark

1. builds one mature analyzer from the series (rows the service would reject — a few NAB files
   repeat or reorder timestamps — are skipped and do not count);
2. prints where its bytes are, per component and array (resident arrays, as allocated), and the
   size of its checkpoint per component (the bytes `MetricAnalyzer.to_bytes` writes);
3. times a swap of it: `to_bytes`, `from_bytes`, and a durable file save and load;
4. clones it `--count` times through a checkpoint round-trip and lets every clone learn
   `--diverge` further samples, each from its own offset in the rest of the series (so every
   clone owns its arrays and its learned state differs, as in a real fleet), then prints the
   process RSS divided by the number of analyzers held (mature one included) and the RSS
   growth per clone.

    python bench/density.py [--file realKnownCause/machine_temperature_system_failure.csv]
                            [--samples 20000] [--count 2000] [--diverge 50] [--preset small]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from nab_data import NAB_DATA, load_series  # noqa: E402

from pensu.analyzer import MetricAnalyzer  # noqa: E402
from pensu.checkpoint import CheckpointHeader, LocalCheckpointStore  # noqa: E402
from pensu.errors import LineRejected  # noqa: E402
from pensu.replay import build_analyzer  # noqa: E402

MB = 1e6


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mature(rows: list[tuple[float, float]], samples: int,
           preset: str | None = None) -> tuple[MetricAnalyzer, int, float]:
    """Feed rows until `samples` were accepted; return (analyzer, rows used, seconds)."""
    analyzer = build_analyzer(env={}, preset=preset, metric="density.mature")  # type: ignore[arg-type]
    used = 0
    started = time.perf_counter()
    for ts, value in rows:
        if analyzer.sample_count >= samples:
            break
        used += 1
        try:
            analyzer.process(ts, value)
        except LineRejected:
            continue
    return analyzer, used, time.perf_counter() - started


def component_arrays(analyzer: MetricAnalyzer) -> dict[str, dict[str, int]]:
    """Bytes of every resident array, by component (the shared core counts once)."""
    model = analyzer.anomaly_model
    out: dict[str, dict[str, int]] = {}
    for name, part in (("spatial pooler", model.sp), ("temporal memory", model.tm),
                       ("predictor", model.predictor), ("likelihood", model.likelihood)):
        if part is None:
            continue
        arrays: dict[str, int] = {}
        _collect(part, "", arrays, depth=0)
        out[name] = arrays
    return out


def _collect(obj: Any, prefix: str, into: dict[str, int], depth: int) -> None:
    """Walk an object's attributes for numpy arrays (and those of its tables/dicts), summing nbytes."""
    items = vars(obj).items() if hasattr(obj, "__dict__") else []
    for key, value in items:
        if key in ("_wiring", "_flags"):  # shared by every instance of the process, not this metric's
            continue
        name = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            into[name] = into.get(name, 0) + int(value.nbytes)
        elif isinstance(value, dict) and depth < 2:
            for sub in value.values():
                if hasattr(sub, "__dict__"):
                    _collect(sub, f"{name}.", into, depth + 1)
        elif hasattr(value, "__dict__") and depth < 2 and not isinstance(value, type):
            _collect(value, f"{name}.", into, depth + 1)


def checkpoint_parts(blob: bytes) -> dict[str, int]:
    """Packed bytes per top-level part of an analyzer checkpoint (model parts split out)."""
    envelope = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    state = next(v for k, v in envelope.items() if k not in ("format", "version"))
    parts: dict[str, int] = {}
    for key, value in state.items():
        if key == "anomaly_model" and isinstance(value, dict):
            for sub, sub_value in value.items():
                parts[f"model.{sub}"] = len(msgpack.packb(sub_value, use_bin_type=True))
        else:
            parts[key] = len(msgpack.packb(value, use_bin_type=True))
    return parts


def best_ms(action: Callable[[], object], repeat: int = 5) -> float:
    """Best wall time of `action` over `repeat` runs, in ms."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best * 1000.0


def swap_times(analyzer: MetricAnalyzer) -> None:
    """Print what swapping this analyzer out and in costs."""
    blob = analyzer.to_bytes()
    thresholds = analyzer.thresholds
    encode = best_ms(analyzer.to_bytes)
    decode = best_ms(lambda: MetricAnalyzer.from_bytes(blob, thresholds))
    with tempfile.TemporaryDirectory(prefix="pensu-density-") as directory:
        store = LocalCheckpointStore(Path(directory), durable=True)
        header = CheckpointHeader(metric=analyzer.metric, sample_count=analyzer.sample_count,
                                  last_timestamp=analyzer.last_timestamp, last_offsets={}, saved_at=time.time())
        save = best_ms(lambda: store.save(header, blob))
        load = best_ms(lambda: store.load(analyzer.metric))
    print(f"swap of one mature analyzer: to_bytes {encode:.2f} ms, from_bytes {decode:.2f} ms, "
          f"durable file save {save:.2f} ms, load {load:.2f} ms "
          f"→ out + in {encode + decode + save + load:.1f} ms")


def clone_fleet(analyzer: MetricAnalyzer, extra: list[tuple[float, float]], count: int,
                diverge: int) -> list[MetricAnalyzer]:
    """`count` clones of `analyzer` (checkpoint round-trip), each learning `diverge` more samples."""
    blob = analyzer.to_bytes()
    last_ts = float(analyzer.last_timestamp or 0.0)
    fleet = []
    span = max(1, len(extra) - diverge)
    for i in range(count):
        clone = MetricAnalyzer.from_bytes(blob, analyzer.thresholds)
        start = (i * 7919) % span
        ts = last_ts
        for _, value in extra[start:start + diverge]:
            ts += 300.0
            clone.process(ts, value)
        fleet.append(clone)
    return fleet


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="realKnownCause/machine_temperature_system_failure.csv")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--preset", default=None, help="both models' preset (default: the service default, nab)")
    parser.add_argument("--count", type=int, default=2_000, help="analyzers held for the RSS figure")
    parser.add_argument("--diverge", type=int, default=50, help="samples each clone learns on its own")
    args = parser.parse_args()
    rows = load_series(NAB_DATA / args.file)
    print(f"series {args.file}: {len(rows)} rows; load {os.getloadavg()[0]:.2f} (1-min); cpu count {os.cpu_count()}")
    analyzer, used, seconds = mature(rows, args.samples, args.preset)
    extra = rows[used:] if len(rows) - used > args.diverge else rows
    print(f"mature analyzer: {analyzer.sample_count} samples learned from {used} rows in {seconds:.1f}s "
          f"({1e6 * seconds / used:.0f} µs/sample); TM {analyzer.anomaly_model.tm.num_segments()} segments, "
          f"{analyzer.anomaly_model.tm.num_synapses()} synapses; shared core: {analyzer.shares_core}")

    print("\nresident arrays of the mature analyzer:")
    total = 0
    for component, arrays in component_arrays(analyzer).items():
        subtotal = sum(arrays.values())
        total += subtotal
        detail = ", ".join(f"{k} {v / 1e3:.0f}" for k, v in sorted(arrays.items(), key=lambda kv: -kv[1]) if v >= 1000)
        print(f"  {component:<16} {subtotal / MB:6.3f} MB   ({detail} kB)")
    print(f"  {'total':<16} {total / MB:6.3f} MB   (memory_bytes() says {analyzer.memory_bytes() / MB:.3f} MB)")

    blob = analyzer.to_bytes()
    print(f"\ncheckpoint: {len(blob) / MB:.3f} MB")
    for key, size in sorted(checkpoint_parts(blob).items(), key=lambda kv: -kv[1]):
        if size >= 1000:
            print(f"  {key:<24} {size / 1e3:8.1f} kB")
    swap_times(analyzer)

    if args.count <= 0:
        return
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    fleet = clone_fleet(analyzer, extra, args.count, args.diverge)
    gc.collect()
    after = rss_bytes()
    held = len(fleet) + 1
    print(f"\n{held} analyzers held ({args.count} clones via checkpoint round-trip, each learning {args.diverge} "
          f"samples of its own; {time.perf_counter() - started:.0f}s)")
    print(f"  process RSS {after / MB:.0f} MB → {after / held / MB:.3f} MB per analyzer "
          f"(RSS growth per clone {(after - before) / args.count / MB:.3f} MB; "
          f"{1e9 / (after / held):.0f} analyzers per GB)")


if __name__ == "__main__":
    main()
