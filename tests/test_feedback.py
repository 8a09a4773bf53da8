"""Feedback rules: parsing (and refusing) records, and which episode events they keep from being reported."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pensu.analyzer import Analysis
from pensu.decision import OPENED, RESOLVED
from pensu.feedback import FeedbackFilter, FeedbackRejected, Rule, parse_rule, similar_deviation
from tests.test_alerting import analysis


def opening(metric: str, ts: float, value: float = 50.0, predicted: float | None = 2.0) -> Analysis:
    a = analysis(OPENED, ts, value=value, metric=metric)
    assert a.event is not None
    return replace(a, predicted_value=predicted, event=replace(a.event, episode_id=f"{metric}@{int(ts)}",
                                                               opened_at=ts))


def resolution(metric: str, opened: float, ts: float) -> Analysis:
    a = analysis(RESOLVED, ts, metric=metric)
    assert a.event is not None
    return replace(a, event=replace(a.event, episode_id=f"{metric}@{int(opened)}", opened_at=opened))


def rules(*records: dict) -> FeedbackFilter:
    f = FeedbackFilter()
    for record in records:
        f.apply(parse_rule(record, false_positive_seconds=1000))
    return f


def test_parse_each_kind() -> None:
    fp = parse_rule({"id": "a", "kind": "false_positive", "metric": "web.x", "value": 9, "predicted_value": 2,
                     "timestamp": 100}, false_positive_seconds=50)
    assert fp == Rule("a", "false_positive", metric="web.x", value=9.0, predicted_value=2.0, until=150.0)
    mute = parse_rule({"id": "m", "kind": "mute", "pattern": "web\\.", "until": "2020-09-13T12:26:40Z",
                       "reason": "deploy"})
    assert mute == Rule("m", "mute", pattern="web\\.", until=1_600_000_000.0, reason="deploy")
    maint = parse_rule({"id": "w", "kind": "maintenance", "pattern": "db", "start": 10, "end": 20, "learn": False})
    assert (maint.start, maint.until, maint.learn) == (10.0, 20.0, False)  # type: ignore[union-attr]
    below = parse_rule({"id": "b", "kind": "ignore_below", "pattern": ".*", "threshold": 5})
    assert below.threshold == 5.0  # type: ignore[union-attr]
    assert parse_rule({"id": "m", "kind": "delete"}) == "m"
    assert parse_rule({"kind": "delete"}, default_id="from-key") == "from-key"


@pytest.mark.parametrize(("record", "reason"), [
    ([1, 2], "expected a JSON object"),
    ({"kind": "mute", "pattern": "x", "until": 5}, "id: expected a non-empty string"),
    ({"id": "x", "kind": "silence"}, "kind: expected one of"),
    ({"id": "x", "kind": "mute", "pattern": "(", "until": 5}, "pattern: invalid regular expression"),
    ({"id": "x", "kind": "mute", "pattern": "a"}, "until: a mute needs an end time"),
    ({"id": "x", "kind": "mute", "pattern": "a", "until": "tomorrow"}, "until: expected Unix seconds"),
    ({"id": "x", "kind": "maintenance", "pattern": "a", "start": 20, "end": 10}, "end: must be after start"),
    ({"id": "x", "kind": "maintenance", "pattern": "a", "start": 1, "end": 2, "learn": "no"}, "learn: expected"),
    ({"id": "x", "kind": "ignore_below", "pattern": "a", "threshold": "5"}, "threshold: expected a finite number"),
    ({"id": "x", "kind": "false_positive", "value": 1, "timestamp": 1}, "metric: expected a metric name"),
    ({"id": "x", "kind": "false_positive", "metric": "m", "value": 1}, "timestamp: expected"),
])
def test_bad_records_are_refused_with_a_reason(record: object, reason: str) -> None:
    with pytest.raises(FeedbackRejected, match=reason.replace("(", r"\(")):
        parse_rule(record)


def test_mute_until_a_time_suppresses_the_opening_and_its_resolution() -> None:
    f = rules({"id": "m", "kind": "mute", "pattern": r"web\.", "until": 1000})
    muted = f.review(opening("web.a", 900))
    assert muted.event is None and not muted.reported and muted.direction == 0
    assert muted.anomaly_score == 0.4  # scores still go out
    assert f.review(resolution("web.a", 900, 1100)).event is None  # its resolution stays quiet too
    assert f.review(opening("web.a", 1000)).event is not None  # the mute ended
    assert f.review(opening("db.a", 900)).event is not None  # another pattern


def test_maintenance_window_and_learning() -> None:
    f = rules({"id": "w", "kind": "maintenance", "pattern": "db", "start": 100, "end": 200, "learn": False},
              {"id": "v", "kind": "maintenance", "pattern": "web", "start": 100, "end": 200})
    assert f.review(opening("db.a", 99)).event is not None
    assert f.review(opening("db.b", 100)).event is None
    assert f.review(opening("db.c", 200)).event is not None
    assert f.review(opening("web.a", 150)).event is None
    assert not f.learns("db.a", 150) and f.learns("db.a", 200) and f.learns("web.a", 150)


def test_ignore_below() -> None:
    f = rules({"id": "b", "kind": "ignore_below", "pattern": "disk", "threshold": 10})
    assert f.review(opening("disk.free", 1, value=9.5)).event is None
    assert f.review(opening("disk.free", 2, value=10.0)).event is not None


def test_false_positive_mutes_similar_deviations_for_its_period() -> None:
    f = rules({"id": "fp", "kind": "false_positive", "metric": "web.a", "value": 50, "predicted_value": 2,
               "timestamp": 100})
    assert f.review(opening("web.a", 500, value=60, predicted=5)).event is None  # +55 vs +48: similar
    assert f.review(opening("web.a", 600, value=120, predicted=2)).event is not None  # +118: far bigger
    assert f.review(opening("web.a", 700, value=-40, predicted=2)).event is not None  # other side
    assert f.review(opening("web.b", 800, value=50, predicted=2)).event is not None  # other metric
    assert f.review(opening("web.a", 1101, value=50, predicted=2)).event is not None  # past 100 + 1000 s
    assert similar_deviation(3.0, None, 3.0, None) and not similar_deviation(3.0, None, 4.0, 1.0)


def test_rules_are_replaced_and_deleted_by_id() -> None:
    f = rules({"id": "m", "kind": "mute", "pattern": "web", "until": 1000})
    f.apply(parse_rule({"id": "m", "kind": "mute", "pattern": "db", "until": 1000}))
    assert [r.pattern for r in f.rules()] == ["db"]
    assert f.review(opening("web.a", 1)).event is not None
    f.delete("m")
    assert f.rules() == [] and f.review(opening("db.a", 1)).event is not None
