"""`HtmModel`: encoders → spatial pooler → temporal memory → heads, for one scalar stream.

Range and resolution rule (a stream's range is not known up front)
------------------------------------------------------------------
The value encoder is an RDSE whose resolution follows htm.core's NAB detector:
``resolution = max(0.001, (max - min) / 130)``.

* With a configured range (``ModelParams.min_value``/``max_value``) the resolution is fixed
  from it at construction and every sample is modelled at once.
* Otherwise the first ``warmup_samples`` samples are buffered. When the buffer is full the
  range of the buffered values, widened by ``warmup_range_padding`` × range on each side,
  sets the resolution once and for all, and the buffered samples
  are fed through the model (learning from them) before the current one, so nothing is lost.
  A warm-up whose values are all equal says nothing about scale: warming up continues, up to
  ``10 × warmup_samples`` samples, after which the resolution falls back to
  ``max(0.001, |value| × 0.01)`` (1 % of the level seen).
* While warming up a step returns the neutral output: raw score 0, likelihood 0.5, no
  prediction (``warming_up=True``). Keep ``warmup_samples`` below the likelihood's probation
  (learning period + estimation samples) and the warm-up costs no detection at all.
* After the resolution is fixed, values outside the warm-up range still encode (the RDSE is
  unbounded); a value far outside it is what the optional spatial-anomaly rule flags.

Contextual anomaly (optional, on in the service presets): ``pensu.htm.contextual`` runs beside
the TM on the same values, on a grid fixed with the resolution (origin = the range's minimum,
width = ``resolution × 130``). When it fires the final score is ``max(log-likelihood, score)``
(``ModelOutput.contextual_anomaly``); the spatial rule's 1.0 still wins. Buffered warm-up
values are fed to it too, so it knows them before the first scored sample.

Serialization: ``to_bytes()`` gives msgpack with a format tag and version; ``from_bytes``
restores a model whose subsequent outputs are bit-identical to the original's. A restore fills
the object directly (constructing one first built heads the state then replaced: an 8,640-record
likelihood window, a predictor), shares the date encoders (pure functions of their parameters)
and rebuilds the parameters once per distinct dict (`pensu.htm.serialization.cached_params`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from pensu.errors import CorruptData, UnsupportedFormatVersion
from pensu.htm.contextual import ContextualAnomaly, ContextualAnomalyParams
from pensu.htm.encoders import RDSE, DateEncoder, DateEncoderParams, RDSEParams, concat_sdrs
from pensu.htm.likelihood import (
    AnomalyLikelihood,
    AnomalyLikelihoodParams,
    SpatialAnomaly,
    SpatialAnomalyParams,
    log_likelihood,
)
from pensu.htm.predictor import Predictor, PredictorParams
from pensu.htm.serialization import cached_params, packb, params_dict, require
from pensu.htm.spatial_pooler import SpatialPooler, SpatialPoolerParams
from pensu.htm.temporal_memory import TemporalMemory, TemporalMemoryParams

FORMAT_TAG = "pensu-htm-model"
# 2: predictor forecasting options (change target, context bits, bands) and history values.
# 3: the contextual detector's state. Older payloads still load: their parameters take the
# defaults, which behave as the version that wrote them (no contextual detector before 3).
# 4: the predictor's `features` parameter ("columns" in the forecast head; absent = "cells", as
# before) and the likelihood window as float32 (float64 windows load and are narrowed).
# 5: `forget_after_days` and the time marks it needs (absent: none yet; the parameter takes its
# default, so restored models start forgetting once they have seen that many days).
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
# TM iterations between two time marks (and two looks for segments to forget): often enough for
# a day's granularity at one sample a minute, rare enough to cost nothing (a pass over the
# segment table and, when something was forgotten, one compaction: ~1 ms per 1,000 samples).
FORGET_CHECK_EVERY = 1000
RESOLUTION_DIVISOR = 130.0
MIN_RESOLUTION = 0.001
MAX_VALUE_BUCKETS = 2.0**62  # |value| / resolution beyond this overflows the encoder's int64 bucket
FLAT_WARMUP_FACTOR = 10


@dataclass(frozen=True)
class ModelParams:
    """Everything that defines an HtmModel apart from its seed."""

    rdse_size: int = 400
    rdse_active_bits: int = 21
    date: DateEncoderParams = field(default_factory=DateEncoderParams)
    sp: SpatialPoolerParams = field(default_factory=SpatialPoolerParams)
    tm: TemporalMemoryParams = field(default_factory=TemporalMemoryParams)
    likelihood: AnomalyLikelihoodParams | None = field(default_factory=AnomalyLikelihoodParams)
    spatial_anomaly: SpatialAnomalyParams | None = field(default_factory=SpatialAnomalyParams)
    predictor: PredictorParams | None = None
    contextual: ContextualAnomalyParams | None = None
    min_value: float | None = None
    max_value: float | None = None
    warmup_samples: int = 150
    # Widen the warm-up range by this fraction of it on each side before fixing the resolution
    # (a warm-up usually sees only part of a stream's range; NuPIC's NAB detector pads 20 %).
    warmup_range_padding: float = 0.0
    # Temporal-memory segments not active for this many days of data are destroyed (None: kept
    # forever). Without it a model grows for its whole life; see `HtmModel._forget`.
    forget_after_days: float | None = 35.0

    def __post_init__(self) -> None:
        days = self.forget_after_days
        if days is not None and not (isinstance(days, (int, float)) and math.isfinite(days) and days > 0):
            raise ValueError(f"forget_after_days must be a positive number of days or None, not {days!r}")

    def replace(self, **changes: Any) -> ModelParams:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What one step of an HtmModel returns."""

    raw_score: float
    likelihood: float
    log_likelihood: float
    anomaly_score: float  # final score: log-likelihood, or 1.0 on a spatial anomaly
    spatial_anomaly: bool
    prediction: float | None  # value predicted for `prediction_step` samples ahead
    confidence: float
    prediction_step: int
    warming_up: bool
    prediction_lower: float | None = None  # band around the prediction (predictor's quantiles)
    prediction_upper: float | None = None
    contextual_anomaly: bool = False  # the contextual detector fired (see pensu.htm.contextual)


_NO_CONTEXT = int(np.iinfo(np.int32).max)


@functools.lru_cache(maxsize=64)
def _date_encoder(params: DateEncoderParams) -> DateEncoder:
    """The date encoder of these parameters, shared: it holds nothing but its read-only tables."""
    return DateEncoder(params)


def _time_of_week_encoder(params: ModelParams) -> DateEncoder | None:
    """The predictor's time-of-week context encoder (a day-of-week field over 7 days), if any."""
    predictor = params.predictor
    if predictor is None or predictor.time_of_week_width <= 0:
        return None
    return _date_encoder(DateEncoderParams(time_of_day_width=0, day_of_week_width=predictor.time_of_week_width,
                                           day_of_week_radius=predictor.time_of_week_radius,
                                           utc_offset_hours=params.date.utc_offset_hours))


def resolution_for_range(min_value: float, max_value: float) -> float:
    """Return the RDSE resolution htm.core's NAB detector uses for a value range."""
    return max(MIN_RESOLUTION, (float(max_value) - float(min_value)) / RESOLUTION_DIVISOR)


class HtmModel:
    """One HTM model for one scalar stream: encoders, SP, TM and optional heads."""

    def __init__(self, params: ModelParams, seed: int = 42) -> None:
        self.params = params
        self.seed = int(seed)
        self.date_encoder = _date_encoder(params.date)
        self.sp: SpatialPooler | None = None
        self.tm: TemporalMemory | None = None
        self.rdse: RDSE | None = None
        self.likelihood = AnomalyLikelihood(params.likelihood) if params.likelihood else None
        self.spatial = SpatialAnomaly(params.spatial_anomaly) if params.spatial_anomaly else None
        self.predictor = Predictor(params.predictor) if params.predictor else None
        self.week_encoder = _time_of_week_encoder(params)
        self.contextual: ContextualAnomaly | None = None  # built with the encoder (it needs the grid)
        self.iteration = 0
        self._warmup: list[tuple[float, float]] = []
        self._time_marks: list[tuple[int, float]] = []  # (TM iteration, timestamp), see `_forget`
        if params.min_value is not None and params.max_value is not None:
            self._build(resolution_for_range(params.min_value, params.max_value), float(params.min_value))

    @classmethod
    def from_preset(cls, name: str, seed: int = 42, **overrides: Any) -> HtmModel:
        """Build a model from a named preset (see `pensu.htm.presets`)."""
        from pensu.htm.presets import preset_params

        return cls(preset_params(name, **overrides), seed=seed)

    # -- construction -------------------------------------------------------------------
    def _build(self, resolution: float, origin: float) -> None:
        rdse = RDSE(RDSEParams(size=self.params.rdse_size, active_bits=self.params.rdse_active_bits,
                               resolution=resolution, seed=self.seed))
        input_size = rdse.size + self.date_encoder.size
        self.rdse = rdse
        self.sp = SpatialPooler(input_size, self.params.sp, seed=self.seed)
        self.tm = TemporalMemory(self.params.sp.column_count, self.params.tm, seed=self.seed)
        if self.params.contextual is not None:
            self.contextual = ContextualAnomaly(self.params.contextual, origin, resolution * RESOLUTION_DIVISOR)

    @property
    def resolution(self) -> float | None:
        """The value encoder's resolution, or None while warming up."""
        return None if self.rdse is None else self.rdse.params.resolution

    def can_encode(self, value: float) -> bool:
        """False when `value` is too large for the value encoder at its resolution.

        The encoder's bucket floor(value / resolution) is kept as a 64-bit integer; past
        MAX_VALUE_BUCKETS resolutions it would overflow after part of the model had learned the
        value. While warming up the resolution is not known yet: it can be no finer than
        MIN_RESOLUTION. (NaN is not judged here: callers refuse non-finite values first.)
        """
        resolution = self.resolution or MIN_RESOLUTION
        return not abs(value) / resolution >= MAX_VALUE_BUCKETS

    @property
    def warming_up(self) -> bool:
        """True while the value range is still being estimated."""
        return self.rdse is None

    # -- stepping -----------------------------------------------------------------------
    def step(self, timestamp: float, value: float, learn: bool = True) -> ModelOutput:
        """Feed one sample and return scores and prediction for it."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
        if self.rdse is None:
            self._warmup.append((float(timestamp), value))
            resolution = self._resolution_after_warmup()
            if resolution is None:
                self.iteration += 1
                return self._neutral_output()
            lo = min(v for _, v in self._warmup)
            hi = max(v for _, v in self._warmup)
            self._build(resolution, lo - (hi - lo) * self.params.warmup_range_padding)
            buffered, self._warmup = self._warmup[:-1], []
            for ts, val in buffered:
                self._compute(ts, val, learn, warm=True)
        self.iteration += 1
        return self._compute(float(timestamp), value, learn)

    def _resolution_after_warmup(self) -> float | None:
        n = len(self._warmup)
        if n < self.params.warmup_samples:
            return None
        values = [v for _, v in self._warmup]
        lo, hi = min(values), max(values)
        if hi > lo:
            pad = (hi - lo) * self.params.warmup_range_padding
            return resolution_for_range(lo - pad, hi + pad)
        if n < FLAT_WARMUP_FACTOR * self.params.warmup_samples:
            return None
        return max(MIN_RESOLUTION, abs(values[-1]) * 0.01)

    def _neutral_output(self) -> ModelOutput:
        step = self.params.predictor.steps[0] if self.params.predictor else 0
        return ModelOutput(raw_score=0.0, likelihood=0.5, log_likelihood=log_likelihood(0.5),
                           anomaly_score=log_likelihood(0.5), spatial_anomaly=False,
                           prediction=None, confidence=0.0, prediction_step=step, warming_up=True)

    def _compute(self, timestamp: float, value: float, learn: bool, warm: bool = False) -> ModelOutput:
        assert self.rdse is not None and self.sp is not None and self.tm is not None
        value_bits = self.rdse.encode(value)
        date_bits = self.date_encoder.encode(timestamp)
        sdr = concat_sdrs([value_bits, date_bits], [self.rdse.size, self.date_encoder.size])
        columns = self.sp.compute(sdr, learn)
        raw = float(self.tm.compute(columns, learn))
        if learn and self.params.forget_after_days is not None and self.tm.iteration % FORGET_CHECK_EVERY == 0:
            self._forget(timestamp, self.params.forget_after_days)
        likelihood = 0.5
        if self.likelihood is not None:
            likelihood = float(self.likelihood.update(raw, value))
        log_score = float(log_likelihood(likelihood))
        spatial = bool(self.spatial.update(value)) if self.spatial is not None else False
        contextual = False
        if self.contextual is not None:
            if warm:  # a buffered warm-up value: its output is never seen, so only remember it
                if learn:
                    self.contextual.prime(value)
            else:
                contextual = self.contextual.step(value, learn)
        final = 1.0 if spatial else log_score
        if contextual:
            final = max(final, self.params.contextual.score)  # type: ignore[union-attr]
        prediction: float | None = None
        lower: float | None = None
        upper: float | None = None
        confidence = 0.0
        step = 0
        if self.predictor is not None:
            by_column = self.params.predictor.features == "columns"  # type: ignore[union-attr]
            features = columns if by_column else self.tm.active_cells
            width = self.tm.num_columns if by_column else self.tm.num_cells
            context_start = width if self.week_encoder is not None else _NO_CONTEXT
            if self.week_encoder is not None:
                # time-of-week bits after the cells: the predictor learns them at its context rate
                features = np.concatenate([np.asarray(features, dtype=np.int32),
                                           self.week_encoder.encode(timestamp) + np.int32(context_start)])
            step = self.params.predictor.steps[0]  # type: ignore[union-attr]
            inferred = self.predictor.infer(features, value).get(step)
            if inferred is not None and inferred.value is not None:
                prediction, confidence = float(inferred.value), float(inferred.confidence)
                lower, upper = inferred.lower, inferred.upper
            if learn:
                self.predictor.learn(features, self.rdse.bucket(value), value,
                                     resolution=self.rdse.params.resolution, context_start=context_start)
        return ModelOutput(raw_score=raw, likelihood=likelihood, log_likelihood=log_score,
                           anomaly_score=final, spatial_anomaly=spatial,
                           prediction=prediction, confidence=confidence, prediction_step=step,
                           warming_up=False, prediction_lower=lower, prediction_upper=upper,
                           contextual_anomaly=contextual)

    def _forget(self, timestamp: float, days: float) -> None:
        """Destroy the TM segments not active for `days` days of the stream's own timestamps.

        Why: segments are grown for every new context and, unless a cell reaches its segment
        cap, never removed, so a model's memory grows for as long as it runs. On
        machine_temperature (5-minute data), after 20,000 samples 48 % of the segments (34 % of
        the synapses) had not been active for 10,000 samples (35 days). Time, not a sample
        count, is the measure, so a 10-second metric keeps its weekly and monthly transitions as
        a 5-minute one does. A mark (TM iteration, timestamp) is kept every FORGET_CHECK_EVERY
        iterations; segments last active before the newest mark that is at least `days` old
        are destroyed — conservative by up to one mark interval, exact under gaps and rate
        changes. NAB (docs/nab.md) and the forecasts do not move (docs/scaling.md)."""
        assert self.tm is not None
        marks = self._time_marks
        if not marks or timestamp > marks[-1][1]:
            marks.append((self.tm.iteration, timestamp))
        horizon = timestamp - days * 86_400.0
        while len(marks) >= 2 and marks[1][1] <= horizon:
            del marks[0]
        if marks[0][1] <= horizon:
            self.tm.forget_unused_before(marks[0][0])

    # -- introspection ------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Approximate bytes held in this model's arrays."""
        total = 0
        for part in (self.sp, self.tm, self.predictor, self.likelihood):
            if part is not None:
                total += int(part.memory_bytes())
        return total + 16 * len(self._warmup)

    # -- serialization ------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Return the model's full state as msgpack-native values."""
        return {
            "params": params_dict(self.params),
            "seed": self.seed,
            "iteration": self.iteration,
            "warmup": [list(pair) for pair in self._warmup],
            "resolution": self.resolution,
            "sp": None if self.sp is None else self.sp.get_state(),
            "tm": None if self.tm is None else self.tm.get_state(),
            "likelihood": None if self.likelihood is None else self.likelihood.get_state(),
            "spatial": None if self.spatial is None else self.spatial.get_state(),
            "predictor": None if self.predictor is None else self.predictor.get_state(),
            "contextual": None if self.contextual is None else self.contextual.get_state(),
            "time_marks": [[it, ts] for it, ts in self._time_marks],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HtmModel:
        """Rebuild a model from `get_state()` output.

        The object is filled directly rather than constructed (construction builds heads that
        the state replaces: a likelihood window of 8,640 records, a predictor); the encoders
        are pure functions of their parameters and shared (`_date_encoder`)."""
        model = cls.__new__(cls)
        cls._restore(model, state)  # the restore is written as a method of the object it fills
        return model

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Fill a bare `cls.__new__` object from `get_state()` output (see `from_state`)."""
        params = params_from_dict(require(state, "params", "HtmModel"))
        self.params = params
        self.seed = int(require(state, "seed", "HtmModel"))
        self.date_encoder = _date_encoder(params.date)
        self.week_encoder = _time_of_week_encoder(params)
        self.sp = None
        self.tm = None
        self.rdse = None
        self.contextual = None
        self.likelihood = None
        self.spatial = None
        self.predictor = None
        self.iteration = int(require(state, "iteration", "HtmModel"))
        self._warmup = [(float(ts), float(v)) for ts, v in require(state, "warmup", "HtmModel")]
        self._time_marks = _time_marks_from_state(state.get("time_marks"))  # absent before version 5
        resolution = require(state, "resolution", "HtmModel")
        if resolution is not None:
            self.rdse = RDSE(RDSEParams(size=params.rdse_size, active_bits=params.rdse_active_bits,
                                        resolution=float(resolution), seed=self.seed))
            self.sp = SpatialPooler.from_state(require(state, "sp", "HtmModel"))
            self.tm = TemporalMemory.from_state(require(state, "tm", "HtmModel"))
        for attr, klass, configured in (("likelihood", AnomalyLikelihood, params.likelihood),
                                         ("spatial", SpatialAnomaly, params.spatial_anomaly),
                                         ("predictor", Predictor, params.predictor)):
            part = state.get(attr)
            if (part is None) != (configured is None):
                raise CorruptData(f"HtmModel: {attr} state does not match the parameters")
            if part is not None:
                setattr(self, attr, klass.from_state(part))
        contextual = state.get("contextual")  # absent before version 3
        if contextual is not None:
            if params.contextual is None or resolution is None:
                raise CorruptData("HtmModel: contextual state does not match the parameters")
            self.contextual = ContextualAnomaly.from_state(contextual)
        elif params.contextual is not None and resolution is not None:
            raise CorruptData("HtmModel: contextual state missing")

    def to_bytes(self) -> bytes:
        """Serialize the model (msgpack, versioned)."""
        return packb({"format": FORMAT_TAG, "version": FORMAT_VERSION, "model": self.get_state()})

    @classmethod
    def from_bytes(cls, data: bytes) -> HtmModel:
        """Restore a model serialized by `to_bytes`; raise a `SerializationError` subclass if unusable."""
        envelope = unpack_envelope(data, FORMAT_TAG, "HtmModel")
        return cls.from_state(envelope)


def _time_marks_from_state(raw: Any) -> list[tuple[int, float]]:
    if raw is None:
        return []
    marks: list[tuple[int, float]] = []
    for item in raw:
        iteration, timestamp = int(item[0]), float(item[1])
        if iteration < 0 or not math.isfinite(timestamp) or (marks and timestamp < marks[-1][1]):
            raise CorruptData("HtmModel: time marks out of order or not finite")
        marks.append((iteration, timestamp))
    return marks


def unpack_envelope(data: bytes, tag: str, owner: str) -> Mapping[str, Any]:
    """Decode a versioned msgpack envelope and return its payload under the key after the tag."""
    try:
        envelope = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise CorruptData(f"{owner}: undecodable bytes ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != tag:
        raise CorruptData(f"{owner}: not a {tag} payload")
    version = envelope.get("version")
    if version not in READABLE_VERSIONS:
        raise UnsupportedFormatVersion(
            f"{owner}: format version {version!r} is not supported (this build reads {FORMAT_VERSION})")
    payload = [v for k, v in envelope.items() if k not in ("format", "version")]
    if len(payload) != 1 or not isinstance(payload[0], dict):
        raise CorruptData(f"{owner}: envelope has no payload")
    return payload[0]


# -- params <-> dict ------------------------------------------------------------------------
def params_to_dict(params: Any) -> Any:
    """Turn a (nested) params dataclass into msgpack-native values."""
    if dataclasses.is_dataclass(params):
        return {f.name: params_to_dict(getattr(params, f.name)) for f in dataclasses.fields(params)}
    if isinstance(params, tuple):
        return [params_to_dict(v) for v in params]
    return params


_NESTED = {
    "date": DateEncoderParams,
    "sp": SpatialPoolerParams,
    "tm": TemporalMemoryParams,
    "likelihood": AnomalyLikelihoodParams,
    "spatial_anomaly": SpatialAnomalyParams,
    "predictor": PredictorParams,
    "contextual": ContextualAnomalyParams,
}


def _build_dataclass(klass: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise CorruptData(f"{klass.__name__}: expected a mapping of parameters")
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = set(values) - names
    if unknown:
        raise CorruptData(f"{klass.__name__}: unknown parameters {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return klass(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CorruptData(f"{klass.__name__}: bad parameters ({exc})") from exc


def params_from_dict(values: Any) -> ModelParams:
    """Rebuild `ModelParams` from `params_to_dict` output (cached: `cached_params`)."""
    if not isinstance(values, Mapping):
        raise CorruptData("ModelParams: expected a mapping")
    return cached_params(ModelParams, values, _params_from_dict)


def _params_from_dict(values: Mapping[str, Any]) -> ModelParams:
    converted = dict(values)
    for key, klass in _NESTED.items():
        if converted.get(key) is not None:
            converted[key] = _build_dataclass(klass, converted[key])
    return _build_dataclass(ModelParams, converted)
