"""Alertmanager alerts from anomaly episodes: firing when one opens, resolved when it resolves.

Payload (Alertmanager API v2, `POST <PENSU_ALERTMANAGER_URL>/api/v2/alerts`, a JSON list of
postableAlert objects): `labels` identify the alert — `alertname=PensuAnomaly`, `metric`,
`namespace` (pensu.namespaces) and `severity` (`critical` when the opening sample's final
score is at least `CRITICAL_SCORE`, i.e. a value outside the range seen; else `warning`);
`annotations` carry the opening sample's value, prediction, expected range, score,
likelihood, reason, episode and incident ids and the instance; `startsAt` is the opening
sample's time; `endsAt` is set on every alert (RFC 3339, UTC).

Re-sending: like Prometheus, the firing alerts of open episodes are re-sent every
PENSU_ALERTMANAGER_RESEND_INTERVAL with `endsAt` = now + `ENDS_AT_INTERVALS` intervals. An
open episode keeps its alert firing however long it lasts, and an instance that stops or
loses the metric's partition stops re-sending, so its alerts resolve on their own instead
of firing forever (an unset endsAt would make Alertmanager resolve them after its own
resolve_timeout, 5 min by default, whatever the episode). A resolved episode sends the same
labels with `endsAt` = the resolving sample's time. The firing alert of an open episode is
remembered from its opening, in memory and in the metric's checkpoint (pensu.episode_notes,
`Alert.to_state`): the instance that loads that checkpoint next — after a restart, or as the
partition's new owner — `adopt`s it on the metric's next sample, re-sends it while the episode
stays open and resolves exactly it. Only an episode whose opening left no note (a checkpoint older than
analyzer format 4, alerting switched on since) resolves both severities — Alertmanager
notifies nobody about a resolved alert it never notified as firing.

With episodes off (PENSU_EPISODE_QUIET_SAMPLES=0) nothing resolves: each report's alert is
posted once (`lasting=False`) and ends on its own at its `endsAt`, never re-sent.

Delivery never blocks the consume loop: `AlertSender.submit` only appends to a bounded queue
(`MAX_QUEUE`); a daemon thread posts batches with a timeout and retries a failed post with
exponential backoff (`RETRY_DELAYS`). Alerts that do not fit the queue or exhaust their
retries are dropped and counted (`pensu_alerts_dropped_total{reason}`); a 4xx answer is not
retried (the payload would be refused again).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter

from pensu.analyzer import Analysis
from pensu.decision import OPENED, RESOLVED
from pensu.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

ALERT_NAME = "PensuAnomaly"
API_PATH = "/api/v2/alerts"
CRITICAL_SCORE = 1.0  # final score of a value outside the range seen
SEVERITIES = ("warning", "critical")
ENDS_AT_INTERVALS = 4  # a firing alert's endsAt, in re-send intervals ahead (Prometheus uses 4 too)
MAX_QUEUE = 10_000  # alerts waiting to be posted
MAX_BATCH = 500  # alerts per POST
POST_TIMEOUT_SECONDS = 5.0
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds before each retry of a failed POST
STOP_FLUSH_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert as Pensu knows it; `ends_at` None while firing (set when posted)."""

    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    starts_at: float
    ends_at: float | None = None

    def to_state(self) -> dict[str, object]:
        """The firing alert as msgpack/JSON-native values (kept in the metric's checkpoint)."""
        return {"labels": dict(self.labels), "annotations": dict(self.annotations), "starts_at": self.starts_at}

    @classmethod
    def from_state(cls, state: object) -> Alert:
        """An alert from `to_state()` output; ValueError when it is not one."""
        if not isinstance(state, dict):
            raise ValueError("an alert is a map")
        labels, annotations, starts_at = state.get("labels"), state.get("annotations"), state.get("starts_at")
        if not isinstance(labels, dict) or not labels or not isinstance(annotations, dict):
            raise ValueError("alert labels and annotations must be maps")
        pairs = [*labels.items(), *annotations.items()]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            raise ValueError("alert labels and annotations must map strings to strings")
        if isinstance(starts_at, bool) or not isinstance(starts_at, (int, float)):
            raise ValueError(f"alert starts_at must be a number, got {starts_at!r}")
        return cls(labels=tuple(labels.items()), annotations=tuple(annotations.items()), starts_at=float(starts_at))

    def payload(self, ends_at: float) -> dict[str, object]:
        """The postableAlert object, with `ends_at` unless the alert already ended."""
        end = self.ends_at if self.ends_at is not None else ends_at
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            # Alertmanager refuses an alert ending before it starts (data time may run ahead of now).
            "endsAt": rfc3339(max(end, self.starts_at)),
        }


def rfc3339(ts: float) -> str:
    """A Unix timestamp as RFC 3339 UTC with milliseconds."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def severity_label(final_score: float) -> str:
    """`critical` for a value outside the range seen, else `warning`."""
    return "critical" if final_score >= CRITICAL_SCORE else "warning"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def alert_for(analysis: Analysis, namespace: str, incident: str | None, instance: str) -> Alert:
    """The firing alert of the episode that opened on `analysis`."""
    event = analysis.event
    assert event is not None and event.event == OPENED
    band = event.expected_range
    labels = (("alertname", ALERT_NAME), ("metric", analysis.metric), ("namespace", namespace),
              ("severity", severity_label(event.severity)))
    annotations = (
        ("summary", f"{analysis.metric} anomalous ({event.reason}): value {_number(analysis.value)}, "
                    f"expected {'?' if band is None else f'{_number(band[0])}..{_number(band[1])}'}"),
        ("value", _number(analysis.value)),
        ("prediction", _number(analysis.predicted_value)),
        ("expected_range", "" if band is None else f"{_number(band[0])}..{_number(band[1])}"),
        ("score", _number(event.severity)),
        ("anomaly_score", _number(analysis.anomaly_score)),
        ("likelihood", _number(analysis.anomaly_likelihood)),
        ("reason", event.reason),
        ("episode_id", event.episode_id),
        ("incident", incident or ""),
        ("pensu_instance", instance),
    )
    return Alert(labels=labels, annotations=annotations, starts_at=event.opened_at)


def resolved_alerts(analysis: Analysis, namespace: str, opened: Alert | None) -> list[Alert]:
    """The alert(s) that end the episode resolved on `analysis` (both severities if its opening is unknown)."""
    event = analysis.event
    assert event is not None and event.event == RESOLVED
    if opened is not None:
        return [replace(opened, ends_at=analysis.timestamp)]
    return [Alert(labels=(("alertname", ALERT_NAME), ("metric", analysis.metric), ("namespace", namespace),
                          ("severity", severity)),
                  annotations=(("reason", event.reason), ("episode_id", event.episode_id)),
                  starts_at=event.opened_at, ends_at=analysis.timestamp)
            for severity in SEVERITIES]


def alerts_url(base: str) -> str:
    """The v2 alerts endpoint under an Alertmanager base URL (a URL already ending in it is kept)."""
    base = base.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


class AlertSender:
    """Posts alerts to Alertmanager from a daemon thread; `submit`/`forget` never block on the network."""

    def __init__(self, url: str, registry: CollectorRegistry, instance: str, resend_interval: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS) -> None:
        self.url = alerts_url(url)
        self.instance = instance
        self.resend_interval = resend_interval
        self._clock = clock
        self._retry_delays = retry_delays
        self._queue: deque[Alert] = deque()
        self._firing: dict[str, Alert] = {}  # metric -> firing alert of its open episode
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(log, 60.0)
        self.sent = Counter("pensu_alerts_sent", "Alerts accepted by Alertmanager.", registry=registry)
        self.dropped = Counter("pensu_alerts_dropped", "Alerts never delivered to Alertmanager, by reason "
                               "(queue_full, unreachable, refused).", ["reason"], registry=registry)
        self.post_failures = Counter("pensu_alertmanager_post_failures", "Failed POSTs to Alertmanager "
                                     "(each retry counts).", registry=registry)

    # -- called from the consume loop ------------------------------------------------------
    def episode_event(self, analysis: Analysis, namespace: str, incident: str | None,
                      lasting: bool = True) -> Alert | None:
        """Queue the alert of an episode that opened or resolved on `analysis`; the firing alert of an
        opening. `lasting=False` (episodes off: nothing will resolve it) posts it once, never re-sent."""
        event = analysis.event
        if event is None:
            return None
        alert = None
        with self._lock:
            if event.event == OPENED:
                alert = alert_for(analysis, namespace, incident, self.instance)
                if lasting:
                    self._firing[analysis.metric] = alert
                else:
                    self._firing.pop(analysis.metric, None)
                self._enqueue([alert])
            elif event.event == RESOLVED:
                opened = self._firing.pop(analysis.metric, None)
                self._enqueue(resolved_alerts(analysis, namespace, opened))
        self._wake.set()
        return alert

    def adopt(self, metric: str, alert: Alert) -> None:
        """Take over the firing alert of the metric's open episode, fired before a restart or by the
        metric's previous owner (from its checkpoint); kept if this instance already knows one."""
        with self._lock:
            self._firing.setdefault(metric, alert)

    def firing(self, metric: str) -> Alert | None:
        """The firing alert of the metric's open episode, if this instance knows one."""
        with self._lock:
            return self._firing.get(metric)

    def forget(self, metric: str) -> None:
        """Stop re-sending the metric's alert (its partition moved to another instance)."""
        with self._lock:
            self._firing.pop(metric, None)

    def _enqueue(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            if len(self._queue) >= MAX_QUEUE:
                self.dropped.labels(reason="queue_full").inc()
                self._log.log(logging.WARNING, "alert queue full (%d): dropping alerts", MAX_QUEUE)
                continue
            self._queue.append(alert)

    # -- the sender thread -----------------------------------------------------------------
    def start(self) -> None:
        """Start the sender thread."""
        self._thread = threading.Thread(target=self._run, name="pensu-alerts", daemon=True)
        self._thread.start()
        log.info("alerting: posting episode alerts to %s", self.url)

    def stop(self) -> None:
        """Post what is queued (bounded by STOP_FLUSH_SECONDS) and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(STOP_FLUSH_SECONDS + POST_TIMEOUT_SECONDS)
            self._thread = None

    def _run(self) -> None:
        next_resend = self._clock() + self.resend_interval
        while True:
            self._wake.wait(timeout=max(0.0, min(1.0, next_resend - self._clock())))
            self._wake.clear()
            if self._stop.is_set():
                self._drain(deadline=time.monotonic() + STOP_FLUSH_SECONDS)
                return
            if self._clock() >= next_resend:
                next_resend = self._clock() + self.resend_interval
                with self._lock:
                    # Re-sent firing alerts go first, then what queued meanwhile (a resolution of
                    # the same alert must arrive after its last firing copy).
                    self._queue.extendleft(reversed(list(self._firing.values())))
            self._drain(deadline=None)

    def _drain(self, deadline: float | None) -> None:
        """Post the queue; with a `deadline` (stopping) each batch gets one attempt until it passes."""
        while deadline is not None or not self._stop.is_set():  # stopping: the final drain takes over
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            if not batch:
                return
            if deadline is not None and time.monotonic() > deadline:
                self.dropped.labels(reason="unreachable").inc(len(batch))
                continue
            self._post_with_retries(batch, final=deadline is not None)

    def _post_with_retries(self, batch: list[Alert], final: bool) -> None:
        body = json.dumps([a.payload(self._clock() + ENDS_AT_INTERVALS * self.resend_interval)
                           for a in batch]).encode()
        delays = () if final else self._retry_delays
        for attempt in range(len(delays) + 1):
            outcome = self._post(body)
            if outcome == "ok":
                self.sent.inc(len(batch))
                return
            self.post_failures.inc()
            if outcome == "refused":
                self.dropped.labels(reason="refused").inc(len(batch))
                return
            if attempt < len(delays) and self._stop.wait(delays[attempt]):
                # Stopping: put the batch back for the final drain's single attempt.
                with self._lock:
                    self._queue.extendleft(reversed(batch))
                return
        self.dropped.labels(reason="unreachable").inc(len(batch))
        self._log.log(logging.WARNING, "Alertmanager at %s unreachable: dropped %d alerts after %d attempts",
                      self.url, len(batch), len(delays) + 1)

    def _post(self, body: bytes) -> str:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS) as response:
                response.read()
            return "ok"
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                self._log.log(logging.ERROR, "Alertmanager refused alerts (HTTP %d): %s", exc.code, detail)
                return "refused"
            self._log.log(logging.WARNING, "Alertmanager answered HTTP %d: %s", exc.code, detail)
            return "retry"
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets
            self._log.log(logging.WARNING, "cannot reach Alertmanager at %s: %s", self.url, exc)
            return "retry"
