"""DeliveryLedger: the acknowledged prefix, settled positions, waiting on the broker.

The batches' `pending` counts are moved here the way `OutputProducer.send` and its delivery
callbacks move them; the service tests cover the ledger with a real broker.
"""

from __future__ import annotations

from pensu.delivery import Batch, DeliveryEvents, DeliveryLedger, source_key


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
