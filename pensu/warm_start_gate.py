"""Warm start, wiring: the gate between consumed messages and the pipeline.

The service hands each consumed message to `WarmStartGate.admit` before the pipeline. A line of
a brand-new metric (allowed, not Pensu's own output, no checkpoint, nothing learned) starts a
history fetch (`pensu.graphite_fetch`) and is held; later lines of a metric whose warm start is
in flight are held too; everything else passes unchanged. `poll` (once per loop iteration)
collects finished fetches, learns arrived history in chunks through the metric's analyzer
(learning only: no outputs, no replay positions, feedback maintenance windows respected), and
then runs the held lines through the pipeline in arrival order, emitting their outputs through
the service's callback.

At least once is kept: a held line's batch (`Batch`) counts it as one pending output
until the line has been processed and its outputs queued, so the batch's offsets (and every
later batch's) are not committed before then; a crash or stop while lines are held replays
them. While a batch is held its age is not time spent waiting for the broker, so the gate keeps
its `created` stamp current. When partitions are revoked, held lines of those partitions are
dropped (the new owner replays them) and the service has the ledger drop those partitions'
positions from every in-flight batch, so nothing past a dropped line is committed here.

Known limit: a message mixing lines of a warm-starting metric with other lines is split; each
part numbers its lines from 0, so after a crash the replay of such a message cannot skip all its
already-learned lines by offset, and the model's order check rejects them (counted as
`duplicate`/`out_of_order`) instead: nothing is learned twice, but the rejection counters move.
Messages of one metric (the documented keying) are held and replayed whole, numbered as sent.

Counters: pensu_warm_starts_total{outcome}, pensu_warm_start_failures_total{reason},
pensu_warm_start_samples_learned_total, pensu_warm_start_points_skipped_total{reason};
gauge pensu_warm_starts_in_flight. Each failure reason is logged once with its context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from pensu.carbon import parse_line
from pensu.delivery import Batch
from pensu.errors import LineRejected
from pensu.graphite_fetch import HistoryFetcher, fetch_render
from pensu.pipeline import MessageResult, Pipeline
from pensu.registry import ModelRegistry
from pensu.settings import Settings
from pensu.warm_start import History, HistoryRequest, WarmStartBook, history_request

log = logging.getLogger(__name__)

# History samples learned per loop iteration, all metrics together: ~20-80 ms of model time
# (0.3-1.3 ms per sample measured by bench/warm_start.py under shared-CPU load),
# so a long history delays other metrics' samples by at most that much per iteration.
LEARN_BATCH = 64
# Metrics whose warm start may be in flight at once; a flood of new names beyond it starts cold
# (counted as "busy") instead of holding unbounded samples.
MAX_PENDING_METRICS = 1000

Emit = Callable[[MessageResult, Batch], None]


@dataclass(frozen=True)
class HeldLine:
    """A live line held while its metric's warm start is in flight, with where it came from."""

    line: bytes
    source: str
    offset: int
    origin: str | None
    batch: Batch


class WarmStartMetrics:
    """The warm start's Prometheus metrics on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter("pensu_warm_starts", "New metrics' warm starts, by outcome (warm|cold).",
                                ["outcome"], registry=registry)
        self.failures = Counter("pensu_warm_start_failures",
                                "Warm starts that fell back to a cold start, by reason.", ["reason"],
                                registry=registry)
        self.learned = Counter("pensu_warm_start_samples_learned",
                               "History samples from Graphite learned by new metrics' models.", registry=registry)
        self.skipped = Counter("pensu_warm_start_points_skipped",
                               "History points not learned, by reason (null, too_new, invalid, rejected).",
                               ["reason"], registry=registry)
        self.in_flight = Gauge("pensu_warm_starts_in_flight", "Metrics whose warm start is in flight.",
                               registry=registry)


class WarmStartGate:
    """Holds new metrics' live lines while their history is fetched and learned."""

    def __init__(self, settings: Settings, registry: ModelRegistry, pipeline: Pipeline,
                 prom: CollectorRegistry, learns: Callable[[str, float], bool] = lambda metric, ts: True,
                 fetch: Callable[[str, HistoryRequest, float], bytes] = fetch_render,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert settings.graphite_url is not None
        self.settings = settings
        self.registry = registry
        self.pipeline = pipeline
        self.learns = learns
        self.metrics = WarmStartMetrics(prom)
        self.book: WarmStartBook[HeldLine] = WarmStartBook(settings.warm_start_buffer, settings.warm_start_timeout,
                                                           MAX_PENDING_METRICS, clock)
        self.fetcher = HistoryFetcher(settings.graphite_url, settings.warm_start_timeout,
                                      settings.warm_start_concurrency, fetch)
        self._held_batches: dict[int, tuple[Batch, int]] = {}  # id -> (batch, lines held)
        self._logged: set[str] = set()
        self._details: dict[str, str] = {}  # metric -> why its fetch failed, until it is released
        self._warm_logged = False

    @classmethod
    def from_settings(cls, settings: Settings, registry: ModelRegistry, pipeline: Pipeline,
                      prom: CollectorRegistry, learns: Callable[[str, float], bool]) -> WarmStartGate | None:
        """A gate when PENSU_GRAPHITE_URL is set, else None (warm start off)."""
        if settings.graphite_url is None:
            return None
        return cls(settings, registry, pipeline, prom, learns)

    # -- consume side -------------------------------------------------------------------------
    def admit(self, payload: bytes | None, source: str, offset: int, origin: str | None,
              batch: Batch) -> bytes | None:
        """The message's lines to process now; lines of warm-starting metrics are held."""
        if not payload:
            return payload
        kept: list[bytes] = []
        held = False
        for raw in payload.split(b"\n"):
            try:
                sample = parse_line(raw)
            except LineRejected:
                kept.append(raw)  # blank or bad: the pipeline skips or rejects it as usual
                continue
            metric = sample.metric
            if metric in self.book:
                self.book.hold(metric, HeldLine(raw, source, offset, origin, batch))
            elif not (self._is_new(metric)
                      and self._begin(metric, sample.timestamp, HeldLine(raw, source, offset, origin, batch))):
                kept.append(raw)
                continue
            held = True
            self._hold_batch(batch)
        if not held:
            return payload
        self.metrics.in_flight.set(len(self.book))
        return b"\n".join(kept)

    def _is_new(self, metric: str) -> bool:
        if self.pipeline.formatter.is_own_output(metric) or self.pipeline.allowed.match(metric) is None:
            return False
        if metric in self.registry:
            return False
        return self.registry.get(metric).sample_count == 0  # loads its checkpoint if it has one

    def _begin(self, metric: str, first_timestamp: float, item: HeldLine) -> bool:
        request = history_request(metric, first_timestamp, self.settings.warm_start_days)
        if request is None:
            self._cold(metric, "unsupported_name", "the name has characters Graphite reads as target syntax")
            return False
        if not self.book.begin(metric, first_timestamp, item):
            self._cold(metric, "busy", f"{MAX_PENDING_METRICS} warm starts already in flight")
            return False
        self.fetcher.submit(request)
        return True

    def _hold_batch(self, batch: Batch) -> None:
        # One pending "output" per held line: its batch is not committed before it is processed.
        batch.pending += 1
        _, count = self._held_batches.get(id(batch), (batch, 0))
        self._held_batches[id(batch)] = (batch, count + 1)

    def _release_batch(self, batch: Batch) -> None:
        batch.pending -= 1
        _, count = self._held_batches[id(batch)]
        if count <= 1:
            del self._held_batches[id(batch)]
        else:
            self._held_batches[id(batch)] = (batch, count - 1)

    # -- loop side ----------------------------------------------------------------------------
    def poll(self, emit: Emit) -> None:
        """Collect fetches, learn a chunk of history, process the held lines of finished metrics."""
        if not len(self.book):
            return
        for request, outcome in self.fetcher.completed():
            if isinstance(outcome, History):
                if self.book.arrived(request.metric, outcome):
                    for reason, count in (("null", outcome.nulls), ("too_new", outcome.too_new),
                                          ("invalid", outcome.invalid)):
                        if count:
                            self.metrics.skipped.labels(reason=reason).inc(count)
            elif self.book.failed(request.metric, outcome.reason):
                self._details[request.metric] = outcome.detail
        for metric in self.book.expire():
            self._details[metric] = (f"no history from {self.settings.graphite_url} within "
                                     f"{self.settings.warm_start_timeout:g} s of its first sample")
        for metric, chunk in self.book.learning_chunk(LEARN_BATCH):
            self._learn(metric, chunk)
        for released in self.book.take_ready():
            if released.warm:
                self.metrics.outcomes.labels(outcome="warm").inc()
                self._log_warm(released.metric, released.history_length)
            else:
                detail = self._details.pop(released.metric, None) or (
                    f"more than {self.settings.warm_start_buffer} live samples (PENSU_WARM_START_BUFFER) arrived "
                    f"before its history was learned" if released.reason == "buffer_full" else released.reason)
                self._cold(released.metric, released.reason, detail)
            for group in _by_message(released.held):
                first = group[0]
                result = self.pipeline.process(b"\n".join(item.line for item in group), first.source,
                                               first.offset, first.origin)
                emit(result, first.batch)  # queues its outputs on the held batch first
                for item in group:
                    self._release_batch(item.batch)
        now = time.monotonic()
        for batch, _count in self._held_batches.values():
            batch.created = now  # held, not waiting for the broker (see the module docstring)
        self.metrics.in_flight.set(len(self.book))

    def _learn(self, metric: str, chunk: Iterable[tuple[float, float]]) -> None:
        analyzer = self.registry.get(metric)
        learned = 0
        for ts, value in chunk:
            if not self.learns(metric, ts):
                self.metrics.skipped.labels(reason="rejected").inc()
                continue
            try:
                analyzer.process(ts, value)  # no source: replay positions stay those of live input
            except (LineRejected, ArithmeticError, ValueError):
                self.metrics.skipped.labels(reason="rejected").inc()
                continue
            learned += 1
        if learned:  # the registry sees the analyzer is dirty from its sample count
            self.metrics.learned.inc(learned)

    def forget(self, sources: set[str]) -> None:
        """Partitions `sources` ("topic:partition") were revoked: drop their held lines (the new
        owner replays from the last commit; the service drops their positions from the in-flight
        batches). A metric left with nothing held is checkpointed and dropped like the service's
        other metrics of those partitions, so a stale copy never stays resident here."""
        before = set(self.book.metrics())
        for item in self.book.forget(lambda held: held.source not in sources):
            self._release_batch(item.batch)
        dropped = before.difference(self.book.metrics())
        if dropped:
            self.registry.release(dropped)
        self._details = {m: d for m, d in self._details.items() if m in self.book}
        self.metrics.in_flight.set(len(self.book))

    def close(self) -> None:
        """Stop fetching; held lines stay unprocessed and their offsets uncommitted (replayed)."""
        self.fetcher.close()
        self.book.drain()
        self._held_batches.clear()
        self._details.clear()

    # -- reporting ----------------------------------------------------------------------------
    def _cold(self, metric: str, reason: str, detail: str) -> None:
        """Count and (once per reason) log a warm start that fell back to a cold start."""
        self.metrics.outcomes.labels(outcome="cold").inc()
        self.metrics.failures.labels(reason=reason).inc()
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("warm start of %r failed (%s: %s); it starts cold. Further '%s' failures are only "
                        "counted (pensu_warm_start_failures_total)", metric, reason, detail, reason)

    def _log_warm(self, metric: str, learned: int) -> None:
        level = logging.DEBUG if self._warm_logged else logging.INFO
        self._warm_logged = True
        log.log(level, "warm start of %r: %d history samples of the last %g days from %s handed to its model "
                       "before its live samples", metric, learned, self.settings.warm_start_days,
                self.settings.graphite_url)


def _by_message(held: Iterable[HeldLine]) -> list[list[HeldLine]]:
    """Consecutive held lines of one message, grouped: processed as one payload, their replay
    positions (offset, line) number them as the message did when all its lines were held."""
    groups: list[list[HeldLine]] = []
    for item in held:
        last = groups[-1][0] if groups else None
        if last is not None and (last.source, last.offset, last.batch) == (item.source, item.offset, item.batch):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups
