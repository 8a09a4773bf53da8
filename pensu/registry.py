"""`ModelRegistry`: a capped LRU of resident `MetricAnalyzer`s swapped to a `CheckpointStore`.

No metric is ever dropped for being over the cap: the least recently used analyzer is
checkpointed and evicted, and the newcomer is loaded from its checkpoint or created fresh.
A checkpoint that cannot be written keeps its analyzer resident (nothing learned is thrown
away); the cap is then exceeded until a later save succeeds, and the failure is counted.
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

log = logging.getLogger(__name__)


@dataclass
class RegistryEvents:
    """Callbacks the service wires to Prometheus; all optional."""

    evicted: Callable[[], None] = lambda: None
    loaded: Callable[[str], None] = lambda source: None  # "checkpoint" | "fresh"
    saved: Callable[[], None] = lambda: None
    save_failed: Callable[[], None] = lambda: None
    load_failed: Callable[[], None] = lambda: None
    quarantined: Callable[[], None] = lambda: None
    # Called before an analyzer is checkpointed for eviction; the service uses it to make sure
    # the outputs of every sample the checkpoint records were delivered first.
    before_evict: Callable[[str], None] = lambda metric: None
    dropped: Callable[[str], None] = lambda metric: None  # checkpointed and no longer resident


@dataclass
class _Slot:
    analyzer: MetricAnalyzer
    dirty: bool = False
    saved_count: int = field(default=-1)


class ModelRegistry:
    """Resident analyzers (LRU, capped) backed by a checkpoint store."""

    def __init__(self, store: CheckpointStore, config: AnalyzerConfig, capacity: int,
                 events: RegistryEvents | None = None, clock: Callable[[], float] = time.time,
                 config_for: Callable[[str], AnalyzerConfig] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.store = store
        self.config = config
        self._config_for = config_for or (lambda metric: config)
        self.capacity = capacity
        self.events = events or RegistryEvents()
        self._clock = clock
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, metric: object) -> bool:
        return metric in self._slots

    def resident_metrics(self) -> list[str]:
        """Metrics currently in memory, least recently used first."""
        return list(self._slots)

    def get(self, metric: str) -> MetricAnalyzer:
        """Return the metric's analyzer, loading or creating it (and evicting the LRU one)."""
        slot = self._slots.get(metric)
        if slot is not None:
            self._slots.move_to_end(metric)
            return slot.analyzer
        analyzer, from_checkpoint = self._load_or_create(metric)
        self._slots[metric] = _Slot(analyzer, dirty=False,
                                    saved_count=analyzer.sample_count if from_checkpoint else -1)
        self._evict_over_capacity(keep=metric)
        return analyzer

    def mark_dirty(self, metric: str) -> None:
        """Record that the metric's analyzer learned something since its last save."""
        slot = self._slots.get(metric)
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
            log.warning("checkpoint of %r unreadable, starting a fresh model: %s", metric, exc)
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
        # Walk from the LRU end; a failed save leaves that analyzer resident and tries the next.
        for metric in list(self._slots):
            if len(self._slots) <= self.capacity:
                return
            if metric == keep:
                continue
            self.events.before_evict(metric)
            if self._save(metric):
                del self._slots[metric]
                self.events.evicted()
                self.events.dropped(metric)

    def _save(self, metric: str) -> bool:
        slot = self._slots[metric]
        analyzer = slot.analyzer
        if not slot.dirty and slot.saved_count == analyzer.sample_count:
            return True
        header = CheckpointHeader(
            metric=metric, sample_count=analyzer.sample_count, last_timestamp=analyzer.last_timestamp,
            last_offsets={k: v[0] for k, v in analyzer.positions.items()}, saved_at=self._clock())
        try:
            self.store.save(header, analyzer.to_bytes())
        except CheckpointError as exc:
            log.warning("could not checkpoint %r: %s", metric, exc)
            self.events.save_failed()
            return False
        slot.dirty = False
        slot.saved_count = analyzer.sample_count
        self.events.saved()
        return True

    def save_dirty(self, metrics: Iterable[str] | None = None) -> tuple[int, int]:
        """Checkpoint dirty analyzers (all, or those named); return (saved, failed)."""
        saved = failed = 0
        names = list(self._slots) if metrics is None else [m for m in metrics if m in self._slots]
        for metric in names:
            slot = self._slots[metric]
            if not slot.dirty:
                continue
            if self._save(metric):
                saved += 1
            else:
                failed += 1
        return saved, failed

    def release(self, metrics: Iterable[str]) -> int:
        """Checkpoint and drop the named analyzers (e.g. their partitions were revoked)."""
        released = 0
        for metric in list(metrics):
            if metric in self._slots and self._save(metric):
                del self._slots[metric]
                self.events.dropped(metric)
                released += 1
        return released

    def items(self) -> Iterator[tuple[str, MetricAnalyzer]]:
        """Resident (metric, analyzer) pairs."""
        for metric, slot in self._slots.items():
            yield metric, slot.analyzer
