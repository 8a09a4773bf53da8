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

Calls go down only. Whether outputs are acknowledged is asked of one narrow dependency given
to the constructor, a `DeliveryGate` (the service's `pensu.delivery.DeliveryLedger`): it
answers from the analyzer's own `positions`, and `wait_all` flushes and commits. Offline users
(replay, tools, tests) pass nothing and get `NOTHING_IN_FLIGHT`: save at once, never wait.
`RegistryEvents` only counts. Dirtiness is derived: an analyzer needs saving when its
`sample_count` differs from the count last saved (0 for a fresh one, so an analyzer that never
learned is never written). The registry is the store's only writer, so it also keeps the disk
cap (`max_checkpoints`): the longest-idle checkpoints beyond it are deleted on `trim` and, during
a flood of new names, after every tenth-of-the-cap evictions, so disk use stays within the cap
plus that tenth.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from pensu.analyzer import AnalyzerConfig, MetricAnalyzer, MetricConfigs
from pensu.checkpoint import CheckpointCorrupt, CheckpointHeader, CheckpointStore
from pensu.errors import CheckpointError, SerializationError
from pensu.provenance import checkpoint_ahead
from pensu.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

SAVE_FAILURE_LOG_INTERVAL_S = 30.0


class DeliveryGate(Protocol):
    """What the registry needs to know about output delivery (`pensu.delivery.DeliveryLedger`)."""

    def settled(self, positions: Mapping[str, tuple[int, int]]) -> bool:
        """True when the outputs of the samples learned at `positions` were acknowledged."""
        ...

    def wait_all(self) -> bool:
        """Wait until every queued output is acknowledged (and commit); False if stopping first."""
        ...


class _NothingInFlight:
    """The gate of offline use: no outputs are ever in flight, so analyzers are saved at once."""

    def settled(self, positions: Mapping[str, tuple[int, int]]) -> bool:
        return True

    def wait_all(self) -> bool:
        return True


NOTHING_IN_FLIGHT: DeliveryGate = _NothingInFlight()


@dataclass
class RegistryEvents:
    """Counters the service wires to Prometheus; all optional, none steers the registry."""

    evicted: Callable[[], None] = lambda: None
    loaded: Callable[[str], None] = lambda source: None  # "checkpoint" | "fresh"
    saved: Callable[[], None] = lambda: None
    save_failed: Callable[[], None] = lambda: None
    load_failed: Callable[[], None] = lambda: None
    quarantined: Callable[[], None] = lambda: None
    trimmed: Callable[[int], None] = lambda removed: None  # idle checkpoints deleted beyond the cap


@dataclass
class _Slot:
    analyzer: MetricAnalyzer
    saved_count: int = 0  # sample_count at the last save (or load); differs: learned since

    @property
    def dirty(self) -> bool:
        return self.saved_count != self.analyzer.sample_count


class ModelRegistry:
    """Analyzers in memory (LRU plus write-behind, capped) backed by a checkpoint store."""

    def __init__(self, store: CheckpointStore, configs: MetricConfigs | AnalyzerConfig, capacity: int,
                 gate: DeliveryGate = NOTHING_IN_FLIGHT, events: RegistryEvents | None = None,
                 clock: Callable[[], float] = time.time, max_checkpoints: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.store = store
        self.configs = configs if isinstance(configs, MetricConfigs) else MetricConfigs(configs)
        self.gate = gate
        self.capacity = capacity
        self.max_checkpoints = max_checkpoints
        # During a flood of new names every eviction writes a checkpoint, possibly for longer than
        # an autosave interval: trim after this many evictions too.
        self._trim_every = max(1, (max_checkpoints or 0) // 10)
        self._evictions_since_trim = 0
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
            analyzer = self._load_or_create(metric)
            slot = _Slot(analyzer, saved_count=analyzer.sample_count)
        self._slots[metric] = slot
        self._evict_over_capacity(keep=metric)
        return slot.analyzer

    def config_for(self, metric: str) -> AnalyzerConfig:
        """The configuration a fresh analyzer of `metric` gets."""
        return self.configs.for_metric(metric)

    def _load_or_create(self, metric: str) -> MetricAnalyzer:
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
                analyzer = MetricAnalyzer.from_bytes(payload, self.configs.thresholds, expected_metric=metric)
            except SerializationError as exc:
                log.warning("checkpoint of %r holds an unusable model (%s): moved to quarantine, starting a "
                            "fresh model", metric, exc)
                self.events.quarantined()
                self.store.quarantine(metric, f"unusable model: {exc}")
            else:
                self.events.loaded("checkpoint")
                return analyzer
        self.events.loaded("fresh")
        return MetricAnalyzer(metric, self.config_for(metric))

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
            if not self.gate.settled(self._slots[metric].analyzer.positions):
                self._parked[metric] = self._slots.pop(metric)
                self._evicted()
                if len(self._parked) > self.write_behind:
                    self.gate.wait_all()
                    self.settle()
            elif self._save(metric):
                self._drop(metric)
                self._evicted()

    def _evicted(self) -> None:
        self.events.evicted()
        self._evictions_since_trim += 1
        if self.max_checkpoints is not None and self._evictions_since_trim >= self._trim_every:
            self.trim()

    def trim(self) -> int:
        """Delete the longest-idle checkpoints beyond `max_checkpoints` (never resident ones)."""
        self._evictions_since_trim = 0
        if self.max_checkpoints is None:
            return 0
        try:
            removed = self.store.enforce_limit(self.max_checkpoints, protect=self.resident_metrics())
        except (CheckpointError, OSError) as exc:  # an unlistable models dir must not end the loop
            log.warning("could not trim checkpoints: %s", exc)
            return 0
        if removed:
            log.info("removed %d idle checkpoints beyond the cap of %d", removed, self.max_checkpoints)
            self.events.trimmed(removed)
        return removed

    def settle(self) -> int:
        """Checkpoint and drop parked analyzers whose outputs are acknowledged; return how many."""
        settled = 0
        for metric in list(self._parked):
            if self.gate.settled(self._parked[metric].analyzer.positions) and self._save(metric):
                self._drop(metric)
                settled += 1
        return settled

    def _slot(self, metric: str) -> _Slot | None:
        return self._slots.get(metric) or self._parked.get(metric)

    def _drop(self, metric: str) -> None:
        """Forget the metric's analyzer (LRU or parked)."""
        if self._slots.pop(metric, None) is None:
            del self._parked[metric]

    def _save(self, metric: str) -> bool:
        slot = self._slot(metric)
        assert slot is not None
        analyzer = slot.analyzer
        if not slot.dirty:
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
