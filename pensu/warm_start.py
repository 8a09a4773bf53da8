"""Warm start, pure part: Graphite history → ordered samples, and the per-metric state machine.

A brand-new metric (no checkpoint, nothing learned) normally needs days of live samples before
its model knows the metric's daily shape. With `PENSU_GRAPHITE_URL` set, its first live sample
asks Graphite's render API (`format=json`, target = the input metric's name, the
`PENSU_WARM_START_DAYS` before that sample) for the metric's recent history, which Graphite
usually holds already (Logstash forwards the raw input there). The model learns that history
first, without emitting anything, then the live samples.

This module holds no sockets and no threads (the fetch is `pensu.graphite_fetch`, the wiring
`pensu.warm_start_gate`), so everything here is unit-tested with plain values and a fake clock.

* `parse_render_json` turns a render response into samples strictly before the first live
  sample (nothing is learned twice: that sample and later ones come from Kafka), ordered by
  time, nulls (gaps in whisper) and non-finite values skipped and counted.
* `WarmStartBook` tracks metrics whose warm start is in flight. Their live samples are held
  (at most `buffer_limit` each: one more abandons the warm start, the metric starts cold with
  its held samples first); a fetch not answered within `timeout` seconds of the first sample
  (queueing included) starts the metric cold too. Arrived history is handed out in chunks
  (`learning_chunk`), so one long history never stalls the consume loop for long: at ~0.3-0.8
  ms per sample (docs/scaling.md), a week of 1-minute points is 3-8 s of model time, spread
  over many loop iterations. Finished metrics (warm or cold) come out of `take_ready` with their
  held samples, in arrival order.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from pensu.errors import PensuError

__all__ = [
    "History",
    "HistoryRequest",
    "Phase",
    "Released",
    "WarmStartBook",
    "WarmStartError",
    "history_request",
    "parse_render_json",
    "render_target",
]

T = TypeVar("T")

SECONDS_PER_DAY = 86400.0
# Characters a metric name may use to be sent as a bare Graphite target: anything else (glob
# characters, parentheses, commas, quotes, spaces) would be read as target syntax, so such a
# metric starts cold instead of fetching some other series.
_PLAIN_TARGET = re.compile(r"[A-Za-z0-9_.:\-#%@+=~]+")


class WarmStartError(PensuError):
    """A history could not be fetched or read; `reason` is a short label for the counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class HistoryRequest:
    """One render query: `target` between unix seconds `start` and `until`."""

    metric: str
    target: str
    start: int
    until: int
    before: float  # the first live sample's timestamp: history must be strictly older

    def query(self) -> dict[str, str]:
        """Query parameters of GET /render."""
        return {"target": self.target, "from": str(self.start), "until": str(self.until), "format": "json"}


@dataclass(frozen=True)
class History:
    """Samples to learn, oldest first, and what was left out."""

    samples: tuple[tuple[float, float], ...]
    nulls: int = 0  # points without a value (gaps)
    too_new: int = 0  # at or after the first live sample: those come from Kafka
    invalid: int = 0  # non-finite or malformed points


def render_target(metric: str) -> str | None:
    """The metric's name as a render target, or None when Graphite would read it as syntax."""
    if not _PLAIN_TARGET.fullmatch(metric) or ".." in metric or metric.startswith(".") or metric.endswith("."):
        return None
    return metric


def history_request(metric: str, first_timestamp: float, days: float) -> HistoryRequest | None:
    """The render query for the `days` before the first live sample; None if the name cannot be a target."""
    target = render_target(metric)
    if target is None:
        return None
    until = math.ceil(first_timestamp)
    return HistoryRequest(metric, target, math.floor(first_timestamp - days * SECONDS_PER_DAY), until,
                          float(first_timestamp))


def parse_render_json(body: bytes, request: HistoryRequest) -> History:
    """The learnable samples of a render response (`[{"target", "datapoints": [[v, ts], ...]}]`).

    Raises `WarmStartError("bad_response")` when the body is not that shape, and
    `WarmStartError("ambiguous")` when several series answer (the target matched more than the
    metric). No series at all is an empty history: Graphite has not seen the metric.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WarmStartError("bad_response", f"not JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
        raise WarmStartError("bad_response", "expected a JSON list of series objects")
    if not data:
        return History(())
    if len(data) > 1:
        names = [str(s.get("target")) for s in data[:3]]
        raise WarmStartError("ambiguous", f"{len(data)} series answered target {request.target!r}: {names}")
    points = data[0].get("datapoints")
    if not isinstance(points, list):
        raise WarmStartError("bad_response", "series without a 'datapoints' list")
    by_time: dict[float, float] = {}
    nulls = too_new = invalid = 0
    for point in points:
        if not isinstance(point, list) or len(point) != 2:
            invalid += 1
            continue
        value, ts = point
        if value is None:
            nulls += 1
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or isinstance(ts, bool) or not isinstance(ts, (int, float)):
            invalid += 1
            continue
        value, ts = float(value), float(ts)
        if not (math.isfinite(value) and math.isfinite(ts)):
            invalid += 1
            continue
        if ts >= request.before:
            too_new += 1
            continue
        by_time[ts] = value  # a repeated timestamp keeps its last value, as whisper would
    samples = tuple(sorted(by_time.items()))
    return History(samples, nulls=nulls, too_new=too_new, invalid=invalid)


class Phase(Enum):
    """Where a metric's warm start is."""

    FETCHING = "fetching"  # history requested, live samples held
    LEARNING = "learning"  # history arrived, being learned in chunks
    READY = "ready"  # done (warm) or given up (cold): held samples may go


@dataclass
class _Entry(Generic[T]):
    first_timestamp: float
    deadline: float
    phase: Phase = Phase.FETCHING
    held: deque[T] = field(default_factory=deque)
    history: tuple[tuple[float, float], ...] = ()
    next_index: int = 0
    warm: bool = False
    reason: str = ""  # why it went cold


@dataclass(frozen=True)
class Released(Generic[T]):
    """A metric whose warm start is over: its held samples (arrival order) may be processed now."""

    metric: str
    held: tuple[T, ...]
    warm: bool  # history learned (possibly empty); False: started cold
    reason: str  # why cold ("" when warm)
    history_length: int  # history samples handed out for learning


class WarmStartBook(Generic[T]):
    """Metrics whose warm start is in flight, with their held live samples (type `T`)."""

    def __init__(self, buffer_limit: int, timeout: float, max_pending: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if buffer_limit < 1 or max_pending < 1 or timeout <= 0:
            raise ValueError("buffer_limit and max_pending must be >= 1 and timeout > 0")
        self.buffer_limit = buffer_limit
        self.timeout = timeout
        self.max_pending = max_pending
        self._clock = clock
        self._entries: dict[str, _Entry[T]] = {}

    def __contains__(self, metric: object) -> bool:
        return metric in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def metrics(self) -> list[str]:
        """Metrics whose warm start is in flight, in start order."""
        return list(self._entries)

    def phase(self, metric: str) -> Phase | None:
        """The metric's phase, None when no warm start is in flight."""
        entry = self._entries.get(metric)
        return None if entry is None else entry.phase

    def begin(self, metric: str, first_timestamp: float, first: T) -> bool:
        """Start a warm start holding `first`; False (nothing held) when `max_pending` are in flight."""
        if metric in self._entries:
            raise ValueError(f"warm start of {metric!r} already in flight")
        if len(self._entries) >= self.max_pending:
            return False
        entry: _Entry[T] = _Entry(float(first_timestamp), self._clock() + self.timeout)
        entry.held.append(first)
        self._entries[metric] = entry
        return True

    def hold(self, metric: str, item: T) -> None:
        """Hold a live sample of an in-flight metric. Past `buffer_limit` held samples the warm
        start is abandoned (cold, reason "buffer_full"); the sample is still kept, after the
        others, until `take_ready` releases them all."""
        entry = self._entries[metric]
        entry.held.append(item)
        if entry.phase is not Phase.READY and len(entry.held) > self.buffer_limit:
            self._cold(entry, "buffer_full")

    def arrived(self, metric: str, history: History) -> bool:
        """The fetch answered: learn `history` next. False when the metric no longer waits for
        it (timed out, abandoned or forgotten): the history is then discarded."""
        entry = self._entries.get(metric)
        if entry is None or entry.phase is not Phase.FETCHING:
            return False
        entry.history = tuple(s for s in history.samples if s[0] < entry.first_timestamp)
        entry.phase = Phase.LEARNING
        if not entry.history:
            self._warm(entry)
        return True

    def failed(self, metric: str, reason: str) -> bool:
        """The fetch failed: start cold. False when the metric no longer waited for it."""
        entry = self._entries.get(metric)
        if entry is None or entry.phase is not Phase.FETCHING:
            return False
        self._cold(entry, reason)
        return True

    def expire(self) -> list[str]:
        """Metrics whose fetch outlived the timeout, now cold (reason "timeout")."""
        now = self._clock()
        expired = [m for m, e in self._entries.items() if e.phase is Phase.FETCHING and now >= e.deadline]
        for metric in expired:
            self._cold(self._entries[metric], "timeout")
        return expired

    def learning_chunk(self, budget: int) -> list[tuple[str, tuple[tuple[float, float], ...]]]:
        """Up to `budget` history samples to learn now, per metric in start order; a metric whose
        whole history has been handed out becomes ready (warm)."""
        out = []
        for metric, entry in self._entries.items():
            if budget <= 0:
                break
            if entry.phase is not Phase.LEARNING:
                continue
            chunk = entry.history[entry.next_index:entry.next_index + budget]
            entry.next_index += len(chunk)
            budget -= len(chunk)
            out.append((metric, chunk))
            if entry.next_index >= len(entry.history):
                self._warm(entry)
        return out

    def take_ready(self) -> list[Released[T]]:
        """Remove and return the metrics whose warm start is over, in start order."""
        ready = [m for m, e in self._entries.items() if e.phase is Phase.READY]
        out = []
        for metric in ready:
            entry = self._entries.pop(metric)
            out.append(Released(metric, tuple(entry.held), entry.warm, entry.reason, len(entry.history)))
        return out

    def forget(self, keep: Callable[[T], bool]) -> list[T]:
        """Drop held samples for which `keep` is false (their partition moved to another
        instance, which will replay them); a metric left holding nothing is dropped with its
        history. Returns the dropped samples."""
        dropped: list[T] = []
        for metric in list(self._entries):
            entry = self._entries[metric]
            kept = deque(item for item in entry.held if keep(item))
            dropped.extend(item for item in entry.held if not keep(item))
            entry.held = kept
            if not kept:
                del self._entries[metric]
        return dropped

    def drain(self) -> list[T]:
        """Remove every entry (shutdown) and return all held samples."""
        items = [item for entry in self._entries.values() for item in entry.held]
        self._entries.clear()
        return items

    @staticmethod
    def _warm(entry: _Entry[T]) -> None:
        entry.phase, entry.warm, entry.reason = Phase.READY, True, ""

    @staticmethod
    def _cold(entry: _Entry[T], reason: str) -> None:
        # Keep the part already handed out for learning (abandoned mid-way): it was learned.
        entry.phase, entry.warm, entry.reason = Phase.READY, False, reason
        entry.history = entry.history[:entry.next_index]
