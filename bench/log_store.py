"""What the log checkpoint store costs per swap: one save and one load of a checkpoint, no model.

`--metrics` checkpoints of `--size` bytes (default: a young analyzer's ~110 kB; 2,200,000 is a
mature one) are saved round-robin to a `LogCheckpointStore` in a temporary directory, then timed:
per metric, `save` of a new checkpoint and `load` of another metric's, as the registry does at
every swap. Prints CPU and wall µs per save and per load (best and median of `--repeat` rounds).
The payload is random bytes (checksums and copies cost the same for any content).

`--root DIR` imports `pensu` from another checkout (e.g. main, for a before/after comparison on
the same script); the store's API is the same there.

    python bench/log_store.py [--size 110000] [--metrics 200] [--repeat 5] [--sync-interval 1.0] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    """Fill the store once, then time rounds of save + load per metric."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=110_000)
    parser.add_argument("--metrics", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sync-interval", type=float, default=1.0)
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    sys.path.insert(0, args.root)
    from pensu.allocator import keep_large_buffers
    from pensu.checkpoint import CheckpointHeader
    from pensu.checkpoint_log import LogCheckpointStore

    keep_large_buffers()
    names = [f"bench.m{m}.value" for m in range(args.metrics)]
    payloads = [os.urandom(args.size) for _ in range(4)]

    def header(name: str, count: int) -> CheckpointHeader:
        return CheckpointHeader(metric=name, sample_count=count, last_timestamp=1.7e9 + count,
                                last_offsets={"metrics:0": count}, saved_at=time.time())

    rounds: list[tuple[float, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="pensu-logstore-") as directory:
        store = LogCheckpointStore(Path(directory), sync_interval_s=args.sync_interval)
        for m, name in enumerate(names):
            store.save(header(name, 0), payloads[m % 4])
        for r in range(1, args.repeat + 1):
            save_cpu = save_wall = load_cpu = load_wall = 0.0
            for m, name in enumerate(names):
                w, c = time.perf_counter(), time.process_time()
                store.save(header(name, r), payloads[(m + r) % 4])
                w2, c2 = time.perf_counter(), time.process_time()
                loaded = store.load(names[m - 1])
                save_wall += w2 - w
                save_cpu += c2 - c
                load_wall += time.perf_counter() - w2
                load_cpu += time.process_time() - c2
                assert loaded is not None
            n = len(names)
            rounds.append((1e6 * save_cpu / n, 1e6 * save_wall / n, 1e6 * load_cpu / n, 1e6 * load_wall / n))
        store.close()
    cols = list(zip(*rounds))
    labels = ("save CPU", "save wall", "load CPU", "load wall")
    print(f"{args.root}: {args.size} bytes, {args.metrics} metrics, {args.repeat} rounds "
          f"(load {os.getloadavg()[0]:.2f}): "
          + ", ".join(f"{label} {min(c):.0f}/{statistics.median(c):.0f} µs" for label, c in zip(labels, cols))
          + " (best/median)")


if __name__ == "__main__":
    main()
