"""Namespaces: which part of the metric tree is anomalous now, and incident ids across metrics.

Pure logic, no I/O: the service feeds every `Analysis` to `NamespaceTracker.observe` (before
its outputs are rendered) and asks it for carbon lines every PENSU_ANOMALY_RATE_INTERVAL.

Namespace: a metric's first PENSU_NAMESPACE_DEPTH name segments, never the whole name (at most
all but the last segment), so `web.frontend.latency` → `web.frontend` at depth 2 and `web.latency`
→ `web`. A one-segment name is its own namespace.

Anomaly rate: the share of a namespace's metrics that are anomalous *now* — in an open episode
(opened seen, resolved not yet), or, with episodes off (PENSU_EPISODE_QUIET_SAMPLES=0), whose
last sample was anomalous. The denominator is the namespace's metrics this instance analysed in
the last `IDLE_SECONDS` (wall clock) and still owns: a metric whose partition moved away, or that
stopped reporting, leaves it. Each instance of a consumer group sees only its partitions' metrics,
so with several instances each emits the rate over its own share; see README "Alerting".

Incidents: an episode opening in a namespace within PENSU_INCIDENT_WINDOW_SECONDS (sample time,
so replay and backfill group the same way) of that namespace's previous opening joins its
incident; otherwise it starts one with id `<namespace>@<opening timestamp>`. The resolved report
of an episode carries the incident its opening joined. Incident state is not checkpointed: after a
restart an episode resolving without a known opening carries `incident: null`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from pensu.analyzer import Analysis
from pensu.carbon import format_line
from pensu.decision import OPENED, RESOLVED, timestamp_text
from pensu.errors import LineRejected

RATE_PREFIX = "pensu.anomaly_rate."
IDLE_SECONDS = 3600.0  # a metric unseen this long leaves its namespace's denominator
MAX_OPEN_EPISODES = 200_000  # bound on remembered episode → incident pairs


def namespace_of(metric: str, depth: int) -> str:
    """The first `depth` segments of `metric`, at most all but its last one."""
    parts = metric.split(".")
    keep = max(1, min(depth, len(parts) - 1))
    return ".".join(parts[:keep])


def rate_metric_name(namespace: str) -> str:
    """The carbon name of a namespace's anomaly rate."""
    return RATE_PREFIX + namespace


@dataclass(slots=True)
class _MetricState:
    namespace: str
    in_episode: bool
    last_anomalous: bool
    last_seen: float


class NamespaceTracker:
    """Per-metric anomalous-now state grouped by namespace, and incident ids of episodes."""

    def __init__(self, depth: int, incident_window: float, clock: Callable[[], float] = time.time) -> None:
        self.depth = depth
        self.incident_window = incident_window
        self._clock = clock
        self._metrics: dict[str, _MetricState] = {}
        self._incidents: dict[str, tuple[str, float]] = {}  # namespace -> (incident id, last opening ts)
        self._episode_incident: dict[str, str] = {}  # open episode id -> incident id
        self._last_event: tuple[str, str, str | None] | None = None  # (episode id, event, incident) last observed

    def namespace(self, metric: str) -> str:
        """The namespace of `metric` at the configured depth."""
        return namespace_of(metric, self.depth)

    def observe(self, analysis: Analysis) -> str | None:
        """Update the metric's state; the incident id of the episode that opened or resolved here."""
        state = self._metrics.get(analysis.metric)
        if state is None:
            state = self._metrics[analysis.metric] = _MetricState(self.namespace(analysis.metric), False, False, 0.0)
        state.last_seen = self._clock()
        state.last_anomalous = analysis.anomalous
        event = analysis.event
        if event is None:
            return None
        incident: str | None = None
        if event.event == OPENED:
            state.in_episode = True
            incident = self._join_incident(state.namespace, event.episode_id, event.opened_at)
        elif event.event == RESOLVED:
            state.in_episode = False
            incident = self._episode_incident.pop(event.episode_id, None)
        self._last_event = (event.episode_id, event.event, incident)
        return incident

    def _join_incident(self, namespace: str, episode_id: str, opened_at: float) -> str:
        current = self._incidents.get(namespace)
        if current is not None and 0 <= opened_at - current[1] <= self.incident_window:
            incident = current[0]
        else:
            incident = f"{namespace}@{timestamp_text(opened_at)}"
        self._incidents[namespace] = (incident, opened_at)
        if len(self._episode_incident) >= MAX_OPEN_EPISODES:
            self._episode_incident.clear()  # a flood of never-resolving episodes must not grow memory
        self._episode_incident[episode_id] = incident
        return incident

    def incident(self, analysis: Analysis) -> str | None:
        """The incident id of the analysis's episode event (None without an event or a known opening)."""
        event = analysis.event
        if event is None:
            return None
        last = self._last_event
        if last is not None and last[:2] == (event.episode_id, event.event):
            return last[2]
        return self._episode_incident.get(event.episode_id)

    def report_fields(self, analysis: Analysis) -> dict[str, object]:
        """Extra fields of a JSON report: the namespace and the incident id."""
        return {"namespace": self.namespace(analysis.metric), "incident": self.incident(analysis)}

    def forget(self, metric: str) -> None:
        """Drop a metric this instance no longer owns."""
        self._metrics.pop(metric, None)

    def rates(self) -> dict[str, float]:
        """Share of each namespace's current metrics that are anomalous now."""
        now = self._clock()
        totals: dict[str, list[int]] = {}
        for metric in [m for m, s in self._metrics.items() if now - s.last_seen > IDLE_SECONDS]:
            del self._metrics[metric]
        for state in self._metrics.values():
            counts = totals.setdefault(state.namespace, [0, 0])
            counts[0] += 1
            counts[1] += state.in_episode or state.last_anomalous
        return {ns: anomalous / total for ns, (total, anomalous) in totals.items()}

    def rate_lines(self, timestamp: float) -> list[tuple[str, bytes]]:
        """(namespace, carbon line) of every namespace's anomaly rate at `timestamp`."""
        lines = []
        for namespace, rate in sorted(self.rates().items()):
            try:
                lines.append((namespace, format_line(rate_metric_name(namespace), rate, timestamp)))
            except LineRejected:
                continue  # a namespace too long for a carbon name: its metrics' own outputs say why
        return lines
