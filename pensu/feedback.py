"""Feedback rules: false positives, mutes, maintenance windows, ignore-below; pure logic, no I/O.

A rule is one JSON object (from the feedback topic or `POST /feedback`; pensu.feedback_io):

    {"id": "...", "kind": "false_positive", "metric": M, "value": V, "predicted_value": P,
     "timestamp": T, ["until": U], ["reason": "..."]}     # a report marked wrong
    {"id": "...", "kind": "mute", "pattern": RE, "until": U, ["reason"]}
    {"id": "...", "kind": "maintenance", "pattern": RE, "start": S, "end": E, ["learn": false], ["reason"]}
    {"id": "...", "kind": "ignore_below", "pattern": RE, "threshold": X, ["until": U], ["reason"]}
    {"id": "...", "kind": "delete"}                         # removes the rule with that id

Patterns use `re.match` like PENSU_ALLOWED_TO_WORK_ON_METRICS; times are Unix seconds or ISO 8601
strings (UTC unless they carry an offset) and are compared with *sample* timestamps, so replay
and backfill obey a rule the same way live data does. `id` names the rule (the feedback topic's
key; a later record with the same id replaces it). A bad record raises `FeedbackRejected` with
the reason; nothing about it is applied.

What rules do (`FeedbackFilter.review`, on every analysis before its outputs are rendered): an
episode that would open on a metric matched by an active rule is *not reported* — no JSON
report, no alert, direction 0 — and neither is its resolution; its scores still go out and the
model still learns. The suppressing rule is logged (id, kind, reason). Matching:

- `mute`: sample time < until;
- `maintenance`: start ≤ sample time < end; with `"learn": false` the samples in the window are
  not learned either (`learns`), so a planned outage does not teach the model its shape;
- `ignore_below`: the opening sample's value < threshold (and sample time < until when given);
- `false_positive`: the same metric, sample time ≤ until (default: the report's time +
  PENSU_FEEDBACK_FALSE_POSITIVE_SECONDS), and a *similar deviation*: on the same side of the
  prediction as the marked report, and no further from the prediction than
  `SIMILAR_DEVIATION_FACTOR` × the marked report's distance. A bigger deviation still alerts.

The suppression of an open episode is noted in the metric's checkpoint (pensu.episode_notes) so
its resolution stays unreported after a restart, even if the rule is gone by then. `pensu replay`
applies the same rules through `OfflineFeedback` (read from a file or the topic; feedback_io).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pensu.analyzer import Analysis
from pensu.decision import OPENED, RESOLVED
from pensu.errors import PensuError

log = logging.getLogger(__name__)

KINDS = ("false_positive", "mute", "maintenance", "ignore_below")
SIMILAR_DEVIATION_FACTOR = 1.5
MAX_ID_LENGTH = 200
MAX_SUPPRESSED_EPISODES = 100_000


class FeedbackRejected(PensuError):
    """A feedback record that cannot be applied; the message is the reason."""


@dataclass(frozen=True)
class Rule:
    """One active feedback rule."""

    id: str
    kind: str
    pattern: str | None = None  # regex (mute, maintenance, ignore_below)
    metric: str | None = None  # false_positive
    value: float | None = None  # false_positive: the marked report's value
    predicted_value: float | None = None  # false_positive
    start: float | None = None  # maintenance
    until: float | None = None  # end of the rule (maintenance: its end)
    threshold: float | None = None  # ignore_below
    learn: bool = True  # maintenance: learn the window's samples
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The rule as listed by GET /rules (unset fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None and not (k == "learn" and v)}

    def matches(self, metric: str, timestamp: float) -> bool:
        """True when the rule covers `metric` at sample time `timestamp` (deviation checks aside)."""
        if self.kind == "false_positive":
            return metric == self.metric and (self.until is None or timestamp <= self.until)
        assert self.pattern is not None
        if re.match(self.pattern, metric) is None:
            return False
        if self.start is not None and timestamp < self.start:
            return False
        if self.until is not None:
            return timestamp < self.until
        return True

    def suppresses(self, analysis: Analysis) -> bool:
        """True when the rule keeps the episode opening on `analysis` from being reported."""
        if not self.matches(analysis.metric, analysis.timestamp):
            return False
        if self.kind == "ignore_below":
            assert self.threshold is not None
            return analysis.value < self.threshold
        if self.kind == "false_positive":
            return similar_deviation(analysis.value, analysis.predicted_value, self.value, self.predicted_value)
        return True


def similar_deviation(value: float, predicted: float | None, marked_value: float | None,
                      marked_predicted: float | None) -> bool:
    """Same side of the prediction as the marked report and at most SIMILAR_DEVIATION_FACTOR × as far."""
    if marked_value is None:
        return False
    if predicted is None or marked_predicted is None:
        return value == marked_value
    marked = marked_value - marked_predicted
    deviation = value - predicted
    if marked == 0:
        return deviation == 0
    return deviation * marked > 0 and abs(deviation) <= SIMILAR_DEVIATION_FACTOR * abs(marked)


# -- parsing ---------------------------------------------------------------------------------
def parse_time(value: Any, field: str) -> float:
    """Unix seconds or an ISO 8601 string (UTC unless offset given) as Unix seconds."""
    if isinstance(value, bool):
        raise FeedbackRejected(f"{field}: expected Unix seconds or an ISO 8601 time, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise FeedbackRejected(f"{field}: not a finite time")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FeedbackRejected(f"{field}: expected Unix seconds or an ISO 8601 time, got {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise FeedbackRejected(f"{field}: expected Unix seconds or an ISO 8601 time, got {value!r}")


def _number(record: Mapping[str, Any], field: str, required: bool = True) -> float | None:
    value = record.get(field)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FeedbackRejected(f"{field}: expected a finite number, got {value!r}")
    return float(value)


def _pattern(record: Mapping[str, Any]) -> str:
    pattern = record.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise FeedbackRejected(f"pattern: expected a regular expression, got {pattern!r}")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise FeedbackRejected(f"pattern: invalid regular expression ({exc})") from None
    return pattern


def parse_rule(record: Any, default_id: str | None = None,
               false_positive_seconds: float = 7 * 86400.0) -> Rule | str:
    """A rule from a decoded JSON record; for `delete` records, the id to delete."""
    if not isinstance(record, dict):
        raise FeedbackRejected("expected a JSON object")
    rule_id = record.get("id", default_id)
    if not isinstance(rule_id, str) or not rule_id or len(rule_id) > MAX_ID_LENGTH:
        raise FeedbackRejected(f"id: expected a non-empty string of at most {MAX_ID_LENGTH} characters, "
                               f"got {rule_id!r}")
    kind = record.get("kind")
    if kind == "delete":
        return rule_id
    if kind not in KINDS:
        raise FeedbackRejected(f"kind: expected one of {', '.join(KINDS)} or delete, got {kind!r}")
    reason = record.get("reason", "")
    if not isinstance(reason, str):
        raise FeedbackRejected("reason: expected a string")
    until = None if record.get("until") is None else parse_time(record["until"], "until")
    if kind == "false_positive":
        metric = record.get("metric")
        if not isinstance(metric, str) or not metric:
            raise FeedbackRejected(f"metric: expected a metric name, got {metric!r}")
        value = _number(record, "value")
        predicted = _number(record, "predicted_value", required=False)
        timestamp = parse_time(record.get("timestamp"), "timestamp")
        return Rule(rule_id, kind, metric=metric, value=value, predicted_value=predicted,
                    until=until if until is not None else timestamp + false_positive_seconds, reason=reason)
    pattern = _pattern(record)
    if kind == "mute":
        if until is None:
            raise FeedbackRejected("until: a mute needs an end time")
        return Rule(rule_id, kind, pattern=pattern, until=until, reason=reason)
    if kind == "maintenance":
        start = parse_time(record.get("start"), "start")
        end = parse_time(record.get("end"), "end")
        if end <= start:
            raise FeedbackRejected("end: must be after start")
        learn = record.get("learn", True)
        if not isinstance(learn, bool):
            raise FeedbackRejected(f"learn: expected true or false, got {learn!r}")
        return Rule(rule_id, kind, pattern=pattern, start=start, until=end, learn=learn, reason=reason)
    return Rule(rule_id, kind, pattern=pattern, threshold=_number(record, "threshold"), until=until, reason=reason)


# -- applying ----------------------------------------------------------------------------------
class FeedbackFilter:
    """The active rules and the episodes they suppressed; thread-safe enough for one writer
    (the feedback reader) and one reader (the consume loop): rules are replaced, never mutated."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}
        self._suppressed: dict[str, str] = {}  # episode id -> rule id, until the episode resolves

    def apply(self, parsed: Rule | str) -> None:
        """Add or replace a rule, or delete one by id."""
        rules = dict(self._rules)
        if isinstance(parsed, str):
            rules.pop(parsed, None)
        else:
            rules[parsed.id] = parsed
        self._rules = rules

    def delete(self, rule_id: str) -> None:
        """Remove a rule (a tombstone on the feedback topic)."""
        self.apply(rule_id)

    def rules(self) -> list[Rule]:
        """The current rules, by id."""
        return sorted(self._rules.values(), key=lambda r: r.id)

    def learns(self, metric: str, timestamp: float) -> bool:
        """False inside a maintenance window with learning off."""
        return not any(r.kind == "maintenance" and not r.learn and r.matches(metric, timestamp)
                       for r in self._rules.values())

    def review(self, analysis: Analysis) -> Analysis:
        """`analysis`, or a copy that reports nothing when a rule suppresses its episode event."""
        event = analysis.event
        if event is None:
            return analysis
        if event.event == RESOLVED:
            if self._suppressed.pop(event.episode_id, None) is None:
                return analysis
            return replace(analysis, event=None)
        if event.event != OPENED:
            return analysis
        rule = next((r for r in self._rules.values() if r.suppresses(analysis)), None)
        if rule is None:
            return analysis
        if len(self._suppressed) >= MAX_SUPPRESSED_EPISODES:
            self._suppressed.clear()
        self._suppressed[event.episode_id] = rule.id
        log.info("not reporting the anomaly of %s at %s (value %r): feedback rule %r (%s%s)", analysis.metric,
                 analysis.timestamp, analysis.value, rule.id, rule.kind, f": {rule.reason}" if rule.reason else "")
        return replace(analysis, reported=False, event=None, direction=0)

    def adopt(self, episode_id: str, rule_id: str) -> None:
        """Remember that `rule_id` suppressed an episode that opened before a restart or on the metric's
        previous owner (from its checkpoint), so its resolution is not reported either."""
        if episode_id not in self._suppressed:
            if len(self._suppressed) >= MAX_SUPPRESSED_EPISODES:
                self._suppressed.clear()
            self._suppressed[episode_id] = rule_id

    def suppressed_by(self, episode_id: str) -> str | None:
        """The rule that suppressed an open episode, if any."""
        return self._suppressed.get(episode_id)


class OfflineFeedback:
    """Rules applied outside the service (`pensu replay`), counting what they did: reports kept back
    per rule and samples not learned, so a backtest shows what a user would have received."""

    def __init__(self, rules: FeedbackFilter, source: str) -> None:
        self.rules = rules
        self.source = source  # where the rules came from, for the summary
        self.suppressed: dict[str, int] = {}  # rule id -> reports (openings) not sent
        self.not_learned = 0

    def learns(self, metric: str, timestamp: float) -> bool:
        """False (and counted) inside a maintenance window with learning off."""
        if self.rules.learns(metric, timestamp):
            return True
        self.not_learned += 1
        return False

    def review(self, analysis: Analysis) -> Analysis:
        """`FeedbackFilter.review`, counting suppressed openings by rule."""
        reviewed = self.rules.review(analysis)
        event = analysis.event
        if event is not None and event.event == OPENED and reviewed.event is None:
            rule = self.rules.suppressed_by(event.episode_id) or "?"
            self.suppressed[rule] = self.suppressed.get(rule, 0) + 1
        return reviewed

    def summary(self) -> str:
        """One line: the rules, what they suppressed and what they kept from learning."""
        count = len(self.rules.rules())
        by_rule = ", ".join(f"{rule}: {n}" for rule, n in sorted(self.suppressed.items()))
        total = sum(self.suppressed.values())
        return (f"feedback rules from {self.source}: {count} rule{'s' if count != 1 else ''}; "
                f"{total} report{'s' if total != 1 else ''} not sent{f' ({by_rule})' if by_rule else ''}; "
                f"{self.not_learned} sample{'s' if self.not_learned != 1 else ''} not learned "
                f"(maintenance with learn: false)")
