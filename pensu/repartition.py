"""Repartition stage: re-key unkeyed carbon lines by metric name (``PENSU_REPARTITION=true``).

Many relays produce carbon lines without a key, so one metric's samples land on several
partitions and would reach several analyzers. This stage consumes the input topic with its
own consumer group, splits each message into lines, and re-publishes them keyed by metric name
to an internal topic that the analyzers consume: every sample of a metric then reaches its one
owner, in order. Offsets of the input topic are committed only after the re-keyed lines are
acknowledged (at least once; the analyzers' replay check drops a re-delivered duplicate
because its timestamp is not newer than the last one learned).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pensu.kafka_io import PARTITION_EOF, OutputProducer, message_position
from pensu.outputs import OutputRecord

log = logging.getLogger(__name__)

MAX_KEY_BYTES = 255  # longer names are rejected downstream anyway; bound the key size
BATCH_SIZE = 500


def split_by_metric(payload: bytes | None) -> list[tuple[bytes | None, bytes]]:
    """Group a message's lines by metric name (first field), keeping each metric's line order.

    Lines without a usable name are kept (key None) so the analyzer stage rejects and counts
    them with the same reasons as any other bad line.
    """
    if not payload:
        return []
    groups: dict[bytes | None, list[bytes]] = {}
    for raw in payload.split(b"\n"):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        fields = line.split(None, 1)
        name = fields[0] if fields else b""
        key = name if 0 < len(name) <= MAX_KEY_BYTES else None
        groups.setdefault(key, []).append(line)
    return [(key, b"\n".join(lines)) for key, lines in groups.items()]


class Repartitioner:
    """Consumes the input topic and re-publishes its lines keyed by metric name."""

    def __init__(self, consumer_config: dict, producer_config: dict, source_topic: str, target_topic: str,
                 on_error: Callable[[KafkaError], None] = lambda err: None) -> None:
        """`consumer_config` is complete and names the stage's own group
        (`Settings.consumer_config(..., group_suffix=".repartition")`); only `error_cb` is added."""
        self.source_topic = source_topic
        self.target_topic = target_topic
        self._consumer_config: dict[str, Any] = dict(consumer_config)
        self._producer_config: dict[str, Any] = dict(producer_config)
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the stage in a background thread."""
        self._thread = threading.Thread(target=self.run, name="pensu-repartition", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the stage after its current batch."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Consume → re-key → produce → commit, until stopped."""
        consumer = Consumer({**self._consumer_config, "error_cb": self._on_error})
        producer = OutputProducer({**self._producer_config, "error_cb": self._on_error},
                                  lambda topic, err: log.error("repartition output to %s failed: %s", topic, err))
        consumer.subscribe([self.source_topic])
        try:
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=BATCH_SIZE, timeout=0.5)
                positions: dict[tuple[str, int], int] = {}
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != PARTITION_EOF:
                            self._on_error(error)
                        continue
                    for key, value in split_by_metric(message.value()):
                        producer.send(OutputRecord(self.target_topic, key, value), self._stop.is_set)
                    topic, partition, offset = message_position(message)
                    positions[(topic, partition)] = offset + 1
                    producer.poll(0)
                if positions and producer.deliver_all(self._stop.is_set):
                    try:
                        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                                        asynchronous=False)
                    except KafkaException as exc:
                        log.warning("repartition: offset commit failed: %s", exc)
        finally:
            producer.flush(10)
            consumer.close()
