"""Anomaly likelihood (NuPIC / htm.core semantics) and NAB's spatial-anomaly rule.

`AnomalyLikelihood` turns the TM's raw anomaly score into the probability that the recent
average raw score is unusual, given a normal distribution fitted to the recent history:

* a window of the last `historic_window_size` records (raw score, metric value) is kept in
  numpy ring buffers;
* the statistic is the mean of the last `averaging_window` raw scores, *including* the current
  one (the distribution itself is fitted before the current record joins the window);
* during probation (iteration < learning_period + estimation_samples) the likelihood is 0.5;
* afterwards the normal is re-fitted when there is none yet or iteration % reestimation_period
  == 0, over the moving averages of the window, skipping the records of the learning period
  still in it; mean and variance are floored at 0.03 / 0.0003, and a flat metric (variance of
  the values < 1.5e-5) gets the null distribution (mean 0.5, variance 1e6);
* likelihood = 1 - tail(average), the tail mirrored around the mean;
* red-zone filter (NuPIC/htm.core): a tail probability in the red zone (<= 1 - 0.99999) right
  after another red-zone one (unfiltered) is reported as the yellow level (1 - 0.999), so a
  sustained anomaly is reported once at full strength instead of on every record. After a
  re-fit, "the previous one" is the window's last average under the new distribution.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pensu.errors import ConfigurationError, CorruptData
from pensu.htm.serialization import cached_params, pack_array, params_dict, require, unpack_array

MEAN_FLOOR = 0.03
VARIANCE_FLOOR = 0.0003
FLAT_VARIANCE = 1.5e-5
NULL_MEAN = 0.5
NULL_VARIANCE = 1e6
RED_ZONE = 1.0 - 0.99999  # tail probabilities at or below this are "red"
YELLOW_ZONE = 1.0 - 0.999  # what a repeated red tail is reported as
_SQRT2_APPROX = 1.4142  # the constant NuPIC uses in its tail probability
_LOG_EPSILON = math.log(1e-10)


def log_likelihood(likelihood: float) -> float:
    """Return NuPIC's log-scaled likelihood in [0, 1] (close to 1 means very anomalous)."""
    return math.log(1.0000000001 - likelihood) / _LOG_EPSILON


def tail_probability(x: float, mean: float, variance: float) -> float:
    """Return the normal tail probability of `x`, mirrored so values below the mean count too."""
    if x < mean:
        x = 2.0 * mean - x
    std = math.sqrt(variance)
    z = (x - mean) / std
    return 0.5 * math.erfc(z / _SQRT2_APPROX)


@dataclass(frozen=True)
class AnomalyLikelihoodParams:
    """Parameters of the anomaly likelihood (NuPIC names in snake case)."""

    learning_period: int = 288
    estimation_samples: int = 100
    historic_window_size: int = 8640
    reestimation_period: int = 100
    averaging_window: int = 10

    def __post_init__(self) -> None:
        for name in ("historic_window_size", "reestimation_period", "averaging_window"):
            if int(getattr(self, name)) < 1:
                raise ConfigurationError(f"AnomalyLikelihoodParams.{name} must be >= 1")
        for name in ("learning_period", "estimation_samples"):
            if int(getattr(self, name)) < 0:
                raise ConfigurationError(f"AnomalyLikelihoodParams.{name} must be >= 0")

    @property
    def probation(self) -> int:
        """Number of first records whose likelihood is always 0.5."""
        return self.learning_period + self.estimation_samples


class AnomalyLikelihood:
    """Online anomaly likelihood of a stream of raw anomaly scores."""

    def __init__(self, params: AnomalyLikelihoodParams) -> None:
        self.params = params
        size = params.historic_window_size
        # float32: half the memory and checkpoint of float64 (8,640 records: 69 kB instead of 138 kB
        # per metric); the fit sums in float64, and NAB and the tests are unchanged by it.
        self._raw = np.zeros(size, dtype=np.float32)
        self._values = np.zeros(size, dtype=np.float32)
        self._head = 0  # ring position the next record is written to
        self._recent: deque[float] = deque(maxlen=params.averaging_window)
        self._iteration = 0
        self._distribution: tuple[float, float] | None = None
        self._previous_tail: float | None = None  # unfiltered tail of the previous record

    @property
    def iteration(self) -> int:
        """Number of records seen so far."""
        return self._iteration

    @property
    def distribution(self) -> tuple[float, float] | None:
        """The fitted (mean, variance) of the averaged raw scores, or None before the first fit."""
        return self._distribution

    def update(self, raw_score: float, value: float) -> float:
        """Add one record and return its anomaly likelihood in [0, 1]."""
        raw_score = float(raw_score)
        value = float(value)
        # The moving average includes this record; the fit below does not (NuPIC order).
        self._recent.append(raw_score)
        if self._iteration < self.params.probation:
            likelihood = 0.5
        else:
            if self._distribution is None or self._iteration % self.params.reestimation_period == 0:
                self._distribution = self._estimate()
                self._previous_tail = self._last_window_tail()
            average = sum(self._recent) / len(self._recent)
            mean, variance = self._distribution
            tail = tail_probability(average, mean, variance)
            reported = tail
            if tail <= RED_ZONE and self._previous_tail is not None and self._previous_tail <= RED_ZONE:
                reported = YELLOW_ZONE
            self._previous_tail = tail
            likelihood = 1.0 - reported
        self._raw[self._head] = raw_score
        self._values[self._head] = value
        self._head = (self._head + 1) % self.params.historic_window_size
        self._iteration += 1
        return likelihood

    def memory_bytes(self) -> int:
        """Bytes held in this instance's arrays (the window of raw scores and values)."""
        return int(self._raw.nbytes + self._values.nbytes)

    # -- estimation -----------------------------------------------------------------------
    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the records in the window, oldest first."""
        size = self.params.historic_window_size
        if self._iteration < size:
            return self._raw[: self._iteration], self._values[: self._iteration]
        order = np.r_[self._head:size, 0:self._head]
        return self._raw[order], self._values[order]

    def _skip_records(self) -> int:
        """Records at the window's start that still belong to the learning period."""
        shifted_out = max(0, self._iteration - self.params.historic_window_size)
        return min(self._iteration, max(0, self.params.learning_period - shifted_out))

    def _last_window_tail(self) -> float | None:
        """Tail probability of the window's last moving average under the current fit."""
        raw, _ = self._window()
        if len(raw) == 0 or self._distribution is None:
            return None
        tail_raw = raw[-self.params.averaging_window:]
        return tail_probability(float(np.mean(tail_raw, dtype=np.float64)), *self._distribution)

    def _estimate(self) -> tuple[float, float]:
        """Fit the normal distribution of moving-average raw scores over the window."""
        raw, values = self._window()
        skip = self._skip_records()
        if len(raw) <= skip:
            return (NULL_MEAN, NULL_VARIANCE)
        averages = moving_averages(raw, self.params.averaging_window)[skip:]
        if float(np.var(values[skip:], dtype=np.float64)) < FLAT_VARIANCE:
            return (NULL_MEAN, NULL_VARIANCE)
        mean = max(float(np.mean(averages)), MEAN_FLOOR)
        variance = max(float(np.var(averages)), VARIANCE_FLOOR)
        return (mean, variance)

    # -- state ----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Return the full state as msgpack-native values."""
        raw, values = self._window()
        return {
            "params": params_dict(self.params),
            "iteration": self._iteration,
            "raw": pack_array(raw),
            "values": pack_array(values),
            "recent": [float(v) for v in self._recent],
            "distribution": None if self._distribution is None else list(self._distribution),
            "previous_tail": self._previous_tail,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> AnomalyLikelihood:
        """Rebuild an AnomalyLikelihood from `get_state()` output."""
        owner = "AnomalyLikelihood"
        try:
            params = cached_params(AnomalyLikelihoodParams, require(state, "params", owner), _build_params)
            iteration = int(require(state, "iteration", owner))
            recent = [float(v) for v in require(state, "recent", owner)]
            dist = require(state, "distribution", owner)
            distribution = None if dist is None else (float(dist[0]), float(dist[1]))
            # Absent in checkpoints written before the red-zone filter: no previous record.
            previous = state.get("previous_tail")
            previous_tail = None if previous is None else float(previous)
        except (TypeError, ValueError, IndexError, ConfigurationError) as exc:
            raise CorruptData(f"{owner}: malformed state ({exc})") from exc
        raw = unpack_array(require(state, "raw", owner), f"{owner}.raw")
        values = unpack_array(require(state, "values", owner), f"{owner}.values")
        filled = min(iteration, params.historic_window_size)
        # float64 before model format 4, float32 since
        if iteration < 0 or raw.shape != (filled,) or values.shape != (filled,) \
                or raw.dtype not in (np.float32, np.float64) or values.dtype != raw.dtype \
                or len(recent) > params.averaging_window:
            raise CorruptData(f"{owner}: window does not match iteration {iteration}")
        model = cls(params)
        model._raw[:filled] = raw
        model._values[:filled] = values
        model._head = filled % params.historic_window_size
        model._recent.extend(recent)
        model._iteration = iteration
        model._distribution = distribution
        model._previous_tail = previous_tail
        return model


def moving_averages(raw: np.ndarray, window: int) -> np.ndarray:
    """Return the trailing mean of up to `window` samples at each position (shorter at the start)."""
    sums = np.concatenate(([0.0], np.cumsum(raw, dtype=np.float64)))
    ends = np.arange(1, len(raw) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


@dataclass(frozen=True)
class SpatialAnomalyParams:
    """NAB's spatial-anomaly rule: tolerance as a fraction of the range seen so far."""

    tolerance: float = 0.05
    min_samples: int = 1  # samples seen before the rule may fire (NAB: no minimum)

    def __post_init__(self) -> None:
        if not self.tolerance >= 0:
            raise ConfigurationError("SpatialAnomalyParams.tolerance must be >= 0")
        if int(self.min_samples) < 0:
            raise ConfigurationError("SpatialAnomalyParams.min_samples must be >= 0")


class SpatialAnomaly:
    """NAB's spatial-anomaly rule: flag a value outside the range seen so far by > tolerance × range."""

    def __init__(self, params: SpatialAnomalyParams) -> None:
        self.params = params
        self.min_value: float | None = None
        self.max_value: float | None = None
        self.count = 0

    def update(self, value: float) -> bool:
        """Return True when `value` leaves the widened range seen so far; then widen the range."""
        value = float(value)
        flagged = False
        lo, hi = self.min_value, self.max_value
        if lo is not None and hi is not None and hi != lo and self.count >= self.params.min_samples:
            margin = (hi - lo) * self.params.tolerance
            flagged = value > hi + margin or value < lo - margin
        self.min_value = value if lo is None or value < lo else lo
        self.max_value = value if hi is None or value > hi else hi
        self.count += 1
        return flagged

    def get_state(self) -> dict[str, Any]:
        """Return the full state as msgpack-native values."""
        return {"params": params_dict(self.params), "min": self.min_value, "max": self.max_value,
                "count": self.count}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SpatialAnomaly:
        """Rebuild a SpatialAnomaly from `get_state()` output."""
        owner = "SpatialAnomaly"
        try:
            model = cls(SpatialAnomalyParams(**require(state, "params", owner)))
            lo, hi = require(state, "min", owner), require(state, "max", owner)
            model.min_value = None if lo is None else float(lo)
            model.max_value = None if hi is None else float(hi)
            model.count = int(require(state, "count", owner))
        except (TypeError, ValueError, ConfigurationError) as exc:
            raise CorruptData(f"{owner}: malformed state ({exc})") from exc
        if (model.min_value is None) != (model.max_value is None):
            raise CorruptData(f"{owner}: min and max must both be set or both be None")
        return model


def _build_params(values: Any) -> AnomalyLikelihoodParams:
    return AnomalyLikelihoodParams(**values)
