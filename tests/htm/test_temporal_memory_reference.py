"""The numba Temporal Memory against a slow, plain-Python reference written from htm-spec.

The reference keeps segments as Python objects, recomputes dendrite activity by walking every
synapse, and draws from the same generator in the same order, so every step's active, winner
and predictive cells, the raw anomaly and finally every synapse must agree exactly. Small
caps make eviction, synapse-cap overruns, punishment and synapse death all happen.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pensu.htm.rng import new_rng_state, rng_randint
from pensu.htm.temporal_memory import EPSILON, TemporalMemory, TemporalMemoryParams

F32 = np.float32


@dataclasses.dataclass
class Seg:
    cell: int
    ordinal: int
    last_used: int
    pre: list[int] = dataclasses.field(default_factory=list)
    perm: list[np.float32] = dataclasses.field(default_factory=list)
    alive: bool = True


class ReferenceTM:
    """htm-spec Temporal Memory, written for clarity rather than speed."""

    def __init__(self, num_columns: int, p: TemporalMemoryParams, seed: int) -> None:
        self.p, self.cpc = p, p.cells_per_column
        self.num_cells = num_columns * p.cells_per_column
        self.rng = new_rng_state(seed, stream=2)
        self.segs: list[Seg] = []  # index = creation ordinal
        self.iteration = 0
        self.prev_act: list[int] = []
        self.prev_win: list[int] = []
        self.active: list[Seg] = []
        self.matching: list[Seg] = []
        self.pot: dict[int, int] = {}

    def nseg(self, cell: int) -> int:
        return sum(1 for s in self.segs if s.alive and s.cell == cell)

    def destroy_synapse(self, s: Seg, k: int) -> None:
        # the last synapse takes the freed place (the order the numba kernels keep too)
        s.pre[k], s.perm[k] = s.pre[-1], s.perm[-1]
        s.pre.pop()
        s.perm.pop()

    def adapt(self, s: Seg, inc: float, dec: float, prev_act: set[int]) -> None:
        for k in range(len(s.pre)):
            old = float(s.perm[k])
            s.perm[k] = F32(min(old + inc, 1.0)) if s.pre[k] in prev_act else F32(min(old - dec, 1.0))
        for k in range(len(s.pre) - 1, -1, -1):
            if s.perm[k] < F32(EPSILON):
                self.destroy_synapse(s, k)
        if not s.pre:
            s.alive = False

    def grow(self, s: Seg, n_desired: int) -> None:
        cands = [w for w in self.prev_win if w not in set(s.pre)]
        n_new = min(n_desired, len(cands))
        if n_new <= 0:
            return
        overrun = len(s.pre) + n_new - self.p.max_synapses_per_segment
        if overrun > 0:
            winners = set(self.prev_win)
            for _ in range(overrun):
                options = [k for k in range(len(s.pre)) if s.pre[k] not in winners]
                if not options:
                    break
                self.destroy_synapse(s, min(options, key=lambda k: (s.perm[k], k)))
            n_new = min(n_new, self.p.max_synapses_per_segment - len(s.pre))
            if n_new <= 0:
                return
        for i in range(n_new):
            j = i + rng_randint(self.rng, len(cands) - i)
            cands[i], cands[j] = cands[j], cands[i]
            s.pre.append(cands[i])
            s.perm.append(F32(self.p.initial_permanence))

    def create_segment(self, cell: int) -> Seg:
        if self.nseg(cell) >= self.p.max_segments_per_cell:
            lru = min((s for s in self.segs if s.alive and s.cell == cell), key=lambda s: (s.last_used, s.ordinal))
            lru.alive = False
        seg = Seg(cell, len(self.segs), self.iteration)
        self.segs.append(seg)
        return seg

    def compute(self, columns: np.ndarray, learn: bool) -> float:
        p, cpc = self.p, self.cpc
        prev_act = set(self.prev_act)
        active_cols = set(int(c) for c in columns)
        act: list[int] = []
        win: list[int] = []
        predicted = 0
        max_new = p.max_new_synapse_count
        # Punishment and activation follow column order, as the segments are ordered by cell.
        for col in sorted(set(s.cell // cpc for s in self.matching) | active_cols):
            mine_m = [s for s in self.matching if s.cell // cpc == col]
            if col not in active_cols:
                for s in mine_m:
                    if learn and p.predicted_segment_decrement > 0 and s.alive:
                        self.adapt(s, -p.predicted_segment_decrement, 0.0, prev_act)
                continue
            mine_a = [s for s in self.active if s.cell // cpc == col]
            if mine_a:
                predicted += 1
                for s in mine_a:
                    if s.cell not in act:
                        act.append(s.cell)
                        win.append(s.cell)
                    if learn:
                        pot = self.pot[s.ordinal]
                        self.adapt(s, p.permanence_increment, p.permanence_decrement, prev_act)
                        if s.alive and max_new - pot > 0:
                            self.grow(s, max_new - pot)
                continue
            act.extend(range(col * cpc, (col + 1) * cpc))
            if mine_m:
                best = max(mine_m, key=lambda s: (self.pot[s.ordinal], -mine_m.index(s)))
                win.append(best.cell)
                if learn:
                    pot = self.pot[best.ordinal]
                    self.adapt(best, p.permanence_increment, p.permanence_decrement, prev_act)
                    if best.alive and max_new - pot > 0:
                        self.grow(best, max_new - pot)
            else:
                cells = list(range(col * cpc, (col + 1) * cpc))
                fewest = min(self.nseg(c) for c in cells)
                least = [c for c in cells if self.nseg(c) == fewest]
                winner = least[rng_randint(self.rng, len(least))]
                win.append(winner)
                if learn and self.prev_win and max_new > 0:
                    self.grow(self.create_segment(winner), min(max_new, len(self.prev_win)))
        # Dendrite activity for the next step, by walking every synapse.
        act_set = set(act)
        conn = F32(p.connected_permanence)
        self.active, self.matching, self.pot = [], [], {}
        for s in sorted((s for s in self.segs if s.alive), key=lambda s: (s.cell, s.ordinal)):
            pot = sum(1 for c in s.pre if c in act_set)
            con = sum(1 for c, q in zip(s.pre, s.perm) if c in act_set and q >= conn)
            if pot:
                self.pot[s.ordinal] = pot
            if con >= p.activation_threshold:
                self.active.append(s)
            if pot >= p.min_threshold:
                self.matching.append(s)
        if learn:
            for s in self.active:
                s.last_used = self.iteration
            self.iteration += 1
        self.prev_act, self.prev_win = act, win
        n = len(columns)
        return 0.0 if n == 0 else (n - predicted) / n

    def predictive_cells(self) -> list[int]:
        return sorted(set(s.cell for s in self.active))

    def synapses(self) -> list[tuple[int, list[int], list[float]]]:
        live = sorted((s for s in self.segs if s.alive), key=lambda s: (s.cell, s.ordinal))
        return [(s.cell, list(s.pre), [float(q) for q in s.perm]) for s in live]


def tm_synapses(tm: TemporalMemory, num_cells: int) -> list[tuple[int, list[int], list[float]]]:
    out = []
    for cell in range(num_cells):
        for g in tm.segments_for_cell(cell):
            pre, perm = tm.synapses_for_segment(g)
            out.append((cell, pre.tolist(), [float(q) for q in perm]))
    return out


def steps(n: int, columns: int, width: int, seed: int) -> list[np.ndarray]:
    """A repeating sequence with random column swaps and a few empty steps."""
    rng = np.random.default_rng(seed)
    base = [np.sort(rng.choice(columns, width, replace=False)) for _ in range(7)]
    out = []
    for i in range(n):
        cols = base[i % len(base)].copy()
        swap = rng.random(cols.size) < 0.2
        cols[swap] = rng.integers(0, columns, int(swap.sum()))
        if rng.random() < 0.02:
            cols = cols[:0]
        out.append(np.unique(cols).astype(np.int32))
    return out


SMALL = TemporalMemoryParams(cells_per_column=4, activation_threshold=5, initial_permanence=0.3,
                             connected_permanence=0.5, min_threshold=3, max_new_synapse_count=8,
                             permanence_increment=0.1, permanence_decrement=0.05,
                             predicted_segment_decrement=0.04, max_segments_per_cell=3,
                             max_synapses_per_segment=10)


@pytest.mark.parametrize("params", [SMALL, dataclasses.replace(SMALL, predicted_segment_decrement=0.0,
                                                                max_synapses_per_segment=32)])
def test_matches_plain_python_reference_step_by_step(params):
    columns, seed = 64, 5
    tm = TemporalMemory(columns, params, seed=seed)
    ref = ReferenceTM(columns, params, seed=seed)
    inputs = steps(400, columns, 10, seed=9)
    for i, cols in enumerate(inputs):
        learn = i % 50 != 49  # an occasional inference-only step
        assert tm.compute(cols, learn=learn) == ref.compute(cols, learn), f"anomaly differs at step {i}"
        assert tm.active_cells.tolist() == ref.prev_act, f"active cells differ at step {i}"
        assert tm.winner_cells.tolist() == ref.prev_win, f"winner cells differ at step {i}"
        assert tm.predictive_cells.tolist() == ref.predictive_cells(), f"predictive cells differ at step {i}"
    assert tm_synapses(tm, ref.num_cells) == ref.synapses()
    if params is SMALL:  # the run must have exercised the interesting paths
        assert any(len(s.pre) == params.max_synapses_per_segment for s in ref.segs)
        assert any(not s.alive for s in ref.segs)
