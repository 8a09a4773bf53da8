"""What a swap costs without Kafka: the model registry over a checkpoint directory, round-robin.

`--metrics` metrics, `--cap` resident, one sample per metric per round, round-robin, so once the
first round has filled the store every sample evicts (saves) the least recently used analyzer
and loads the incoming one from its checkpoint. The analyzers are built as the service builds
them (default settings, a configured range so no warm-up, young models of a few samples as in
`bench/service_throughput.py`). Prints wall samples/s and CPU ms per swapped sample (CPU time
is less sensitive to a shared machine's load than wall time), and with `--profile N` the N
largest own-time entries.

`--store log` uses the append-only `LogCheckpointStore` instead of a file per metric.

`--mature N`: instead of young models, every metric starts as a clone of one analyzer that learned
N samples of a real NAB series (`--file`; the clones are written to the store under their own
names through a checkpoint round trip), and each round feeds every metric the series' next value:
what swapping costs for metrics that have run for weeks (issue #16: ten thousand mature metrics
per instance).

    python bench/swap_registry.py [--metrics 2000] [--cap 200] [--store local|log] [--sync-interval 1.0]
                                  [--mature 20000 [--file realKnownCause/...csv]] [--profile 20]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.allocator import keep_large_buffers  # noqa: E402
from pensu.analyzer import MetricAnalyzer  # noqa: E402
from pensu.analyzer_settings import metric_configs  # noqa: E402
from pensu.checkpoint import CheckpointHeader, CheckpointStore, LocalCheckpointStore  # noqa: E402
from pensu.checkpoint_log import LogCheckpointStore  # noqa: E402
from pensu.errors import LineRejected  # noqa: E402
from pensu.registry import ModelRegistry  # noqa: E402
from pensu.settings import load_settings  # noqa: E402

START = 1_700_000_000


def value(metric: int, i: int) -> float:
    """The same noisy wave per metric as bench/service_throughput.py."""
    return round(50 + 30 * math.sin(2 * math.pi * (i + metric) / 288) + (metric * 7919 + i * 104729) % 11, 3)


def fill_with_mature_clones(store: CheckpointStore, names: list[str], samples: int,
                            file: str) -> tuple[Callable[[int, int], float], float]:
    """Store one matured analyzer under every name; return the feed of the series' next values."""
    sys.path.insert(0, str(ROOT / "bench"))
    from density import mature
    from nab_data import NAB_DATA, load_series

    rows = load_series(NAB_DATA / file)
    analyzer, used, seconds = mature(rows, samples)
    print(f"matured one analyzer on {file}: {analyzer.sample_count} samples in {seconds:.0f} s")
    blob = analyzer.to_bytes()
    for name in names:
        clone = MetricAnalyzer.from_bytes(blob, analyzer.thresholds)
        clone.metric = name
        store.save(CheckpointHeader(metric=name, sample_count=clone.sample_count, last_timestamp=clone.last_timestamp,
                                    last_offsets={}, saved_at=time.time()), clone.to_bytes())
    rest = [v for _, v in rows[used:]] or [v for _, v in rows]

    def feed(metric: int, i: int) -> float:
        return rest[(metric + i) % len(rest)]

    return feed, len(blob) / 1e6


def main() -> None:
    """Fill the store with one round, then time one round in which every sample swaps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=2000)
    parser.add_argument("--cap", type=int, default=200)
    parser.add_argument("--sync-interval", type=float, default=1.0,
                        help="LocalCheckpointStore group commit (0: fsync every save)")
    parser.add_argument("--store", choices=("local", "log"), default="local")
    parser.add_argument("--mature", type=int, default=0, help="clone one analyzer that learned this many samples")
    parser.add_argument("--file", default="realKnownCause/machine_temperature_system_failure.csv")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's thresholds alone (the service raises them: pensu.allocator)")
    parser.add_argument("--profile", type=int, default=0)
    args = parser.parse_args()
    if not args.default_allocator:
        keep_large_buffers()
    settings = load_settings({"PENSU_METRIC_RANGES": '{"bench\\\\.": [0, 100]}'})
    configs = metric_configs(settings)
    names = [f"bench.m{m}.value" for m in range(args.metrics)]
    with tempfile.TemporaryDirectory(prefix="pensu-swap-") as directory:
        kind = LogCheckpointStore if args.store == "log" else LocalCheckpointStore
        store = kind(Path(directory), sync_interval_s=args.sync_interval)
        registry = ModelRegistry(store, configs, capacity=args.cap)
        sample = value
        rounds_before = 2
        if args.mature:
            sample, checkpoint_mb = fill_with_mature_clones(store, names, args.mature, args.file)
            rounds_before = 1
            print(f"store filled with {len(names)} clones of a checkpoint of {checkpoint_mb:.2f} MB")

        latencies: list[float] = []

        def one_round(i: int) -> None:
            for m, name in enumerate(names):
                began = time.perf_counter()
                try:
                    registry.get(name).process(START + 60 * i, sample(m, i))
                except LineRejected:
                    pass  # a value outside a mature model's range: the swap happened all the same
                latencies.append(time.perf_counter() - began)

        for i in range(rounds_before):
            one_round(i)
        profiler = cProfile.Profile() if args.profile else None
        latencies.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.runcall(one_round, 2)
        else:
            one_round(2)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        store.close()
    print(f"{args.store} store, {'mature' if args.mature else 'young'} models, {args.metrics} metrics, cap {args.cap}, "
          f"sync interval {args.sync_interval}s: "
          f"{args.metrics / wall:.0f} samples/s wall, {1e3 * cpu / args.metrics:.2f} ms CPU per swapped sample "
          f"(load {os.getloadavg()[0]:.2f}, cpu count {os.cpu_count()}{', profiled' if profiler else ''}); "
          f"latency per sample p50 {1e3 * np.percentile(latencies, 50):.2f} ms, "
          f"p99 {1e3 * np.percentile(latencies, 99):.2f} ms, max {1e3 * max(latencies):.1f} ms")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
