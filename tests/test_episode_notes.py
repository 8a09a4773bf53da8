"""Episode notes: an episode that opened before a restart (or on the metric's previous owner) resolves
the alert it fired, keeps its incident and stays suppressed, through the analyzer checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import msgpack
import pytest
from prometheus_client import CollectorRegistry

from pensu.alerting import AlertSender
from pensu.analyzer import Analysis, MetricAnalyzer, Thresholds
from pensu.decision import OPENED, RESOLVED
from pensu.episode_notes import EpisodeHooks, EpisodeNotes, open_episode_id
from pensu.feedback import FeedbackFilter, parse_rule
from pensu.namespaces import NamespaceTracker
from tests.alert_receiver import AlertReceiver, check_postable_alerts, parse_time
from tests.support import fast_config, series

METRIC = "web.front.latency"
THRESHOLDS = Thresholds(quiet_samples=3)
SPIKE = 200


def samples() -> list[tuple[float, float]]:
    """A learned periodic series with one spike at index SPIKE, then normal again."""
    return [(ts, 500.0) if i == SPIKE else (ts, v) for i, (ts, v) in enumerate(series(241))]


class Instance:
    """One Pensu instance's episode hooks, feeding the analyzer directly."""

    def __init__(self, name: str, url: str | None, rules: FeedbackFilter | None = None) -> None:
        self.registry = CollectorRegistry()
        self.namespaces = NamespaceTracker(depth=2, incident_window=600)
        self.alerts = None if url is None else AlertSender(url, self.registry, name, resend_interval=3600,
                                                           retry_delays=(0.05,))
        self.hooks = EpisodeHooks(rules or FeedbackFilter(), self.namespaces, self.alerts)
        if self.alerts is not None:
            self.alerts.start()

    def run(self, analyzer: MetricAnalyzer, data: list[tuple[float, float]]) -> list[tuple[Analysis, object]]:
        """(reviewed analysis, incident of its report) per sample."""
        out = []
        for ts, value in data:
            reviewed = self.hooks.analysed(analyzer.process(ts, value), analyzer)
            out.append((reviewed, self.namespaces.report_fields(reviewed)["incident"]))
        return out

    def stop(self) -> None:
        if self.alerts is not None:
            self.alerts.stop()


def events(rows: list[tuple[Analysis, object]]) -> list[tuple[str, float, object]]:
    return [(a.event.event, a.timestamp, incident) for a, incident in rows if a.event is not None]


def restarted(analyzer: MetricAnalyzer) -> MetricAnalyzer:
    """The analyzer as a restarted instance loads it from its checkpoint."""
    return MetricAnalyzer.from_bytes(analyzer.to_bytes(), THRESHOLDS, expected_metric=METRIC)


@contextmanager
def receiver() -> Iterator[AlertReceiver]:
    with AlertReceiver() as r:
        yield r


def test_a_restart_resolves_the_alert_fired_before_it_with_its_labels_and_incident() -> None:
    data = samples()
    with receiver() as am:
        before = Instance("node-a", am.url)
        analyzer = MetricAnalyzer(METRIC, fast_config(THRESHOLDS))
        first = before.run(analyzer, data[:SPIKE + 1])
        assert events(first) == [(OPENED, data[SPIKE][0], f"web.front@{int(data[SPIKE][0])}")]
        fired = am.wait_for(lambda a: len(a) >= 1)[0]
        before.stop()
        assert analyzer.episode_notes is not None and open_episode_id(analyzer) == f"{METRIC}@{int(data[SPIKE][0])}"

        after = Instance("node-b", am.url)
        resumed = restarted(analyzer)
        rows = after.run(resumed, data[SPIKE + 1:SPIKE + 2])
        assert after.namespaces.rates() == {"web.front": 1.0}  # still anomalous now, counted as such
        assert after.alerts is not None and after.alerts.firing(METRIC) is not None  # re-sent while open
        rows += after.run(resumed, data[SPIKE + 2:])
        ((kind, resolved_at, incident),) = events(rows)
        assert (kind, incident) == (RESOLVED, f"web.front@{int(data[SPIKE][0])}")  # not null
        got = am.wait_for(lambda a: len(a) >= 2)
        after.stop()
    check_postable_alerts(got)
    assert len(got) == 2  # one resolution, of the alert fired — not one per severity
    resolution = got[1]
    assert resolution["labels"] == fired["labels"] and fired["labels"]["severity"] == "critical"
    assert resolution["startsAt"] == fired["startsAt"]
    assert parse_time(resolution["endsAt"]) == resolved_at
    assert resolution["annotations"]["pensu_instance"] == "node-a"  # the alert as fired
    assert resumed.episode_notes is None  # cleared with the episode


def test_without_notes_a_restart_resolves_both_severities() -> None:
    """What happens to checkpoints older than analyzer format 4 (and did to every restart before)."""
    data = samples()
    with receiver() as am:
        before = Instance("node-a", am.url)
        analyzer = MetricAnalyzer(METRIC, fast_config(THRESHOLDS))
        before.run(analyzer, data[:SPIKE + 1])
        am.wait_for(lambda a: len(a) >= 1)
        before.stop()
        envelope = msgpack.unpackb(analyzer.to_bytes(), raw=False, strict_map_key=False)
        envelope["version"] = 3
        del envelope["analyzer"]["episode_notes"]
        resumed = MetricAnalyzer.from_bytes(msgpack.packb(envelope, use_bin_type=True), THRESHOLDS)
        assert resumed.episode_notes is None and resumed.decision.in_episode
        after = Instance("node-b", am.url)
        ((kind, _ts, incident),) = events(after.run(resumed, data[SPIKE + 1:]))
        got = am.wait_for(lambda a: len(a) >= 3)
        after.stop()
    assert (kind, incident) == (RESOLVED, None)
    assert sorted(a["labels"]["severity"] for a in got[1:]) == ["critical", "warning"]


def test_a_suppressed_episode_stays_unreported_after_a_restart() -> None:
    data = samples()
    mute = FeedbackFilter()
    mute.apply(parse_rule({"id": "deploy", "kind": "mute", "pattern": "web\\.", "until": data[SPIKE][0] + 1}))
    before = Instance("node-a", None, mute)
    analyzer = MetricAnalyzer(METRIC, fast_config(THRESHOLDS))
    assert events(before.run(analyzer, data[:SPIKE + 1])) == []  # the opening was muted
    assert analyzer.decision.in_episode
    after = Instance("node-b", None)  # the rule is gone (expired or deleted): the notes remember it
    assert events(after.run(restarted(analyzer), data[SPIKE + 1:])) == []  # nor its resolution
    control = Instance("node-c", None)  # an instance that never saw the opening reports the resolution
    control_analyzer = restarted(analyzer)
    control_analyzer.episode_notes = None
    assert [e[0] for e in events(control.run(control_analyzer, data[SPIKE + 1:]))] == [RESOLVED]


def test_stale_and_unreadable_notes_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    data = samples()
    analyzer = MetricAnalyzer(METRIC, fast_config(THRESHOLDS))
    node = Instance("node-a", None)
    node.run(analyzer, data[:SPIKE + 1])
    analyzer.episode_notes = EpisodeNotes(episode=f"{METRIC}@1", opened_at=1.0, incident="web.front@1").to_state()
    node.run(analyzer, data[SPIKE + 1:SPIKE + 2])
    assert analyzer.episode_notes is None  # another episode's notes
    analyzer.episode_notes = {"episode": 42}
    with caplog.at_level(logging.WARNING, logger="pensu.episode_notes"):
        node.run(analyzer, data[SPIKE + 2:SPIKE + 3])
    assert analyzer.episode_notes is None
    assert "ignoring unreadable episode notes of web.front.latency (episode: expected an episode id, got 42)" \
        in caplog.text


def test_with_episodes_off_an_alert_is_posted_once_and_not_kept_firing() -> None:
    data = samples()
    with receiver() as am:
        node = Instance("node-a", am.url)
        analyzer = MetricAnalyzer(METRIC, fast_config(Thresholds(quiet_samples=0)))
        rows = node.run(analyzer, data[:SPIKE + 1])
        assert [e[0] for e in events(rows)] == [OPENED]
        am.wait_for(lambda a: len(a) >= 1)
        assert node.alerts is not None and node.alerts.firing(METRIC) is None  # nothing would resolve it
        assert analyzer.episode_notes is None
        node.stop()


def test_notes_round_trip() -> None:
    notes = EpisodeNotes(episode="m@1", opened_at=1.0, incident=None, suppressed_by="r1")
    assert EpisodeNotes.from_state(notes.to_state()) == notes
    with pytest.raises(ValueError, match="opened_at"):
        EpisodeNotes.from_state({"episode": "m@1", "opened_at": "yesterday"})
    with pytest.raises(ValueError, match="labels"):
        EpisodeNotes.from_state({"episode": "m@1", "opened_at": 1, "alert": {"labels": {"a": 1}, "annotations": {},
                                                                             "starts_at": 1}})
