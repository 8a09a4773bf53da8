"""Scale-out: aggregate throughput of 1, 2, 3 `pensu run` processes in one consumer group, and
how long the moved metrics wait for outputs after a rebalance.

Each instance is a separate process (as in production) against a librdkafka mock broker hosted
by this script; outputs are attributed through their `pensu-instance` header.

1. throughput: with N instances settled (every one owns partitions of the 4-partition input),
   `--samples` samples of each of `--metrics` keyed metrics are queued at once; aggregate
   samples/s = samples / (last output read − first input produced);
2. rebalance: three instances analyse a steady feed (one sample per metric every `--period` s);
   one instance is stopped (SIGTERM: clean handover; SIGKILL: crash, noticed after the session
   timeout) or added; for each moved metric, the gap is the time from the event to its first
   output from the new owner;
3. `restore` (with `--store kafka`): one instance owning every partition is stopped (SIGTERM)
   and a new one starts on an empty models directory: how long the stop takes (it writes every
   checkpoint to the topic), the new instance's restore of all checkpoints (from its log), and
   the gap from the SIGTERM to each metric's first output from the new instance.

`--store kafka` gives every instance its own models directory and PENSU_CHECKPOINT_STORE=kafka,
so state moves only through the checkpoint topic; `--broker tansu` runs the benchmark against
the Tansu broker of the test fixture (a separate process; the default is librdkafka's mock
cluster in this process, which the Kafka store also works with).

    python bench/scaleout.py                       # 600 metrics, small preset
    python bench/scaleout.py --preset nab --metrics 300
    python bench/scaleout.py --broker tansu --store kafka --instances "" --events sigterm,sigkill
    python bench/scaleout.py --broker tansu --store kafka --instances "" --events restore --metrics 1000
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pensu.kafka_io import EmbeddedKafka, ensure_topics  # noqa: E402

START = 1_700_000_000
PARTITIONS = 4  # what the mock broker gives an auto-created topic


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def line(metric_index: int, i: int) -> tuple[bytes, bytes]:
    """(key, carbon line) of sample `i` of metric `metric_index`: a noisy wave."""
    name = f"bench.host{metric_index:05d}.load"
    value = round(50 + 30 * math.sin(2 * math.pi * (i + metric_index) / 48) + (metric_index * 7919 + i) % 5, 3)
    return name.encode(), f"{name} {value} {START + 60 * i}".encode()


def produce_rounds(producer: Producer, topic: str, metrics: int, first: int, count: int) -> None:
    """Samples first..first+count of every metric, round by round, keyed by name."""
    for i in range(first, first + count):
        for m in range(metrics):
            key, value = line(m, i)
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
    producer.flush(60)


class LiveFeed:
    """The primed rounds at once, then one more round of every metric each `period` s on a thread."""

    def __init__(self, bootstrap: str, topic: str, metrics: int, prime: int, period: float) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic, self.metrics, self.period = topic, metrics, period
        self.rounds = prime
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        produce_rounds(self.producer, topic, metrics, 0, prime)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            produce_rounds(self.producer, self.topic, self.metrics, self.rounds, 1)
            self.rounds += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


class OutputReader:
    """Reads the anomaly-metrics topic continuously; records (time, metric, instance) of each
    anomaly_score line (one per analysed sample)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()
        self._topic = topic
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{time.time_ns()}",
                                   "enable.auto.commit": False})
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assigned = False
        while not self._stop.is_set():
            if not assigned:
                meta = self._consumer.list_topics(self._topic, timeout=5).topics.get(self._topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    time.sleep(0.2)
                    continue
                self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in meta.partitions])
                assigned = True
            batch = self._consumer.consume(1000, timeout=0.2)
            now = time.monotonic()
            got = []
            for msg in batch:
                if msg.error() is None and b".anomaly_score." in msg.value():
                    instance = dict(msg.headers() or []).get("pensu-instance", b"?").decode()
                    got.append((now, msg.key().decode(), instance))
            with self._lock:
                self.events.extend(got)

    def count(self) -> int:
        """Analysed samples seen so far."""
        with self._lock:
            return len(self.events)

    def snapshot(self) -> list[tuple[float, str, str]]:
        """A copy of the events so far."""
        with self._lock:
            return list(self.events)

    def wait_for(self, expected: int, timeout: float) -> float:
        """Block until `expected` analysed samples were read; returns the time of the last one."""
        deadline = time.monotonic() + timeout
        while self.count() < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            if len(self.events) < expected:
                raise RuntimeError(f"only {len(self.events)} of {expected} outputs after {timeout}s")
            return self.events[expected - 1][0]

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


class Instance:
    """One `python -m pensu run` process."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.http_port = free_port()
        full = dict(os.environ, **env, PENSU_INSTANCE_ID=name, PENSU_HTTP_PORT=str(self.http_port),
                    PENSU_PING_LISTEN_PORT=str(free_port()), PYTHONUNBUFFERED="1")
        if env.get("PENSU_CHECKPOINT_STORE") == "kafka":  # nothing shared but the cluster
            full["PENSU_MODELS_DIR"] = str(Path(env["PENSU_MODELS_DIR"]) / f"instance-{name}")
        self.started = time.monotonic()
        self.log_path = log_dir / f"{env['PENSU_KAFKA_CONSUMER_GROUP_ID']}.{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "pensu", "run"], env=full, cwd=ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def assigned(self) -> int | None:
        """Partitions it owns (from /readyz), None while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as resp:
                body = resp.read().decode()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
        except OSError:
            return None
        match = re.search(r"assigned=(\d+)", body)
        return int(match.group(1)) if match else None

    def restores(self) -> tuple[int, float]:
        """(checkpoints, seconds) of the Kafka-store restores in its log so far."""
        found = re.findall(r"restored (\d+) checkpoints of partitions .*? in ([\d.]+) s",
                           self.log_path.read_text(errors="replace"))
        return sum(int(n) for n, _ in found), sum(float(t) for _, t in found)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal and wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_settled(instances: list[Instance], timeout: float = 120.0) -> float:
    """Wait until every instance owns partitions and together they own all; returns seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        owned = [i.assigned() for i in instances]
        if all(o is not None for o in owned) and sum(owned) == PARTITIONS and min(owned) >= 1:  # type: ignore[arg-type]
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"group did not settle: {[i.assigned() for i in instances]}")


def base_env(bootstrap: str, models: Path, tag: str, preset: str, store: str = "local",
             create: bool = False) -> dict[str, str]:
    """PENSU_* of one bench group; with `create`, its input topic is created with PARTITIONS
    partitions first (a real broker may auto-create 1; the mock gives 4 and answers no CreateTopics)."""
    if create:
        ensure_topics({"bootstrap.servers": bootstrap}, [f"{tag}.metrics"], partitions=PARTITIONS)
    extra = {} if store == "local" else {
        "PENSU_CHECKPOINT_STORE": "kafka", "PENSU_CHECKPOINT_KAFKA_TOPIC": f"{tag}.checkpoints",
        "PENSU_CHECKPOINT_KAFKA_QUARANTINE_TOPIC": f"{tag}.checkpoints.quarantine"}
    return extra | {
        "PENSU_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "PENSU_KAFKA_CONSUMER_GROUP_ID": f"{tag}.group",
        "PENSU_METRICS_KAFKA_TOPIC": f"{tag}.metrics", "PENSU_ANOMALY_SCORES_KAFKA_TOPIC": f"{tag}.anomaly",
        "PENSU_PREDICTION_METRICS_KAFKA_TOPIC": f"{tag}.predictions",
        "PENSU_ANOMALY_REPORTS_KAFKA_TOPIC": f"{tag}.reports", "PENSU_TOPICS_REPORT_INTERVAL": "0",
        "PENSU_MODELS_DIR": str(models), "PENSU_ANOMALY_MODEL_PRESET": preset,
        "PENSU_PREDICTION_MODEL_PRESET": preset, "PENSU_WARMUP_SAMPLES": "30",
        "PENSU_MODELS_AUTOSAVE_INTERVAL": "30", "PENSU_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "PENSU_KAFKA_CONSUMER_OPT_HEARTBEAT_INTERVAL_MS": "1000",
        "PENSU_KAFKA_CONSUMER_OPT_TOPIC_METADATA_REFRESH_INTERVAL_MS": "500",
        "PENSU_PING_LISTEN_HOST": "127.0.0.1", "PENSU_HTTP_HOST": "127.0.0.1",
    }


def throughput(bootstrap: str, work: Path, n: int, args: argparse.Namespace) -> float:
    """Aggregate samples/s of `n` settled instances draining a queued backlog."""
    tag = f"tp{n}.{time.time_ns()}"
    env = base_env(bootstrap, work / tag, tag, args.preset, args.store, args.broker != "mock")
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    reader = OutputReader(bootstrap, env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"])
    # Prime: create the topic and every model (and finish the encoders' warm-up) before timing.
    produce_rounds(producer, env["PENSU_METRICS_KAFKA_TOPIC"], args.metrics, 0, args.prime)
    instances = [Instance(f"i{k}", env, work) for k in range(n)]
    try:
        wait_settled(instances)
        reader.wait_for(args.metrics * args.prime, 600)
        time.sleep(1.0)
        cpu0 = [cpu_seconds(i.proc.pid) for i in instances]
        own0 = time.process_time()
        begin = time.monotonic()
        produce_rounds(producer, env["PENSU_METRICS_KAFKA_TOPIC"], args.metrics, args.prime, args.samples)
        end = reader.wait_for(args.metrics * (args.prime + args.samples), 900)
        rate = args.metrics * args.samples / (end - begin)
        cpu = sum(cpu_seconds(i.proc.pid) for i in instances) - sum(cpu0)
        own = time.process_time() - own0
        per_instance = {}
        for _t, _m, inst in reader.snapshot()[args.metrics * args.prime:]:
            per_instance[inst] = per_instance.get(inst, 0) + 1
        print(f"  {n} instance(s): {rate:8.0f} samples/s aggregate  ({args.metrics * args.samples} samples "
              f"in {end - begin:.1f} s; per instance {dict(sorted(per_instance.items()))}; instances used "
              f"{cpu / (end - begin):.2f} cores, {1e3 * cpu / (args.metrics * args.samples):.2f} ms CPU/sample; "
              f"broker+driver {own / (end - begin):.2f} cores)", flush=True)
        return rate
    finally:
        for i in instances:
            i.stop()
        reader.close()


def rebalance(bootstrap: str, work: Path, event: str, args: argparse.Namespace) -> None:
    """Gap in outputs of the moved metrics after `event` (sigterm | sigkill | add)."""
    tag = f"rb-{event}.{time.time_ns()}"
    env = base_env(bootstrap, work / tag, tag, args.preset, args.store, args.broker != "mock")
    topic = env["PENSU_METRICS_KAFKA_TOPIC"]
    reader = OutputReader(bootstrap, env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"])
    feed = LiveFeed(bootstrap, topic, args.metrics, args.prime, args.period)
    instances = [Instance(f"i{k}", env, work) for k in range(2 if event == "add" else 3)]
    try:
        wait_settled(instances)
        reader.wait_for(args.metrics * args.prime, 600)
        feed.start()
        time.sleep(max(args.steady, 5 * args.period))  # steady state (and autosaves, if longer than 30 s)
        before = reader.snapshot()
        owner = {m: inst for _t, m, inst in before}
        t0 = time.monotonic()
        if event == "add":
            instances.append(Instance(f"i{len(instances)}", env, work))
            changed = instances[-1].name
        else:
            victim = instances.pop(0)
            victim.stop(signal.SIGTERM if event == "sigterm" else signal.SIGKILL)
            changed = victim.name
        settle = wait_settled(instances)
        time.sleep(max(8.0, 4 * args.period))
        feed.stop()
        after = reader.snapshot()[len(before):]
        first_new: dict[str, float] = {}
        for t, m, inst in after:
            moved = owner.get(m) == changed if event != "add" else inst == changed
            if moved and inst != owner.get(m) and m not in first_new:
                first_new[m] = t - t0
        gaps = sorted(first_new.values())
        if not gaps:
            print(f"  {event}: no metric moved", flush=True)
            return
        # Samples of the moved metrics arrive every `period` s, so a gap includes up to one period.
        restored = [i.restores() for i in instances]
        restore_note = (f"; restores in the survivors' logs: {sum(n for n, _ in restored)} checkpoints in "
                        f"{sum(t for _, t in restored):.1f} s" if args.store == "kafka" else "")
        print(f"  {event:7s}: {len(gaps)} metrics moved; group settled after {settle:.1f} s; first output of a "
              f"moved metric after {gaps[0]:.1f} s, median {statistics.median(gaps):.1f} s, "
              f"all after {gaps[-1]:.1f} s{restore_note}", flush=True)
    finally:
        feed.stop()
        for i in instances:
            i.stop()
        reader.close()


def restore(bootstrap: str, work: Path, args: argparse.Namespace) -> None:
    """A new instance on an empty disk takes over every partition from a stopped one (Kafka store)."""
    tag = f"restore.{time.time_ns()}"
    env = base_env(bootstrap, work / tag, tag, args.preset, args.store, args.broker != "mock")
    # The SIGTERM saves every model; no autosaves meanwhile (Tansu keeps every record in memory).
    env["PENSU_MODELS_AUTOSAVE_INTERVAL"] = "3600"
    topic = env["PENSU_METRICS_KAFKA_TOPIC"]
    reader = OutputReader(bootstrap, env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"])
    feed = LiveFeed(bootstrap, topic, args.metrics, args.prime, args.period)
    old = Instance("old", env, work)
    instances = [old]
    try:
        wait_settled(instances)
        reader.wait_for(args.metrics * args.prime, 900)
        feed.start()
        time.sleep(max(5.0, 5 * args.period))
        before = len(reader.snapshot())
        t0 = time.monotonic()
        old.stop(signal.SIGTERM)
        stopped = time.monotonic() - t0
        new = Instance("new", env, work)  # its own, empty models directory
        instances = [new]
        settle = wait_settled(instances, timeout=300)
        deadline = time.monotonic() + 300
        first_new: dict[str, float] = {}
        while len(first_new) < args.metrics and time.monotonic() < deadline:
            for t, m, inst in reader.snapshot()[before:]:
                if inst == "new" and m not in first_new:
                    first_new[m] = t - t0
            time.sleep(0.5)
        feed.stop()
        count, seconds = new.restores()
        gaps = sorted(first_new.values())
        load_fresh = 0.0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{new.http_port}/metrics", timeout=5) as resp:
                match = re.search(r'^pensu_model_loads_total\{source="fresh"\} (\S+)$', resp.read().decode(), re.M)
                load_fresh = float(match.group(1)) if match else 0.0
        except OSError:
            pass
        cached = [f.stat().st_size for f in Path(env["PENSU_MODELS_DIR"]).rglob("*") if f.is_file()
                  and "instance-old" not in f.parts and "quarantine" not in f.parts]
        size = f"{sum(cached) / max(1, len(cached)) / 1024:.0f} KiB" if cached else "?"
        print(f"  restore ({args.store} store, checkpoints of {size} on average): stop of the old instance "
              f"(saves {args.metrics} checkpoints) {stopped:.1f} s; "
              f"new instance{' on an empty disk' if args.store == 'kafka' else ''} owned all partitions "
              f"{settle:.1f} s after its start; restored "
              f"{count} checkpoints in {seconds:.1f} s ({1e3 * seconds / max(1, count):.1f} ms each); "
              f"{int(load_fresh)} models created fresh; outputs of {len(gaps)} metrics: first {gaps[0]:.1f} s, "
              f"median {statistics.median(gaps):.1f} s, all {gaps[-1]:.1f} s after the SIGTERM", flush=True)
    finally:
        feed.stop()
        for i in instances:
            i.stop()
        reader.close()


def main() -> None:
    """Run the throughput curve and the rebalance gaps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=int, default=600)
    parser.add_argument("--samples", type=int, default=40, help="timed samples per metric")
    parser.add_argument("--prime", type=int, default=35, help="untimed samples per metric first (warm-up)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--period", type=float, default=1.0, help="feed period in the rebalance runs (s)")
    parser.add_argument("--events", default="sigterm,sigkill,add", help="also: restore (with --store kafka)")
    parser.add_argument("--steady", type=float, default=5.0,
                        help="seconds of steady feed before a rebalance event (above 30: an autosave happened, "
                             "so a SIGKILL's survivors restore checkpoints)")
    parser.add_argument("--store", choices=("local", "kafka"), default="local",
                        help="checkpoint store; kafka: a models directory per instance")
    parser.add_argument("--broker", choices=("mock", "tansu"), default="mock",
                        help="librdkafka's mock cluster in this process, or a Tansu broker process")
    args = parser.parse_args()
    print(f"CPUs: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}; load average "
          f"{os.getloadavg()[0]:.2f}; {args.metrics} metrics, preset {args.preset}; {args.broker} broker, "
          f"{args.store} checkpoint store", flush=True)
    if args.broker == "tansu":
        from tests.tansu_broker import TansuBroker

        broker: EmbeddedKafka | TansuBroker = TansuBroker()
    else:
        broker = EmbeddedKafka()
    with tempfile.TemporaryDirectory(prefix="pensu-scaleout-") as tmp, broker as kafka:
        work = Path(tmp)
        if args.instances:
            print(f"throughput (queued backlog, {args.broker} broker):", flush=True)
        rates = {}
        for n in (int(x) for x in args.instances.split(",") if x):
            rates[n] = throughput(kafka.bootstrap_servers, work, n, args)
        if 1 in rates:
            print("  speed-up over one instance: " + ", ".join(f"{n}: {r / rates[1]:.2f}x" for n, r in rates.items()))
        print(f"rebalance gaps (feed: one sample per metric every {args.period} s):", flush=True)
        for event in (e for e in args.events.split(",") if e):
            if event == "restore":
                restore(kafka.bootstrap_servers, work, args)
            else:
                rebalance(kafka.bootstrap_servers, work, event, args)
        print(f"load average at the end {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
