"""Predictor: a sparse softmax classifier from active TM cells to value buckets.

For each requested step n the predictor remembers the active-cell pattern of n samples ago and
trains a single-layer softmax on it: the logit of class c is the sum of the weights w[cell, c]
of the active cells; learning adds alpha x (one-hot(actual) - predicted distribution) to the
rows of the remembered cells.

Memory is the constraint (one process holds ~1,000 predictors over 65,536 cells), so weights
are never dense over cells x classes:

* buckets (arbitrary ints) are mapped lazily to dense class ids; past `max_classes` a new bucket
  joins the class of the nearest known bucket (buckets are ordered by value);
* a cell gets a weight row only once it has been active during learning, and a row keeps only
  `slots_per_cell` (class, weight) slots. An absent class has weight 0. Because adding the same
  constant to every logit leaves the softmax unchanged, only the differences matter; the
  negative part of an update is applied to the classes a row stores and dropped for the others
  (those are classes the cell does not vote for). The actual class enters a full row by
  replacing the weakest slot when its new weight would exceed that slot's weight;
* class ids are uint8 and weights int16 fixed point (1/4096 units, |w| <= 8), so a row of six
  slots costs 18 bytes and even all 65,536 cells with rows fit in ~1.4 MB.

The value of a class is the running mean of the actual values that fell into it.

Forecasting options (all off by default, so a plain predictor behaves as before):

* ``target="change"``: the classes are buckets of the change ``value[t+n] - level[t]`` (at the
  encoder's resolution) instead of buckets of ``value[t+n]``; the forecast is the current level
  plus the predicted change. The level is an exponential moving average of the values
  (``level_alpha``; 1.0 makes it the last value). A context the classifier cannot tell apart then predicts "about
  the same as now" (persistence) rather than some remembered level. On the NYC-taxi 5-step
  task this alone is what takes the error below persistence (docs/forecast.md).
* ``estimate="mean"``: the forecast is the expectation of the predicted distribution instead of
  the value of its most likely class (fewer large misses when the distribution is spread).
* context bits: callers may append extra feature bits (e.g. a time-of-week encoding) after the
  active cells, from index ``context_start`` on; those learn at ``context_alpha`` instead of
  ``alpha``. Different rates matter: a time-of-week bit is seen once a week and must learn
  fast, while the cells, seen constantly, must average slowly.
* bands: every prediction carries the ``band`` quantiles (default 10th / 90th percentile) of
  the predicted distribution over the classes' values, as ``lower`` and ``upper``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from pensu.errors import ConfigurationError, CorruptData
from pensu.htm.serialization import cached_params, pack_array, params_dict, require, unpack_array

_MAP_CHUNK = 4096  # the cell -> row map grows in chunks of this many cells
_NO_ROW = -1
_NO_CLASS = 255  # class ids are uint8; 255 marks an empty slot
_WEIGHT_SCALE = 4096.0  # weights are int16 fixed point: w = q / 4096, |w| <= 8
_INV_SCALE = 1.0 / _WEIGHT_SCALE
_WEIGHT_MAX = 32767
_ROW_CHUNK = 1024  # weight rows grow by this many at a time
_NO_CONTEXT = int(np.iinfo(np.int32).max)  # context_start when no context bits are appended


@dataclass(frozen=True)
class PredictorParams:
    """Steps ahead to predict, learning rate, and the memory caps of the sparse weights."""

    steps: tuple[int, ...] = (1,)
    alpha: float = 0.1
    max_classes: int = 255
    slots_per_cell: int = 6
    target: str = "value"  # "value": buckets of the value; "change": buckets of value[t+n] - value[t]
    estimate: str = "mode"  # "mode": the most likely class's value; "mean": the expectation
    context_alpha: float = 0.1  # learning rate of context bits (features from context_start on)
    band: tuple[float, float] = (0.1, 0.9)  # quantiles of the predicted distribution: lower, upper
    # The change target's anchor: an exponential moving average of the values with this
    # smoothing factor (1.0: the last value itself).
    level_alpha: float = 1.0
    # Context encoding the model appends to the cells (0 bits: none): time of week, a periodic
    # encoder over 7 days of `time_of_week_width` bits and radius `time_of_week_radius` days.
    time_of_week_width: int = 0
    time_of_week_radius: float = 0.06
    # What the model feeds as features: "cells" (the TM's active cells) or "columns" (its active
    # columns, i.e. the spatial pooler's winners). Columns: 2,048 rows at most instead of one per
    # cell ever active (~36,000 after 20,000 samples), and no worse forecasts (bench/forecast.py,
    # docs/scaling.md). Checkpoints written before the option existed keep "cells".
    features: str = "cells"

    def __post_init__(self) -> None:
        steps = tuple(int(s) for s in self.steps)
        if not steps or any(s < 1 for s in steps) or len(set(steps)) != len(steps):
            raise ConfigurationError("PredictorParams.steps must be distinct integers >= 1")
        object.__setattr__(self, "steps", steps)
        if not 0.0 < float(self.alpha) <= 1.0:
            raise ConfigurationError("PredictorParams.alpha must be in (0, 1]")
        if not 1 <= int(self.max_classes) <= 255:  # class ids are stored as uint8
            raise ConfigurationError("PredictorParams.max_classes must be in [1, 255]")
        if not 1 <= int(self.slots_per_cell) <= 64:
            raise ConfigurationError("PredictorParams.slots_per_cell must be in [1, 64]")
        if self.target not in ("value", "change"):
            raise ConfigurationError("PredictorParams.target must be 'value' or 'change'")
        if self.estimate not in ("mode", "mean"):
            raise ConfigurationError("PredictorParams.estimate must be 'mode' or 'mean'")
        if not 0.0 < float(self.level_alpha) <= 1.0:
            raise ConfigurationError("PredictorParams.level_alpha must be in (0, 1]")
        if not 0.0 < float(self.context_alpha) <= 1.0:
            raise ConfigurationError("PredictorParams.context_alpha must be in (0, 1]")
        band = tuple(float(q) for q in self.band)
        if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
            raise ConfigurationError("PredictorParams.band must be two quantiles 0 <= lower <= upper <= 1")
        object.__setattr__(self, "band", band)
        if self.features not in ("cells", "columns"):
            raise ConfigurationError("PredictorParams.features must be 'cells' or 'columns'")
        if int(self.time_of_week_width) < 0 or not float(self.time_of_week_radius) > 0.0:
            raise ConfigurationError("PredictorParams.time_of_week_width must be >= 0 and its radius > 0")


@dataclass(frozen=True)
class Prediction:
    """The forecast `step` samples ahead: its value, the most likely bucket and its probability,
    and the band (quantiles of the predicted distribution) around the value."""

    step: int
    value: float | None
    confidence: float
    bucket: int | None
    lower: float | None = None
    upper: float | None = None


# -- numba kernels ----------------------------------------------------------------------------
@njit(cache=True)
def _distribution(cells: np.ndarray, cell_row: np.ndarray, row_class: np.ndarray,
                  row_weight: np.ndarray, n_classes: int) -> np.ndarray:
    """Softmax over classes of the summed weight rows of `cells` (uniform when none has a row)."""
    logits = np.zeros(n_classes, dtype=np.float64)
    slots = row_class.shape[1]
    for i in range(cells.shape[0]):
        cell = cells[i]
        if cell >= cell_row.shape[0]:
            continue
        row = cell_row[cell]
        if row < 0:
            continue
        for k in range(slots):
            cls = row_class[row, k]
            if cls != _NO_CLASS:
                logits[cls] += row_weight[row, k]
    top = logits.max()
    total = 0.0
    for c in range(n_classes):
        # weights are fixed point: the scale is applied once, on the sums
        logits[c] = np.exp((logits[c] - top) * _INV_SCALE)
        total += logits[c]
    for c in range(n_classes):
        logits[c] /= total
    return logits


@njit(cache=True)
def _quantize(delta: float) -> int:
    """A weight change in fixed-point units, rounded half up (deterministic everywhere)."""
    return int(np.floor(delta * _WEIGHT_SCALE + 0.5))


@njit(cache=True)
def _saturate(weight: int) -> np.int16:
    """Clamp a fixed-point weight to the int16 range."""
    return np.int16(min(_WEIGHT_MAX, max(-_WEIGHT_MAX, weight)))


@njit(cache=True)
def _learn(cells: np.ndarray, cell_row: np.ndarray, row_class: np.ndarray,
           row_weight: np.ndarray, rows_used: int, n_classes: int, target: int,
           cell_alpha: float, context_start: int, context_alpha: float) -> int:
    """One softmax gradient step for `cells` towards class `target`; returns the new row count.

    Features from index `context_start` on learn at `context_alpha`, the others at `cell_alpha`.
    The caller guarantees room for one new row per cell and a map covering every cell.
    """
    probs = _distribution(cells, cell_row, row_class, row_weight, n_classes)
    slots = row_class.shape[1]
    for i in range(cells.shape[0]):
        cell = cells[i]
        alpha = context_alpha if cell >= context_start else cell_alpha
        gain = _quantize(alpha * (1.0 - probs[target]))
        row = cell_row[cell]
        if row < 0:
            row = rows_used
            rows_used += 1
            cell_row[cell] = row
            for k in range(slots):
                row_class[row, k] = _NO_CLASS
                row_weight[row, k] = 0
        found = False
        weakest = -1
        weakest_weight = _WEIGHT_MAX + 1
        for k in range(slots):
            cls = row_class[row, k]
            if cls == _NO_CLASS:
                if weakest_weight > -_WEIGHT_MAX - 1:
                    weakest = k  # an empty slot is always taken first
                    weakest_weight = -_WEIGHT_MAX - 1
                continue
            if cls == target:
                row_weight[row, k] = _saturate(int(row_weight[row, k]) + gain)
                found = True
            else:
                row_weight[row, k] = _saturate(int(row_weight[row, k]) - _quantize(alpha * probs[cls]))
                if row_weight[row, k] < weakest_weight:
                    weakest = k
                    weakest_weight = int(row_weight[row, k])
        if not found and weakest >= 0 and weakest_weight < gain:
            row_class[row, weakest] = target
            row_weight[row, weakest] = _saturate(gain)
    return rows_used


@njit(cache=True)
def _cell_bounds(cells: np.ndarray) -> tuple[int, int]:
    """(min, max) of a non-empty cell array in one pass (numpy's two calls cost more here)."""
    low = cells[0]
    high = cells[0]
    for i in range(1, cells.shape[0]):
        if cells[i] < low:
            low = cells[i]
        elif cells[i] > high:
            high = cells[i]
    return int(low), int(high)


# -- per-step weight table ---------------------------------------------------------------------
class _StepTable:
    """Sparse weights of one prediction step: cell -> row map and (class, weight) slot rows."""

    def __init__(self, slots: int) -> None:
        self.cell_row = np.full(0, _NO_ROW, dtype=np.int32)
        self.row_class = np.full((0, slots), _NO_CLASS, dtype=np.uint8)
        self.row_weight = np.zeros((0, slots), dtype=np.int16)
        self.rows_used = 0

    def reserve(self, cells: np.ndarray) -> None:
        """Make room for every cell of `cells` to get a row (rows grow in fixed chunks)."""
        if cells.size:
            needed_map = _cell_bounds(cells)[1] + 1
            if needed_map > self.cell_row.shape[0]:
                size = -(-needed_map // _MAP_CHUNK) * _MAP_CHUNK
                grown = np.full(size, _NO_ROW, dtype=np.int32)
                grown[: self.cell_row.shape[0]] = self.cell_row
                self.cell_row = grown
        needed_rows = self.rows_used + int(cells.size)
        if needed_rows > self.row_class.shape[0]:
            size = -(-needed_rows // _ROW_CHUNK) * _ROW_CHUNK
            slots = self.row_class.shape[1]
            grown_class = np.full((size, slots), _NO_CLASS, dtype=np.uint8)
            grown_weight = np.zeros((size, slots), dtype=np.int16)
            grown_class[: self.rows_used] = self.row_class[: self.rows_used]
            grown_weight[: self.rows_used] = self.row_weight[: self.rows_used]
            self.row_class, self.row_weight = grown_class, grown_weight

    def nbytes(self) -> int:
        """Bytes allocated by this table."""
        return int(self.cell_row.nbytes + self.row_class.nbytes + self.row_weight.nbytes)

    def get_state(self) -> dict[str, Any]:
        """Used rows only; the map is stored as (cell, row) pairs of the cells that have a row."""
        cells = np.flatnonzero(self.cell_row >= 0).astype(np.int32)
        return {
            "cells": pack_array(cells),
            "rows": pack_array(self.cell_row[cells]),
            "row_class": pack_array(self.row_class[: self.rows_used]),
            "row_weight": pack_array(self.row_weight[: self.rows_used]),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], slots: int, n_classes: int) -> _StepTable:
        """Rebuild a table, checking every index it holds."""
        owner = "Predictor.table"
        cells = unpack_array(require(state, "cells", owner), f"{owner}.cells")
        rows = unpack_array(require(state, "rows", owner), f"{owner}.rows")
        row_class = unpack_array(require(state, "row_class", owner), f"{owner}.row_class")
        row_weight = unpack_array(require(state, "row_weight", owner), f"{owner}.row_weight")
        used = row_class.shape[0] if row_class.ndim == 2 else -1
        if (cells.dtype != np.int32 or rows.dtype != np.int32 or cells.ndim != 1
                or rows.shape != cells.shape or row_class.dtype != np.uint8
                or row_weight.dtype != np.int16 or row_class.shape != (used, slots)
                or row_weight.shape != row_class.shape):
            raise CorruptData(f"{owner}: arrays have the wrong dtype or shape")
        if not _valid_table(cells, rows, row_class, n_classes):
            raise CorruptData(f"{owner}: indices out of range")
        table = cls.__new__(cls)
        # the map a `reserve(cells)` makes: chunks covering the highest cell
        size = -(-(int(cells[-1]) + 1) // _MAP_CHUNK) * _MAP_CHUNK if cells.size else 0
        table.cell_row = np.full(size, _NO_ROW, dtype=np.int32)
        table.cell_row[cells] = rows
        table.row_class = row_class
        table.row_weight = row_weight
        table.rows_used = used
        return table


@njit(cache=True)
def _valid_table(cells: np.ndarray, rows: np.ndarray, row_class: np.ndarray, n_classes: int) -> bool:
    """Cells strictly increasing from >= 0, rows a permutation of the table's rows, classes known
    or empty (one pass each instead of numpy's sort, diff and comparisons: ~20 µs a table)."""
    for i in range(cells.shape[0]):
        if cells[i] < 0 or (i > 0 and cells[i] <= cells[i - 1]):
            return False
    used = row_class.shape[0]
    if rows.shape[0] != used:
        return False
    seen = np.zeros(used, dtype=np.bool_)
    for i in range(used):
        r = rows[i]
        if r < 0 or r >= used or seen[r]:
            return False
        seen[r] = True
    bad = False
    for r in range(used):
        for k in range(row_class.shape[1]):
            c = row_class[r, k]
            bad |= (c >= n_classes) & (c != _NO_CLASS)
    return not bad


def _as_cells(active_cells: np.ndarray) -> np.ndarray:
    """Validate and convert active cell indices to a contiguous int32 array."""
    cells = np.ascontiguousarray(active_cells)
    if cells.ndim != 1 or (cells.size and cells.dtype.kind not in "iu"):
        raise ValueError("active_cells must be a 1-D array of integer cell indices")
    if not cells.size:
        return cells.astype(np.int32)
    if cells.dtype != np.int32:
        if int(cells.max()) > np.iinfo(np.int32).max:
            raise ValueError("active_cells must be int32 cell indices")
        cells = cells.astype(np.int32)
    if _cell_bounds(cells)[0] < 0:
        raise ValueError("active_cells must be non-negative")
    return cells


_CALIBRATION_DECAY = 0.005  # per-sample decay of the gain's sums (a memory of ~200 samples)
_QUANTILE_RATE = 0.05  # band quantiles move by this fraction of the typical error per sample


class _Calibration:
    """Online calibration of one step's change forecasts (change target only).

    * gain: the least-squares factor between the classifier's estimated change and the actual
      change, from exponentially decayed sums, clipped to [0, 1]. Where the classifier has
      learnt nothing useful (a context seen once, noise) the gain falls towards 0 and the
      forecast towards the level; on a periodic series it stays near 1.
    * band: running 10th / 90th percentiles (the `band` quantiles) of the forecast's error,
      tracked by stochastic approximation with a step proportional to the typical error. The
      classifier's own distribution is far too confident for a band (an 80 % band from it
      covered 18-51 % of actual values on the NAB series), so the band is calibrated on errors.
      It always brackets the forecast, and has zero width until the first errors are known.
    """

    def __init__(self, step: int) -> None:
        self.pending: deque[tuple[float, float]] = deque(maxlen=step)  # (estimate, forecast change)
        self.sxy = 0.0
        self.sxx = 0.0
        self.scale = 0.0  # running mean absolute error
        self.low = 0.0
        self.high = 0.0

    def gain(self) -> float:
        """The factor applied to the classifier's estimated change."""
        return 1.0 if self.sxx <= 0.0 else min(1.0, max(0.0, self.sxy / self.sxx))

    def remember(self, estimate: float, forecast: float) -> None:
        """Keep the raw estimate made now and the change forecast made from it."""
        self.pending.append((estimate, forecast))

    def observe(self, actual: float, band: tuple[float, float]) -> None:
        """Update from the actual change of the oldest remembered estimate, if it is due."""
        if len(self.pending) < (self.pending.maxlen or 1):
            return
        estimate, forecast = self.pending.popleft()
        keep = 1.0 - _CALIBRATION_DECAY
        self.sxy = keep * self.sxy + estimate * actual
        self.sxx = keep * self.sxx + estimate * estimate
        error = actual - forecast
        self.scale = keep * self.scale + _CALIBRATION_DECAY * abs(error) if self.scale else abs(error)
        rate = _QUANTILE_RATE * self.scale
        self.low += rate * (band[0] - (1.0 if error < self.low else 0.0))
        self.high += rate * (band[1] - (1.0 if error < self.high else 0.0))

    def get_state(self) -> dict[str, Any]:
        return {"pending": [list(p) for p in self.pending], "sxy": self.sxy, "sxx": self.sxx,
                "scale": self.scale, "low": self.low, "high": self.high}

    @classmethod
    def from_state(cls, step: int, state: Mapping[str, Any]) -> _Calibration:
        calibration = cls(step)
        try:
            pending = [(float(e), float(f)) for e, f in state["pending"]]
            calibration.sxy, calibration.sxx = float(state["sxy"]), float(state["sxx"])
            calibration.scale, calibration.low = float(state["scale"]), float(state["low"])
            calibration.high = float(state["high"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptData(f"Predictor.calibration: malformed state ({exc})") from exc
        if len(pending) > step:
            raise CorruptData("Predictor.calibration: more pending estimates than steps")
        calibration.pending.extend(pending)
        return calibration


def _predictor_params(values: Mapping[str, Any]) -> PredictorParams:
    raw = dict(values)
    raw["steps"] = tuple(raw.get("steps", ()))
    if "band" in raw:
        raw["band"] = tuple(raw["band"])
    return PredictorParams(**raw)


class Predictor:
    """Multi-step sparse softmax predictor of value buckets from active TM cells."""

    def __init__(self, params: PredictorParams) -> None:
        self.params = params
        self._tables = {step: _StepTable(params.slots_per_cell) for step in params.steps}
        # features and level of the last max(steps) samples (the level anchors the change target)
        self._history: deque[np.ndarray] = deque(maxlen=max(params.steps))
        self._history_values: deque[float] = deque(maxlen=max(params.steps))
        self._level = math.nan  # moving average of the values learned so far (NaN before any)
        self._calibration = {step: _Calibration(step) for step in params.steps}
        self._bucket_class: dict[int, int] = {}
        self._buckets = np.zeros(0, dtype=np.int64)   # class id -> its bucket
        self._means = np.zeros(0, dtype=np.float64)   # class id -> running mean value
        self._counts = np.zeros(0, dtype=np.int64)    # class id -> values seen

    @property
    def n_classes(self) -> int:
        """Number of classes (distinct buckets, capped by `max_classes`)."""
        return int(self._buckets.size)

    def infer(self, active_cells: np.ndarray, value: float | None = None) -> dict[int, Prediction]:
        """Predict each step from the current features; the change target needs the current `value`."""
        cells = _as_cells(active_cells)
        if self.params.target == "change" and value is None:
            raise ValueError("a change-target predictor needs the current value to infer")
        out: dict[int, Prediction] = {}
        level = 0.0 if value is None else self._level_with(float(value))
        for step, table in self._tables.items():
            out[step] = self._predict(step, table, cells, level)
        return out

    def _level_with(self, value: float) -> float:
        """The level after `value` (the change target's anchor), without storing it."""
        if math.isnan(self._level):
            return value
        return self._level + float(self.params.level_alpha) * (value - self._level)

    def distribution(self, active_cells: np.ndarray, step: int) -> dict[int, float]:
        """Return bucket -> probability for `step` (empty before the first learned sample)."""
        cells = _as_cells(active_cells)
        table = self._tables[step]
        if not self.n_classes:
            return {}
        probs = _distribution(cells, table.cell_row, table.row_class, table.row_weight, self.n_classes)
        return {int(b): float(p) for b, p in zip(self._buckets, probs)}

    def _predict(self, step: int, table: _StepTable, cells: np.ndarray, level: float) -> Prediction:
        if not self.n_classes:
            return Prediction(step=step, value=None, confidence=0.0, bucket=None)
        probs = _distribution(cells, table.cell_row, table.row_class, table.row_weight, self.n_classes)
        best = int(np.argmax(probs))  # ties go to the lowest class id: deterministic
        confidence = min(1.0, max(0.0, float(probs[best])))
        estimate = self._estimate(probs, best)
        if self.params.target == "change":
            calibration = self._calibration[step]
            value = level + calibration.gain() * estimate
            return Prediction(step=step, value=value, confidence=confidence, bucket=int(self._buckets[best]),
                              lower=value + min(0.0, calibration.low), upper=value + max(0.0, calibration.high))
        # band: quantiles of the distribution over the classes' values (ties by class id)
        order = np.argsort(self._means, kind="stable")
        cumulative = np.cumsum(probs[order])
        last = order.size - 1
        low_q, high_q = self.params.band
        lower = float(self._means[order[min(last, int(np.searchsorted(cumulative, low_q)))]])
        upper = float(self._means[order[min(last, int(np.searchsorted(cumulative, high_q)))]])
        return Prediction(step=step, value=estimate, confidence=confidence, bucket=int(self._buckets[best]),
                          lower=min(lower, estimate), upper=max(upper, estimate))

    def _estimate(self, probs: np.ndarray, best: int) -> float:
        """The distribution turned into one value: its expectation or its most likely class's value."""
        if self.params.estimate == "mean":
            return float(np.dot(probs, self._means))
        return float(self._means[best])

    def learn(self, active_cells: np.ndarray, bucket: int, value: float, resolution: float | None = None,
              context_start: int = _NO_CONTEXT) -> None:
        """Record this sample and train each step n on the features of n samples ago.

        `bucket` is the value's bucket (value target); the change target buckets the change at
        `resolution` instead. Features from index `context_start` on learn at `context_alpha`.
        """
        cells = _as_cells(active_cells)
        value = float(value)
        change = self.params.target == "change"
        if change and not (resolution is not None and math.isfinite(resolution) and resolution > 0):
            raise ValueError("a change-target predictor needs a positive resolution to learn")
        level = self._level_with(value)
        estimates: dict[int, tuple[float, float]] = {}
        if change and self.n_classes:
            # the raw estimate and forecast change made now (before learning: exactly what
            # `infer` returned), kept so that their errors calibrate the gain and the band once
            # the actual value is known
            for step, table in self._tables.items():
                probs = _distribution(cells, table.cell_row, table.row_class, table.row_weight,
                                      self.n_classes)
                estimate = self._estimate(probs, int(np.argmax(probs)))
                estimates[step] = (estimate, self._calibration[step].gain() * estimate)
        target = -1 if change else self._class_of(int(bucket), value)
        alpha, context_alpha = float(self.params.alpha), float(self.params.context_alpha)
        for step, table in self._tables.items():
            if len(self._history) < step:
                continue
            if change:
                delta = value - self._history_values[-step]
                self._calibration[step].observe(delta, self.params.band)
                target = self._class_of(math.floor(delta / resolution), delta)  # type: ignore[operator]
            past = self._history[-step]
            table.reserve(past)
            table.rows_used = _learn(past, table.cell_row, table.row_class, table.row_weight,
                                     table.rows_used, self.n_classes, target, alpha,
                                     int(context_start), context_alpha)
        for step, (estimate, forecast) in estimates.items():
            self._calibration[step].remember(estimate, forecast)
        self._history.append(cells.copy())
        self._history_values.append(level)
        self._level = level

    def _class_of(self, bucket: int, value: float) -> int:
        """Class id of `bucket` (created, or merged into the nearest when full); updates its mean."""
        cls = self._bucket_class.get(bucket)
        if cls is None:
            if self.n_classes < self.params.max_classes:
                cls = self.n_classes
                self._bucket_class[bucket] = cls
                self._buckets = np.append(self._buckets, np.int64(bucket))
                self._means = np.append(self._means, 0.0)
                self._counts = np.append(self._counts, np.int64(0))
            else:
                distance = np.abs(self._buckets.astype(np.float64) - float(bucket))
                cls = int(np.argmin(distance))  # not cached: the map stays the stored state
        self._counts[cls] += 1
        self._means[cls] += (value - self._means[cls]) / self._counts[cls]
        return cls

    def memory_bytes(self) -> int:
        """Approximate bytes held by this predictor (arrays, history and class map)."""
        total = sum(table.nbytes() for table in self._tables.values())
        total += sum(int(cells.nbytes) for cells in self._history)
        total += int(self._buckets.nbytes + self._means.nbytes + self._counts.nbytes)
        return total + 100 * len(self._bucket_class)  # rough cost of a dict entry with two ints

    # -- state ----------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Return the full state as msgpack-native values."""
        return {
            "params": params_dict(self.params),
            "buckets": pack_array(self._buckets),
            "means": pack_array(self._means),
            "counts": pack_array(self._counts),
            "history": [pack_array(cells) for cells in self._history],
            "history_values": list(self._history_values),
            "level": self._level,
            "calibration": [[step, c.get_state()] for step, c in self._calibration.items()],
            "tables": [[step, table.get_state()] for step, table in self._tables.items()],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Predictor:
        """Rebuild a Predictor from `get_state()` output."""
        owner = "Predictor"
        try:
            params = cached_params(PredictorParams, require(state, "params", owner), _predictor_params)
            history_raw = list(require(state, "history", owner))
            # absent from format-1 states (value target only, which never reads them)
            history_values = [float(v) for v in state.get("history_values", [math.nan] * len(history_raw))]
            tables_raw = {int(step): table for step, table in require(state, "tables", owner)}
        except (TypeError, ValueError, ConfigurationError) as exc:
            raise CorruptData(f"{owner}: malformed state ({exc})") from exc
        buckets = unpack_array(require(state, "buckets", owner), f"{owner}.buckets")
        means = unpack_array(require(state, "means", owner), f"{owner}.means")
        counts = unpack_array(require(state, "counts", owner), f"{owner}.counts")
        n = buckets.shape[0] if buckets.ndim == 1 else -1
        if (buckets.dtype != np.int64 or means.dtype != np.float64 or counts.dtype != np.int64
                or means.shape != (n,) or counts.shape != (n,) or n > params.max_classes
                or len(set(buckets.tolist())) != n or (n and counts.min() < 1)):
            raise CorruptData(f"{owner}: class arrays are inconsistent")
        if set(tables_raw) != set(params.steps) or len(history_raw) > max(params.steps) \
                or len(history_values) != len(history_raw):
            raise CorruptData(f"{owner}: tables or history do not match the steps")
        model = cls.__new__(cls)  # filled directly: construction would allocate tables the state replaces
        cls._restore(model, state, params, buckets, means, counts, history_raw, history_values, tables_raw)
        return model

    def _restore(self, state: Mapping[str, Any], params: PredictorParams, buckets: np.ndarray, means: np.ndarray,
                 counts: np.ndarray, history_raw: list[Any], history_values: list[float],
                 tables_raw: dict[int, Any]) -> None:
        """Fill a bare `cls.__new__` object with checked class arrays and the rest of `state`."""
        owner = "Predictor"
        n = buckets.shape[0]
        self.params = params
        self._tables = {}
        self._history = deque(maxlen=max(params.steps))
        self._history_values = deque(maxlen=max(params.steps))
        self._calibration = {step: _Calibration(step) for step in params.steps}
        self._buckets, self._means, self._counts = buckets, means, counts
        self._bucket_class = {b: i for i, b in enumerate(buckets.tolist())}
        for i, packed in enumerate(history_raw):
            cells = unpack_array(packed, f"{owner}.history[{i}]")
            if cells.dtype != np.int32 or cells.ndim != 1 or (cells.size and cells.min() < 0):
                raise CorruptData(f"{owner}: history[{i}] is not a cell index array")
            self._history.append(cells)
        self._history_values.extend(history_values)
        self._level = float(state.get("level", math.nan))
        for step, packed in state.get("calibration", []):  # absent from format-1 states
            if int(step) not in self._calibration:
                raise CorruptData(f"{owner}: calibration for unknown step {step!r}")
            self._calibration[int(step)] = _Calibration.from_state(int(step), packed)
        for step in params.steps:
            self._tables[step] = _StepTable.from_state(tables_raw[step], params.slots_per_cell, n)
