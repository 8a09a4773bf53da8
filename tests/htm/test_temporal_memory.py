import dataclasses

import msgpack
import numpy as np
import pytest

from pensu.errors import CorruptData
from pensu.htm.temporal_memory import TemporalMemory, TemporalMemoryParams

COLUMNS = 2048
PARAMS = TemporalMemoryParams()


def patterns(n: int, width: int = 40, seed: int = 0, columns: int = COLUMNS) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(columns, width, replace=False)).astype(np.int32) for _ in range(n)]


def columns_of(cells: np.ndarray, cpc: int = PARAMS.cells_per_column) -> np.ndarray:
    return np.unique(np.asarray(cells) // cpc)


def run_sequence(tm: TemporalMemory, seq: list[np.ndarray]) -> list[float]:
    """One repetition, starting from a reset (a cyclic sequence without resets keeps re-learning
    its wrap-around transition in plain HTM, since bursting columns do not grow to new winners)."""
    tm.reset()
    return [tm.compute(p) for p in seq]


def learned_sequence(seed: int = 1) -> tuple[TemporalMemory, list[np.ndarray]]:
    tm = TemporalMemory(COLUMNS, PARAMS, seed=seed)
    seq = patterns(10)
    for _ in range(20):
        anomalies = run_sequence(tm, seq)
        assert anomalies[0] == 1.0  # nothing predicts the first element after a reset
        if max(anomalies[1:]) == 0.0:
            return tm, seq
    raise AssertionError("sequence not learned within 20 repetitions")


def noisy_steps(n: int, seed: int = 3, columns: int = COLUMNS, width: int = 40) -> list[np.ndarray]:
    """A repeating sequence with random column swaps: learns, bursts and punishes."""
    base = patterns(12, width, seed, columns)
    rng = np.random.default_rng(seed + 100)
    out = []
    for i in range(n):
        cols = base[i % len(base)].copy()
        swap = rng.random(cols.size) < 0.15
        cols[swap] = rng.integers(0, columns, int(swap.sum()))
        out.append(np.unique(cols).astype(np.int32))
    return out


def test_repeating_sequence_is_learned_and_novelty_scores_high():
    tm, seq = learned_sequence()
    for _ in range(5):
        assert run_sequence(tm, seq) == [1.0] + [0.0] * (len(seq) - 1)
    tm.reset()
    for p in seq[:3]:
        tm.compute(p)
    assert tm.compute(seq[7]) >= 0.9  # jump into the middle of the sequence
    novel = patterns(1, seed=99)[0]
    tm.compute(seq[0])
    assert tm.compute(novel) >= 0.9


def test_predictive_cells_lie_in_next_pattern_columns():
    tm, seq = learned_sequence()
    tm.reset()
    for i, p in enumerate(seq[:-1]):
        tm.compute(p)
        predicted = tm.predictive_cells
        assert predicted.size > 0
        assert np.array_equal(columns_of(predicted), seq[i + 1])
        assert np.all(np.diff(predicted) > 0)
        assert set(predicted.tolist()) <= set(range(COLUMNS * PARAMS.cells_per_column))


def test_predicted_columns_activate_only_predicted_cells():
    tm, seq = learned_sequence()
    tm.reset()
    tm.compute(seq[0])
    predicted = tm.predictive_cells
    assert tm.compute(seq[1]) == 0.0
    assert np.array_equal(tm.active_cells, predicted)
    assert np.array_equal(tm.winner_cells, predicted)


def test_bursting_activates_whole_columns_with_one_winner_each():
    tm = TemporalMemory(COLUMNS, PARAMS, seed=5)
    cols = patterns(1, seed=4)[0]
    assert tm.compute(cols) == 1.0
    cpc = PARAMS.cells_per_column
    expected = (cols[:, None] * cpc + np.arange(cpc)[None, :]).ravel()
    assert np.array_equal(tm.active_cells, expected)
    winners = tm.winner_cells
    assert winners.size == cols.size
    assert np.array_equal(winners // cpc, cols)


def test_first_transition_grows_one_segment_per_column_to_previous_winners():
    tm = TemporalMemory(COLUMNS, PARAMS, seed=5)
    a, b = patterns(2, seed=6)
    tm.compute(a)
    prev_winners = set(tm.winner_cells.tolist())
    tm.compute(b)
    assert tm.num_segments() == b.size
    assert tm.num_synapses() == b.size * min(PARAMS.max_new_synapse_count, len(prev_winners))
    for cell in tm.winner_cells:
        (segment,) = tm.segments_for_cell(int(cell))
        pre, perm = tm.synapses_for_segment(segment)
        assert set(pre.tolist()) <= prev_winners and len(set(pre.tolist())) == pre.size
        assert np.all(perm == np.float32(PARAMS.initial_permanence))


def test_caps_on_segments_per_cell_and_synapses_per_segment_hold():
    params = dataclasses.replace(PARAMS, cells_per_column=4, max_segments_per_cell=2, max_synapses_per_segment=8,
                                 activation_threshold=4, min_threshold=2, max_new_synapse_count=6)
    tm = TemporalMemory(256, params, seed=7)
    for cols in noisy_steps(1500, seed=8, columns=256, width=20):
        tm.compute(cols)
    assert tm.num_segments() > 0
    per_cell = np.bincount([tm.segment_cell(s) for c in range(256 * 4) for s in tm.segments_for_cell(c)])
    assert per_cell.max() == 2  # the cap is reached and never exceeded
    sizes = [tm.synapses_for_segment(s)[0].size for c in range(256 * 4) for s in tm.segments_for_cell(c)]
    assert max(sizes) == 8
    tm.check_invariants()


def test_punishment_lowers_matching_segments_in_inactive_columns():
    tm = TemporalMemory(COLUMNS, PARAMS, seed=9)
    a, b, c = patterns(3, seed=10)
    c = np.setdiff1d(c, b).astype(np.int32)
    tm.compute(a)
    tm.compute(b)  # grows segments on b's winners to a's winners (permanence 0.24: matching, not active)
    b_cell = int(tm.winner_cells[0])
    (segment,) = tm.segments_for_cell(b_cell)
    pre_before, perm_before = tm.synapses_for_segment(segment)
    tm.reset()
    tm.compute(a)  # b's segments now match (bursting a activates all a cells)
    matching, potential, _ = tm.segment_activity()
    assert potential[np.searchsorted(matching, segment)] >= PARAMS.min_threshold
    tm.compute(c)  # b's columns stay inactive: its matching segments are punished
    pre_after, perm_after = tm.synapses_for_segment(segment)
    assert np.array_equal(pre_before, pre_after)
    expected = (perm_before.astype(np.float64) - PARAMS.predicted_segment_decrement).astype(np.float32)
    assert np.array_equal(perm_after, expected)


def test_no_punishment_without_decrement_or_learning():
    params = dataclasses.replace(PARAMS, predicted_segment_decrement=0.0)
    tm = TemporalMemory(COLUMNS, params, seed=9)
    a, b, c = patterns(3, seed=10)
    tm.compute(a)
    tm.compute(b)
    (segment,) = tm.segments_for_cell(int(tm.winner_cells[0]))
    before = tm.synapses_for_segment(segment)[1]
    tm.reset()
    tm.compute(a)
    tm.compute(c)
    assert np.array_equal(tm.synapses_for_segment(segment)[1], before)


def test_learn_false_changes_no_synapses():
    tm = TemporalMemory(COLUMNS, PARAMS, seed=11)
    steps = noisy_steps(400, seed=12)
    for cols in steps[:300]:
        tm.compute(cols)
    snapshot = msgpack.packb(tm.get_state())
    state_before = msgpack.unpackb(snapshot)
    for cols in steps[300:]:
        tm.compute(cols, learn=False)
    state_after = tm.get_state()
    for key in ("segment_cells", "segment_sizes", "presynaptic", "permanences", "segment_last_used"):
        assert state_after[key] == state_before[key], key
    assert state_after["iteration"] == state_before["iteration"]


def test_anomaly_is_fraction_of_unpredicted_columns():
    tm, seq = learned_sequence()
    tm.reset()
    tm.compute(seq[0])
    half = seq[1].size // 2
    fresh = np.setdiff1d(patterns(1, width=200, seed=77)[0], np.concatenate(seq))[:half]
    mixed = np.unique(np.concatenate([seq[1][:half], fresh])).astype(np.int32)
    assert tm.compute(mixed) == pytest.approx(fresh.size / mixed.size)
    assert tm.compute(np.zeros(0, dtype=np.int32)) == 0.0


def test_dendrite_index_matches_full_synapse_walk():
    tm = TemporalMemory(COLUMNS, PARAMS, seed=13)
    for i, cols in enumerate(noisy_steps(600, seed=14)):
        tm.compute(cols)
        if i % 97 == 0:
            idx, ref = tm.segment_activity(), tm.reference_activity()
            for x, y in zip(idx, ref):
                assert np.array_equal(x, y)
    tm.check_invariants()


def test_same_seed_same_run_and_bad_columns_rejected():
    steps = noisy_steps(200, seed=15)
    runs = []
    for _ in range(2):
        tm = TemporalMemory(COLUMNS, PARAMS, seed=16)
        runs.append([tm.compute(c) for c in steps] + [tm.num_synapses()])
    assert runs[0] == runs[1]
    with pytest.raises(ValueError):
        tm.compute(np.array([5, 3], dtype=np.int32))
    with pytest.raises(ValueError):
        tm.compute(np.array([COLUMNS], dtype=np.int32))


def _trace(tm: TemporalMemory, steps: list[np.ndarray]) -> list:
    out = []
    for cols in steps:
        out.append((tm.compute(cols), tm.active_cells.tolist(), tm.winner_cells.tolist(),
                    tm.predictive_cells.tolist(), tm.num_segments(), tm.num_synapses()))
    return out


def test_reset_clears_sequence_state_only():
    tm, seq = learned_sequence()
    tm.reset()
    tm.compute(seq[0])
    assert tm.predictive_cells.size > 0
    synapses = tm.num_synapses()
    tm.reset()
    assert tm.active_cells.size == 0 and tm.winner_cells.size == 0 and tm.predictive_cells.size == 0
    assert tm.num_synapses() == synapses
    assert tm.compute(seq[1]) == 1.0  # nothing was predicted after the reset


def test_missing_or_corrupt_state_raises_corrupt_data():
    tm = TemporalMemory(256, dataclasses.replace(PARAMS, cells_per_column=8), seed=19)
    for cols in noisy_steps(100, seed=20, columns=256, width=10):
        tm.compute(cols)
    state = msgpack.unpackb(msgpack.packb(tm.get_state()))
    for key in list(state):
        broken = dict(state)
        del broken[key]
        with pytest.raises(CorruptData):
            TemporalMemory.from_state(broken)

    sizes = np.frombuffer(state["segment_sizes"]["data"], dtype=np.dtype(state["segment_sizes"]["dtype"]))

    def repeat_in_one_segment(pre):  # the last segment's last cell is its first one too
        start = int(sizes[:-1].sum())
        assert sizes[-1] >= 2
        return np.where(np.arange(pre.size) == pre.size - 1, pre[start], pre)

    def mutate(key, fn):
        broken = dict(state)
        arr = np.frombuffer(state[key]["data"], dtype=np.dtype(state[key]["dtype"])).copy()
        broken[key] = dict(state[key], data=fn(arr).tobytes())
        return broken

    cases = [
        dict(state, params=dict(state["params"], cells_per_column="x")),
        dict(state, permanences=dict(state["permanences"], data=b"\x00")),
        mutate("presynaptic", lambda a: np.full_like(a, 255 * 8)),  # beyond the cell count
        mutate("permanences", lambda a: np.where(np.arange(a.size) == 0, np.float32(1.5), a)),
        mutate("segment_cells", lambda a: np.full_like(a, -1)),
        mutate("segment_sizes", lambda a: a + 1),
        mutate("presynaptic", lambda a: np.full_like(a, a[0])),  # repeated presynaptic cells
        mutate("active_cells", lambda a: a[::-1]),
        dict(state, rng={"dtype": "<u8", "shape": [2], "data": bytes(16)}),
        dict(state, segment_cells="nonsense"),
        mutate("permanences", lambda a: np.where(np.arange(a.size) == 3, np.float32("nan"), a)),
        mutate("presynaptic", repeat_in_one_segment),
        mutate("segment_last_used", lambda a: a + state["iteration"] + 1),  # used after the last step
        dict(state, presynaptic=dict(state["presynaptic"], dtype="<u8",
                                     data=np.frombuffer(state["presynaptic"]["data"], dtype=np.uint16)
                                     .astype(np.uint64).__add__(np.uint64(2**63)).tobytes(),
                                     shape=state["presynaptic"]["shape"])),  # huge cells of another dtype
    ]
    for broken in cases:
        with pytest.raises(CorruptData):
            TemporalMemory.from_state(broken)


def test_restore_checks_segments_per_cell_and_allows_a_cell_on_many_segments():
    params = dataclasses.replace(PARAMS, max_segments_per_cell=3)
    tm = TemporalMemory(COLUMNS, params, seed=31)
    for cols in noisy_steps(150, seed=32):
        tm.compute(cols)
    state = msgpack.unpackb(msgpack.packb(tm.get_state()))
    cells = np.frombuffer(state["segment_cells"]["data"], dtype=np.int32)
    pre = np.frombuffer(state["presynaptic"]["data"], dtype=np.dtype(state["presynaptic"]["dtype"]))
    assert len(set(pre.tolist())) < pre.size  # presynaptic cells shared between segments: valid
    restored = TemporalMemory.from_state(state)
    restored.check_invariants()
    assert msgpack.packb(restored.get_state()) == msgpack.packb(state)
    crowded = np.full_like(cells, cells[0])  # every segment on one cell: more than 3
    with pytest.raises(CorruptData, match="segment table"):
        TemporalMemory.from_state(dict(state, segment_cells=dict(state["segment_cells"], data=crowded.tobytes())))
    fresh = TemporalMemory(COLUMNS, params, seed=31)  # failed restores leave the shared scratch clean
    other = TemporalMemory.from_state(state)
    steps = noisy_steps(20, seed=33)
    assert _trace(other, steps) == _trace(restored, steps)
    assert fresh.compute(steps[0]) == 1.0


def test_compaction_changes_storage_not_behaviour():
    steps = noisy_steps(700, seed=21)
    plain = TemporalMemory(COLUMNS, PARAMS, seed=22)
    packed = TemporalMemory(COLUMNS, PARAMS, seed=22)
    trace_plain, trace_packed = [], []
    for i, cols in enumerate(steps):
        trace_plain.append(_trace(plain, [cols]))
        trace_packed.append(_trace(packed, [cols]))
        if i % 50 == 0:
            packed.compact()
            packed.check_invariants()
            pool_top, index_top = packed._meta[0], packed._meta[1]  # high-water marks of both pools
            assert pool_top <= 1.5 * packed.num_synapses() + 32 and index_top <= 2 * packed.num_synapses() + 4
    assert trace_plain == trace_packed
    assert msgpack.packb(plain.get_state()) == msgpack.packb(packed.get_state())


def test_full_cell_evicts_its_least_recently_used_segment():
    params = dataclasses.replace(PARAMS, cells_per_column=1, max_segments_per_cell=2)
    tm = TemporalMemory(COLUMNS, params, seed=23)
    a, b, c, d = patterns(4, seed=24)
    c, d = np.setdiff1d(c, a).astype(np.int32), np.setdiff1d(d, np.union1d(a, c)).astype(np.int32)
    cell = int(b[0])  # one cell per column: the winner is known
    for source in (a, c, d):
        tm.reset()
        tm.compute(source)
        tm.compute(b)
    kept = [set(tm.synapses_for_segment(s)[0].tolist()) for s in tm.segments_for_cell(cell)]
    assert len(kept) == 2
    assert kept[0] <= set(c.tolist()) and kept[1] <= set(d.tolist())  # a's segment, the oldest, is gone
    tm.check_invariants()


def test_index_entries_widen_past_32768_segment_slots_without_changing_outputs():
    steps = noisy_steps(300, seed=21, width=40)
    narrow = TemporalMemory(COLUMNS, PARAMS, seed=22)
    wide = TemporalMemory(COLUMNS, PARAMS, seed=22)
    for cols in steps[:100]:
        narrow.compute(cols)
        wide.compute(cols)
    assert narrow._iseg.dtype == np.uint16  # few segment slots: 16-bit entries
    wide._grow_segments(40_000)  # more slots than a 16-bit entry can name
    assert wide._iseg.dtype == np.int32
    wide.check_invariants()
    assert _trace(narrow, steps[100:]) == _trace(wide, steps[100:])
    wide.check_invariants()


def test_models_with_more_than_65536_cells_keep_int32_cells():
    tm = TemporalMemory(4096, PARAMS, seed=23)  # 131,072 cells
    steps = noisy_steps(200, seed=24, columns=4096, width=80)
    for cols in steps[:150]:
        tm.compute(cols)
    assert tm._pre.dtype == np.int32 and tm.num_synapses() > 0
    tm.check_invariants()
    restored = TemporalMemory.from_state(msgpack.unpackb(msgpack.packb(tm.get_state(), use_bin_type=True), raw=False))
    assert _trace(tm, steps[150:]) == _trace(restored, steps[150:])


def test_forget_unused_before_destroys_exactly_the_segments_idle_since_then():
    tm, seq = learned_sequence(seed=31)
    other = patterns(10, seed=32)
    cutoff = tm.iteration
    for _ in range(20):  # a second sequence: its segments are used after the cutoff, the first's not
        if max(run_sequence(tm, other)[1:]) == 0.0:
            break
    last_used = {g: int(tm._segl[g, 1]) for g in range(int(tm._meta[2])) if tm._segi[g, 0] >= 0}
    idle = {g for g, used in last_used.items() if used < cutoff}
    assert idle and len(idle) < len(last_used)
    synapses_kept = sum(int(tm._segi[g, 2]) for g in last_used if g not in idle)
    assert tm.forget_unused_before(cutoff) == len(idle)
    tm.check_invariants()
    assert tm.num_segments() == len(last_used) - len(idle) and tm.num_synapses() == synapses_kept
    assert tm.forget_unused_before(cutoff) == 0
    assert max(run_sequence(tm, other)[1:]) == 0.0  # what is still used still predicts
    assert run_sequence(tm, seq)[1] == 1.0  # the forgotten sequence is new again
