"""End-to-end service throughput and latency through the librdkafka mock broker, one process.

Two phases per scenario:
1. throughput: N samples are queued on the input topic, then the service drains them; samples/s
   is (samples / time until the last output is consumed);
2. latency: lines are produced at a fixed rate (half the measured throughput) and each output's
   latency is (time it was read back − the input message's create time).

    python bench/service_throughput.py                      # 1,000 metrics resident
    python bench/service_throughput.py --timed-samples 4 --rounds 5   # service share, 5 alternating phases
    python bench/service_throughput.py --metrics 10000 --cap 1000   # swapping
    python bench/service_throughput.py --metrics 10000 --cap 1000 --store log   # swapping, log store
    python bench/service_throughput.py --profile 25         # + where the service thread's time goes

Engine-only rate: the same samples (same metrics, values and timestamps, same settings) fed
straight to `MetricAnalyzer.process` in this process, no Kafka, no registry, all resident; the
service's rate divided by it is the share the engine gets end to end. With `--rounds R` the
timed phase is repeated R times, each service phase followed by the engine-only run on the same
samples (bare analyzers that have seen exactly what the service's have), and the median share
is printed with its range: one service phase and one engine run minutes apart scattered by
±7 points on this 2-core machine (61-75 % over runs of the same code). `--profile N` runs the
service thread under cProfile during the throughput phase and prints the N largest cumulative
and own-time entries (profiling slows it; the rates printed are from the same profiled run
only when --profile is given).

Latency note: the mock broker holds an empty Fetch for the full fetch.wait.max.ms (librdkafka
default 500 ms) even when records arrive meanwhile, where a real broker answers as soon as
fetch.min.bytes are there; both consumers here (the service's and the reader) therefore use
--fetch-wait-ms (default 10) so the figure measures Pensu, not that mock artefact.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.kafka_io import EmbeddedKafka  # noqa: E402
from pensu.service import PensuService  # noqa: E402
from pensu.settings import load_settings  # noqa: E402

START = 1_700_000_000


def value(metric_index: int, i: int) -> float:
    """A noisy daily-ish wave per metric."""
    wave = 30 * math.sin(2 * math.pi * (i + metric_index) / 288)
    return round(50 + wave + (metric_index * 7919 + i * 104729) % 11, 3)


def produce(bootstrap: str, topic: str, metrics: int, start: int, count: int, rate: float = 0.0) -> int:
    """Produce `count` samples per metric (indexes start..start+count), optionally rate-limited."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    sent = 0
    period = 1.0 / rate if rate else 0.0
    next_at = time.monotonic()
    for i in range(start, start + count):
        for m in range(metrics):
            line = f"bench.m{m}.value {value(m, i)} {START + 60 * i}".encode()
            while True:
                try:
                    producer.produce(topic, key=f"bench.m{m}.value".encode(), value=line)
                    break
                except BufferError:
                    producer.poll(0.05)
            sent += 1
            if period:
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        producer.poll(0)
    producer.flush(60)
    return sent


class OutputReader:
    """Reads an output topic continuously (partitions assigned directly: no group join delay)."""

    def __init__(self, bootstrap: str, topic: str, fetch_wait_ms: int) -> None:
        self.count = 0
        self.latencies_ms: list[float] = []
        self.last_at = 0.0
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": fetch_wait_ms})
        self._topic = topic
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        while not self._stop.is_set():
            meta = self._consumer.list_topics(self._topic, timeout=5).topics.get(self._topic)
            if meta is not None and meta.error is None and meta.partitions:
                self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in meta.partitions])
                break
            time.sleep(0.2)
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, timeout=0.1):
                if msg.error() is None:
                    self.count += 1
                    now = time.time()
                    self.last_at = now
                    self.latencies_ms.append(now * 1000 - msg.timestamp()[1])
        self._consumer.close()

    def wait_for(self, expected: int, timeout: float) -> int:
        """Block until `expected` messages were read (or timeout); return the count."""
        deadline = time.monotonic() + timeout
        while self.count < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join(10)


class EngineTwin:
    """Bare analyzers (built as the service builds them) fed the very samples the service gets,
    phase by phase, so each service phase has an engine-only rate measured right beside it on
    models of the same age: no Kafka, no registry, all resident."""

    def __init__(self, settings: object, metrics: int) -> None:
        from pensu.analyzer import MetricAnalyzer
        from pensu.analyzer_settings import metric_configs

        per_metric = metric_configs(settings).for_metric  # type: ignore[arg-type]
        self.analyzers = [MetricAnalyzer(f"bench.m{m}.value", per_metric(f"bench.m{m}.value"))
                          for m in range(metrics)]

    def run(self, start: int, count: int) -> float:
        """Feed sample indexes start..start+count to every analyzer; samples/s."""
        started = time.perf_counter()
        for i in range(start, start + count):
            for m, analyzer in enumerate(self.analyzers):
                analyzer.process(START + 60 * i, value(m, i))
        return len(self.analyzers) * count / (time.perf_counter() - started)


def scenario(metrics: int, cap: int, warm_samples: int, timed_samples: int, fetch_wait_ms: int,
             profile: int = 0, sync_interval: float = 1.0, store: str = "local", rounds: int = 1) -> None:
    """Run one scenario and print its figures."""
    with EmbeddedKafka() as kafka, tempfile.TemporaryDirectory() as models:
        env = {
            "PENSU_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "PENSU_MODELS_DIR": models, "PENSU_MAX_ALLOWED_MODELS": str(cap),
            "PENSU_MAX_TRACKED_METRICS": str(max(metrics * 2, cap)),
            "PENSU_PING_LISTEN_PORT": str(_free_port()), "PENSU_HTTP_PORT": "0",
            "PENSU_TOPICS_REPORT_INTERVAL": "0", "PENSU_MODELS_AUTOSAVE_INTERVAL": "3600",
            # A configured range skips the warm-up, so every timed sample runs both models.
            "PENSU_METRIC_RANGES": '{"bench\\\\.": [0, 100]}',
            "PENSU_KAFKA_CONSUMER_OPT_FETCH_WAIT_MAX_MS": str(fetch_wait_ms),
            # group commit of checkpoint files (0: two fsyncs per save, as before this setting)
            "PENSU_CHECKPOINT_SYNC_INTERVAL": str(sync_interval),
            "PENSU_CHECKPOINT_STORE": store,
        }
        settings = load_settings(env)
        service = PensuService(settings)
        service.start()
        profiler = cProfile.Profile() if profile else None
        run = service.run if profiler is None else (lambda: profiler.runcall(service.run))
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        out_topic = settings.reported_anomalies_kafka_topic
        # Warm every model (and compile kernels) before timing.
        produce(kafka.bootstrap_servers, settings.metrics_kafka_topic, metrics, 0, warm_samples)
        reader = OutputReader(kafka.bootstrap_servers, out_topic, fetch_wait_ms)
        base = 3 * metrics * warm_samples
        reader.wait_for(base, timeout=3600)

        twin = None
        if cap >= metrics:  # resident: compare each service phase with the bare engine on the same samples
            twin = EngineTwin(settings, metrics)
            twin.run(0, warm_samples)
        index, target, rates, shares = warm_samples, base, [], []
        for phase in range(rounds):
            started = time.time()
            produce(kafka.bootstrap_servers, settings.metrics_kafka_topic, metrics, index, timed_samples)
            previous, target = target, target + 3 * metrics * timed_samples
            got = reader.wait_for(target, timeout=3600)
            elapsed = reader.last_at - started
            samples = (got - previous) // 3
            rate = samples / elapsed
            rates.append(rate)
            line = (f"metrics={metrics} cap={cap} store={store} sync interval={sync_interval}s "
                    f"resident={len(service.models)} phase {phase + 1}/{rounds}: {samples} samples in {elapsed:.1f}s "
                    f"→ {rate:.0f} samples/s (one process, cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.2f})")
            if twin is not None:
                engine = twin.run(index, timed_samples)
                shares.append(rate / engine)
                line += (f"; engine only on the same samples {engine:.0f} samples/s → service "
                         f"{100 * rate / engine:.0f} %")
            print(line, flush=True)
            index += timed_samples
        rate = float(np.median(rates))
        print(f"  service: median {rate:.0f} samples/s over {rounds} phase(s) "
              f"(range {min(rates):.0f}-{max(rates):.0f})")
        if shares:
            print(f"  service share of the engine-only rate: median {100 * np.median(shares):.0f} % "
                  f"(range {100 * min(shares):.0f}-{100 * max(shares):.0f} %; each phase beside its own engine run)")

        slow_rate = max(1.0, rate / 2)
        n_lat = max(1, int(min(20 * slow_rate, 3 * metrics)) // metrics)
        before = len(reader.latencies_ms)
        produce(kafka.bootstrap_servers, settings.metrics_kafka_topic, metrics, index, n_lat, slow_rate)
        reader.wait_for(target + 3 * metrics * n_lat, timeout=3600)
        tail = np.array(reader.latencies_ms[before:])
        reader.close()
        print(f"  latency at {slow_rate:.0f} samples/s: p50={np.percentile(tail, 50):.0f} ms "
              f"p99={np.percentile(tail, 99):.0f} ms (input create time → output read back)")
        service.request_stop()
        thread.join(120)
        if profiler is not None:
            for order in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(profile)
                print(f"\n--- service thread, top {profile} by {order} "
                      "(whole run: warm-up, timed and latency phases) ---")
                print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:20000])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    """Parse arguments and run the scenario."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=1000)
    parser.add_argument("--warm-samples", type=int, default=3)
    parser.add_argument("--timed-samples", type=int, default=5, help="samples per metric in each timed phase")
    parser.add_argument("--rounds", type=int, default=1,
                        help="timed phases, each followed (when all metrics are resident) by the engine-only run "
                             "on the same samples; medians and ranges are printed")
    parser.add_argument("--fetch-wait-ms", type=int, default=10, help="fetch.wait.max.ms of both consumers")
    parser.add_argument("--profile", type=int, default=0, help="print this many cProfile entries of the service thread")
    parser.add_argument("--store", choices=("local", "log"), default="local", help="PENSU_CHECKPOINT_STORE")
    parser.add_argument("--sync-interval", type=float, default=1.0,
                        help="PENSU_CHECKPOINT_SYNC_INTERVAL (0: fsync every checkpoint save)")
    args = parser.parse_args()
    scenario(args.metrics, args.cap, args.warm_samples, args.timed_samples, args.fetch_wait_ms, args.profile,
             args.sync_interval, args.store, args.rounds)


if __name__ == "__main__":
    main()
