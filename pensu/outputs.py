"""Turn an `Analysis` into the records Pensu produces (README "Input and output contract").

Pure: returns `OutputRecord`s (topic, key, value); the Kafka edge only sends them.
Every record is keyed by the input metric name so downstream consumers keep per-metric order.
A JSON report goes out when an anomaly episode opens (`event: "opened"`) and when it resolves
(`event: "resolved"`), on the same topic and key, so a consumer pairs them by `episode_id`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pensu.analyzer import Analysis, Thresholds
from pensu.carbon import format_line, format_report, output_metric_name, own_output_prefixes


@dataclass(frozen=True, slots=True)
class OutputTopics:
    """The three output topics."""

    anomaly_metrics: str = "pensu.htm.anomaly_metrics"
    prediction_metrics: str = "pensu.htm.predictions"
    anomaly_reports: str = "pensu_anomalies"


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class OutputFormatter:
    """Renders analyses as carbon lines and JSON reports."""

    def __init__(self, topics: OutputTopics, name_template: str, thresholds: Thresholds, instance: str,
                 report_fields: Callable[[Analysis], Mapping[str, object]] | None = None,
                 other_output_prefixes: tuple[str, ...] = ()) -> None:
        self.topics = topics
        # Names of lines Pensu emits: every output kind rendered from the template, plus the
        # prefixes of other carbon lines it sends (e.g. namespace anomaly rates).
        self.own_prefixes = own_output_prefixes(name_template) + tuple(other_output_prefixes)
        self.report_fields = report_fields  # extra report fields (namespace, incident: pensu.namespaces)
        self.template = name_template
        self.thresholds = thresholds
        self.instance = instance
        # Every record names its producer, so outputs can be attributed across a consumer group.
        self.headers: tuple[tuple[str, bytes], ...] = (("pensu-instance", instance.encode("utf-8")),)
        self._names: dict[tuple[str, str], str] = {}

    def is_own_output(self, metric: str) -> bool:
        """True for a name this formatter (or the other emitters it was told of) produces.

        Such lines reaching the input topic again are skipped, never modelled: with the default
        template those are `pensu.<kind>.metrics_analyzer.<metric>`; other `pensu.*` names are
        modelled like any metric.
        """
        return metric.startswith(self.own_prefixes)

    def name(self, kind: str, metric: str) -> str:
        """The output metric name of `kind` for `metric` (memoised: names repeat every sample)."""
        key = (kind, metric)
        name = self._names.get(key)
        if name is None:
            if len(self._names) > 200_000:  # bound the memo under a cardinality flood
                self._names.clear()
            name = self._names[key] = output_metric_name(self.template, kind, metric)
        return name

    def records(self, analysis: Analysis) -> list[OutputRecord]:
        """All records for one analysis: 3 anomaly lines, 2 prediction lines (4 with the band), maybe a report."""
        metric = analysis.metric
        key = metric.encode("utf-8")
        ts = analysis.timestamp
        h = self.headers
        anomaly, prediction = self.topics.anomaly_metrics, self.topics.prediction_metrics
        out = [
            OutputRecord(anomaly, key, format_line(self.name("anomaly_score", metric), analysis.anomaly_score, ts), h),
            OutputRecord(anomaly, key, format_line(self.name("anomaly_likelihood", metric),
                                                   analysis.anomaly_likelihood, ts), h),
            OutputRecord(anomaly, key, format_line(self.name("anomaly_direction", metric), analysis.direction, ts), h),
        ]
        if analysis.forecast is not None and analysis.forecast_timestamp is not None:
            ts_pred = analysis.forecast_timestamp
            out.append(OutputRecord(prediction, key,
                                    format_line(self.name("prediction", metric), analysis.forecast, ts_pred), h))
            out.append(OutputRecord(prediction, key, format_line(self.name("prediction_confidence", metric),
                                                                 analysis.forecast_confidence, ts_pred), h))
            if analysis.forecast_lower is not None and analysis.forecast_upper is not None:
                out.append(OutputRecord(prediction, key, format_line(self.name("prediction_lower", metric),
                                                                     analysis.forecast_lower, ts_pred), h))
                out.append(OutputRecord(prediction, key, format_line(self.name("prediction_upper", metric),
                                                                     analysis.forecast_upper, ts_pred), h))
        if analysis.event is not None:
            out.append(OutputRecord(self.topics.anomaly_reports, key, format_report(self.report(analysis)), h))
        return out

    def report(self, analysis: Analysis) -> dict[str, object]:
        """The JSON report of an analysis with an episode event (opened or resolved)."""
        report: dict[str, object] = {
            "metric": analysis.metric,
            "timestamp": analysis.timestamp,
            "value": analysis.value,
            "predicted_value": analysis.predicted_value,
            "prediction_confidence": analysis.prediction_confidence,
            "predicted_lower": analysis.predicted_lower,
            "predicted_upper": analysis.predicted_upper,
            "anomaly_score": analysis.anomaly_score,
            "anomaly_likelihood": analysis.anomaly_likelihood,
            "direction": analysis.direction,
            "thresholds": self.thresholds.as_dict(),
            "model_age": analysis.model_age,
            "pensu_instance": self.instance,
        }
        event = analysis.event
        if event is not None:
            report.update({
                "event": event.event,
                "episode_id": event.episode_id,
                "episode_opened_at": event.opened_at,
                "severity": event.severity,
                "reason": event.reason,
                "expected_range": None if event.expected_range is None else list(event.expected_range),
                "episode_samples": event.samples,
                "anomalous_samples": event.anomalous_samples,
            })
        if self.report_fields is not None:
            report.update(self.report_fields(analysis))
        return report
