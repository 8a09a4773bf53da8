"""`PartitionClaims`: which checkpoint-topic partitions this instance still owns, by fence records.

A *lost* partition (the instance stalled past its session timeout) has a new owner before the
old one hears of it: librdkafka reports the loss at the old owner's next poll, and whatever the
old owner does before that — finish the batch it was in, run its overdue autosave, evict, shut
down — saves models that are stale by then. Without a check those saves overwrite the new
owner's checkpoints (seen in `tests/scaleout/test_lost_partition.py`: 65, 70, then 30 samples).

The claim is the fence record the Kafka checkpoint store appends to each partition it is
assigned (`pensu.kafka_checkpoint`). Before writing to a claimed partition (at most once per
`OWNER_CHECK_INTERVAL_S`, so always after a pause as long as that), the owner appends a
*reader's* fence (`READ_FENCE_PREFIX`, claims nothing) and reads the partition from after the
last record it wrote there up to that fence — no high watermark is trusted (Tansu's was seen
wrong, an idle client's may be unknown). Another instance's claim in between means the
partition moved: writes are refused (`CheckpointError`; the registry keeps the model and counts
the failure) until the partition is claimed here again. It narrows the window to the check
interval and one round trip; it is not a transactional fence. Safety net: a partition still
claimed here `RECLAIM_AFTER_S` after it was fenced out is claimed again — librdkafka reports a
real loss within seconds, so the other claim was nobody's (a reader using the owner path).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from pensu.errors import CheckpointError

log = logging.getLogger(__name__)

FENCE_KEY = b"\x00pensu-restore-fence"  # never a metric name (names are printable ASCII)
READ_FENCE_PREFIX = b"read:"  # fences of readers that do not own the partition: no claim
OWNER_CHECK_INTERVAL_S = 1.0  # how stale the ownership check of a partition may be before a write
OWNER_READ_TIMEOUT_S = 3.0
RECLAIM_AFTER_S = 60.0

# Produces records to one partition of the checkpoint topic and waits for their acknowledgement.
Produce = Callable[[list[tuple[bytes, bytes | None]], int], None]


def is_claim(value: bytes | None) -> bool:
    """True for a fence record's value that claims its partition (an owner's, not a reader's)."""
    return value is not None and not value.startswith(READ_FENCE_PREFIX)


class PartitionClaims:
    """This instance's claims on partitions of `topic`, checked before each write (see module doc)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._fence_of: dict[int, bytes] = {}  # claimed partition -> our fence value
        self._known_end: dict[int, int] = {}  # offset after the last record we wrote there
        self._checked: dict[int, float] = {}  # monotonic time of the last successful check
        self._fenced_out: dict[int, float] = {}  # partition -> when another's claim was seen
        self._probe: Consumer | None = None

    def claim(self, partition: int, fence: bytes) -> None:
        """Our fence `fence` is being written to `partition` (at assignment)."""
        self._fence_of[partition] = fence
        self._known_end[partition] = 0  # raised by the fence's delivery report
        self._checked[partition] = time.monotonic()
        self._fenced_out.pop(partition, None)

    def disown(self, partitions: list[int]) -> None:
        """No longer ours (revoked or lost): writes there are the caller's decision again."""
        for partition in partitions:
            self._fence_of.pop(partition, None)
            self._known_end.pop(partition, None)
            self._checked.pop(partition, None)
            self._fenced_out.pop(partition, None)

    def delivered(self, partition: int, offset: int) -> None:
        """A record of ours was written at `offset` (delivery report)."""
        if partition in self._known_end:
            self._known_end[partition] = max(self._known_end[partition], offset + 1)

    def check(self, partition: int, config: dict, produce: Produce) -> None:
        """Raise `CheckpointError` if another instance has claimed `partition` since we did."""
        fence = self._fence_of.get(partition)
        if fence is None:
            return
        now = time.monotonic()
        fenced_at = self._fenced_out.get(partition)
        if fenced_at is not None and now - fenced_at >= RECLAIM_AFTER_S:
            log.warning("%s partition %d is still assigned to this instance %.0f s after another instance's "
                        "claim: claiming it again", self.topic, partition, now - fenced_at)
            produce([(FENCE_KEY, fence)], partition)
            del self._fenced_out[partition]
            self._checked[partition] = time.monotonic()
            return
        if fenced_at is None and now - self._checked.get(partition, 0.0) >= OWNER_CHECK_INTERVAL_S:
            if self._claimed_by_another(partition, fence, config, produce):
                fenced_at = self._fenced_out[partition] = now
                log.warning("%s partition %d has a newer owner (its fence follows ours): this instance lost it "
                            "and writes no checkpoints there until it is assigned again", self.topic, partition)
            else:
                self._checked[partition] = time.monotonic()
        if fenced_at is not None:
            raise CheckpointError(f"{self.topic} partition {partition} was assigned to another instance; "
                                  f"not overwriting its checkpoints")

    def _claimed_by_another(self, partition: int, fence: bytes, config: dict, produce: Produce) -> bool:
        """Read from after our last record up to a reader's fence of ours; True on another's claim.

        Fails open (False, logged) when the records do not arrive in time: the check narrows a
        rare window, it must not stop checkpointing during a slow moment.
        """
        if self._probe is None:
            self._probe = Consumer(dict(config, **{
                "group.id": f"pensu-owner-{uuid.uuid4().hex[:8]}", "enable.auto.commit": "false",
                "enable.partition.eof": "false", "fetch.wait.max.ms": "20"}))
        start = self._known_end.get(partition, 0)
        marker = READ_FENCE_PREFIX + uuid.uuid4().bytes
        produce([(FENCE_KEY, marker)], partition)  # raises (the save fails) if the broker is away
        deadline = time.monotonic() + OWNER_READ_TIMEOUT_S
        self._probe.assign([TopicPartition(self.topic, partition, start)])
        try:
            while time.monotonic() < deadline:
                for msg in self._probe.consume(500, timeout=0.1):
                    if msg.error() is not None or msg.partition() != partition or msg.key() != FENCE_KEY:
                        continue
                    value = msg.value()
                    if value == marker:
                        return False
                    if value != fence and is_claim(value):
                        return True
        finally:
            self._probe.unassign()
        log.warning("could not read %s partition %d up to a marker within %g s to check its owner",
                    self.topic, partition, OWNER_READ_TIMEOUT_S)
        return False

    def close(self) -> None:
        """Close the probe consumer."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
