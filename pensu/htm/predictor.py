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
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
from numba import njit

from pensu.errors import ConfigurationError, CorruptData
from pensu.htm.serialization import pack_array, require, unpack_array

_MAP_CHUNK = 4096  # the cell -> row map grows in chunks of this many cells
_NO_ROW = -1
_NO_CLASS = 255  # class ids are uint8; 255 marks an empty slot
_WEIGHT_SCALE = 4096.0  # weights are int16 fixed point: w = q / 4096, |w| <= 8
_INV_SCALE = 1.0 / _WEIGHT_SCALE
_WEIGHT_MAX = 32767
_ROW_CHUNK = 1024  # weight rows grow by this many at a time


@dataclass(frozen=True)
class PredictorParams:
    """Steps ahead to predict, learning rate, and the memory caps of the sparse weights."""

    steps: tuple[int, ...] = (1,)
    alpha: float = 0.1
    max_classes: int = 255
    slots_per_cell: int = 6

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


@dataclass(frozen=True)
class Prediction:
    """The most likely bucket `step` samples ahead, its value and its probability."""

    step: int
    value: float | None
    confidence: float
    bucket: int | None


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
           alpha: float) -> int:
    """One softmax gradient step for `cells` towards class `target`; returns the new row count.

    The caller guarantees room for one new row per cell and a map covering every cell.
    """
    probs = _distribution(cells, cell_row, row_class, row_weight, n_classes)
    slots = row_class.shape[1]
    gain = _quantize(alpha * (1.0 - probs[target]))
    for i in range(cells.shape[0]):
        cell = cells[i]
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
    def from_state(cls, state: Mapping[str, Any], slots: int, n_classes: int) -> "_StepTable":
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
        if (cells.size and (cells.min() < 0 or np.any(np.diff(cells) <= 0)))  \
                or not np.array_equal(np.sort(rows), np.arange(used, dtype=np.int32)) \
                or np.any((row_class >= n_classes) & (row_class != _NO_CLASS)):
            raise CorruptData(f"{owner}: indices out of range")
        table = cls(slots)
        table.reserve(cells)
        table.cell_row[cells] = rows
        table.row_class = row_class
        table.row_weight = row_weight
        table.rows_used = used
        return table


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


class Predictor:
    """Multi-step sparse softmax predictor of value buckets from active TM cells."""

    def __init__(self, params: PredictorParams) -> None:
        self.params = params
        self._tables = {step: _StepTable(params.slots_per_cell) for step in params.steps}
        self._history: deque[np.ndarray] = deque(maxlen=max(params.steps))
        self._bucket_class: dict[int, int] = {}
        self._buckets = np.zeros(0, dtype=np.int64)   # class id -> its bucket
        self._means = np.zeros(0, dtype=np.float64)   # class id -> running mean value
        self._counts = np.zeros(0, dtype=np.int64)    # class id -> values seen

    @property
    def n_classes(self) -> int:
        """Number of classes (distinct buckets, capped by `max_classes`)."""
        return int(self._buckets.size)

    def infer(self, active_cells: np.ndarray) -> dict[int, Prediction]:
        """Predict, for each step, the most likely bucket given the current active cells."""
        cells = _as_cells(active_cells)
        out: dict[int, Prediction] = {}
        for step, table in self._tables.items():
            out[step] = self._predict(step, table, cells)
        return out

    def distribution(self, active_cells: np.ndarray, step: int) -> dict[int, float]:
        """Return bucket -> probability for `step` (empty before the first learned sample)."""
        cells = _as_cells(active_cells)
        table = self._tables[step]
        if not self.n_classes:
            return {}
        probs = _distribution(cells, table.cell_row, table.row_class, table.row_weight, self.n_classes)
        return {int(b): float(p) for b, p in zip(self._buckets, probs)}

    def _predict(self, step: int, table: _StepTable, cells: np.ndarray) -> Prediction:
        if not self.n_classes:
            return Prediction(step=step, value=None, confidence=0.0, bucket=None)
        probs = _distribution(cells, table.cell_row, table.row_class, table.row_weight, self.n_classes)
        best = int(np.argmax(probs))  # ties go to the lowest class id: deterministic
        return Prediction(step=step, value=float(self._means[best]),
                          confidence=min(1.0, max(0.0, float(probs[best]))),
                          bucket=int(self._buckets[best]))

    def learn(self, active_cells: np.ndarray, bucket: int, value: float) -> None:
        """Record this sample's bucket/value and train each step n on the cells of n samples ago."""
        cells = _as_cells(active_cells)
        target = self._class_of(int(bucket), float(value))
        alpha = float(self.params.alpha)
        for step, table in self._tables.items():
            if len(self._history) < step:
                continue
            past = self._history[-step]
            table.reserve(past)
            table.rows_used = _learn(past, table.cell_row, table.row_class, table.row_weight,
                                     table.rows_used, self.n_classes, target, alpha)
        self._history.append(cells.copy())

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
            "params": {**asdict(self.params), "steps": list(self.params.steps)},
            "buckets": pack_array(self._buckets),
            "means": pack_array(self._means),
            "counts": pack_array(self._counts),
            "history": [pack_array(cells) for cells in self._history],
            "tables": [[step, table.get_state()] for step, table in self._tables.items()],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Predictor":
        """Rebuild a Predictor from `get_state()` output."""
        owner = "Predictor"
        try:
            raw = dict(require(state, "params", owner))
            raw["steps"] = tuple(raw.get("steps", ()))
            params = PredictorParams(**raw)
            history_raw = list(require(state, "history", owner))
            tables_raw = {int(step): table for step, table in require(state, "tables", owner)}
        except (TypeError, ValueError, ConfigurationError) as exc:
            raise CorruptData(f"{owner}: malformed state ({exc})") from exc
        buckets = unpack_array(require(state, "buckets", owner), f"{owner}.buckets")
        means = unpack_array(require(state, "means", owner), f"{owner}.means")
        counts = unpack_array(require(state, "counts", owner), f"{owner}.counts")
        n = buckets.shape[0] if buckets.ndim == 1 else -1
        if (buckets.dtype != np.int64 or means.dtype != np.float64 or counts.dtype != np.int64
                or means.shape != (n,) or counts.shape != (n,) or n > params.max_classes
                or np.unique(buckets).size != n or (n and counts.min() < 1)):
            raise CorruptData(f"{owner}: class arrays are inconsistent")
        if set(tables_raw) != set(params.steps) or len(history_raw) > max(params.steps):
            raise CorruptData(f"{owner}: tables or history do not match the steps")
        model = cls(params)
        model._buckets, model._means, model._counts = buckets, means, counts
        model._bucket_class = {int(b): i for i, b in enumerate(buckets)}
        for i, packed in enumerate(history_raw):
            cells = unpack_array(packed, f"{owner}.history[{i}]")
            if cells.dtype != np.int32 or cells.ndim != 1 or (cells.size and cells.min() < 0):
                raise CorruptData(f"{owner}: history[{i}] is not a cell index array")
            model._history.append(cells)
        for step in params.steps:
            model._tables[step] = _StepTable.from_state(tables_raw[step], params.slots_per_cell, n)
        return model
