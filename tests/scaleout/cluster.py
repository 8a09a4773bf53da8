"""Several `python -m pensu run` processes in one consumer group, and what they produced.

Each instance is a separate process (as in production) sharing the group id and either the
checkpoint directory (the local store) or the checkpoint topic (`PENSU_CHECKPOINT_STORE=kafka`,
each instance with a directory of its own, as on separate machines); outputs are attributed to
instances through the `pensu-instance` header every output record carries.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer

from pensu.carbon import parse_line
from pensu.checkpoint import CheckpointStore, LocalCheckpointStore
from pensu.kafka_checkpoint import KafkaCheckpointStore
from pensu.outputs import OutputRecord
from pensu.settings import Settings, load_settings
from tests.conftest import KafkaCluster, free_port
from tests.service_harness import REPO, carbon_of, lines_for, service_env
from tests.service_harness import http_get as harness_http_get
from tests.support import INTERVAL, START_TS, periodic_value

METRIC_COUNT = 300


def metric_names(count: int = METRIC_COUNT) -> list[str]:
    """`count` metric names (varied, so keys hash over every partition)."""
    return [f"scale.host{i:03d}.cpu" for i in range(count)]


def workload(n: int, count: int = METRIC_COUNT, start: int = 0) -> dict[str, list[tuple[float, float]]]:
    """Per metric, samples `start`..`start+n` of a periodic signal (phase and level vary by metric)."""
    return {name: [(START_TS + INTERVAL * k, round(periodic_value(k + i % 24) + i % 7, 3))
                   for k in range(start, start + n)]
            for i, name in enumerate(metric_names(count))}


def produce_keyed(kafka: KafkaCluster, topic: str, per_metric: dict[str, list[tuple[float, float]]],
                  lines_per_message: int = 10) -> None:
    """Each metric's lines keyed by its name, several lines per message, metrics interleaved
    (message k of every metric before message k+1 of any, like a live feed)."""
    chunks = {}
    for metric, samples in per_metric.items():
        lines = list(lines_for(metric, samples))
        chunks[metric] = [b"\n".join(lines[i:i + lines_per_message]) for i in range(0, len(lines), lines_per_message)]
    rounds = max(len(c) for c in chunks.values())
    kafka.produce(topic, [(metric.encode(), c[k]) for k in range(rounds) for metric, c in chunks.items() if k < len(c)])


def produce_like_relays(bootstrap: str, topic: str, per_metric: dict[str, list[tuple[float, float]]]) -> None:
    """What carbon relays send: one message per relay and interval with all its metrics' lines.

    Relay "a" keys its messages by its own host name (wrong key for Pensu), relay "b" sends
    no key at all (pinned to one partition, as a relay's sticky partitioner does for a while).
    """
    names = list(per_metric)
    relays = {b"relay-a.example": names[0::2], None: names[1::2]}
    n = len(next(iter(per_metric.values())))
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        for key, metrics in relays.items():
            payload = b"\n".join(next(lines_for(m, [per_metric[m][i]])) for m in metrics)
            extra = {"partition": 3} if key is None else {}
            while True:
                try:
                    producer.produce(topic, key=key, value=payload, **extra)
                    break
                except BufferError:
                    producer.poll(0.1)
    assert producer.flush(30) == 0


class RoundProducer:
    """Produces one sample of every metric per round, every `period` s, in a background thread.

    Used to keep data flowing while the group changes, so handovers happen mid-stream.
    """

    def __init__(self, bootstrap: str, topic: str, metrics: list[str], period: float = 0.25,
                 max_rounds: int = 240) -> None:
        self.data = workload(max_rounds, len(metrics))
        self.metrics = metrics
        self.rounds = 0
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._topic, self._period, self._max = topic, period, max_rounds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-producer", daemon=True)

    def produce_round(self) -> None:
        """Produce the next round now."""
        i = self.rounds
        for metric in self.metrics:
            line = next(lines_for(metric, [self.data[metric][i]]))
            while True:
                try:
                    self._producer.produce(self._topic, key=metric.encode(), value=line)
                    break
                except BufferError:
                    self._producer.poll(0.1)
        self._producer.poll(0)
        self.rounds += 1

    def _run(self) -> None:
        while not self._stop.wait(self._period) and self.rounds < self._max:
            self.produce_round()

    def start(self) -> None:
        """Start producing in the background."""
        self._thread.start()

    def stop(self) -> dict[str, list[tuple[float, float]]]:
        """Stop, flush, and return what was produced per metric."""
        self._stop.set()
        self._thread.join(30)
        assert self._producer.flush(30) == 0
        return {m: self.data[m][:self.rounds] for m in self.metrics}


@dataclass
class Output:
    """One consumed carbon output line with the instance that produced it."""

    key: str
    name: str
    value: float
    timestamp: float
    instance: str


def outputs_of(messages: list, topic: str) -> list[Output]:
    """Parsed carbon outputs of `topic`, in consumption order (per key: production order)."""
    out = []
    for msg in messages:
        if msg.topic() != topic:
            continue
        headers = dict(msg.headers() or [])
        sample = parse_line(msg.value().rstrip(b"\n"))
        out.append(Output(msg.key().decode(), sample.metric, sample.value, sample.timestamp,
                          headers.get("pensu-instance", b"?").decode()))
    return out


def by_metric(outputs: list[Output]) -> dict[str, list[Output]]:
    """Outputs grouped by input metric (the record key)."""
    grouped: dict[str, list[Output]] = defaultdict(list)
    for o in outputs:
        grouped[o.key].append(o)
    return grouped


def lines(outputs: list[Output]) -> list[tuple[str, float, float]]:
    """(name, value, timestamp) of outputs, comparable with `carbon_of`."""
    return [(o.name, o.value, o.timestamp) for o in outputs]


def expected_lines(records: list[OutputRecord], topic: str) -> list[tuple[str, float, float]]:
    """Expected carbon lines of `records` on `topic`."""
    return carbon_of(records, topic)


def instance_runs(outputs: list[Output]) -> list[str]:
    """The instances that produced a metric's outputs, in order, consecutive repeats merged."""
    runs: list[str] = []
    for o in outputs:
        if not runs or runs[-1] != o.instance:
            runs.append(o.instance)
    return runs


def checkpoint_counts(models_dir: Path, metrics: list[str], env: dict[str, str] | None = None) -> dict[str, int]:
    """Sample count in each metric's checkpoint (-1 when there is none): read from the shared
    directory, or with `env` selecting the Kafka store, restored from the checkpoint topic."""
    store: CheckpointStore
    if env is not None and env.get("PENSU_CHECKPOINT_STORE") == "kafka":
        settings = load_settings(env)
        store = KafkaCheckpointStore(models_dir / "counts-reader", settings.checkpoint_kafka_topic,
                                     settings.metrics_kafka_topic, settings.checkpoint_kafka_quarantine_topic)
        store.connect({"bootstrap.servers": settings.kafka_bootstrap_servers})
        store.refresh(settings.metrics_kafka_topic, [0, 1, 2, 3])  # a reader: claims no partition
    else:
        store = LocalCheckpointStore(models_dir)
    try:
        counts = {}
        for metric in metrics:
            loaded = store.load(metric)
            counts[metric] = -1 if loaded is None else loaded[0].sample_count
        return counts
    finally:
        store.close()


def kafka_store_env(kafka: KafkaCluster) -> dict[str, str]:
    """Variables selecting the Kafka checkpoint store with topics unique to the test."""
    return {"PENSU_CHECKPOINT_STORE": "kafka", "PENSU_CHECKPOINT_KAFKA_TOPIC": kafka.unique("checkpoints"),
            "PENSU_CHECKPOINT_KAFKA_QUARANTINE_TOPIC": kafka.unique("checkpoints.quarantine")}


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET on an instance's HTTP port; (0, error) when it does not answer."""
    try:
        return harness_http_get(port, path, timeout)
    except OSError as exc:
        return 0, str(exc)


def group_env(kafka: KafkaCluster, models_dir: Path, **extra: str) -> dict[str, str]:
    """`service_env` for a group member: a short session so a crashed member is noticed quickly.

    (The mock cluster also completes each rebalance only after a session timeout when a member
    joins a busy group, so the default 45 s would make every test minutes long.)
    """
    extra.setdefault("PENSU_KAFKA_SESSION_TIMEOUT_MS", "6000")
    extra.setdefault("PENSU_KAFKA_CONSUMER_OPT_HEARTBEAT_INTERVAL_MS", "1000")
    return service_env(kafka, models_dir, **extra)


class Instance:
    """One `python -m pensu run` process of the group, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = dict(env, PENSU_INSTANCE_ID=name, PENSU_PING_LISTEN_PORT=str(free_port()),
                        PENSU_HTTP_PORT=str(free_port()))
        if env.get("PENSU_CHECKPOINT_STORE") == "kafka":  # nothing shared but the cluster
            self.env["PENSU_MODELS_DIR"] = str(Path(env["PENSU_MODELS_DIR"]) / f"instance-{name}")
        self.settings: Settings = load_settings(self.env)
        self.http_port = int(self.env["PENSU_HTTP_PORT"])
        self.log_path = log_dir / f"{name}.log"
        full = dict(os.environ)
        full.update(self.env)
        full["PYTHONUNBUFFERED"] = "1"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        self.proc = subprocess.Popen([sys.executable, "-m", "pensu", "run"], env=full, cwd=REPO,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def status(self) -> dict[str, int] | None:
        """The /readyz detail as numbers (assigned partitions, resident models); None if down."""
        code, body = http_get(self.http_port, "/readyz", timeout=2.0)
        if code == 0:
            return None
        found = dict(re.findall(r"(assigned|models)=(\d+)", body))
        return {k: int(v) for k, v in found.items()} | {"ready": int(code == 200)}

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the instance's Prometheus /metrics (0 when absent)."""
        _code, body = http_get(self.http_port, "/metrics")
        pattern = re.escape(name + (labels and "{" + labels + "}")) + r" (\S+)"
        match = re.search(r"^" + pattern + "$", body, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the process to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL (a crash: no save, no group leave)."""
        self.stop(signal.SIGKILL)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the instance's log, for assertion messages."""
        return self.log_path.read_text(errors="replace")[-chars:]


class Group:
    """Instances of one consumer group, stopped (killed if they hang) on exit."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.instances: dict[str, Instance] = {}

    def add(self, name: str) -> Instance:
        """Start one more instance named `name`."""
        instance = Instance(name, self.env, self.log_dir)
        self.instances[name] = instance
        return instance

    def running(self) -> list[Instance]:
        """Instances whose process is alive."""
        return [i for i in self.instances.values() if i.proc.poll() is None]

    def wait_until(self, predicate, timeout: float, what: str, detail=None) -> None:  # type: ignore[no-untyped-def]
        """Poll `predicate()` until true; fail with `detail()` (what the test last saw, if given)
        and the instances' statuses and logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.3)
        seen = f" (last seen: {detail()})" if detail is not None else ""
        raise AssertionError(f"timed out waiting for {what}{seen}: {self.describe()}")

    def statuses(self) -> dict[str, dict[str, int] | None]:
        """/readyz details of running instances."""
        return {i.name: i.status() for i in self.running()}

    def wait_settled(self, expected_members: int, partitions: int = 4, timeout: float = 90.0) -> None:
        """Wait until `expected_members` instances are up, own all partitions, and each has some."""
        def settled() -> bool:
            statuses = self.statuses()
            if len(statuses) != expected_members or any(s is None or "assigned" not in s
                                                        for s in statuses.values()):
                return False
            owned = [s["assigned"] for s in statuses.values() if s]
            return sum(owned) == partitions and min(owned) >= (1 if expected_members <= partitions else 0)
        self.wait_until(settled, timeout, f"{expected_members} members sharing {partitions} partitions")

    def describe(self) -> str:
        """Statuses, exit codes and log tails, for failure messages."""
        parts = []
        for i in self.instances.values():
            rc = i.proc.poll()
            parts.append(f"--- {i.name} rc={rc} status={i.status() if rc is None else None}\n{i.log_tail(1500)}")
        return "\n".join(parts)

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        for i in self.instances.values():
            if i.proc.poll() is None:
                i.proc.send_signal(signal.SIGTERM)
        for i in self.instances.values():
            try:
                i.stop(timeout=60)
            except subprocess.TimeoutExpired:
                i.proc.kill()
                i.proc.wait()
