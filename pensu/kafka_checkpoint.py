"""`KafkaCheckpointStore`: checkpoints in a compacted Kafka topic, co-partitioned with the input.

The Kafka Streams model (a local state store backed by a changelog topic): the topic is the
truth, the instance's `PENSU_MODELS_DIR` is only a cache of the partitions it owns. So
instances on different machines hand metrics over with nothing shared but the cluster.

* **Layout.** A metric's checkpoint (the checksummed file format of `pensu.checkpoint`) goes
  to the checkpoint topic's partition *p* when the metric's samples come from input partition
  *p* (read from the checkpoint's own `last_offsets`), so an owner restores exactly its
  partitions. Key = metric name. A checkpoint larger than `part_bytes` is split: parts keyed
  `<metric>\\0<generation>\\0<i>` are written first, then a manifest under the metric's key
  naming the generation and part count; parts of the previous generation are then deleted
  (tombstones). The file format's sha256 checks the reassembled bytes. Deleting a metric is a
  tombstone on its key.
* **Restore** (on assignment, for the newly assigned partitions): a fence record is appended to
  each partition and the partition is read from the beginning up to that fence, each record
  verified and streamed into the cache, a later record of a key replacing an earlier one (so
  the latest wins, a broker that does not compact costs only restore time, no high watermark
  has to be trusted, and memory holds only the parts of split checkpoints until their
  manifest). A checkpoint whose latest record fails verification is copied to the quarantine
  topic with its reason, tombstoned and counted, never fatal. Parts no manifest of their metric's
  latest record names (a writer that died between its parts and its manifest, or between a
  manifest and the deletion of the previous generation) are never restored; the new owner
  tombstones them after its restore so compaction drops them (`orphan_parts` counts them). The
  restore runs inside the assignment callback, so a partition's checkpoints are in the cache
  before its first message; it may block there for `assign_budget` seconds (5 s, below the
  smallest session timeout brokers accept by default, 6 s) and then goes on in a thread, every
  other store call (the first model load included) waiting for it: the consume loop is never
  blocked longer than the budget by the assignment itself, and no model loads from a partial
  restore. (Measured with Tansu and librdkafka: a consumer blocked 20 s in its assignment
  callback, session timeout 6 s, max.poll.interval 8 s, kept its partitions; blocking costs the
  instance's other partitions latency, not group membership.) The cache is emptied at start and
  a revoked partition's files are removed, so the cache never holds another owner's stale
  state. A *lost* partition is read again (`refresh`) before its analyzers are saved, so the
  registry's superseded check sees what the new owner wrote.
* **Ownership fence.** The fence record an owner appends at assignment is also its claim: writes
  to a partition another instance has claimed since are refused (`pensu.kafka_ownership`), so a
  stalled instance that wakes up after losing its partitions cannot overwrite the new owner's
  checkpoints before librdkafka reports the loss. A refresh's fence is a reader's (no claim).
* **Save** writes the topic first and waits for the broker's acknowledgement (a failure raises
  `CheckpointError`, so the registry keeps the model in memory), then the cache (not fsynced:
  the topic is the durable copy). After a write that was not acknowledged, writes fail at once
  for `ack_timeout` seconds, so a shutdown with the broker down does not wait once per model.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pensu.checkpoint import (
    CheckpointCorrupt,
    CheckpointEntry,
    CheckpointHeader,
    CheckpointStore,
    LocalCheckpointStore,
    decode_checkpoint,
    encode_checkpoint,
)
from pensu.errors import CheckpointError
from pensu.kafka_io import PARTITION_EOF, message_position
from pensu.kafka_ownership import FENCE_KEY, READ_FENCE_PREFIX, PartitionClaims

log = logging.getLogger(__name__)

MANIFEST_MAGIC = b"PENSUMAN"
PART_SEPARATOR = b"\x00"
DEFAULT_PART_BYTES = 512 * 1024  # well under the 1 MB default record limit of brokers and clients
ACK_TIMEOUT_S = 30.0
RESTORE_TIMEOUT_S = 120.0
# The assignment callback blocks at most this long; the rest of a restore runs in a thread. Below
# the smallest session timeout brokers accept by default (group.min.session.timeout.ms, 6 s).
ASSIGN_BUDGET_S = 5.0


def _part_key(metric: bytes, generation: str, index: int) -> bytes:
    return PART_SEPARATOR.join((metric, generation.encode(), str(index).encode()))


def _split_part_key(key: bytes) -> tuple[str, str, int] | None:
    """(metric, generation, index) of a part key; None if it is not one."""
    fields = key.rsplit(PART_SEPARATOR, 2)
    if len(fields) != 3 or not fields[2].isdigit():
        return None
    return fields[0].decode("utf-8", "surrogateescape"), fields[1].decode("utf-8", "replace"), int(fields[2])


def partition_of(header: CheckpointHeader, input_topic: str) -> int | None:
    """The input partition the checkpoint's samples came from (None if it names none)."""
    for source in header.last_offsets:
        topic, _, partition = source.rpartition(":")
        if topic == input_topic and partition.isdigit():
            return int(partition)
    return None


class KafkaCheckpointStore(CheckpointStore):
    """Checkpoints in `topic` (compacted, one partition per input partition), cached in `cache_dir`."""

    def __init__(self, cache_dir: Path, topic: str, input_topic: str, quarantine_topic: str,
                 part_bytes: int = DEFAULT_PART_BYTES,
                 on_quarantined: Callable[[], None] = lambda: None, ack_timeout: float = ACK_TIMEOUT_S,
                 assign_budget: float = ASSIGN_BUDGET_S) -> None:
        if part_bytes < 1024:
            raise ValueError("part_bytes must be at least 1024")
        self.topic, self.input_topic, self.quarantine_topic = topic, input_topic, quarantine_topic
        self.part_bytes = part_bytes
        self.ack_timeout = ack_timeout
        self.assign_budget = assign_budget
        self._restoring: threading.Thread | None = None  # a restore that outlived the assignment budget
        self._claims = PartitionClaims(topic)  # ownership fence of the partitions assigned here
        self.cache = LocalCheckpointStore(cache_dir, durable=False)
        self._on_quarantined = on_quarantined
        self._config: dict | None = None
        self._producer: Producer | None = None
        self._partition_of: dict[str, int] = {}  # metric -> checkpoint partition (cached metrics)
        self._generation_of: dict[str, tuple[str, int]] = {}  # metric -> (generation, parts) if split
        self._topic_checked = False
        # After an unacknowledged write, further writes fail at once until then (monotonic time):
        # a shutdown with the broker down must not wait ACK_TIMEOUT_S per model.
        self._unavailable_until = 0.0
        self.restored_records = 0  # checkpoints restored (for logs and the benchmark)
        self.corrupt_records = 0
        self.orphan_parts = 0  # parts of no current checkpoint, tombstoned after a restore

    # -- connection ---------------------------------------------------------------------------
    def connect(self, client_config: dict) -> None:
        """Use the cluster of `client_config` (connection and security keys); empty the cache."""
        self._config = dict(client_config)
        self._producer = Producer(dict(self._config, **{
            "enable.idempotence": "true", "linger.ms": "5", "message.timeout.ms": str(int(self.ack_timeout * 1000))}))
        removed = 0
        for entry in list(self.cache.entries()):
            self.cache.delete_key(entry.key)
            removed += 1
        if removed:
            log.info("checkpoint cache: removed %d files of an earlier run (the topic %s is the truth)",
                     removed, self.topic)

    def close(self) -> None:
        """Flush and drop the producer."""
        self._wait_for_restore()
        self._claims.close()
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def _require_producer(self) -> Producer:
        if self._producer is None:
            raise CheckpointError("Kafka checkpoint store used before connect()")
        return self._producer

    def ensure_topic(self, timeout: float = 10.0) -> None:
        """Create the checkpoint topic (compacted, as many partitions as the input topic) if missing."""
        if self._topic_checked or self._config is None:
            return
        admin = AdminClient(self._config)
        try:
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.warning("could not list topics to check %s: %s", self.topic, exc)
            return
        self._topic_checked = True
        if self.topic in metadata.topics:
            have = len(metadata.topics[self.topic].partitions)
            need = len(metadata.topics[self.input_topic].partitions) if self.input_topic in metadata.topics else 0
            if have < need:
                log.error("PENSU_CHECKPOINT_KAFKA_TOPIC %s has %d partitions but the input topic %s has %d: "
                          "checkpoints of the higher partitions cannot be saved; add partitions to it",
                          self.topic, have, self.input_topic, need)
            return
        partitions = len(metadata.topics[self.input_topic].partitions) if self.input_topic in metadata.topics else 4
        futures = admin.create_topics([NewTopic(self.topic, num_partitions=partitions,
                                                config={"cleanup.policy": "compact"})],
                                      operation_timeout=timeout, request_timeout=timeout)
        try:
            futures[self.topic].result(timeout=timeout + 1)
            log.info("created checkpoint topic %s (%d partitions, compacted)", self.topic, partitions)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                log.warning("checkpoint topic %s not created (%s); relying on broker auto-creation", self.topic, exc)

    # -- writes -------------------------------------------------------------------------------
    def _produce(self, records: list[tuple[bytes, bytes | None]], partition: int,
                 topic: str | None = None, headers: list | None = None) -> None:
        """Produce records to one partition and wait for every acknowledgement."""
        producer = self._require_producer()
        if time.monotonic() < self._unavailable_until:
            raise CheckpointError(f"{self.topic} did not acknowledge a checkpoint within {self.ack_timeout:g} s "
                                  f"moments ago; not waiting again yet")
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(err.str())
            elif msg.topic() == self.topic:
                self._claims.delivered(*message_position(msg)[1:])

        target = topic or self.topic
        for key, value in records:
            while True:
                try:
                    # partition -1 (librdkafka's "unassigned", the default) leaves it to the partitioner
                    producer.produce(target, key=key, value=value, headers=headers, on_delivery=on_delivery,
                                     partition=partition if partition >= 0 else -1)
                    break
                except BufferError:
                    producer.poll(0.1)
                except KafkaException as exc:
                    raise CheckpointError(f"cannot write to {target}: {exc}") from exc
        remaining = producer.flush(self.ack_timeout)
        if remaining or failures:
            self._unavailable_until = time.monotonic() + self.ack_timeout
        if remaining or failures:
            raise CheckpointError(f"{remaining + len(failures)} records to {target} not acknowledged"
                                  + (f": {failures[0]}" if failures else f" within {self.ack_timeout:g} s"))

    def save(self, header: CheckpointHeader, payload: bytes) -> None:
        """Write the checkpoint to its partition (parts, then manifest), then to the cache."""
        self._wait_for_restore()
        blob = encode_checkpoint(header, payload)
        metric = header.metric
        partition = partition_of(header, self.input_topic)
        if partition is None:
            partition = self._partition_of.get(metric, -1)  # -1: the producer's key hash decides
        key = metric.encode("utf-8", "surrogatepass")
        previous = self._generation_of.get(metric)
        if len(blob) <= self.part_bytes:
            records: list[tuple[bytes, bytes | None]] = [(key, blob)]
            generation, part_count = None, 0
        else:
            generation = uuid.uuid4().hex[:12]
            chunks = [blob[i:i + self.part_bytes] for i in range(0, len(blob), self.part_bytes)]
            part_count = len(chunks)
            records = [(_part_key(key, generation, i), chunk) for i, chunk in enumerate(chunks)]
            records.append((key, MANIFEST_MAGIC + msgpack.packb({"generation": generation, "parts": len(chunks),
                                                                 "size": len(blob)})))
        if previous is not None:  # the previous generation's parts are garbage once the new head is in
            records += [(_part_key(key, previous[0], i), None) for i in range(previous[1])]
        self._claims.check(partition, self._config or {}, self._produce)
        self._produce(records, partition)
        if generation is None:
            self._generation_of.pop(metric, None)
        else:
            self._generation_of[metric] = (generation, part_count)
        if partition >= 0:
            self._partition_of[metric] = partition
        try:
            self.cache.save_encoded(metric, blob)
        except CheckpointError as exc:
            log.warning("checkpoint of %r saved to %s but not to the local cache: %s", metric, self.topic, exc)
            self.cache.delete(metric)

    def _tombstone(self, metric: str) -> None:
        key = metric.encode("utf-8", "surrogatepass")
        partition = self._partition_of.get(metric)
        if partition is None:
            cached = self._cached_header(metric)
            partition = partition_of(cached, self.input_topic) if cached is not None else None
        if partition is None:
            return  # not ours (never restored or saved here): nothing this instance may delete
        previous = self._generation_of.pop(metric, None)
        records: list[tuple[bytes, bytes | None]] = [(key, None)]
        if previous is not None:
            records += [(_part_key(key, previous[0], i), None) for i in range(previous[1])]
        self._claims.check(partition, self._config or {}, self._produce)
        self._produce(records, partition)
        self._partition_of.pop(metric, None)

    def _cached_header(self, metric: str) -> CheckpointHeader | None:
        try:
            loaded = self.cache.load(metric)
        except CheckpointError:
            return None
        return None if loaded is None else loaded[0]

    def delete(self, metric: str) -> None:
        """Tombstone the metric's checkpoint and drop it from the cache."""
        self._wait_for_restore()
        self._tombstone(metric)
        self.cache.delete(metric)

    def delete_key(self, key: str) -> None:
        """Delete the checkpoint cached under `key` (as listed by `entries`)."""
        self._wait_for_restore()
        path = self.cache.key_path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return
        try:
            header, _ = decode_checkpoint(blob)
        except CheckpointCorrupt:
            self.cache.delete_key(key)
            return
        self.delete(header.metric)

    def quarantine(self, metric: str, reason: str) -> bool:
        """Copy the metric's checkpoint to the quarantine topic, tombstone it, quarantine the cache file."""
        self._wait_for_restore()
        path = self.cache.path_for(metric)
        try:
            blob: bytes | None = path.read_bytes()
        except OSError:
            blob = None
        if blob is not None:
            self._dead_letter(metric, blob, reason)
        try:
            self._tombstone(metric)
        except CheckpointError as exc:
            log.warning("could not delete the quarantined checkpoint of %r from %s: %s", metric, self.topic, exc)
        return self.cache.quarantine(metric, reason)

    def _dead_letter(self, metric: str, blob: bytes, reason: str) -> None:
        try:
            self._produce([(metric.encode("utf-8", "surrogatepass"), blob)], -1, topic=self.quarantine_topic,
                          headers=[("pensu-reason", reason.encode("utf-8", "replace")),
                                   ("pensu-checkpoint-topic", self.topic.encode())])
        except CheckpointError as exc:
            log.warning("could not copy the corrupt checkpoint of %r to %s: %s", metric, self.quarantine_topic, exc)

    # -- reads --------------------------------------------------------------------------------
    def load(self, metric: str) -> tuple[CheckpointHeader, bytes] | None:
        """The metric's checkpoint from the cache of restored partitions (None if absent)."""
        self._wait_for_restore()
        return self.cache.load(metric)

    def entries(self) -> Iterator[CheckpointEntry]:
        """Checkpoints of this instance's partitions (the cache)."""
        self._wait_for_restore()
        return self.cache.entries()

    # -- ownership ----------------------------------------------------------------------------
    def partitions_assigned(self, topic: str, partitions: list[int]) -> None:
        """Restore the checkpoints of newly assigned input partitions into the cache.

        Blocks for at most `assign_budget` seconds; a longer restore goes on in a thread and
        every other call of the store waits for it (so no model loads from a partial restore).
        """
        if topic != self.input_topic or not partitions or self._config is None:
            return
        self._wait_for_restore()
        self.ensure_topic()
        thread = threading.Thread(target=self._restore_logged, args=(topic, sorted(partitions), True),
                                  name="pensu-checkpoint-restore", daemon=True)
        thread.start()
        thread.join(self.assign_budget)
        if thread.is_alive():
            self._restoring = thread
            log.info("restoring checkpoints of %s partitions %s takes longer than %g s: it goes on in the "
                     "background; the first model load waits for it", topic, sorted(partitions), self.assign_budget)

    def _wait_for_restore(self) -> None:
        """Wait for a restore that outlived the assignment budget (it ends within RESTORE_TIMEOUT_S)."""
        thread = self._restoring
        if thread is None or threading.current_thread() is thread:
            return
        started = time.monotonic()
        thread.join(RESTORE_TIMEOUT_S + self.ack_timeout + 10)
        if thread.is_alive():  # not expected: _restore has its own deadline
            log.error("checkpoint restore still running after %.0f s; continuing without it",
                      time.monotonic() - started)
            return
        self._restoring = None
        waited = time.monotonic() - started
        if waited > 0.1:
            log.info("waited %.2f s for the checkpoint restore to finish", waited)

    def _restore_logged(self, topic: str, partitions: list[int], owner: bool) -> None:
        started = time.monotonic()
        try:
            restored, corrupt = self._restore(partitions, owner=owner)
        except (CheckpointError, KafkaException, OSError) as exc:
            log.error("could not restore checkpoints of %s partitions %s from %s: %s; their metrics start "
                      "from the checkpoints cached so far", topic, partitions, self.topic, exc)
            return
        log.info("restored %d checkpoints of partitions %s from %s in %.2f s (%d corrupt, quarantined)",
                 restored, partitions, self.topic, time.monotonic() - started, corrupt)

    def refresh(self, topic: str, partitions: list[int]) -> None:
        """Read the partitions again (they were lost: another owner may have saved since).

        Synchronous, and without touching the topic's parts: this instance is not their owner.
        """
        if topic != self.input_topic or not partitions or self._config is None:
            return
        self._wait_for_restore()
        self._claims.disown(partitions)
        self._restore_logged(topic, sorted(partitions), owner=False)

    def partitions_revoked(self, topic: str, partitions: list[int]) -> None:
        """Drop the cached checkpoints of partitions this instance gave up (their new owner writes them)."""
        if topic != self.input_topic:
            return
        self._wait_for_restore()
        self._claims.disown(partitions)
        gone = set(partitions)
        for metric, partition in list(self._partition_of.items()):
            if partition in gone:
                self.cache.delete(metric)
                del self._partition_of[metric]
                self._generation_of.pop(metric, None)

    def _restore(self, partitions: list[int], timeout: float = RESTORE_TIMEOUT_S,
                 owner: bool = True) -> tuple[int, int]:
        """Read the partitions up to a fence of ours, streaming each checkpoint into the cache.

        Later records of a key overwrite earlier ones in the cache, so the latest wins; only the
        parts of a split checkpoint wait in memory, until their manifest arrives. The `owner`
        (not a refresh of lost partitions) tombstones parts no current manifest names.
        """
        assert self._config is not None
        fence = uuid.uuid4().bytes
        if owner:
            for partition in partitions:
                self._claims.claim(partition, fence)
        else:
            fence = READ_FENCE_PREFIX + fence
        for partition in partitions:
            self._produce([(FENCE_KEY, fence)], partition)
        consumer = Consumer(dict(self._config, **{
            "group.id": f"pensu-restore-{uuid.uuid4().hex[:8]}", "enable.auto.commit": "false",
            "enable.partition.eof": "false", "fetch.wait.max.ms": "20"}))
        parts: dict[bytes, bytes] = {}
        live_parts: dict[bytes, int] = {}  # part key -> partition, for every part not yet tombstoned
        bad: dict[str, tuple[int, bytes, str]] = {}  # metric -> (partition, bytes, reason) if its latest is corrupt
        restored: set[str] = set()
        pending = set(partitions)
        deadline = time.monotonic() + timeout
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            while pending:
                if time.monotonic() > deadline:
                    raise CheckpointError(f"partitions {sorted(pending)} not read to the end within {timeout:g} s")
                for msg in consumer.consume(500, timeout=0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() != PARTITION_EOF:
                            log.warning("reading %s: %s", self.topic, error)
                        continue
                    key, value, partition = msg.key(), msg.value(), message_position(msg)[1]
                    if key is None or partition not in pending:
                        continue
                    if key == FENCE_KEY:
                        if value == fence:
                            pending.discard(partition)
                    elif PART_SEPARATOR in key:
                        if value is None:
                            parts.pop(key, None)
                            live_parts.pop(key, None)
                        else:
                            parts[key] = value
                            live_parts[key] = partition
                    else:
                        metric = key.decode("utf-8", "surrogateescape")
                        bad.pop(metric, None)
                        restored.discard(metric)
                        if value is None:  # deleted
                            self.cache.delete(metric)
                            self._partition_of.pop(metric, None)
                            self._generation_of.pop(metric, None)
                            continue
                        problem = self._restore_one(metric, value, parts, partition)
                        if problem is None:
                            restored.add(metric)
                        else:
                            bad[metric] = (partition, *problem)
        finally:
            consumer.close()
        orphans = self._orphans(live_parts) if owner else {}
        for metric, (partition, blob, reason) in bad.items():
            self._quarantine_record(metric, blob, reason, partition)
        if orphans:
            self._drop_orphans(orphans)
        self.restored_records += len(restored)
        self.corrupt_records += len(bad)
        return len(restored), len(bad)

    def _orphans(self, live_parts: dict[bytes, int]) -> dict[int, list[bytes]]:
        """Per partition, the parts no metric's latest manifest names (never to be restored)."""
        orphans: dict[int, list[bytes]] = {}
        for key, partition in live_parts.items():
            parsed = _split_part_key(key)
            if parsed is not None:
                metric, generation, index = parsed
                current = self._generation_of.get(metric)
                if current is not None and current[0] == generation and index < current[1]:
                    continue
            orphans.setdefault(partition, []).append(key)
        return orphans

    def _drop_orphans(self, orphans: dict[int, list[bytes]]) -> None:
        """Tombstone orphaned parts so compaction can drop them; a failure only costs space."""
        count = sum(len(keys) for keys in orphans.values())
        try:
            for partition, keys in sorted(orphans.items()):
                self._produce([(key, None) for key in keys], partition)
        except CheckpointError as exc:
            log.warning("could not delete %d orphaned checkpoint parts from %s: %s", count, self.topic, exc)
            return
        self.orphan_parts += count
        log.info("deleted %d checkpoint parts of %s that no checkpoint names (an interrupted write)",
                 count, self.topic)

    def _restore_one(self, metric: str, value: bytes, parts: dict[bytes, bytes],
                     partition: int) -> tuple[bytes, str] | None:
        """Verify one checkpoint record and cache it; (bytes, reason) if it cannot be trusted."""
        blob = value
        self._partition_of[metric] = partition
        self._generation_of.pop(metric, None)
        try:
            if value.startswith(MANIFEST_MAGIC):
                manifest = msgpack.unpackb(value[len(MANIFEST_MAGIC):], raw=False)
                if not isinstance(manifest, dict):
                    raise CheckpointCorrupt("undecodable manifest")
                generation = (str(manifest.get("generation")), int(manifest.get("parts", -1)))
                self._generation_of[metric] = generation
                key = metric.encode("utf-8", "surrogateescape")
                keys = [_part_key(key, generation[0], i) for i in range(generation[1])]
                if generation[1] < 1 or any(k not in parts for k in keys):
                    raise CheckpointCorrupt(f"missing parts of generation {generation[0]}")
                blob = b"".join(parts.pop(k) for k in keys)  # a later manifest names a new generation
            decode_checkpoint(blob, expected_metric=metric)
        except (CheckpointCorrupt, ValueError, TypeError, msgpack.UnpackException) as exc:
            self.cache.delete(metric)
            return blob, exc.reason if isinstance(exc, CheckpointCorrupt) else f"undecodable manifest: {exc}"
        self.cache.save_encoded(metric, blob)
        return None

    def _quarantine_record(self, metric: str, blob: bytes, reason: str, partition: int) -> None:
        log.warning("checkpoint of %r in %s partition %d is corrupt (%s): copied to %s and deleted, the metric "
                    "starts fresh", metric, self.topic, partition, reason, self.quarantine_topic)
        self._dead_letter(metric, blob, reason)
        try:
            self._tombstone(metric)
        except CheckpointError as err:
            log.warning("could not delete the corrupt checkpoint of %r: %s", metric, err)
        self._on_quarantined()
