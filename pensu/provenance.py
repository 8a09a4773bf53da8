"""Which Kafka cluster and topic incarnation a checkpoint's offsets belong to, and the replay rule.

A checkpoint records, per "topic:partition" source, the last (offset, line) its analyzer
learned. Offsets identify a message only within one incarnation of a topic: a topic that was
deleted and recreated, a cluster restored from scratch or the embedded test broker of a later
run all restart at offset 0. Trusting bare offsets after a restart made Pensu skip every new
sample as a "replay" (issue #11). So each recorded position carries the *origin* it was learned
from — the Kafka cluster id plus the topic id (Kafka ≥ 2.8 gives each topic incarnation a
UUID) — and a sample is skipped as already learned only when that is provable:

* same origin, and the origin is complete (cluster id *and* topic id known): by offset — at or
  before the recorded (offset, line) means learned;
* otherwise (origin unknown, changed, or incomplete, e.g. librdkafka's mock cluster, which has
  no topic ids, or a checkpoint from before origins were recorded): by timestamp — a sample at
  or before the recorded position whose timestamp is not after the model's last timestamp is
  already learned (it could not be learned again anyway: the order check would refuse it);
  a newer one is new data and is learned.

Samples past the recorded position are never skipped here; the analyzer's order check still
rejects out-of-order ones with their own reason.

The same rule decides whether a *stored* checkpoint has moved past an analyzer in memory (a
lost partition whose new owner may have saved already, `checkpoint_ahead`): per source, by
offset only within one provable incarnation, otherwise by the models' last timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TopicIncarnation", "ReplayVerdict", "replay_verdict", "checkpoint_ahead", "UNKNOWN_ORIGIN"]

UNKNOWN_ORIGIN = "?/?"


@dataclass(frozen=True, slots=True)
class TopicIncarnation:
    """A topic's identity across restarts: the cluster id and the topic id, when the broker has them."""

    cluster_id: str | None = None
    topic_id: str | None = None

    @property
    def provable(self) -> bool:
        """True when both ids are known, so equal origins prove equal offset sequences."""
        return bool(self.cluster_id) and bool(self.topic_id)

    def key(self) -> str:
        """The text stored in checkpoints: `<cluster id>/<topic id>`, `?` for an unknown part."""
        return f"{self.cluster_id or '?'}/{self.topic_id or '?'}"

    @classmethod
    def from_key(cls, key: str | None) -> TopicIncarnation:
        """Parse `key()` text; None or malformed text is an unknown origin."""
        if not key or "/" not in key:
            return cls()
        cluster, _, topic = key.rpartition("/")
        return cls(None if cluster in ("", "?") else cluster, None if topic in ("", "?") else topic)


@dataclass(frozen=True, slots=True)
class ReplayVerdict:
    """Why a sample is skipped as already learned: `by` is "offset" or "timestamp"."""

    by: str
    detail: str


def replay_verdict(recorded: tuple[int, int] | None, recorded_origin: str | None, origin: str | None,
                   offset: int, line: int, timestamp: float, last_timestamp: float | None) -> ReplayVerdict | None:
    """The verdict for one sample: None to learn it, a `ReplayVerdict` to skip it as already learned.

    `recorded`/`recorded_origin` are the analyzer's last position for the sample's source and the
    origin it was learned from; `origin` is where the sample comes from now.
    """
    if recorded is None or (offset, line) > recorded:
        return None
    now = TopicIncarnation.from_key(origin)
    if recorded_origin == origin and now.provable:
        return ReplayVerdict("offset", f"offset {offset} is at or before the checkpoint's {recorded[0]} "
                                       f"in the same cluster and topic incarnation ({origin})")
    if last_timestamp is not None and timestamp <= last_timestamp:
        if recorded_origin != origin:
            why = (f"checkpoint offsets came from {_origin_text(recorded_origin)}, messages now from "
                   f"{_origin_text(origin)}")
        else:
            why = f"offsets of {_origin_text(origin)} cannot prove it (no topic id)"
        return ReplayVerdict("timestamp", f"timestamp {timestamp!r} is not after the model's last "
                                          f"{last_timestamp!r}; {why}")
    return None


def checkpoint_ahead(stored: Mapping[str, tuple[int, int]], stored_origins: Mapping[str, str],
                     stored_last_timestamp: float | None, local: Mapping[str, tuple[int, int]],
                     local_origins: Mapping[str, str], local_last_timestamp: float | None) -> bool:
    """True when a stored checkpoint (positions, origins, last timestamp) learned something the
    local analyzer has not: a later (offset, line) of the same provable incarnation, or, where
    offsets prove nothing (origins differ or are incomplete, or the source is new to the local
    analyzer), a later last timestamp. Bare offsets of different incarnations are never compared.
    """
    newer = stored_last_timestamp is not None and (local_last_timestamp is None
                                                   or stored_last_timestamp > local_last_timestamp)
    for source, position in stored.items():
        origin = stored_origins.get(source)
        if (source in local and origin == local_origins.get(source)
                and TopicIncarnation.from_key(origin).provable):
            if tuple(position) > tuple(local[source]):
                return True
        elif newer:
            return True
    return False


def _origin_text(key: str | None) -> str:
    inc = TopicIncarnation.from_key(key)
    return f"cluster {inc.cluster_id or 'unknown'} topic id {inc.topic_id or 'unknown'}"
