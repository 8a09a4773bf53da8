"""`KafkaCheckpointStore` against the session's broker: round trips through the topic, restore
by partition into an empty cache, latest record wins, chunked checkpoints, corrupt records."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgpack
import pytest
from confluent_kafka import Producer

from pensu.checkpoint import CheckpointHeader, encode_checkpoint
from pensu.errors import CheckpointError
from pensu.kafka_checkpoint import MANIFEST_MAGIC, PART_SEPARATOR, KafkaCheckpointStore, _part_key
from tests.conftest import KafkaCluster, free_port
from tests.scaleout.cluster import kafka_store_env
from tests.service_harness import ServiceThread, carbon_by_metric, carbon_of, expected_records, lines_for, service_env
from tests.support import series

pytestmark = [pytest.mark.kafka]

def header(topic: str, metric: str, partition: int, count: int) -> CheckpointHeader:
    return CheckpointHeader(metric=metric, sample_count=count, last_timestamp=1000.0 + count,
                            last_offsets={f"{topic}:{partition}": count}, saved_at=1.0)


class Stores:
    """Stores of one test sharing a checkpoint topic, each with its own cache directory."""

    def __init__(self, kafka: KafkaCluster, tmp_path: Path) -> None:
        self.kafka, self.tmp_path = kafka, tmp_path
        self.input = kafka.unique("in")
        self.topic = kafka.unique("ckpt")
        self.quarantine_topic = kafka.unique("ckpt.quarantine")
        kafka.create_topics(self.input, partitions=4)
        self.quarantined = 0
        self.made: list[KafkaCheckpointStore] = []

    def new(self, name: str, part_bytes: int = 512 * 1024, **options: float) -> KafkaCheckpointStore:
        def count() -> None:
            self.quarantined += 1
        store = KafkaCheckpointStore(self.tmp_path / name, self.topic, self.input, self.quarantine_topic,
                                     part_bytes=part_bytes, on_quarantined=count, **options)
        store.connect({"bootstrap.servers": self.kafka.bootstrap_servers})
        self.made.append(store)
        return store

    def close(self) -> None:
        for store in self.made:
            store.close()


@pytest.fixture
def stores(kafka: KafkaCluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    made = Stores(kafka, tmp_path)
    yield made
    made.close()


def test_checkpoints_move_between_instances_by_partition(stores: Stores) -> None:
    first = stores.new("a")
    first.partitions_assigned(stores.input, [0, 1, 2, 3])
    for i, metric in enumerate(["m0", "m1", "m2", "m3"]):
        first.save(header(stores.input, metric, i, 10), f"payload-{metric}".encode())
    first.save(header(stores.input, "m1", 1, 11), b"payload-m1-newer")  # the latest record of a key wins
    second = stores.new("b")  # another machine: an empty directory
    assert second.load("m1") is None
    second.partitions_assigned(stores.input.replace("in", "other"), [1])  # another topic: ignored
    assert second.load("m1") is None
    second.partitions_assigned(stores.input, [1, 3])
    loaded = second.load("m1")
    assert loaded is not None and loaded[1] == b"payload-m1-newer" and loaded[0].sample_count == 11
    assert second.load("m3") is not None and second.load("m3")[1] == b"payload-m3"  # type: ignore[index]
    assert second.load("m0") is None and second.load("m2") is None  # partitions it does not own
    assert {e.key for e in second.entries()} and len(list(second.entries())) == 2
    # Giving partition 1 up drops its cache; the next owner sees what this one saved last.
    second.save(header(stores.input, "m1", 1, 12), b"payload-m1-from-b")
    second.partitions_revoked(stores.input, [1])
    assert second.load("m1") is None and second.load("m3") is not None
    first.partitions_revoked(stores.input, [0, 1, 2, 3])
    first.partitions_assigned(stores.input, [1])
    assert first.load("m1")[1] == b"payload-m1-from-b"  # type: ignore[index]
    assert stores.quarantined == 0


def test_a_checkpoint_larger_than_one_record_round_trips(stores: Stores) -> None:
    writer = stores.new("a", part_bytes=1024)
    writer.partitions_assigned(stores.input, [2])
    big = bytes(range(256)) * 40  # 10 KiB: about ten parts
    writer.save(header(stores.input, "big.one", 2, 5), big)
    bigger = bytes(reversed(range(256))) * 60
    writer.save(header(stores.input, "big.one", 2, 6), bigger)  # a new generation replaces the old parts
    reader = stores.new("b", part_bytes=1024)
    reader.partitions_assigned(stores.input, [2])
    loaded = reader.load("big.one")
    assert loaded is not None and loaded[1] == bigger and loaded[0].sample_count == 6
    # Back to one record, then deleted: nothing comes back.
    reader.save(header(stores.input, "big.one", 2, 7), b"small")
    third = stores.new("c", part_bytes=1024)
    third.partitions_assigned(stores.input, [2])
    assert third.load("big.one")[1] == b"small"  # type: ignore[index]
    third.delete("big.one")
    fourth = stores.new("d")
    fourth.partitions_assigned(stores.input, [2])
    assert fourth.load("big.one") is None and stores.quarantined == 0


def test_corrupt_records_are_quarantined_counted_and_deleted(kafka: KafkaCluster, stores: Stores) -> None:
    writer = stores.new("a", part_bytes=1024)
    writer.partitions_assigned(stores.input, [0])
    writer.save(header(stores.input, "good", 0, 3), b"fine")
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    producer.produce(stores.topic, key=b"garbled", value=b"PENSUCKP not really a checkpoint", partition=0)
    # A split checkpoint with a flipped byte in one part: the reassembled sha256 does not match.
    blob = bytearray(encode_checkpoint(header(stores.input, "split", 0, 3), bytes(5000)))
    blob[1500] ^= 1
    chunks = [bytes(blob[i:i + 1024]) for i in range(0, len(blob), 1024)]
    for i, chunk in enumerate(chunks):
        producer.produce(stores.topic, key=_part_key(b"split", "g1", i), value=chunk, partition=0)
    producer.produce(stores.topic, key=b"split", partition=0,
                     value=MANIFEST_MAGIC + msgpack.packb({"generation": "g1", "parts": len(chunks)}))
    # A manifest whose parts are missing.
    producer.produce(stores.topic, key=b"partless", partition=0,
                     value=MANIFEST_MAGIC + msgpack.packb({"generation": "g9", "parts": 3}))
    assert producer.flush(30) == 0
    reader = stores.new("b")
    reader.partitions_assigned(stores.input, [0])
    assert reader.load("good") is not None
    assert reader.load("garbled") is None and reader.load("split") is None and reader.load("partless") is None
    assert stores.quarantined == 3 and reader.corrupt_records == 3
    dead = kafka.consume_all([stores.quarantine_topic], expected=3, timeout=30, idle=0.5)
    reasons = {m.key(): dict(m.headers())["pensu-reason"] for m in dead}
    assert set(reasons) == {b"garbled", b"split", b"partless"}, reasons
    assert b"checksum" in reasons[b"split"] and b"missing parts" in reasons[b"partless"], reasons
    # They were deleted from the topic: the next owner neither sees nor counts them again.
    third = stores.new("c")
    third.partitions_assigned(stores.input, [0])
    assert third.load("good") is not None and third.load("garbled") is None and stores.quarantined == 3


def test_orphaned_parts_are_never_restored_and_the_owner_tombstones_them(kafka: KafkaCluster, stores: Stores) -> None:
    """Parts of an interrupted split write (no manifest) and of a generation whose writer died
    before deleting it are garbage: the checkpoint the latest manifest names is restored, a
    refresh (not the owner) leaves the parts alone, the owner tombstones exactly the garbage,
    and the next owner finds nothing left to clean."""
    writer = stores.new("a", part_bytes=1024)
    writer.partitions_assigned(stores.input, [1])
    writer.save(header(stores.input, "big", 1, 5), bytes(range(256)) * 20)  # generation 1, ~6 parts
    first_generation, first_count = writer._generation_of["big"]
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def split(generation: str, count: int) -> tuple[list[bytes], bytes]:
        blob = encode_checkpoint(header(stores.input, "big", 1, count), bytes(reversed(range(256))) * 30)
        keys = []
        for i in range(0, len(blob), 1024):
            keys.append(_part_key(b"big", generation, i // 1024))
            producer.produce(stores.topic, key=keys[-1], value=blob[i:i + 1024], partition=1)
        return keys, blob

    # Generation g2 complete (manifest written) but generation 1 never deleted: its writer died.
    g2_keys, _g2_blob = split("g2", 6)
    producer.produce(stores.topic, key=b"big", partition=1,
                     value=MANIFEST_MAGIC + msgpack.packb({"generation": "g2", "parts": len(g2_keys)}))
    # Then a writer died between its parts and its manifest.
    interrupted, _blob = split("g3", 7)
    assert producer.flush(30) == 0
    garbage = {_part_key(b"big", first_generation, i) for i in range(first_count)} | set(interrupted)

    onlooker = stores.new("refresher", part_bytes=1024)
    onlooker.refresh(stores.input, [1])  # a lost partition: read, but not this instance's to clean
    seen = onlooker.load("big")
    assert seen is not None and seen[0].sample_count == 6 and seen[1] == bytes(reversed(range(256))) * 30
    assert onlooker.orphan_parts == 0

    owner = stores.new("b", part_bytes=1024)
    owner.partitions_assigned(stores.input, [1])
    loaded = owner.load("big")
    assert loaded is not None and loaded[0].sample_count == 6  # g2, not the interrupted g3
    assert owner.orphan_parts == len(garbage)
    records = kafka.consume_all([stores.topic], expected=1, timeout=30, idle=1.0)
    tombstoned = {m.key() for m in records if m.value() is None and PART_SEPARATOR in m.key()}
    assert tombstoned == garbage
    later = stores.new("c", part_bytes=1024)
    later.partitions_assigned(stores.input, [1])
    assert later.load("big")[0].sample_count == 6 and later.orphan_parts == 0  # type: ignore[index]
    assert stores.quarantined == 0


def test_a_restore_longer_than_the_assignment_budget_finishes_before_the_first_load(
        stores: Stores, caplog: pytest.LogCaptureFixture) -> None:
    """The assignment callback returns after the budget; the restore goes on, and the first load
    (or any other call of the store) waits for it instead of seeing a partial cache."""
    writer = stores.new("a")
    writer.partitions_assigned(stores.input, [0, 1, 2, 3])
    metrics = [f"m{i}" for i in range(40)]
    for i, metric in enumerate(metrics):
        writer.save(header(stores.input, metric, i % 4, 10 + i), metric.encode() * 100)
    reader = stores.new("b", assign_budget=0.0)
    with caplog.at_level(logging.INFO, logger="pensu.kafka_checkpoint"):
        started = time.monotonic()
        reader.partitions_assigned(stores.input, [0, 1, 2, 3])
        returned_after = time.monotonic() - started
        assert "goes on in the background" in caplog.text
        counts = {m: reader.load(m)[0].sample_count for m in metrics}  # type: ignore[index]
    assert counts == {m: 10 + i for i, m in enumerate(metrics)}
    assert returned_after < 0.5 and reader.restored_records == len(metrics)
    assert len(list(reader.entries())) == len(metrics)


def test_an_instance_that_lost_a_partition_cannot_overwrite_the_new_owners_checkpoints(
        stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old owner still believes it owns partition 2 (it stalled; librdkafka has not told it
    yet) while a new owner restored it and saved: the old owner's saves are refused until the
    partition is assigned to it again; the new owner's are not disturbed."""
    monkeypatch.setattr("pensu.kafka_ownership.OWNER_CHECK_INTERVAL_S", 0.0)
    old = stores.new("old")
    old.partitions_assigned(stores.input, [2, 3])
    old.save(header(stores.input, "m", 2, 10), b"old-10")
    new = stores.new("new")
    new.partitions_assigned(stores.input, [2])  # the group moved partition 2 while `old` stalled
    new.save(header(stores.input, "m", 2, 15), b"new-15")
    with pytest.raises(CheckpointError, match="assigned to another instance"):
        old.save(header(stores.input, "m", 2, 12), b"old-12")
    with pytest.raises(CheckpointError, match="assigned to another instance"):
        old.delete("m")
    old.save(header(stores.input, "other", 3, 4), b"still-owned")  # partition 3 is still its own
    zombie = Producer({"bootstrap.servers": stores.kafka.bootstrap_servers})
    zombie.produce(stores.topic, key=b"gone", value=None, partition=2)  # another's write, but no fence
    assert zombie.flush(30) == 0
    new.save(header(stores.input, "m", 2, 16), b"new-16")  # only a newer fence stops an owner
    reader = stores.new("reader")
    reader.refresh(stores.input, [2, 3])  # a reader, not an owner
    assert reader.load("m")[1] == b"new-16" and reader.load("other")[1] == b"still-owned"  # type: ignore[index]
    # A lost partition's hand-over (refresh) is the registry's call (superseded check), not fenced;
    # its read fence claims nothing, so the owner keeps writing.
    old.refresh(stores.input, [2])
    assert old.load("m")[1] == b"new-16"  # type: ignore[index]
    new.save(header(stores.input, "m", 2, 17), b"new-17")
    # Safety net: an owner fenced out but never told it lost the partition claims it back later.
    monkeypatch.setattr("pensu.kafka_ownership.RECLAIM_AFTER_S", 0.5)
    stores.new("intruder").partitions_assigned(stores.input, [2])
    with pytest.raises(CheckpointError, match="assigned to another instance"):
        new.save(header(stores.input, "m", 2, 18), b"new-18")
    time.sleep(0.6)
    new.save(header(stores.input, "m", 2, 18), b"new-18")
    last = stores.new("last")
    last.refresh(stores.input, [2])
    assert last.load("m")[1] == b"new-18"  # type: ignore[index]


@pytest.mark.slow
def test_restart_with_an_empty_disk_resumes_every_metric(kafka: KafkaCluster, tmp_path: Path) -> None:
    """PENSU_CHECKPOINT_STORE=kafka: a service restarted on another (empty) models directory
    continues every metric from the topic: outputs equal one uninterrupted analyzer's, nothing
    learned twice, no model created fresh."""
    metrics = [f"disk.host{i}.used" for i in range(8)]
    data = {m: [(ts, v + i) for ts, v in series(60)] for i, m in enumerate(metrics)}
    env = service_env(kafka, tmp_path / "first-disk", PENSU_MODELS_AUTOSAVE_INTERVAL="3600",
                      PENSU_KAFKA_SESSION_TIMEOUT_MS="6000", **kafka_store_env(kafka))
    topic = env["PENSU_METRICS_KAFKA_TOPIC"]

    def produce(part: slice) -> None:
        kafka.produce(topic, [(m.encode(), line) for m in metrics for line in lines_for(m, data[m][part])])

    anomaly_topic = env["PENSU_ANOMALY_SCORES_KAFKA_TOPIC"]
    produce(slice(0, 35))
    with ServiceThread(env) as first:
        kafka.consume_all([anomaly_topic], expected=3 * 35 * len(metrics), timeout=120, idle=0.5)
        first.stop()
    second_env = dict(env, PENSU_MODELS_DIR=str(tmp_path / "second-disk"))
    with ServiceThread(second_env) as second:
        produce(slice(35, 60))
        msgs = kafka.consume_all([anomaly_topic], expected=3 * 60 * len(metrics), timeout=120, idle=2.0)
        loads = {source: second.service.metrics.model_loads.labels(source=source)._value.get()
                 for source in ("checkpoint", "fresh")}
        second.stop()
    got = carbon_by_metric(msgs, anomaly_topic)
    for metric in metrics:
        assert got[metric] == carbon_of(expected_records(second.settings, metric, data[metric]), anomaly_topic), metric
    assert loads == {"checkpoint": len(metrics), "fresh": 0}


def test_saves_fail_fast_while_the_broker_does_not_acknowledge(tmp_path: Path) -> None:
    """No broker: the first save fails after the ack timeout, the next ones at once (a shutdown
    with the broker down must not wait the timeout once per model); nothing reaches the cache."""
    store = KafkaCheckpointStore(tmp_path / "cache", "ckpt", "in", "ckpt.quarantine", ack_timeout=1.0)
    store.connect({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0})
    try:
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="not acknowledged"):
            store.save(header("in", "m", 0, 1), b"x")
        assert time.monotonic() - started >= 0.9
        started = time.monotonic()
        with pytest.raises(CheckpointError, match="not waiting again"):
            store.save(header("in", "m", 0, 2), b"x")
        assert time.monotonic() - started < 0.5
        assert store.load("m") is None and not list(store.entries())
    finally:
        store._producer = None  # nothing can be flushed to a port nobody listens on
