"""`ModelRegistry`: a capped LRU of resident `MetricAnalyzer`s swapped to a `CheckpointStore`.

No metric is ever dropped for being over the cap: the least recently used analyzer is
checkpointed and evicted, and the newcomer is loaded from its checkpoint or created fresh.

A checkpoint must not record samples whose outputs may still be lost (a restart would skip
them as replays), so an evicted analyzer whose outputs are still in flight is parked in a
small write-behind area (a tenth of the cap, counted in it) and saved once they are
acknowledged; only when that area is full does eviction wait for the broker (once, for the
whole area). A checkpoint that cannot be written keeps its analyzer in memory (nothing
learned is thrown away); the cap is then exceeded until a later save succeeds, and the
failure is counted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from pensu.analyzer import AnalyzerConfig, MetricAnalyzer
from pensu.checkpoint import CheckpointCorrupt, CheckpointHeader, CheckpointStore
from pensu.errors import CheckpointError, SerializationError
from pensu.provenance import checkpoint_ahead
from pensu.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

SAVE_FAILURE_LOG_INTERVAL_S = 30.0


@dataclass
class RegistryEvents:
    """Callbacks the service wires to Prometheus; all optional."""

    evicted: Callable[[], None] = lambda: None
    loaded: Callable[[str], None] = lambda source: None  # "checkpoint" | "fresh"
    saved: Callable[[], None] = lambda: None
    save_failed: Callable[[], None] = lambda: None
    load_failed: Callable[[], None] = lambda: None
    quarantined: Callable[[], None] = lambda: None
    # True while outputs of samples the metric's analyzer learned may still be lost; such an
    # analyzer is not checkpointed for eviction until they are acknowledged.
    outputs_pending: Callable[[str], bool] = lambda metric: False
    # Wait until every queued output is acknowledged (the write-behind area is full).
    flush_outputs: Callable[[], object] = lambda: None
    dropped: Callable[[str], None] = lambda metric: None  # checkpointed and no longer resident


@dataclass
class _Slot:
    analyzer: MetricAnalyzer
    dirty: bool = False
    saved_count: int = field(default=-1)


class ModelRegistry:
    """Analyzers in memory (LRU plus write-behind, capped) backed by a checkpoint store."""

    def __init__(self, store: CheckpointStore, config: AnalyzerConfig, capacity: int,
                 events: RegistryEvents | None = None, clock: Callable[[], float] = time.time,
                 config_for: Callable[[str], AnalyzerConfig] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.store = store
        self.config = config
        self._config_for = config_for or (lambda metric: config)
        self.capacity = capacity
        # At most this many evicted analyzers wait for their outputs' acks before eviction
        # waits for the broker; they count in the cap.
        self.write_behind = capacity // 10
        self.events = events or RegistryEvents()
        self._clock = clock
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # LRU order
        self._parked: OrderedDict[str, _Slot] = OrderedDict()  # evicted, not yet checkpointed
        # A full or read-only disk fails every save of every autosave: one line per interval
        # (the counter carries the volume).
        self._save_failure_log = RateLimitedLog(log, SAVE_FAILURE_LOG_INTERVAL_S)

    def __len__(self) -> int:
        return len(self._slots) + len(self._parked)

    def __contains__(self, metric: object) -> bool:
        return metric in self._slots or metric in self._parked

    def resident_metrics(self) -> list[str]:
        """Metrics currently in memory: parked ones, then the LRU from least recently used."""
        return list(self._parked) + list(self._slots)

    @property
    def parked(self) -> int:
        """Evicted analyzers still in memory, waiting for their outputs to be acknowledged."""
        return len(self._parked)

    def get(self, metric: str) -> MetricAnalyzer:
        """Return the metric's analyzer, loading or creating it (and evicting the LRU one)."""
        slot = self._slots.get(metric)
        if slot is not None:
            self._slots.move_to_end(metric)
            return slot.analyzer
        slot = self._parked.pop(metric, None)
        if slot is None:
            analyzer, from_checkpoint = self._load_or_create(metric)
            slot = _Slot(analyzer, dirty=False, saved_count=analyzer.sample_count if from_checkpoint else -1)
        self._slots[metric] = slot
        self._evict_over_capacity(keep=metric)
        return slot.analyzer

    def mark_dirty(self, metric: str) -> None:
        """Record that the metric's analyzer learned something since its last save."""
        slot = self._slot(metric)
        if slot is not None:
            slot.dirty = True

    def _load_or_create(self, metric: str) -> tuple[MetricAnalyzer, bool]:
        try:
            loaded = self.store.load(metric)
        except CheckpointCorrupt as exc:
            log.warning("checkpoint of %r is corrupt (%s): moved to quarantine, starting a fresh model",
                        metric, exc.reason)
            self.events.quarantined()
            loaded = None
        except CheckpointError as exc:
            # Set the file aside (if it can be moved) so the fresh model's first save cannot
            # overwrite a checkpoint that was perhaps only unreadable for a moment.
            kept = self.store.quarantine(metric, f"unreadable: {exc}")
            log.warning("checkpoint of %r unreadable, starting a fresh model%s: %s", metric,
                        " (file moved to quarantine)" if kept else "", exc)
            self.events.load_failed()
            loaded = None
        if loaded is not None:
            header, payload = loaded
            try:
                analyzer = MetricAnalyzer.from_bytes(payload, self.config.thresholds, expected_metric=metric)
            except SerializationError as exc:
                log.warning("checkpoint of %r holds an unusable model (%s): moved to quarantine, starting a "
                            "fresh model", metric, exc)
                self.events.quarantined()
                self.store.quarantine(metric, f"unusable model: {exc}")
            else:
                self.events.loaded("checkpoint")
                return analyzer, True
        self.events.loaded("fresh")
        return MetricAnalyzer(metric, self._config_for(metric)), False

    def _evict_over_capacity(self, keep: str) -> None:
        # Parked analyzers count in the cap, so parking one frees nothing: the walk goes on
        # until a save frees a slot or the write-behind overflows and one wait settles it all.
        # A failed save leaves that analyzer in memory and tries the next.
        if self._parked and len(self._slots) + len(self._parked) > self.capacity:
            self.settle()
        for metric in list(self._slots):
            if len(self._slots) + len(self._parked) <= self.capacity:
                return
            if metric == keep or metric not in self._slots:
                continue
            if self.events.outputs_pending(metric):
                self._parked[metric] = self._slots.pop(metric)
                self.events.evicted()
                if len(self._parked) > self.write_behind:
                    self.events.flush_outputs()
                    self.settle()
            elif self._save(metric):
                self._drop(metric)
                self.events.evicted()

    def settle(self) -> int:
        """Checkpoint and drop parked analyzers whose outputs are acknowledged; return how many."""
        settled = 0
        for metric in list(self._parked):
            if not self.events.outputs_pending(metric) and self._save(metric):
                self._drop(metric)
                settled += 1
        return settled

    def _slot(self, metric: str) -> _Slot | None:
        return self._slots.get(metric) or self._parked.get(metric)

    def _drop(self, metric: str) -> None:
        """Forget the metric's analyzer (LRU or parked) and tell the listener."""
        if self._slots.pop(metric, None) is None:
            del self._parked[metric]
        self.events.dropped(metric)

    def _save(self, metric: str) -> bool:
        slot = self._slot(metric)
        assert slot is not None
        analyzer = slot.analyzer
        if not slot.dirty and slot.saved_count == analyzer.sample_count:
            return True
        header = CheckpointHeader(
            metric=metric, sample_count=analyzer.sample_count, last_timestamp=analyzer.last_timestamp,
            last_offsets={k: v[0] for k, v in analyzer.positions.items()}, saved_at=self._clock())
        try:
            self.store.save(header, analyzer.to_bytes())
        except CheckpointError as exc:
            self._save_failure_log.log(logging.WARNING, "could not checkpoint %r: %s", metric, exc)
            self.events.save_failed()
            return False
        slot.dirty = False
        slot.saved_count = analyzer.sample_count
        self.events.saved()
        return True

    def save_dirty(self, metrics: Iterable[str] | None = None) -> tuple[int, int]:
        """Checkpoint dirty analyzers (all, or those named); return (saved, failed).

        The caller makes sure their outputs were acknowledged first (autosave, shutdown).
        """
        saved = failed = 0
        names = self.resident_metrics() if metrics is None else [m for m in metrics if m in self]
        for metric in names:
            slot = self._slot(metric)
            if slot is None or not slot.dirty:
                continue
            if self._save(metric):
                saved += 1
            else:
                failed += 1
        self.settle()
        return saved, failed

    def release(self, metrics: Iterable[str], unless_superseded: bool = False) -> int:
        """Checkpoint and drop the named analyzers (e.g. their partitions were revoked).

        With `unless_superseded` (partitions lost: another member may own them already), an
        analyzer whose stored checkpoint has moved past it is dropped without saving.
        """
        released = 0
        for metric in list(metrics):
            if metric not in self:
                continue
            if unless_superseded and self._superseded(metric):
                log.warning("checkpoint of %r was advanced by another owner: dropping the local model unsaved",
                            metric)
                self._drop(metric)
                released += 1
            elif self._save(metric):
                self._drop(metric)
                released += 1
        return released

    def _superseded(self, metric: str) -> bool:
        """True when the stored checkpoint learned something this analyzer has not.

        The restart-safety rule (`pensu.provenance.checkpoint_ahead`): offsets are compared only
        within one provable topic incarnation (cluster id + topic id), otherwise timestamps decide.
        """
        try:
            loaded = self.store.load(metric)
        except CheckpointError:  # unreadable or corrupt (then quarantined): ours is the best copy
            return False
        if loaded is None:
            return False
        try:
            positions, origins, last_timestamp = MetricAnalyzer.read_provenance(loaded[1])
        except SerializationError:  # an unusable stored model: ours is the best copy
            return False
        slot = self._slot(metric)
        assert slot is not None
        analyzer = slot.analyzer
        return checkpoint_ahead(positions, origins, last_timestamp,
                                analyzer.positions, analyzer.origins, analyzer.last_timestamp)

    def items(self) -> Iterator[tuple[str, MetricAnalyzer]]:
        """(metric, analyzer) pairs of every analyzer in memory."""
        for slots in (self._parked, self._slots):
            for metric, slot in list(slots.items()):
                yield metric, slot.analyzer
