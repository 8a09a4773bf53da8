"""`MetricAnalyzer`: one metric's prediction model, anomaly model and decision rule.

Per sample it returns an `Analysis`: raw anomaly score and likelihood from the anomaly model,
a forecast `prediction_steps` samples ahead from the prediction model, the prediction that
was made earlier *for this sample* (used for the direction and the report), and the decision
of `pensu.decision` (the rule, the episode state machine and their documentation live there):
whether the sample is anomalous, whether an episode opened on it (`reported`: a report is
emitted) and the episode event (opened/resolved) if any. The episode state is per metric and
is saved with the models (format version 2 added it, version-1 checkpoints restore with no episode
open; version 3 adds the prediction band to pending predictions).

Episode notes (format 4): `episode_notes` is a small msgpack-native map the service attaches to
the metric's open episode — what it sent when the episode opened (alert labels, incident id,
suppressing feedback rule; pensu.episode_notes reads and writes it). The analyzer only stores
it, so it is checkpointed together with the episode it describes and travels with the metric
to a restarted instance or a new partition owner; earlier formats load with none.

Direction is +1 when the value of a reported sample is above the prediction made for it, −1
when below (when no prediction exists, the previous value stands in), 0 otherwise.

When the two models' parameters differ only in their heads (the default: both from the same
preset), they would evolve identically — same encoders, spatial pooler and temporal memory,
same input, same seed, and heads never feed back — so the analyzer runs that common core once
with both heads attached. Outputs are identical to running two models, at half the cost.

Swap cost: with more metrics than resident analyzers every sample saves one analyzer and
restores another (issue #16 asks for >= 1,000 swapped samples/s). `bench/analyzer_codec.py N`
times both for the service's default analyzer after N samples (best of 30 runs, µs, one core of
a loaded 2-core VM, old and new run interleaved):

    samples learned          3: to_bytes / from_bytes     2000: to_bytes / from_bytes
    before (8de6c53)            90 / 630                       1,380 / 1,560
    after                       71 / 245                         215 /   870

Where the time went and what changed is in the docstrings of `pensu.htm.serialization`,
`pensu.htm.temporal_memory` and `pensu.htm.spatial_pooler`; the byte format is unchanged.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from pensu.decision import DecisionConfig, EpisodeEvent, EpisodeTracker, Observation
from pensu.errors import CorruptData, LineRejected, SerializationError, UnsupportedFormatVersion
from pensu.htm.model import HtmModel, ModelParams
from pensu.htm.presets import prediction_params, preset_params
from pensu.htm.serialization import packb, require
from pensu.provenance import ReplayVerdict, replay_verdict

FORMAT_TAG = "pensu-analyzer"
# 2: adds the decision's episode state; 3: pending predictions carry their band; 4: episode notes,
# and the models' state is model format 4 (pensu.htm.model: predictor features, float32 likelihood window)
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)  # before 3, pending predictions load with no band; before 4, no episode notes
_INTERVAL_WINDOW = 9  # recent timestamp deltas kept to estimate the metric's interval


# The decision's configuration under its historical name (AnalyzerConfig.thresholds, reports).
Thresholds = DecisionConfig


@dataclass(frozen=True)
class AnalyzerConfig:
    """How to build a fresh analyzer.

    The one recipe from preset names is `from_presets` (the service, `pensu replay` and tests use
    it; `pensu.analyzer_settings` maps settings onto it); per-metric encoder ranges are
    `with_range`, chosen by `MetricConfigs`.
    """

    anomaly_params: ModelParams
    prediction_params: ModelParams
    thresholds: Thresholds = Thresholds()
    prediction_steps: int = 1

    @classmethod
    def from_presets(cls, anomaly: str = "nab", prediction: str = "nab", *, steps: int = 1, warmup: int = 150,
                     thresholds: Thresholds = Thresholds(), **overrides: Any) -> AnalyzerConfig:
        """The anomaly model from preset `anomaly`, the prediction model from preset `prediction`
        forecasting `steps` samples ahead, both estimating their range from `warmup` samples.

        `overrides` replace top-level `ModelParams` fields of both models (e.g. `likelihood`).
        """
        anomaly_params = preset_params(anomaly, warmup_samples=warmup, **overrides)
        prediction_params_ = prediction_params(preset_params(prediction, warmup_samples=warmup, **overrides),
                                               steps)
        return cls(anomaly_params=anomaly_params, prediction_params=prediction_params_, thresholds=thresholds,
                   prediction_steps=steps)

    def with_range(self, lo: float, hi: float) -> AnalyzerConfig:
        """This config with a fixed encoder range [lo, hi] for both models (no warm-up estimate)."""
        return replace(self, anomaly_params=self.anomaly_params.replace(min_value=lo, max_value=hi),
                       prediction_params=self.prediction_params.replace(min_value=lo, max_value=hi))


class MetricConfigs:
    """Per-metric analyzer configs: the first `ranges` pattern matching a metric (`re.match`) fixes
    its encoder range; other metrics get `base`."""

    def __init__(self, base: AnalyzerConfig, ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
        self.base = base
        self._ranges = [(re.compile(pattern), (lo, hi)) for pattern, (lo, hi) in (ranges or {}).items()]

    @property
    def thresholds(self) -> Thresholds:
        """The decision thresholds every metric shares."""
        return self.base.thresholds

    def for_metric(self, metric: str) -> AnalyzerConfig:
        """The config of a fresh analyzer of `metric`."""
        for pattern, (lo, hi) in self._ranges:
            if pattern.match(metric):
                return self.base.with_range(lo, hi)
        return self.base


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything the service emits for one processed sample."""

    metric: str
    timestamp: float
    value: float
    anomaly_score: float  # raw TM anomaly, 0..1
    anomaly_likelihood: float  # 0..1; 1.0 on a spatial anomaly
    log_likelihood: float  # log-scaled likelihood, 0..1
    final_score: float  # log-likelihood, or 1.0 on a spatial anomaly
    spatial_anomaly: bool
    predicted_value: float | None  # the prediction made earlier for this sample
    prediction_confidence: float
    forecast: float | None  # prediction for forecast_timestamp
    forecast_confidence: float
    forecast_timestamp: float | None
    direction: int
    reported: bool  # an anomaly episode opened on this sample: a report is emitted
    model_age: int  # samples seen, this one included
    warming_up: bool
    # --- decision (pensu.decision) ---
    anomalous: bool  # the sample passed the thresholds (reported only when it opens an episode)
    event: EpisodeEvent | None  # the episode opened or resolved on this sample
    # prediction bands (the prediction model's lower / upper quantiles), None when unknown
    predicted_lower: float | None = None  # band of the prediction made earlier for this sample
    predicted_upper: float | None = None
    forecast_lower: float | None = None  # band of the forecast for forecast_timestamp
    forecast_upper: float | None = None


_Pending = tuple[float | None, float, float | None, float | None]  # value, confidence, lower, upper


def _optional_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _pending_from_state(p: Any) -> _Pending:
    """A pending prediction from state: [value, confidence] (versions 1-2) or with its band (3)."""
    if len(p) not in (2, 4):
        raise ValueError(f"pending prediction has {len(p)} fields")
    lower, upper = (p[2], p[3]) if len(p) == 4 else (None, None)
    return (_optional_float(p[0]), float(p[1]), _optional_float(lower), _optional_float(upper))


def shared_core_params(config: AnalyzerConfig) -> ModelParams | None:
    """One model with both heads, when the two models differ only in their heads; else None."""
    anomaly, prediction = config.anomaly_params, config.prediction_params
    without_heads = {"likelihood": None, "spatial_anomaly": None, "contextual": None, "predictor": None}
    if anomaly.replace(**without_heads) != prediction.replace(**without_heads):
        return None
    return anomaly.replace(predictor=prediction.predictor)


# One seed for every metric's models, as in NuPIC/NAB (and bench/nab_run.py): a metric's fresh
# model is the same on every instance, and all models share one Spatial Pooler wiring, which
# the pooler computes once per process, so creating or restoring a model is cheap.
MODEL_SEED = 42


class MetricAnalyzer:
    """The model pair of one metric plus the decision rule and per-metric bookkeeping."""

    def __init__(self, metric: str, config: AnalyzerConfig) -> None:
        seed = MODEL_SEED
        self.metric = metric
        self.thresholds = config.thresholds
        self.prediction_steps = int(config.prediction_steps)
        shared = shared_core_params(config)
        if shared is not None:
            # Both models would evolve identically (same encoders, SP and TM parameters, same
            # input, same seed; heads never feed back): run that core once with both heads.
            self.anomaly_model = HtmModel(shared, seed=seed)
            self.prediction_model = self.anomaly_model
        else:
            self.anomaly_model = HtmModel(config.anomaly_params, seed=seed)
            self.prediction_model = HtmModel(config.prediction_params, seed=seed)
        self.sample_count = 0
        self.last_timestamp: float | None = None
        self.last_value: float | None = None
        self.positions: dict[str, tuple[int, int]] = {}  # "topic:partition" -> (offset, line) applied
        self.origins: dict[str, str] = {}  # "topic:partition" -> incarnation key of that position (pensu.provenance)
        self.decision = EpisodeTracker(metric, config.thresholds)
        # What the service sent when the open episode opened (opaque here; pensu.episode_notes).
        self.episode_notes: dict[str, Any] | None = None
        self._deltas: deque[float] = deque(maxlen=_INTERVAL_WINDOW)
        # predictions made for upcoming samples, oldest first: (value, confidence, lower, upper)
        self._pending: deque[_Pending] = deque(maxlen=self.prediction_steps)

    # -- bookkeeping ----------------------------------------------------------------------
    def already_applied(self, source: str, offset: int, line: int) -> bool:
        """True when (source, offset, line) is at or before the recorded position (offsets only)."""
        seen = self.positions.get(source)
        return seen is not None and (offset, line) <= seen

    def replay_verdict(self, source: str, offset: int, line: int, timestamp: float,
                       origin: str | None) -> ReplayVerdict | None:
        """Whether the sample was provably learned before (see pensu.provenance); None: learn it."""
        return replay_verdict(self.positions.get(source), self.origins.get(source), origin, offset, line,
                              timestamp, self.last_timestamp)

    def check_order(self, timestamp: float) -> None:
        """Raise `LineRejected` for a timestamp not after the last one seen."""
        if self.last_timestamp is None:
            return
        if timestamp == self.last_timestamp:
            raise LineRejected("duplicate", f"{self.metric}: timestamp {timestamp!r} already seen")
        if timestamp < self.last_timestamp:
            raise LineRejected("out_of_order",
                               f"{self.metric}: timestamp {timestamp!r} is older than {self.last_timestamp!r}")

    @property
    def interval(self) -> float | None:
        """The metric's observed sampling interval (median of recent deltas), if known."""
        if not self._deltas:
            return None
        ordered = sorted(self._deltas)
        return ordered[len(ordered) // 2]

    # -- processing -----------------------------------------------------------------------
    def process(self, timestamp: float, value: float, source: str | None = None,
                offset: int = -1, line: int = 0, origin: str | None = None) -> Analysis:
        """Learn one sample and return its analysis.

        Raises `LineRejected` (nothing learned) for a non-finite value or timestamp, a value the
        encoders cannot represent (`value_out_of_range`), or a timestamp not after the last one.
        """
        timestamp, value = float(timestamp), float(value)
        if not math.isfinite(value) or not math.isfinite(timestamp):
            raise LineRejected("value_not_finite", f"{self.metric}: {value!r} at {timestamp!r}")
        if not (self.anomaly_model.can_encode(value) and self.prediction_model.can_encode(value)):
            raise LineRejected("value_out_of_range",
                               f"{self.metric}: {value!r} is too large for the metric's encoder resolution")
        self.check_order(timestamp)
        anomaly = self.anomaly_model.step(timestamp, value)
        forecast = anomaly if self.shares_core else self.prediction_model.step(timestamp, value)

        predicted_for_now: _Pending = (None, 0.0, None, None)
        if len(self._pending) == self.prediction_steps:
            predicted_for_now = self._pending.popleft()
        self._pending.append((forecast.prediction, forecast.confidence,
                              forecast.prediction_lower, forecast.prediction_upper))

        if self.last_timestamp is not None:
            self._deltas.append(timestamp - self.last_timestamp)
        interval = self.interval
        forecast_ts = None if interval is None else timestamp + self.prediction_steps * interval

        likelihood = 1.0 if anomaly.spatial_anomaly else anomaly.likelihood
        predicted_value, confidence, predicted_lower, predicted_upper = predicted_for_now
        decision = self.decision.step(Observation(
            timestamp=timestamp, value=value, raw_score=anomaly.raw_score, log_likelihood=anomaly.log_likelihood,
            final_score=anomaly.anomaly_score, spatial_anomaly=anomaly.spatial_anomaly,
            contextual_anomaly=anomaly.contextual_anomaly, warming_up=anomaly.warming_up,
            predicted_value=predicted_value, prediction_confidence=confidence,
            previous_value=self.last_value))

        self.sample_count += 1
        self.last_timestamp = timestamp
        self.last_value = value
        if source is not None:
            self.positions[source] = (int(offset), int(line))
            if origin is None:
                self.origins.pop(source, None)
            else:
                self.origins[source] = origin
        return Analysis(
            metric=self.metric, timestamp=timestamp, value=value,
            anomaly_score=anomaly.raw_score, anomaly_likelihood=likelihood,
            log_likelihood=anomaly.log_likelihood, final_score=anomaly.anomaly_score,
            spatial_anomaly=anomaly.spatial_anomaly, predicted_value=predicted_value,
            prediction_confidence=confidence, forecast=forecast.prediction,
            forecast_confidence=forecast.confidence, forecast_timestamp=forecast_ts,
            direction=decision.direction, reported=decision.reported, model_age=self.sample_count,
            warming_up=anomaly.warming_up, anomalous=decision.anomalous, event=decision.event,
            predicted_lower=predicted_lower, predicted_upper=predicted_upper,
            forecast_lower=forecast.prediction_lower, forecast_upper=forecast.prediction_upper,
        )

    def memory_bytes(self) -> int:
        """Approximate bytes held by both models."""
        if self.shares_core:
            return self.anomaly_model.memory_bytes()
        return self.anomaly_model.memory_bytes() + self.prediction_model.memory_bytes()

    @property
    def shares_core(self) -> bool:
        """True when one HtmModel serves as both the anomaly and the prediction model."""
        return self.prediction_model is self.anomaly_model

    # -- serialization --------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Serialize the analyzer and both models (msgpack, versioned)."""
        state = {
            "metric": self.metric,
            "prediction_steps": self.prediction_steps,
            "sample_count": self.sample_count,
            "last_timestamp": self.last_timestamp,
            "last_value": self.last_value,
            "positions": {k: list(v) for k, v in self.positions.items()},
            "origins": dict(self.origins),
            "deltas": list(self._deltas),
            "pending": [list(p) for p in self._pending],
            "anomaly_model": self.anomaly_model.get_state(),
            "prediction_model": None if self.shares_core else self.prediction_model.get_state(),
            "decision": self.decision.get_state(),
            "episode_notes": self.episode_notes,
        }
        return packb({"format": FORMAT_TAG, "version": FORMAT_VERSION, "analyzer": state})

    def _restore_windows(self, deltas: Iterable[Any], pending: Iterable[Any]) -> None:
        """Fill the interval and pending-prediction windows of an analyzer being restored."""
        self._deltas = deque((float(d) for d in deltas), maxlen=_INTERVAL_WINDOW)
        self._pending = deque((_pending_from_state(p) for p in pending), maxlen=self.prediction_steps)

    @classmethod
    def from_bytes(cls, data: bytes, thresholds: Thresholds, expected_metric: str | None = None) -> MetricAnalyzer:
        """Restore an analyzer; the thresholds come from the current settings, not the bytes."""
        try:
            envelope = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            raise CorruptData(f"MetricAnalyzer: undecodable bytes ({exc})") from exc
        if not isinstance(envelope, dict) or envelope.get("format") != FORMAT_TAG:
            raise CorruptData("MetricAnalyzer: not an analyzer payload")
        if envelope.get("version") not in READABLE_VERSIONS:
            raise UnsupportedFormatVersion(
                f"MetricAnalyzer: format version {envelope.get('version')!r} is not supported")
        state = require(envelope, "analyzer", "MetricAnalyzer")
        if envelope["version"] >= 2:
            require(state, "decision", "MetricAnalyzer")
        return cls._from_state(state, thresholds, expected_metric)

    @staticmethod
    def read_provenance(data: bytes) -> tuple[dict[str, tuple[int, int]], dict[str, str], float | None]:
        """(positions, origins, last timestamp) of serialized analyzer bytes, without building models.

        For comparing a stored checkpoint with an analyzer in memory (`pensu.provenance.checkpoint_ahead`).
        """
        try:
            envelope = msgpack.unpackb(data, raw=False, strict_map_key=False)
            state = envelope["analyzer"]
            positions = {str(k): (int(v[0]), int(v[1])) for k, v in state["positions"].items()}
            origins = {str(k): str(v) for k, v in (state.get("origins") or {}).items()}
            last_ts = state["last_timestamp"]
            return positions, origins, None if last_ts is None else float(last_ts)
        except (ValueError, msgpack.UnpackException, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise CorruptData(f"MetricAnalyzer: undecodable positions ({exc})") from exc

    @classmethod
    def _from_state(cls, state: Mapping[str, Any], thresholds: Thresholds,
                    expected_metric: str | None) -> MetricAnalyzer:
        metric = require(state, "metric", "MetricAnalyzer")
        if not isinstance(metric, str) or (expected_metric is not None and metric != expected_metric):
            raise CorruptData(f"MetricAnalyzer: holds metric {metric!r}, expected {expected_metric!r}")
        try:
            analyzer = cls.__new__(cls)
            analyzer.metric = metric
            analyzer.thresholds = thresholds
            # Version 1 had no decision state: restore with no episode open.
            analyzer.decision = EpisodeTracker.from_state(metric, thresholds, state.get("decision"))
            # Versions 1-3 had no episode notes.
            notes = state.get("episode_notes")
            if notes is not None and not isinstance(notes, dict):
                raise TypeError(f"episode_notes is a {type(notes).__name__}, not a map")
            analyzer.episode_notes = notes
            analyzer.prediction_steps = int(require(state, "prediction_steps", "MetricAnalyzer"))
            analyzer.sample_count = int(require(state, "sample_count", "MetricAnalyzer"))
            last_ts = require(state, "last_timestamp", "MetricAnalyzer")
            analyzer.last_timestamp = None if last_ts is None else float(last_ts)
            last_value = require(state, "last_value", "MetricAnalyzer")
            analyzer.last_value = None if last_value is None else float(last_value)
            analyzer.positions = {str(k): (int(v[0]), int(v[1]))
                                  for k, v in require(state, "positions", "MetricAnalyzer").items()}
            # Checkpoints written before origins were recorded have none: their offsets prove nothing.
            analyzer.origins = {str(k): str(v) for k, v in (state.get("origins") or {}).items()}
            cls._restore_windows(analyzer, require(state, "deltas", "MetricAnalyzer"),
                                 require(state, "pending", "MetricAnalyzer"))
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise CorruptData(f"MetricAnalyzer: malformed state ({exc})") from exc
        try:
            analyzer.anomaly_model = HtmModel.from_state(require(state, "anomaly_model", "MetricAnalyzer"))
            prediction_state = require(state, "prediction_model", "MetricAnalyzer")
            analyzer.prediction_model = (analyzer.anomaly_model if prediction_state is None
                                         else HtmModel.from_state(prediction_state))
        except SerializationError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise CorruptData(f"MetricAnalyzer: malformed model state ({exc})") from exc
        return analyzer
