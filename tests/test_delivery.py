"""DeliveryLedger: the acknowledged prefix, settled positions, waiting on the broker.

The batches' `pending` counts are moved here the way `OutputProducer.send` and its delivery
callbacks move them (or by `FakeProducer`); the service tests cover the ledger with a real broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

from pensu.delivery import SEND_CHUNK_RECORDS, Batch, DeliveryEvents, DeliveryLedger, source_key
from pensu.kafka_io import OutputProducer, Tracker
from pensu.outputs import OutputRecord


def batch_of(ledger: DeliveryLedger, offsets: dict[tuple[str, int], list[int]], pending: int) -> Batch:
    batch = ledger.open_batch()
    for (topic, partition), numbers in offsets.items():
        for offset in numbers:
            batch.consume(topic, partition, offset)
    batch.pending = pending
    ledger.close_batch(batch)
    return batch


def test_only_the_acknowledged_prefix_is_committable_and_only_for_owned_partitions() -> None:
    ledger = DeliveryLedger(lambda: False)
    ledger.assign([("in", 0), ("in", 1)])
    first = batch_of(ledger, {("in", 0): [10, 11], ("in", 1): [5]}, pending=2)
    second = batch_of(ledger, {("in", 0): [12]}, pending=0)
    assert ledger.committable() == []  # the oldest batch still waits: nothing behind it either
    assert ledger.inflight == 2
    first.pending = 0
    ledger.release([("in", 1)])  # revoked meanwhile: its offset is not ours to commit
    offsets = ledger.committable()
    assert [(tp.topic, tp.partition, tp.offset) for tp in offsets] == [("in", 0, 13)]
    assert ledger.inflight == 0 and second.pending == 0


def test_settled_answers_from_positions_in_batches_with_unanswered_records() -> None:
    ledger = DeliveryLedger(lambda: False)
    acked = batch_of(ledger, {("in", 0): [1, 2]}, pending=0)
    waiting = batch_of(ledger, {("in", 0): [3, 4]}, pending=1)
    assert ledger.settled({"in:0": (2, 0)})  # its batch is answered (not yet committable)
    assert not ledger.settled({"in:0": (4, 7)})
    assert ledger.settled({"in:1": (4, 0)})  # another partition: nothing in flight there
    assert ledger.settled({"in:0": (99, 0)})  # e.g. a checkpoint's position: nothing in flight there
    assert ledger.settled({})
    waiting.pending = 0
    assert ledger.settled({"in:0": (4, 7)})
    assert acked.pending == 0


def test_the_message_being_processed_is_unsettled_until_its_batch_closes() -> None:
    ledger = DeliveryLedger(lambda: False)
    batch = ledger.open_batch()
    source = batch.consume("in", 3, 40)
    assert source == source_key("in", 3) == "in:3"
    # Learned from offset 40, records not sent yet: a checkpoint now could lose its outputs.
    assert not ledger.settled({"in:3": (40, 0)})
    batch.consume("in", 3, 41)
    assert ledger.settled({"in:3": (40, 0)})  # sent with nothing unanswered
    assert not ledger.settled({"in:3": (41, 0)})
    batch.consume("in", 2, 7)  # the last message entered is on another partition now
    assert ledger.settled({"in:3": (41, 0)}) and not ledger.settled({"in:2": (7, 0)})
    ledger.close_batch(batch)
    assert ledger.settled({"in:2": (7, 0)})


def test_waiting_turns_on_when_the_oldest_batch_waits_too_long_and_off_when_answered() -> None:
    changes: list[bool] = []
    ledger = DeliveryLedger(lambda: False, DeliveryEvents(waiting=changes.append), wait_warning_seconds=0.0)
    batch = batch_of(ledger, {("in", 0): [1]}, pending=1)
    ledger.committable()
    assert ledger.waiting and changes == [True]
    batch.pending = 0
    ledger.committable()
    assert not ledger.waiting and changes == [True, False]


def test_without_clients_commit_and_wait_all_do_nothing_harmful() -> None:
    ledger = DeliveryLedger(lambda: False)
    ledger.assign([("in", 0)])
    batch_of(ledger, {("in", 0): [1]}, pending=0)
    ledger.commit()  # no consumer yet: the prefix is dropped from the queue, nothing raised
    assert ledger.inflight == 0 and ledger.wait_all()


class FakeProducer:
    """`OutputProducer`'s calls the ledger makes: records are "produced" into a list, acknowledged on flush."""

    def __init__(self) -> None:
        self.produced: list[tuple[bytes, Tracker | None]] = []
        self.polls = 0

    def send_all(self, records: Iterable[OutputRecord], should_stop: Callable[[], bool] = lambda: False,
                 tracker: Tracker | None = None) -> None:
        for record in records:
            if tracker is not None:
                tracker.pending += 1
            self.produced.append((record.value, tracker))

    def poll(self, timeout: float = 0.0) -> int:
        self.polls += 1
        return 0

    def deliver_all(self, should_stop: Callable[[], bool], on_waiting: Callable[[bool], None]) -> bool:
        for _value, tracker in self.produced:
            if tracker is not None:
                tracker.pending -= 1
        self.produced.clear()
        return True


def records(n: int, tag: str) -> list[OutputRecord]:
    return [OutputRecord("out", b"k", f"{tag}{i}".encode()) for i in range(n)]


def test_records_of_the_open_batch_go_out_in_chunks_in_order_and_stay_unsettled_until_sent() -> None:
    ledger, producer = DeliveryLedger(lambda: False), FakeProducer()
    ledger.attach(cast(OutputProducer, producer), None)
    batch = ledger.open_batch()
    batch.consume("in", 0, 1)
    ledger.send(records(7, "a"), batch)
    batch.consume("in", 0, 2)
    assert producer.produced == [] and batch.pending == 0
    # Offset 1 was processed and its records queued, not produced: its outputs could still be lost.
    assert not ledger.settled({"in:0": (1, 0)})
    ledger.send(records(SEND_CHUNK_RECORDS, "b"), batch)  # the chunk is full: all of it goes out
    assert [v for v, _ in producer.produced] == [r.value for r in records(7, "a") + records(SEND_CHUNK_RECORDS, "b")]
    assert batch.pending == 7 + SEND_CHUNK_RECORDS and batch.unsent == [] and producer.polls == 1
    ledger.send(records(3, "c"), batch)
    ledger.close_batch(batch)  # the last chunk is produced before the batch joins the in-flight queue
    assert batch.pending == 10 + SEND_CHUNK_RECORDS and batch.unsent == [] and ledger.inflight == 1
    assert [v for v, _ in producer.produced[-3:]] == [b"c0", b"c1", b"c2"]
    assert all(tracker is batch for _, tracker in producer.produced)


def test_wait_all_produces_the_open_batch_first_so_its_positions_settle() -> None:
    ledger, producer = DeliveryLedger(lambda: False), FakeProducer()
    ledger.attach(cast(OutputProducer, producer), None)
    batch = ledger.open_batch()
    batch.consume("in", 0, 1)
    ledger.send(records(2, "a"), batch)
    batch.consume("in", 0, 2)  # now processing offset 2
    assert not ledger.settled({"in:0": (1, 0)})
    assert ledger.wait_all()  # e.g. the registry's write-behind area is full
    assert batch.unsent == [] and batch.pending == 0
    assert ledger.settled({"in:0": (1, 0)}) and not ledger.settled({"in:0": (2, 0)})


def test_records_for_a_closed_batch_are_produced_at_once() -> None:
    ledger, producer = DeliveryLedger(lambda: False), FakeProducer()
    ledger.attach(cast(OutputProducer, producer), None)
    held = batch_of(ledger, {("in", 0): [1]}, pending=1)  # a line the warm-start gate held
    ledger.open_batch()
    ledger.send(records(2, "h"), held)
    assert held.pending == 3 and held.unsent == [] and len(producer.produced) == 2
