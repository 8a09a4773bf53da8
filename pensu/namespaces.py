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
stopped reporting, leaves it.

Several instances: each member of a consumer group sees only its partitions' metrics, so a
share computed by one instance is a share of *its* metrics, and same-named lines from several
instances overwrite each other in Graphite. Shares do not add up; counts do. So every interval
each instance also writes its two counts under its own name:

    pensu.anomaly_rate_parts.anomalous.<instance>.<namespace>   metrics anomalous now
    pensu.anomaly_rate_parts.total.<instance>.<namespace>       metrics counted

and the namespace's rate is Σ anomalous / Σ total over instances, which Graphite computes at
read time (`namespace_rate_target`, the dashboard's panel): `sumSeriesWithWildcards(..., 3)`
removes the instance node, which sits before the namespace because a namespace has a variable
number of nodes (`web` and `web.front` at depth 2) while node positions must be fixed. The
instance node is PENSU_INSTANCE_ID with anything but `A-Z a-z 0-9 _ -` replaced by `_` (a host
name's dots would add nodes). Timestamps are the interval's start (`aligned`), so every
instance's counts of one interval land on the same Graphite point whatever their clock phase;
the panel carries each instance's last counts over `KEEP_LAST_POINTS` missing points, so an
instance that has not written its counts for the newest interval yet is not missing from the
sum, and one that stopped drops out after that many points. `pensu.anomaly_rate.<namespace>`
(this instance's share) is still written: exact with one instance.

Incidents: an episode opening in a namespace within PENSU_INCIDENT_WINDOW_SECONDS (sample time,
so replay and backfill group the same way) of that namespace's previous opening joins its
incident; otherwise it starts one with id `<namespace>@<opening timestamp>`. The resolved report
of an episode carries the incident its opening joined. The pairing of open episodes survives a
restart or a partition hand-over through the metric's checkpoint (pensu.episode_notes, `adopt`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from pensu.analyzer import Analysis
from pensu.carbon import format_line
from pensu.decision import OPENED, RESOLVED, timestamp_text
from pensu.errors import LineRejected

RATE_PREFIX = "pensu.anomaly_rate."
PARTS_PREFIX = "pensu.anomaly_rate_parts."
PART_KINDS = ("anomalous", "total")
INSTANCE_NODE = 3  # pensu.anomaly_rate_parts.<kind>.<instance>.<namespace...>: node 3
KEEP_LAST_POINTS = 3  # Graphite points an instance's last counts stand in for missing ones
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


def instance_node(instance: str) -> str:
    """`instance` as one carbon name node: characters other than A-Z a-z 0-9 _ - become `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", instance) or "_"


def part_metric_name(kind: str, instance: str, namespace: str) -> str:
    """The carbon name of one instance's count (`anomalous` or `total`) for a namespace."""
    return f"{PARTS_PREFIX}{kind}.{instance_node(instance)}.{namespace}"


def aligned(timestamp: float, interval: float) -> int:
    """The start of the `interval`-long period holding `timestamp` (the timestamp itself without one)."""
    if interval <= 0:
        return int(timestamp)
    return int(timestamp // interval * interval)


def namespace_rate_target(top: int = 10, keep_last: int = KEEP_LAST_POINTS) -> str:
    """The Graphite target of the namespaces' anomaly rates over all instances, highest `top`, aliased
    to the namespace: Σ anomalous / Σ total per namespace (see the module docstring)."""
    def summed(kind: str) -> str:
        return (f"sortByName(sumSeriesWithWildcards(keepLastValue({PARTS_PREFIX}{kind}.*.**, {keep_last}), "
                f"{INSTANCE_NODE}))")
    ratio = f"divideSeriesLists({summed('anomalous')}, {summed('total')})"
    # Series named divideSeries(keepLastValue(pensu.anomaly_rate_parts.anomalous.<namespace>),...) -> <namespace>
    name = r"'^divideSeries\(keepLastValue\(" + re.escape(PARTS_PREFIX) + r"anomalous\.([^,]+)\),.*$'"
    return f"aliasSub(highestCurrent({ratio}, {top}), {name}, '\\1')"


@dataclass(slots=True)
class _MetricState:
    namespace: str
    in_episode: bool
    last_anomalous: bool
    last_seen: float


class NamespaceTracker:
    """Per-metric anomalous-now state grouped by namespace, and incident ids of episodes."""

    def __init__(self, depth: int, incident_window: float, clock: Callable[[], float] = time.time,
                 instance: str = "pensu", rate_interval: float = 0.0) -> None:
        self.depth = depth
        self.incident_window = incident_window
        self.instance = instance
        self.rate_interval = rate_interval  # rate lines are stamped with the start of this period
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

    def adopt(self, metric: str, episode_id: str, opened_at: float, incident: str | None) -> None:
        """Learn an episode of `metric` that opened before a restart or on the metric's previous owner
        (from its checkpoint): it counts as anomalous now, its resolution carries `incident`, and a
        later opening in the namespace within the window joins that incident. No-op once known."""
        state = self._metrics.get(metric)
        if state is None:
            state = self._metrics[metric] = _MetricState(self.namespace(metric), False, False, self._clock())
        state.in_episode = True
        if incident is None or episode_id in self._episode_incident:
            return
        if len(self._episode_incident) >= MAX_OPEN_EPISODES:
            self._episode_incident.clear()
        self._episode_incident[episode_id] = incident
        current = self._incidents.get(state.namespace)
        if current is None or current[1] < opened_at:
            self._incidents[state.namespace] = (incident, opened_at)

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

    def counts(self) -> dict[str, tuple[int, int]]:
        """(anomalous now, total) of each namespace's current metrics on this instance."""
        now = self._clock()
        totals: dict[str, list[int]] = {}
        for metric in [m for m, s in self._metrics.items() if now - s.last_seen > IDLE_SECONDS]:
            del self._metrics[metric]
        for state in self._metrics.values():
            counts = totals.setdefault(state.namespace, [0, 0])
            counts[0] += state.in_episode or state.last_anomalous
            counts[1] += 1
        return {ns: (anomalous, total) for ns, (anomalous, total) in totals.items()}

    def rates(self) -> dict[str, float]:
        """Share of each namespace's current metrics that are anomalous now (on this instance)."""
        return {ns: anomalous / total for ns, (anomalous, total) in self.counts().items()}

    def rate_lines(self, timestamp: float) -> list[tuple[str, bytes]]:
        """(namespace, carbon line) of every namespace's rate and this instance's two counts, stamped
        with the start of the rate interval holding `timestamp`."""
        ts = aligned(timestamp, self.rate_interval)
        lines = []
        for namespace, (anomalous, total) in sorted(self.counts().items()):
            try:
                lines += [(namespace, format_line(rate_metric_name(namespace), anomalous / total, ts)),
                          (namespace, format_line(part_metric_name("anomalous", self.instance, namespace),
                                                  anomalous, ts)),
                          (namespace, format_line(part_metric_name("total", self.instance, namespace), total, ts))]
            except LineRejected:
                continue  # a namespace too long for a carbon name: its metrics' own outputs say why
        return lines
