"""One consumed message → parsed samples → routed to analyzers → output records.

Pure logic between the Kafka edges: no sockets, no threads. Data flows one way, top to bottom
of `Pipeline.process`: parse → filter (own outputs, allow-list) → `registry.get` → replay check
→ feedback rules → `analyzer.process` (which refuses what it cannot learn) → `formatter.records`.
Nothing a message contains can raise out of `Pipeline.process`: every bad line becomes a
counted `Rejection` (and a dead-letter record when that topic is configured).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pensu.analyzer import Analysis
from pensu.carbon import Rejection, Sample, parse_message
from pensu.errors import LineRejected
from pensu.outputs import OutputFormatter, OutputRecord
from pensu.provenance import ReplayVerdict
from pensu.registry import ModelRegistry

log = logging.getLogger(__name__)

DEAD_LETTER_MAX_BYTES = 64 * 1024  # a dead-lettered line is truncated beyond this


@dataclass
class PipelineEvents:
    """Callbacks the service wires to Prometheus; all optional."""

    sample: Callable[[float], None] = lambda seconds: None  # one analyzer step took `seconds`
    rejected: Callable[[str], None] = lambda reason: None
    skipped: Callable[[str], None] = lambda reason: None  # not_allowed | own_output | replayed
    reported: Callable[[], None] = lambda: None
    # Feedback rules (pensu.feedback): may a sample be learned; the analysis to render (rules
    # can turn an episode event into none). `analysed` also feeds namespaces and alerts.
    learns: Callable[[str, float], bool] = lambda metric, timestamp: True
    analysed: Callable[[Analysis], Analysis] = lambda analysis: analysis


@dataclass
class MessageResult:
    """What processing one Kafka message produced."""

    records: list[OutputRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    metrics: set[str] = field(default_factory=set)  # metrics whose analyzers learned something
    samples: int = 0


class Pipeline:
    """Routes the samples of consumed messages to their analyzers and renders the outputs."""

    def __init__(self, registry: ModelRegistry, formatter: OutputFormatter, allowed: re.Pattern[str],
                 dead_letter_topic: str | None = None, events: PipelineEvents | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.registry = registry
        self.formatter = formatter
        self.allowed = allowed
        self.dead_letter_topic = dead_letter_topic or None
        self.events = events or PipelineEvents()
        self._clock = clock
        self._logged_reasons: set[str] = set()
        self._logged_replays: set[tuple[str, str]] = set()

    def process(self, payload: bytes | None, source: str = "", offset: int = -1,
                origin: str | None = None) -> MessageResult:
        """Process one message value; `source` ("topic:partition") and `offset` locate it, and
        `origin` (a `TopicIncarnation` key, None if unknown) says which cluster and topic
        incarnation those offsets belong to."""
        result = MessageResult()
        samples, rejections = parse_message(payload)
        for rejection in rejections:
            self._reject(result, rejection, source, offset)
        for line_no, sample in enumerate(samples):
            metric = sample.metric
            if self.formatter.is_own_output(metric):
                self.events.skipped("own_output")
                continue
            if self.allowed.match(metric) is None:
                self.events.skipped("not_allowed")
                continue
            analyzer = self.registry.get(metric)
            if source:
                verdict = analyzer.replay_verdict(source, offset, line_no, sample.timestamp, origin)
                if verdict is not None:
                    self._log_replay(source, offset, metric, verdict)
                    self.events.skipped("replayed")
                    continue
            if not self.events.learns(metric, sample.timestamp):
                self.events.skipped("maintenance")
                continue
            started = self._clock()
            try:
                analysis = analyzer.process(sample.timestamp, sample.value, source or None, offset, line_no,
                                            origin)
            except LineRejected as exc:  # out of order, duplicate, value out of the encoder's range
                self._reject(result, Rejection(exc.reason, exc.detail, _raw(sample)), source, offset)
                continue
            except (ArithmeticError, ValueError) as exc:
                # Last line of defence: one sample the model cannot digest must not stop the loop.
                self._reject(result, Rejection("model_error", f"{type(exc).__name__}: {exc}", _raw(sample)),
                             source, offset)
                continue
            self.events.sample(self._clock() - started)
            result.samples += 1
            result.metrics.add(metric)
            analysis = self.events.analysed(analysis)
            records = self.formatter.records(analysis)
            if analysis.reported:
                self.events.reported()
            result.records.extend(records)
        return result

    def _log_replay(self, source: str, offset: int, metric: str, verdict: ReplayVerdict) -> None:
        if (source, verdict.by) in self._logged_replays:
            return
        # Once per source and kind of proof; pensu_duplicate_samples_skipped_total counts them all.
        self._logged_replays.add((source, verdict.by))
        log.info("skipping samples already learned at %s (first: %s at offset %d): %s; further skips there "
                 "are only counted", source, metric, offset, verdict.detail)

    def _reject(self, result: MessageResult, rejection: Rejection, source: str, offset: int) -> None:
        result.rejections.append(rejection)
        self.events.rejected(rejection.reason)
        if rejection.reason not in self._logged_reasons:
            # Logged once per reason per process; the counter carries the volume.
            self._logged_reasons.add(rejection.reason)
            log.warning("rejected a line (%s) at %s@%s: %s; raw=%r (further '%s' rejections are only counted)",
                        rejection.reason, source or "-", offset, rejection.detail,
                        rejection.raw[:200], rejection.reason)
        if self.dead_letter_topic:
            headers = (("pensu-reason", rejection.reason.encode()),
                       ("pensu-detail", rejection.detail.encode("utf-8", "replace")[:1024]),
                       ("pensu-source", f"{source}@{offset}".encode()))
            result.records.append(OutputRecord(self.dead_letter_topic, None,
                                               bytes(rejection.raw[:DEAD_LETTER_MAX_BYTES]), headers))


def _raw(sample: Sample) -> bytes:
    """A sample as a carbon line again, for rejections of lines that parsed."""
    return f"{sample.metric} {sample.value!r} {sample.timestamp!r}".encode()
