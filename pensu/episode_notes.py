"""Episode events on their way to the outputs, and the notes that let them survive a restart.

`EpisodeHooks.analysed` is the service's one hook per analysed sample (pure logic, no I/O; it
calls into the feedback filter, the namespace tracker and the alert sender): feedback rules
review the episode event (pensu.feedback), the namespace tracker counts it and pairs it with an
incident (pensu.namespaces), and the alert sender fires or resolves its alert (pensu.alerting).

Notes: what an episode's opening produced — the incident it joined, the feedback rule that
suppressed it, the firing alert with its labels — is known only when it opens, and the episode
may resolve hours later, after a restart or on another instance (partition hand-over). Kept in
memory only, a restarted instance resolved such an episode with `incident: null`, posted a
resolution for both severities instead of the alert it had fired (which Alertmanager kept
firing until its endsAt, since nobody re-sent it meanwhile), and reported the resolution of an
episode a rule had suppressed. So the notes (`EpisodeNotes`) are kept in the metric's analyzer
(`MetricAnalyzer.episode_notes`, analyzer format 4). They are written in the same checkpoint as
the episode state they describe — never older or newer than it — and move with the metric to
whichever instance owns it next, through either checkpoint store. A crash loses both together:
the samples since the checkpoint are replayed and the opening happens (and is noted) again.

Per sample:
1. notes of the analyzer's open episode (or of the episode resolving on this sample) are
   *adopted* by the in-memory holders that do not know them (idempotent: a few dict lookups per
   sample while an episode is open, one attribute test otherwise); notes of another episode are
   stale and dropped;
2. review, count, alert;
3. an opening that leaves an episode open writes the notes; a resolution clears them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pensu.alerting import Alert, AlertSender
from pensu.analyzer import Analysis, MetricAnalyzer
from pensu.decision import OPENED, RESOLVED, timestamp_text
from pensu.feedback import FeedbackFilter
from pensu.namespaces import NamespaceTracker
from pensu.telemetry import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeNotes:
    """What the opening of a metric's open episode produced."""

    episode: str  # episode id, `<metric>@<opening timestamp>`
    opened_at: float
    incident: str | None = None
    suppressed_by: str | None = None  # id of the feedback rule that kept it from being reported
    alert: Alert | None = None  # the firing alert posted to Alertmanager

    def to_state(self) -> dict[str, Any]:
        """The notes as msgpack-native values."""
        return {"episode": self.episode, "opened_at": self.opened_at, "incident": self.incident,
                "suppressed_by": self.suppressed_by,
                "alert": None if self.alert is None else self.alert.to_state()}

    @classmethod
    def from_state(cls, state: Any) -> EpisodeNotes:
        """Notes from `to_state()` output; ValueError naming the bad field."""
        if not isinstance(state, dict):
            raise ValueError("episode notes must be a map")
        episode, opened_at = state.get("episode"), state.get("opened_at")
        if not isinstance(episode, str) or not episode:
            raise ValueError(f"episode: expected an episode id, got {episode!r}")
        if isinstance(opened_at, bool) or not isinstance(opened_at, (int, float)):
            raise ValueError(f"opened_at: expected a timestamp, got {opened_at!r}")
        for field in ("incident", "suppressed_by"):
            if state.get(field) is not None and not isinstance(state[field], str):
                raise ValueError(f"{field}: expected a string, got {state[field]!r}")
        alert = state.get("alert")
        return cls(episode=episode, opened_at=float(opened_at), incident=state.get("incident"),
                   suppressed_by=state.get("suppressed_by"), alert=None if alert is None else Alert.from_state(alert))


def open_episode_id(analyzer: MetricAnalyzer) -> str | None:
    """The id of the analyzer's open episode, None when none is open."""
    episode = analyzer.decision.get_state()["episode"]  # [opened_at, ...] or None
    return None if episode is None else f"{analyzer.metric}@{timestamp_text(float(episode[0]))}"


class EpisodeHooks:
    """Feedback review, namespace and incident bookkeeping and alerts for each analysed sample."""

    def __init__(self, feedback: FeedbackFilter, namespaces: NamespaceTracker, alerts: AlertSender | None) -> None:
        self.feedback = feedback
        self.namespaces = namespaces
        self.alerts = alerts
        self._bad_notes_log = RateLimitedLog(log, 60.0)

    def analysed(self, analysis: Analysis, analyzer: MetricAnalyzer) -> Analysis:
        """The analysis to render (rules may take its episode event away); keeps `analyzer`'s notes."""
        event = analysis.event
        if analyzer.episode_notes is not None:
            self._adopt(analysis, analyzer)
        if event is None:
            return self._observe(analysis)
        reviewed = self.feedback.review(analysis)
        incident = self.namespaces.observe(reviewed)
        alert = None
        lasting = analyzer.decision.in_episode
        if self.alerts is not None and reviewed.event is not None:
            # Episodes off (nothing will resolve it): the alert is posted once and ends on its own.
            alert = self.alerts.episode_event(reviewed, self.namespaces.namespace(analysis.metric), incident,
                                              lasting=lasting)
        if event.event == OPENED and lasting:
            analyzer.episode_notes = EpisodeNotes(
                episode=event.episode_id, opened_at=event.opened_at, incident=incident,
                suppressed_by=self.feedback.suppressed_by(event.episode_id), alert=alert).to_state()
        elif event.event == RESOLVED:
            analyzer.episode_notes = None
        return reviewed

    def _observe(self, analysis: Analysis) -> Analysis:
        self.namespaces.observe(analysis)
        return analysis

    def _adopt(self, analysis: Analysis, analyzer: MetricAnalyzer) -> None:
        """Hand the notes of the current episode to whichever holder does not know them yet."""
        event = analysis.event
        current: str | None
        if event is not None and event.event == RESOLVED:
            current = event.episode_id
        else:
            current = open_episode_id(analyzer)
            if event is not None and event.event == OPENED:
                current = None  # notes of an earlier episode: this opening writes its own
        try:
            notes = EpisodeNotes.from_state(analyzer.episode_notes)
        except ValueError as exc:
            self._bad_notes_log.log(logging.WARNING, "ignoring unreadable episode notes of %s (%s): its open "
                                    "episode resolves without them", analysis.metric, exc)
            analyzer.episode_notes = None
            return
        if notes.episode != current:
            analyzer.episode_notes = None  # stale: that episode is over
            return
        if notes.suppressed_by is not None:
            self.feedback.adopt(notes.episode, notes.suppressed_by)
            return  # never reported: nothing to count as an open alert or incident
        self.namespaces.adopt(analysis.metric, notes.episode, notes.opened_at, notes.incident)
        if self.alerts is not None and notes.alert is not None:
            self.alerts.adopt(analysis.metric, notes.alert)
