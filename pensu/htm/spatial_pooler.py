"""Spatial Pooler with global inhibition, stored compactly for thousands of resident models.

Algorithm (htm.core semantics, see htm-spec "Spatial Pooler")
    Each column has a potential pool of round(potential_pct × inputs) input bits; half its
    potential synapses start connected (permanence uniform in [connected, 1]), the rest not
    (uniform in [0, connected)); a column with fewer than stimulus_threshold connected
    synapses gets connected/10 added to all its potential permanences until it has enough.
    Overlap = active inputs on connected synapses; columns below stimulus_threshold cannot
    win; the top round(density × columns) by boosted overlap win, ties broken by a fixed
    per-column random order. Learning (learn=True only) adapts the winners' potential
    synapses (+inc on active inputs, −dec on inactive ones, clipped to [0, 1]) and re-raises
    them to stimulus_threshold connected, updates duty cycles with period
    min(duty_cycle_period, learning iteration), bumps weak columns every 50 learning
    iterations and recomputes boost factors (skipped when boost_strength is 0). learn=False
    is pure inference: it changes no state at all, not even the iteration counter.

Fixed-point permanences
    A potential synapse's permanence p is stored as uint16 ``s = 1 + round(p × 65534)``
    (so 0.0 ↔ 1, 1.0 ↔ 65535); ``s = 0`` marks "not in the potential pool", which makes the
    connected test ``s >= connected_units`` exclude non-potential synapses for free.
    Increments are rounded once to whole units: inc 0.003 → 197, dec 0.0005 → 33,
    connected 0.2 → threshold 13108 (p ≥ 13107/65534), connected/10 → 1311.

Compact layout
    A column's initial synapses are a pure function of (seed, column): each column draws from
    its own generator, seeded from ``new_rng_state(seed, stream=1)``. Columns that have never
    learned or been bumped are therefore not stored at all; only "touched" columns own a
    uint16 row of permanences (row-major, so learning walks one contiguous row). Overlap is
    computed from a connected-synapse bitmap laid out [input bit, column word] (uint64 words),
    so the work per step is (active inputs × columns / 64) word reads. Resident size is the
    bitmap (inputs × columns / 8 bytes) + touched rows (inputs × 2 bytes each) + duty cycles;
    serialized size is just the touched rows, their column ids and the duty cycles — the
    bitmap and untouched columns are rebuilt from the seed on restore.

Shared wiring
    Everything derived from (seed, parameters, input size) — column seeds, tie-break order,
    every column's initial row and the initial bitmap — is computed once per process and
    shared read-only by all poolers with that key (a small LRU). Building a pooler, fresh
    or restored, is then a bitmap copy plus its touched rows: models swap in and out cheaply.
    A restore checks, copies and maps the stored rows in one kernel (`_restore_rows`: each
    row must keep its column's potential pool) and, since the copied bitmap already holds the
    initial rows' bits, flips only the bits learning changed (~5 % of a mature pooler's):
    bench/analyzer_codec.py 2000 (554 stored rows), pooler restore 400 → 120 µs (140-200 µs
    in a whole analyzer's restore, its data no longer in cache); 3 samples, 85 → 40-60 µs.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from pensu.errors import CorruptData
from pensu.htm.rng import new_rng_state, rng_next, rng_randint, rng_uniform
from pensu.htm.serialization import pack_array, params_dict, require, unpack_array

PERM_SCALE = 65534  # permanence 1.0 in fixed-point units (stored value = 1 + units)
WEAK_COLUMN_PERIOD = 50  # learning iterations between weak-column bumps
TIE_BREAK_SCALE = 0.01  # tie offsets lie in [0, 0.01): never reorder different integer overlaps
_OWNER = "SpatialPooler"


@dataclass(frozen=True)
class SpatialPoolerParams:
    """Spatial Pooler parameters (global inhibition; potential radius = input size)."""

    column_count: int = 2048
    potential_pct: float = 0.8
    local_area_density: float = 0.025
    stimulus_threshold: int = 2
    syn_perm_inactive_dec: float = 0.0005
    syn_perm_active_inc: float = 0.003
    syn_perm_connected: float = 0.2
    boost_strength: float = 0.0
    min_pct_overlap_duty_cycle: float = 0.001
    duty_cycle_period: int = 1000


def to_units(perm: float) -> int:
    """Return a permanence (or permanence delta) in whole fixed-point units."""
    return int(round(perm * PERM_SCALE))


# -- numba kernels ----------------------------------------------------------------------------
@njit(cache=True)
def _init_column(col_seed: np.uint64, num_potential: int, conn_units: int, stim: int, bump: int,
                 row: np.ndarray, scratch: np.ndarray) -> None:
    """Write column's initial stored permanences into `row` (0 = not potential); deterministic in `col_seed`."""
    n_inputs = row.shape[0]
    state = np.empty(1, dtype=np.uint64)
    state[0] = col_seed
    for i in range(n_inputs):
        scratch[i] = i
        row[i] = 0
    # Partial Fisher-Yates: the first num_potential entries become a uniform random subset.
    for k in range(num_potential):
        j = k + rng_randint(state, n_inputs - k)
        tmp = scratch[k]
        scratch[k] = scratch[j]
        scratch[j] = tmp
    connected = 0
    for k in range(num_potential):
        if rng_uniform(state) < 0.5:
            units = conn_units + int(rng_uniform(state) * (PERM_SCALE - conn_units + 1))
            if units > PERM_SCALE:
                units = PERM_SCALE
            connected += 1
        else:
            units = int(rng_uniform(state) * conn_units)  # strictly below the threshold
        row[scratch[k]] = units + 1
    _raise_to_threshold(row, connected, conn_units + 1, stim, bump)


@njit(cache=True)
def _raise_to_threshold(row: np.ndarray, connected: int, conn_stored: int, stim: int, bump: int) -> int:
    """Add `bump` to all potential synapses of `row` until `stim` are connected; return the count."""
    n_potential = 0
    for i in range(row.shape[0]):
        if row[i] != 0:
            n_potential += 1
    if n_potential < stim:
        return connected  # cannot ever reach the threshold; avoid looping forever
    while connected < stim:
        connected = 0
        for i in range(row.shape[0]):
            s = row[i]
            if s != 0:
                s2 = int(s) + bump
                if s2 > PERM_SCALE + 1:
                    s2 = PERM_SCALE + 1
                row[i] = s2
                if s2 >= conn_stored:
                    connected += 1
    return connected


@njit(cache=True)
def _set_column_bits(bitmap: np.ndarray, column: int, row: np.ndarray, conn_stored: int) -> None:
    """Make `column`'s bits in the connected bitmap match `row`."""
    word = column >> 6
    mask = np.uint64(1) << np.uint64(column & 63)
    inv = ~mask
    for i in range(row.shape[0]):
        if row[i] >= conn_stored:
            bitmap[i, word] |= mask
        else:
            bitmap[i, word] &= inv


@njit(cache=True)
def _column_draws(state: np.ndarray, col_seeds: np.ndarray, ties: np.ndarray, tie_scale: float) -> None:
    """Draw every column's generator seed, then every column's tie-break offset, from `state`."""
    for c in range(col_seeds.shape[0]):
        col_seeds[c] = rng_next(state)
    for c in range(ties.shape[0]):
        ties[c] = rng_uniform(state) * tie_scale


@njit(cache=True)
def _initial_rows(col_seeds: np.ndarray, num_potential: int, conn_units: int, stim: int, bump: int,
                  rows: np.ndarray) -> None:
    """Fill rows[c] with column c's initial stored permanences."""
    scratch = np.empty(rows.shape[1], dtype=np.int32)
    for c in range(col_seeds.shape[0]):
        _init_column(col_seeds[c], num_potential, conn_units, stim, bump, rows[c], scratch)


@njit(cache=True)
def _overlay_rows(bitmap: np.ndarray, row_col: np.ndarray, rows: np.ndarray, n_rows: int,
                  conn_stored: int) -> None:
    """Set the bitmap bits of every stored row's column from that row."""
    for r in range(n_rows):
        _set_column_bits(bitmap, row_col[r], rows[r], conn_stored)


@njit(cache=True)
def _overlaps(bitmap: np.ndarray, active_inputs: np.ndarray, n_columns: int) -> np.ndarray:
    """Count, per column, the active inputs on connected synapses."""
    n_words = bitmap.shape[1]
    counts = np.zeros(n_words * 64, dtype=np.int32)
    for a in range(active_inputs.shape[0]):
        bit = active_inputs[a]
        if bit < 0 or bit >= bitmap.shape[0]:
            raise ValueError("active input bit out of range")
        line = bitmap[bit]
        for w in range(n_words):
            word = line[w]
            if word == 0:
                continue
            base = w * 64
            for b in range(64):
                counts[base + b] += np.int32((word >> np.uint64(b)) & np.uint64(1))
    return counts[:n_columns]


@njit(cache=True)
def _inhibit_integer(overlaps: np.ndarray, tie_order: np.ndarray, k: int, stim: int) -> np.ndarray:
    """Top-k columns by overlap (unboosted), ties in `tie_order`; columns under `stim` never win."""
    max_ov = 0
    for c in range(overlaps.shape[0]):
        if overlaps[c] > max_ov:
            max_ov = overlaps[c]
    hist = np.zeros(max_ov + 2, dtype=np.int64)
    for c in range(overlaps.shape[0]):
        hist[overlaps[c]] += 1
    # Lowest overlap level t such that columns with overlap >= t reach k (but not below stim).
    taken = 0
    level = max_ov + 1
    while level > stim and taken + hist[level - 1] <= k:
        level -= 1
        taken += hist[level]
    # Columns with overlap >= level all win; `level - 1` is the partially taken level.
    winners = np.empty(min(k, overlaps.shape[0]), dtype=np.int32)
    n = 0
    for c in range(overlaps.shape[0]):
        if overlaps[c] >= level:
            winners[n] = c
            n += 1
    partial = level - 1
    if partial >= stim and n < k:
        for t in range(tie_order.shape[0]):
            c = tie_order[t]
            if overlaps[c] == partial:
                winners[n] = c
                n += 1
                if n == k:
                    break
    out = winners[:n].copy()
    out.sort()
    return out


@njit(cache=True)
def _inhibit_boosted(overlaps: np.ndarray, boost: np.ndarray, ties: np.ndarray, k: int,
                     stim: int) -> np.ndarray:
    """Top-k columns by boosted overlap + tie offset; columns under `stim` never win."""
    n_cand = 0
    for c in range(overlaps.shape[0]):
        if overlaps[c] >= stim:
            n_cand += 1
    cand = np.empty(n_cand, dtype=np.int32)
    score = np.empty(n_cand, dtype=np.float64)
    n = 0
    for c in range(overlaps.shape[0]):
        if overlaps[c] >= stim:
            cand[n] = c
            score[n] = -(overlaps[c] * float(boost[c]) + ties[c])
            n += 1
    order = np.argsort(score, kind="mergesort")
    m = min(k, n_cand)
    out = np.empty(m, dtype=np.int32)
    for i in range(m):
        out[i] = cand[order[i]]
    out.sort()
    return out


@njit(cache=True)
def _learn(active_columns: np.ndarray, active_inputs: np.ndarray, row_of: np.ndarray, rows: np.ndarray,
           bitmap: np.ndarray, inc: int, dec: int, conn_units: int, stim: int, bump: int) -> None:
    """Adapt the potential synapses of the (already materialised) active columns."""
    n_inputs = rows.shape[1]
    is_active = np.zeros(n_inputs, dtype=np.bool_)
    for a in range(active_inputs.shape[0]):
        is_active[active_inputs[a]] = True
    conn_stored = conn_units + 1
    top = PERM_SCALE + 1
    for j in range(active_columns.shape[0]):
        c = active_columns[j]
        row = rows[row_of[c]]
        connected = 0
        for i in range(n_inputs):
            s = int(row[i])
            if s == 0:
                continue
            if is_active[i]:
                s += inc
                if s > top:
                    s = top
            else:
                s -= dec
                if s < 1:
                    s = 1
            row[i] = s
            if s >= conn_stored:
                connected += 1
        _raise_to_threshold(row, connected, conn_stored, stim, bump)
        _set_column_bits(bitmap, c, row, conn_stored)


@njit(cache=True)
def _bump_columns(columns: np.ndarray, row_of: np.ndarray, rows: np.ndarray, bitmap: np.ndarray,
                  conn_units: int, bump: int) -> None:
    """Add `bump` to every potential permanence of the given (materialised) columns."""
    top = PERM_SCALE + 1
    for j in range(columns.shape[0]):
        c = columns[j]
        row = rows[row_of[c]]
        for i in range(row.shape[0]):
            s = int(row[i])
            if s != 0:
                s += bump
                row[i] = top if s > top else s
        _set_column_bits(bitmap, c, row, conn_units + 1)


@njit(cache=True)
def _update_duty_cycles(overlaps: np.ndarray, active_columns: np.ndarray, overlap_duty: np.ndarray,
                        active_duty: np.ndarray, period: int) -> None:
    """Moving averages of 'overlap > 0' and 'active' with the given period."""
    keep = (period - 1.0) / period
    step = 1.0 / period
    for c in range(overlap_duty.shape[0]):
        overlap_duty[c] = overlap_duty[c] * keep + (step if overlaps[c] > 0 else 0.0)
        active_duty[c] = active_duty[c] * keep
    for j in range(active_columns.shape[0]):
        c = active_columns[j]
        active_duty[c] = active_duty[c] + step


@njit(cache=True)
def _restore_rows(stored: np.ndarray, row_columns: np.ndarray, initial_rows: np.ndarray, row_of: np.ndarray,
                  rows: np.ndarray, bitmap: np.ndarray, conn_stored: int) -> tuple[int, int]:
    """Check and copy restored rows into `rows`, mapping them in `row_of` and updating `bitmap`
    (a copy of the wiring's bitmap of the initial rows) to their connected bits.

    Returns (0, 0), or (1, 0) for a column id out of range or repeated, or (2, column) for a
    row whose potential pool is not the one its column's seed generates. One pass over the
    rows instead of numpy's fancy-indexed comparison (three row-sized temporaries: most of a
    mature pooler's restore), and only the bits learning changed are flipped (setting all of a
    row's bits is a strided write per input: 160 µs for a mature pooler's 554 rows; finding the
    changed ones with a branch per input mispredicts on each of them: ~5 % of a mature row's)."""
    n_cols = row_of.shape[0]
    for r in range(row_columns.shape[0]):
        c = row_columns[r]
        if c < 0 or c >= n_cols or row_of[c] >= 0:
            return 1, 0
        row_of[c] = r
    n_inputs = rows.shape[1]
    changed = np.zeros((n_inputs + 7) // 8 * 8, dtype=np.uint8)  # per input: connected bit changed
    changed_words = changed.view(np.uint64)
    for r in range(row_columns.shape[0]):
        c = row_columns[r]
        src = stored[r]
        init = initial_rows[c]
        dst = rows[r]
        foreign = False
        for i in range(n_inputs):  # no early exit and no bitmap stores: this loop vectorises
            foreign |= (src[i] == 0) != (init[i] == 0)
            dst[i] = src[i]
            changed[i] = (src[i] >= conn_stored) != (init[i] >= conn_stored)
        if foreign:
            return 2, c
        word = c >> 6
        mask = np.uint64(1) << np.uint64(c & 63)
        for w in range(changed_words.shape[0]):  # eight inputs at a time: most groups are unchanged
            if changed_words[w]:
                for i in range(8 * w, 8 * w + 8):
                    if changed[i]:
                        bitmap[i, word] ^= mask
    return 0, 0


# -- shared wiring ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Wiring:
    """What a pooler derives from (seed, parameters, input size); shared, never written."""

    col_seeds: np.ndarray  # uint64 [columns]: each column's own generator seed
    ties: np.ndarray  # float64 [columns]: tie-break offsets
    tie_order: np.ndarray  # int32 [columns]: columns by descending tie offset
    initial_rows: np.ndarray  # uint16 [columns, inputs]: stored permanences before any learning
    bitmap: np.ndarray  # uint64 [inputs, column words]: connected bitmap of the initial rows


_WIRING_CACHE_SIZE = 4
_wirings: OrderedDict[tuple, _Wiring] = OrderedDict()
_wirings_lock = threading.Lock()


def _wiring(seed: int, input_size: int, column_count: int, num_potential: int, conn_units: int,
            stim: int, bump: int) -> _Wiring:
    """Return the shared wiring for these values, computing it on first use."""
    key = (seed, input_size, column_count, num_potential, conn_units, stim, bump)
    with _wirings_lock:
        found = _wirings.get(key)
        if found is not None:
            _wirings.move_to_end(key)
            return found
    col_seeds = np.empty(column_count, dtype=np.uint64)
    ties = np.empty(column_count, dtype=np.float64)
    _column_draws(new_rng_state(seed, stream=1), col_seeds, ties, TIE_BREAK_SCALE)
    rows = np.empty((column_count, input_size), dtype=np.uint16)
    _initial_rows(col_seeds, num_potential, conn_units, stim, bump, rows)
    bitmap = np.zeros((input_size, (column_count + 63) // 64), dtype=np.uint64)
    _overlay_rows(bitmap, np.arange(column_count, dtype=np.int32), rows, column_count, conn_units + 1)
    tie_order = np.argsort(-ties, kind="stable").astype(np.int32)
    for arr in (col_seeds, ties, tie_order, rows, bitmap):
        arr.flags.writeable = False
    wiring = _Wiring(col_seeds, ties, tie_order, rows, bitmap)
    with _wirings_lock:
        _wirings[key] = wiring
        while len(_wirings) > _WIRING_CACHE_SIZE:
            _wirings.popitem(last=False)
    return wiring


# -- the component ----------------------------------------------------------------------------
class SpatialPooler:
    """Global-inhibition Spatial Pooler mapping input SDRs to a fixed number of active columns."""

    def __init__(self, input_size: int, params: SpatialPoolerParams, seed: int) -> None:
        self._setup(input_size, params, seed)
        self._rebuild_bitmap()

    def _setup(self, input_size: int, params: SpatialPoolerParams, seed: int) -> None:
        """Set every field to its initial value except the connected bitmap."""
        _check_params(input_size, params)
        self.input_size = int(input_size)
        self.params = params
        self.seed = int(seed)
        self.num_active_columns = max(1, int(round(params.local_area_density * params.column_count)))
        self.learn_iteration = 0
        self.min_overlap_duty = 0.0
        n = params.column_count
        self._row_of = np.full(n, -1, dtype=np.int32)
        self._rows = np.zeros((0, self.input_size), dtype=np.uint16)
        self._row_col = np.zeros(0, dtype=np.int32)  # column owning each stored row
        self._n_rows = 0
        self.overlap_duty = np.zeros(n, dtype=np.float32)
        self.active_duty = np.zeros(n, dtype=np.float32)
        self.boost = np.ones(n, dtype=np.float32) if params.boost_strength > 0 else None
        self._derive_from_seed()

    # -- derived (not serialized) data --------------------------------------------------------
    def _derive_from_seed(self) -> None:
        p = self.params
        self._num_potential = int(round(p.potential_pct * self.input_size))
        self._conn_units = to_units(p.syn_perm_connected)
        self._inc = to_units(p.syn_perm_active_inc)
        self._dec = to_units(p.syn_perm_inactive_dec)
        self._bump = max(1, to_units(p.syn_perm_connected / 10.0))
        self._wiring = _wiring(self.seed, self.input_size, p.column_count, self._num_potential,
                               self._conn_units, p.stimulus_threshold, self._bump)

    def _rebuild_bitmap(self) -> None:
        self._bitmap = self._wiring.bitmap.copy()
        _overlay_rows(self._bitmap, self._row_col, self._rows, self._n_rows, self._conn_units + 1)

    def _initial_row(self, column: int) -> np.ndarray:
        return self._wiring.initial_rows[column].copy()

    def _materialise(self, columns: np.ndarray) -> None:
        """Give every listed column its own stored row, initialised from its seed."""
        new = columns[self._row_of[columns] < 0]
        if new.size == 0:
            return
        need = self._n_rows + new.size
        if need > self._rows.shape[0]:
            capacity = max(need, self._rows.shape[0] + self._rows.shape[0] // 4 + 32)
            capacity = min(capacity, self.params.column_count)
            rows = np.zeros((capacity, self.input_size), dtype=np.uint16)
            rows[: self._n_rows] = self._rows[: self._n_rows]
            row_col = np.full(capacity, -1, dtype=np.int32)
            row_col[: self._n_rows] = self._row_col[: self._n_rows]
            self._rows, self._row_col = rows, row_col
        # One fancy-indexed copy instead of a Python loop (44 µs per young model's step).
        first = self._n_rows
        rows = np.arange(first, first + new.size, dtype=np.int32)
        self._rows[first:first + new.size] = self._wiring.initial_rows[new]
        self._row_col[first:first + new.size] = new
        self._row_of[new] = rows
        self._n_rows += new.size

    # -- stepping ---------------------------------------------------------------------------
    def compute(self, active_inputs: np.ndarray, learn: bool = True) -> np.ndarray:
        """Return the sorted int32 active columns for sorted unique input bits; learn if asked."""
        inputs = np.asarray(active_inputs, dtype=np.int32)
        p = self.params
        overlaps = _overlaps(self._bitmap, inputs, p.column_count)
        if self.boost is None:
            active = _inhibit_integer(overlaps, self._wiring.tie_order, self.num_active_columns,
                                      p.stimulus_threshold)
        else:
            active = _inhibit_boosted(overlaps, self.boost, self._wiring.ties, self.num_active_columns,
                                      p.stimulus_threshold)
        if learn:
            self._learn(inputs, overlaps, active)
        return active

    def _learn(self, inputs: np.ndarray, overlaps: np.ndarray, active: np.ndarray) -> None:
        p = self.params
        self.learn_iteration += 1
        self._materialise(active)
        _learn(active, inputs, self._row_of, self._rows, self._bitmap, self._inc, self._dec,
               self._conn_units, p.stimulus_threshold, self._bump)
        period = min(p.duty_cycle_period, self.learn_iteration)
        _update_duty_cycles(overlaps, active, self.overlap_duty, self.active_duty, period)
        if self.learn_iteration % WEAK_COLUMN_PERIOD == 0:
            self.min_overlap_duty = float(p.min_pct_overlap_duty_cycle * float(self.overlap_duty.max()))
            weak = np.flatnonzero(self.overlap_duty < self.min_overlap_duty).astype(np.int32)
            if weak.size:
                self._materialise(weak)
                _bump_columns(weak, self._row_of, self._rows, self._bitmap, self._conn_units, self._bump)
        if self.boost is not None:
            target = self.num_active_columns / p.column_count
            self.boost[:] = np.exp(-p.boost_strength * (self.active_duty.astype(np.float64) - target))

    # -- introspection (tests, metrics) -----------------------------------------------------
    def permanences(self, column: int) -> np.ndarray:
        """Return column's permanences (float64, one per input bit; NaN where not potential)."""
        r = self._row_of[column]
        row = self._rows[r] if r >= 0 else self._initial_row(int(column))
        out = (row.astype(np.float64) - 1.0) / PERM_SCALE
        out[row == 0] = np.nan
        return out

    def connected_counts(self) -> np.ndarray:
        """Return the number of connected synapses of every column (int32)."""
        bits = np.unpackbits(self._bitmap.view(np.uint8), axis=1, bitorder="little")
        return bits[:, : self.params.column_count].sum(axis=0, dtype=np.int32)

    @property
    def touched_columns(self) -> int:
        """Number of columns holding their own permanence row (the rest are regenerated from the seed)."""
        return self._n_rows

    def memory_bytes(self) -> int:
        """Bytes held in this pooler's arrays."""
        # The shared wiring (column seeds, tie order, initial rows) is not this pooler's.
        arrays: list[np.ndarray] = [self._row_of, self._rows, self._row_col, self.overlap_duty, self.active_duty,
                                    self._bitmap]
        if self.boost is not None:
            arrays.append(self.boost)
        return int(sum(a.nbytes for a in arrays))

    # -- serialization ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Return the pooler's state as msgpack-native values (touched rows only)."""
        n = self._n_rows
        return {
            "params": params_dict(self.params),
            "input_size": self.input_size,
            "seed": self.seed,
            "learn_iteration": self.learn_iteration,
            "min_overlap_duty": self.min_overlap_duty,
            "row_columns": pack_array(self._row_col[:n]),
            "rows": pack_array(self._rows[:n]),
            "overlap_duty": pack_array(self.overlap_duty),
            "active_duty": pack_array(self.active_duty),
            "boost": None if self.boost is None else pack_array(self.boost),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SpatialPooler:
        """Rebuild a pooler from `get_state()` output; raise `CorruptData` if it is inconsistent."""
        sp = cls.__new__(cls)
        cls._restore(sp, state)  # the restore is written as a method of the object it fills
        return sp

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Fill a bare `cls.__new__` object from `get_state()` output (see `from_state`)."""
        raw_params = require(state, "params", _OWNER)
        try:
            params = SpatialPoolerParams(**raw_params)
            input_size = int(require(state, "input_size", _OWNER))
            seed = int(require(state, "seed", _OWNER))
            learn_iteration = int(require(state, "learn_iteration", _OWNER))
            min_overlap_duty = float(require(state, "min_overlap_duty", _OWNER))
            self._setup(input_size, params, seed)
        except (TypeError, ValueError) as exc:
            raise CorruptData(f"{_OWNER}: bad parameters ({exc})") from exc
        n_cols = params.column_count
        row_columns = unpack_array(require(state, "row_columns", _OWNER), "row_columns")
        stored = unpack_array(require(state, "rows", _OWNER), "rows", copy=False)  # copied by the kernel
        overlap_duty = unpack_array(require(state, "overlap_duty", _OWNER), "overlap_duty")
        active_duty = unpack_array(require(state, "active_duty", _OWNER), "active_duty")
        boost_raw = require(state, "boost", _OWNER)
        n = row_columns.shape[0] if row_columns.ndim == 1 else -1
        if (row_columns.dtype != np.int32 or n < 0 or stored.dtype != np.uint16
                or stored.shape != (n, input_size) or learn_iteration < 0 or not math.isfinite(min_overlap_duty)):
            raise CorruptData(f"{_OWNER}: stored rows do not match their column ids or input size")
        for name, arr in (("overlap_duty", overlap_duty), ("active_duty", active_duty)):
            if arr.dtype != np.float32 or arr.shape != (n_cols,) or not np.isfinite(arr).all():
                raise CorruptData(f"{_OWNER}: {name} has the wrong type or shape")
        if (boost_raw is None) != (self.boost is None):
            raise CorruptData(f"{_OWNER}: boost state does not match boost_strength")
        if boost_raw is not None:
            boost = unpack_array(boost_raw, "boost")
            if boost.dtype != np.float32 or boost.shape != (n_cols,):
                raise CorruptData(f"{_OWNER}: boost has the wrong type or shape")
            self.boost = boost
        # A stored row must keep exactly the potential pool its column's seed generates.
        rows = np.empty((n, input_size), dtype=np.uint16)
        bitmap = self._wiring.bitmap.copy()
        code, column = _restore_rows(stored, row_columns, self._wiring.initial_rows, self._row_of, rows, bitmap,
                                     self._conn_units + 1)
        if code == 1:
            raise CorruptData(f"{_OWNER}: row column ids out of range or repeated")
        if code == 2:
            raise CorruptData(f"{_OWNER}: column {column} has a foreign potential pool")
        self.learn_iteration = learn_iteration
        self.min_overlap_duty = min_overlap_duty
        self._rows = rows
        self._row_col = row_columns
        self._n_rows = n
        self.overlap_duty = overlap_duty
        self.active_duty = active_duty
        self._bitmap = bitmap


def _check_params(input_size: int, params: SpatialPoolerParams) -> None:
    """Raise ValueError on parameters the pooler cannot work with."""
    if input_size < 1 or params.column_count < 1:
        raise ValueError("SpatialPooler needs at least one input bit and one column")
    if not 0.0 < params.potential_pct <= 1.0 or not 0.0 < params.local_area_density <= 1.0:
        raise ValueError("potential_pct and local_area_density must lie in (0, 1]")
    if not 0.0 <= params.syn_perm_connected <= 1.0 or params.stimulus_threshold < 0:
        raise ValueError("syn_perm_connected must lie in [0, 1] and stimulus_threshold be >= 0")
    if params.syn_perm_active_inc < 0 or params.syn_perm_inactive_dec < 0 or params.duty_cycle_period < 1:
        raise ValueError("permanence increments must be >= 0 and duty_cycle_period >= 1")
