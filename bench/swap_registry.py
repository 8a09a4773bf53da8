"""What a swap costs without Kafka: the model registry over a checkpoint directory, round-robin.

`--metrics` metrics, `--cap` resident, one sample per metric per round, round-robin, so once the
first round has filled the store every sample evicts (saves) the least recently used analyzer
and loads the incoming one from its checkpoint. The analyzers are built as the service builds
them (default settings, a configured range so no warm-up, young models of a few samples as in
`bench/service_throughput.py`). Prints wall samples/s and CPU ms per swapped sample (CPU time
is less sensitive to a shared machine's load than wall time), and with `--profile N` the N
largest own-time entries.

`--store log` uses the append-only `LogCheckpointStore` instead of a file per metric.

    python bench/swap_registry.py [--metrics 2000] [--cap 200] [--store local|log] [--sync-interval 1.0]
                                  [--profile 20]
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.analyzer_settings import metric_configs  # noqa: E402
from pensu.checkpoint import LocalCheckpointStore  # noqa: E402
from pensu.checkpoint_log import LogCheckpointStore  # noqa: E402
from pensu.registry import ModelRegistry  # noqa: E402
from pensu.settings import load_settings  # noqa: E402

START = 1_700_000_000


def value(metric: int, i: int) -> float:
    """The same noisy wave per metric as bench/service_throughput.py."""
    return round(50 + 30 * math.sin(2 * math.pi * (i + metric) / 288) + (metric * 7919 + i * 104729) % 11, 3)


def main() -> None:
    """Fill the store with one round, then time one round in which every sample swaps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=2000)
    parser.add_argument("--cap", type=int, default=200)
    parser.add_argument("--sync-interval", type=float, default=1.0,
                        help="LocalCheckpointStore group commit (0: fsync every save)")
    parser.add_argument("--store", choices=("local", "log"), default="local")
    parser.add_argument("--profile", type=int, default=0)
    args = parser.parse_args()
    settings = load_settings({"PENSU_METRIC_RANGES": '{"bench\\\\.": [0, 100]}'})
    configs = metric_configs(settings)
    names = [f"bench.m{m}.value" for m in range(args.metrics)]
    with tempfile.TemporaryDirectory(prefix="pensu-swap-") as directory:
        kind = LogCheckpointStore if args.store == "log" else LocalCheckpointStore
        store = kind(Path(directory), sync_interval_s=args.sync_interval)
        registry = ModelRegistry(store, configs, capacity=args.cap)

        latencies: list[float] = []

        def one_round(i: int) -> None:
            for m, name in enumerate(names):
                began = time.perf_counter()
                registry.get(name).process(START + 60 * i, value(m, i))
                latencies.append(time.perf_counter() - began)

        for i in range(2):
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
    print(f"{args.store} store, {args.metrics} metrics, cap {args.cap}, sync interval {args.sync_interval}s: "
          f"{args.metrics / wall:.0f} samples/s wall, {1e3 * cpu / args.metrics:.2f} ms CPU per swapped sample "
          f"(load {os.getloadavg()[0]:.2f}, cpu count {os.cpu_count()}{', profiled' if profiler else ''}); "
          f"latency per sample p50 {1e3 * np.percentile(latencies, 50):.2f} ms, "
          f"p99 {1e3 * np.percentile(latencies, 99):.2f} ms, max {1e3 * max(latencies):.1f} ms")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
