"""`DeliveryLedger`: deliver-then-commit in one place.

Delivery guarantee (at least once, no double learning). Each pass of the service loop:
1. `open_batch`; every consumed message is entered with `Batch.consume` *before* it is processed,
   and its output records are handed to `send`, which queues them on the batch (`unsent`) and
   produces them in chunks of `SEND_CHUNK_RECORDS` with the batch as their tracker (`pending`
   counts them until the broker answers);
2. `close_batch`: the batch joins the in-flight queue (at most `max_inflight` batches run ahead
   of the broker's acknowledgements: `throttle` waits beyond that, which is the back-pressure
   that keeps memory bounded through a broker outage);
3. `commit`: the offsets of the oldest batches whose records are all answered (the
   acknowledged prefix, `committable`) are committed, for partitions still owned only.
   Batches complete in order per partition, so "offset committed ⇒ outputs delivered" holds.
4. `wait_all` (autosave, hand-over, a full write-behind area) flushes the producer until every
   queued record is answered and then commits synchronously.

The registry asks `settled(analyzer.positions)` before it checkpoints an evicted analyzer: a
checkpoint must not record a sample whose outputs may still be lost, or a restart would skip it
as a replay. A position is unsettled while it falls in a batch with unanswered or unsent records,
or is the message being processed right now (its records are not even queued yet). `wait_all`
produces the open batch's unsent records before it flushes, so a wait settles them too.

Why chunks: produce calls made back to back run with the client's code and data in cache; one
message's 7 records produced between two analyzer steps (which evict both) cost about twice as
much. Measured on the 1,000-metric service bench: ~48 µs of produce per sample when sent after
each message, ~28 µs in chunks of 256 records. Records keep their order; a chunk waits at most
~37 messages (~20 ms at 2,000 samples/s); a batch is closed only after its last chunk is sent. This answers from the
analyzer's own positions, so the service keeps no per-metric map of "last batch".

`waiting` is the readiness input: True while the oldest in-flight batch has waited longer than
`wait_warning_seconds`, or while `wait_all` has flushed for that long.

Calls go down only: the ledger calls the producer and the consumer, and reports to
`DeliveryEvents` (telemetry: readiness gauge, commit-failure counter) and nothing else.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from pensu.kafka_io import OutputProducer
from pensu.outputs import OutputRecord
from pensu.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

SEND_CHUNK_RECORDS = 256  # records of the open batch produced together (see the module docstring)
MAX_INFLIGHT_BATCHES = 64  # consumed batches whose outputs await the broker's acknowledgement
DELIVERY_WAIT_WARNING_SECONDS = 5.0  # not ready while the oldest batch waits longer than this

Partition = tuple[str, int]  # (topic, partition)


def source_key(topic: str, partition: int) -> str:
    """The "topic:partition" spelling of a partition that analyzers and checkpoints record."""
    return f"{topic}:{partition}"


@dataclass
class DeliveryEvents:
    """Telemetry callbacks; none of them steers the ledger."""

    waiting: Callable[[bool], None] = lambda waiting: None  # waiting for the broker started / ended
    commit_failed: Callable[[], None] = lambda: None


class Batch:
    """The messages of one consumer poll and the count of their not-yet-answered output records."""

    __slots__ = ("spans", "positions", "pending", "created", "open", "current", "unsent")

    def __init__(self) -> None:
        self.spans: dict[str, list[int]] = {}  # "topic:partition" -> [first offset, next offset] consumed
        self.positions: dict[Partition, int] = {}  # (topic, partition) -> next offset to commit
        self.pending = 0  # records sent with this batch and not answered yet (OutputProducer.send)
        self.created = time.monotonic()
        self.open = True
        self.current: tuple[str, int] | None = None  # the message entered last, maybe still processing
        self.unsent: list[OutputRecord] = []  # records queued by `DeliveryLedger.send`, not produced yet

    def consume(self, topic: str, partition: int, offset: int) -> str:
        """Enter one message before it is processed; returns its "topic:partition" source key."""
        source = source_key(topic, partition)
        span = self.spans.get(source)
        if span is None:
            self.spans[source] = [offset, offset + 1]
        else:
            span[1] = offset + 1
        self.positions[(topic, partition)] = offset + 1
        self.current = (source, offset)
        return source

    def holds_unsettled(self, source: str, offset: int) -> bool:
        """True when (source, offset) is in this batch and its outputs may still be lost."""
        span = self.spans.get(source)
        if span is None or not span[0] <= offset < span[1]:
            return False
        # While open, the message entered last may still be processing: its records are not sent.
        return self.pending > 0 or bool(self.unsent) or (self.open and self.current == (source, offset))


class DeliveryLedger:
    """Consumed batches whose outputs await acknowledgement; their offsets become committable in order."""

    def __init__(self, should_stop: Callable[[], bool], events: DeliveryEvents | None = None,
                 max_inflight: int = MAX_INFLIGHT_BATCHES,
                 wait_warning_seconds: float = DELIVERY_WAIT_WARNING_SECONDS) -> None:
        self._should_stop = should_stop
        self.events = events or DeliveryEvents()
        self.max_inflight = max_inflight
        self.wait_warning_seconds = wait_warning_seconds
        self._inflight: deque[Batch] = deque()
        self._open: Batch | None = None
        self._owned: set[Partition] = set()
        self._producer: OutputProducer | None = None
        self._consumer: Consumer | None = None
        self.waiting = False
        self._commit_log = RateLimitedLog(log, 30.0)

    # -- clients and ownership --------------------------------------------------------------
    def attach(self, producer: OutputProducer, consumer: Consumer | None) -> None:
        """The clients outputs are flushed through and offsets committed with (set at start)."""
        self._producer = producer
        self._consumer = consumer

    def detach(self) -> None:
        """Forget the clients (after shutdown)."""
        self._producer = self._consumer = None

    @property
    def owned(self) -> frozenset[Partition]:
        """Partitions currently assigned: only their offsets are committed."""
        return frozenset(self._owned)

    def assign(self, partitions: Iterable[Partition]) -> None:
        """Partitions were assigned to this instance."""
        self._owned.update(partitions)

    def release(self, partitions: Iterable[Partition]) -> None:
        """Partitions are no longer ours: their offsets are not committed by us any more."""
        self._owned.difference_update(partitions)

    # -- the loop's steps ------------------------------------------------------------------
    def open_batch(self) -> Batch:
        """Start the batch of one consumer poll."""
        self._open = Batch()
        return self._open

    def send(self, records: list[OutputRecord], batch: Batch) -> None:
        """Queue a processed message's records on `batch`, in order; they are produced with it as tracker.

        Records of the open batch are produced in chunks (and at `close_batch`, `wait_all`);
        records of a closed batch (lines the warm-start gate held) are produced at once, as the
        caller counts on them being covered by the batch's `pending` when it returns.
        """
        if batch is not self._open:
            self._produce(records, batch)
            return
        batch.unsent.extend(records)
        if len(batch.unsent) >= SEND_CHUNK_RECORDS:
            self._send_unsent(batch)

    def _produce(self, records: list[OutputRecord], batch: Batch) -> None:
        if records:
            assert self._producer is not None
            self._producer.send_all(records, self._should_stop, batch)

    def _send_unsent(self, batch: Batch) -> None:
        if batch.unsent:
            records, batch.unsent = batch.unsent, []
            self._produce(records, batch)
            assert self._producer is not None
            self._producer.poll(0)  # serve the delivery callbacks of earlier chunks

    def close_batch(self, batch: Batch) -> None:
        """The batch's unsent records are produced: it joins the in-flight queue (if it holds any message)."""
        self._send_unsent(batch)
        batch.open = False
        if self._open is batch:
            self._open = None
        if batch.positions:
            # Time the wait for acknowledgements from the end of processing, not its start: a
            # long batch on a busy core is not a broker problem.
            batch.created = time.monotonic()
            self._inflight.append(batch)

    def committable(self) -> list[TopicPartition]:
        """Pop the acknowledged prefix of the in-flight queue; its offsets on owned partitions.

        Batches complete in order per partition; committing only a prefix keeps "offsets
        committed ⇒ outputs delivered" (at least once). Also updates `waiting`.
        """
        merged: dict[Partition, int] = {}
        while self._inflight and self._inflight[0].pending == 0:
            merged.update(self._inflight.popleft().positions)
        oldest = self._inflight[0].created if self._inflight else None
        waiting = oldest is not None and time.monotonic() - oldest > self.wait_warning_seconds
        if waiting != self.waiting:
            self._set_waiting(waiting)
            if waiting:
                log.warning("waiting for the broker to acknowledge outputs (%d batches in flight)",
                            len(self._inflight))
            else:
                log.info("outputs acknowledged again")
        return [TopicPartition(t, p, o) for (t, p), o in merged.items() if (t, p) in self._owned]

    def commit(self, asynchronous: bool = True) -> None:
        """Commit the offsets of the acknowledged prefix (`committable`)."""
        offsets = self.committable()
        if not offsets or self._consumer is None:
            return
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Not fatal: the outputs were delivered; the next owner may replay and skip them.
            self._commit_log.log(logging.WARNING, "offset commit failed: %s", exc)
            self.events.commit_failed()

    def throttle(self, waiting: Callable[[], None] = lambda: None) -> None:
        """Back-pressure: never run more than `max_inflight` batches ahead of the broker's acks.

        `waiting` runs on every round: what else may complete a batch (the warm-start gate
        releasing held lines) gets its turn, or a held batch at the head would never finish.
        """
        assert self._producer is not None
        while len(self._inflight) > self.max_inflight and not self._should_stop():
            self._producer.poll(0.1)
            waiting()
            self.commit()

    def wait_all(self) -> bool:
        """Wait until every queued output is answered, then commit synchronously.

        False when a stop was requested first: the undelivered outputs' offsets stay uncommitted.
        """
        if self._producer is None:
            return True
        if self._open is not None:
            self._send_unsent(self._open)
        if not self._producer.deliver_all(self._should_stop, self._set_waiting):
            return False
        self.commit(asynchronous=False)
        return True

    def drop_positions(self, partitions: Iterable[Partition]) -> None:
        """Forget what in-flight batches consumed from `partitions`: it is never committed by us."""
        gone = set(partitions)
        for batch in self._inflight:
            for key in gone & batch.positions.keys():
                del batch.positions[key]

    def finish(self, timeout: float) -> None:
        """At shutdown: give outputs `timeout` seconds, and commit what they cover if all were answered."""
        if self._producer is not None and self._producer.flush(timeout) == 0:
            self.commit(asynchronous=False)

    # -- for the registry (DeliveryGate) -------------------------------------------------------
    def settled(self, positions: Mapping[str, tuple[int, int]]) -> bool:
        """True when the outputs of every sample recorded at `positions` were answered by the broker."""
        batches = list(self._inflight)
        if self._open is not None:
            batches.append(self._open)
        return not any(batch.holds_unsettled(source, offset)
                       for source, (offset, _line) in positions.items() for batch in batches)

    @property
    def inflight(self) -> int:
        """Closed batches whose offsets are not committed yet."""
        return len(self._inflight)

    def _set_waiting(self, waiting: bool) -> None:
        self.waiting = waiting
        self.events.waiting(waiting)
