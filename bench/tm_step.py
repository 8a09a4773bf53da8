"""Temporal Memory step time, size and memory on SP-like inputs.

Inputs (`--source`):
* ``sp``: a real NAB series (machine temperature by default) through the RDSE (resolution =
  range / 130 of the first 150 values, the service's warm-up rule), the time-of-day encoder and
  a learning Spatial Pooler — the columns the TM sees in production (51 of 2048 per step). SP
  outputs are computed first, untimed.
* ``noisy``: a noisy sine bucketed into 51 contiguous column blocks with 15 % of the columns
  replaced at random each step (many bursts, many segments).

Prints median and p99 µs per `compute` after the warm-up, and segments, synapses, in-array
memory and msgpack bytes after `--size-at` steps; then the cost of one dendrite-activity pass
via the presynaptic index versus walking every synapse, on the final state.

    python bench/tm_step.py [--source sp|noisy|both] [--file realKnownCause/nyc_taxi.csv]
                            [--steps 7000] [--warmup 2000] [--size-at 5000] [--range-samples 150]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.htm import temporal_memory as tmmod  # noqa: E402
from pensu.htm.encoders import RDSE, DateEncoder, DateEncoderParams, RDSEParams, concat_sdrs  # noqa: E402
from pensu.htm.spatial_pooler import SpatialPooler, SpatialPoolerParams  # noqa: E402
from pensu.htm.temporal_memory import TemporalMemory, TemporalMemoryParams  # noqa: E402

NAB_DATA = Path(os.environ.get("PENSU_NAB_DATA", ROOT.parent / "shared" / "nab" / "data"))
COLUMNS = 2048


def sp_columns(path: Path, steps: int, range_samples: int = 150) -> list[np.ndarray]:
    """Active columns of a learning SP fed with the encoded series.

    The RDSE resolution comes from the first `range_samples` values (the service's warm-up rule;
    0 = the whole series' range, as NAB's detector)."""
    rows = []
    with path.open() as fh:
        for row in csv.DictReader(fh):
            ts = datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            rows.append((ts.timestamp(), float(row["value"])))
    rows = rows[:steps]
    values = [v for _, v in rows[:range_samples or len(rows)]]
    rdse = RDSE(RDSEParams(size=400, active_bits=21, resolution=max(0.001, (max(values) - min(values)) / 130),
                           seed=42))
    date = DateEncoder(DateEncoderParams(time_of_day_width=21, time_of_day_radius=9.49))
    sp = SpatialPooler(rdse.size + date.size, SpatialPoolerParams(column_count=COLUMNS), seed=42)
    out = []
    for ts, v in rows:
        sdr = concat_sdrs([rdse.encode(v), date.encode(ts)], [rdse.size, date.size])
        out.append(sp.compute(sdr, True))
    return out


def noisy_columns(steps: int, seed: int = 7) -> list[np.ndarray]:
    """A noisy sine as 51-column blocks, 15 % of columns replaced at random each step."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(steps):
        value = np.sin(2 * np.pi * i / 288) + rng.normal(0, 0.1)
        start = int((value + 1.5) / 3.0 * (COLUMNS - 51))
        cols = np.arange(start, start + 51)
        swap = rng.random(51) < 0.15
        cols[swap] = rng.integers(0, COLUMNS, int(swap.sum()))
        out.append(np.unique(cols).astype(np.int32))
    return out


def activity_costs(tm: TemporalMemory, repeats: int = 50) -> tuple[float, float]:
    """(µs per dendrite-activity pass via the index, µs per pass walking every synapse)."""
    top = int(tm._meta[tmmod._M_SEG_TOP])

    def index_pass() -> None:
        tm._refresh()

    def walk_pass() -> None:
        tmmod._full_walk(tm._act, tm.num_cells, tm._segi, tm._pre, tm._perm, top, tm.params.connected_permanence)

    out = []
    for fn in (index_pass, walk_pass):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append((time.perf_counter() - t0) / repeats * 1e6)
    return out[0], out[1]


def run(name: str, inputs: list[np.ndarray], warmup: int, size_at: int) -> None:
    """Feed one TM and print its numbers."""
    tm = TemporalMemory(COLUMNS, TemporalMemoryParams(), seed=42)
    times = []
    anomalies = []
    bursts = 0
    for i, cols in enumerate(inputs):
        t0 = time.perf_counter_ns()
        a = tm.compute(cols, True)
        dt = time.perf_counter_ns() - t0
        anomalies.append(a)
        if i >= warmup:
            times.append(dt / 1000.0)
        if i + 1 == size_at:
            blob = msgpack.packb(tm.get_state(), use_bin_type=True)
            print(f"[{name}] after {size_at} steps: segments={tm.num_segments()} synapses={tm.num_synapses()} "
                  f"memory_bytes={tm.memory_bytes()} serialized_bytes={len(blob)}")
        bursts += a == 1.0
    t = np.array(times)
    print(f"[{name}] compute over steps {warmup}..{len(inputs)}: median={np.median(t):.1f} us "
          f"p99={np.percentile(t, 99):.1f} us mean={t.mean():.1f} us  "
          f"(mean raw anomaly {np.mean(anomalies[warmup:]):.3f}, active columns/step "
          f"{np.mean([c.size for c in inputs]):.1f})")
    index_us, walk_us = activity_costs(tm)
    print(f"[{name}] dendrite activity on the final state ({tm.num_synapses()} synapses, "
          f"{tm.active_cells.size} active cells): presynaptic index {index_us:.1f} us, full walk {walk_us:.1f} us")
    TemporalMemory.from_state(msgpack.unpackb(msgpack.packb(tm.get_state()), raw=False))  # load kernels
    t0 = time.perf_counter()
    blob = msgpack.packb(tm.get_state(), use_bin_type=True)
    t1 = time.perf_counter()
    TemporalMemory.from_state(msgpack.unpackb(blob, raw=False))
    t2 = time.perf_counter()
    print(f"[{name}] final: serialized_bytes={len(blob)} get_state+pack={1e3 * (t1 - t0):.2f} ms "
          f"unpack+from_state={1e3 * (t2 - t1):.2f} ms memory_bytes={tm.memory_bytes()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["sp", "noisy", "both"], default="both")
    ap.add_argument("--file", default="realKnownCause/machine_temperature_system_failure.csv")
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--size-at", type=int, default=5000)
    ap.add_argument("--range-samples", type=int, default=150,
                    help="values that fix the RDSE resolution (service warm-up); 0 = whole series")
    args = ap.parse_args()
    # Compile (or load cached) kernels outside the timed region.
    warm = TemporalMemory(64, TemporalMemoryParams(cells_per_column=4), seed=0)
    for cols in noisy_columns(30):
        warm.compute(np.unique(cols % 64).astype(np.int32))
    if args.source in ("sp", "both"):
        t0 = time.perf_counter()
        inputs = sp_columns(NAB_DATA / args.file, args.steps, args.range_samples)
        print(f"[sp] {args.file}: {len(inputs)} SP steps precomputed in {time.perf_counter() - t0:.1f} s")
        run("sp", inputs, args.warmup, args.size_at)
    if args.source in ("noisy", "both"):
        run("noisy", noisy_columns(args.steps), args.warmup, args.size_at)


if __name__ == "__main__":
    main()
