"""Temporal Memory: sequence learning on cells of the spatial pooler's columns (htm-spec "Temporal Memory").

Algorithm per step (htm.core semantics)
    Active columns holding an *active* segment of the previous step are predicted: the cells of
    those segments become active and winners. Other active columns burst (all cells active); the
    winner is the cell of the best *matching* segment, else the least used cell (fewest
    segments, ties drawn from the component RNG) which grows a new segment. Learning adapts the
    winning segments (+inc on synapses to previously active cells, −dec on the rest, synapses
    falling below EPSILON are destroyed) and grows synapses to previous winners it lacks;
    matching segments in inactive columns are punished by predicted_segment_decrement. Then the
    next step's dendrite activity is computed from the new active cells. Raw anomaly = fraction
    of active columns that were not predicted.

Determinism without layout dependence
    Segments live in reusable slots, but nothing observable depends on slot numbers: segment
    lists are ordered by (cell, creation ordinal), LRU eviction breaks ties by ordinal, and a
    segment's synapses keep their in-segment order. The serialized form therefore holds only
    live data in creation order and a restored TM continues bit-identically.

Layout (memory is per resident model, so nothing is preallocated per potential segment)
    * segments: ``segi[slot] = (cell, start, count, capacity)`` int32, ``segl[slot] =
      (ordinal, last_used_iteration)`` int64 and ``cnt[slot]`` (this step's active potential
      synapses in the low 16 bits, active connected ones above); free slots form a linked list.
    * synapses: a pool of ``pre`` (presynaptic cell: uint16 when the model has at most 65,536
      cells, else int32) and ``perm`` (float32); a segment owns one block whose capacity grows
      through size classes (32, 48, 64, 96, 128 by default); freed blocks go to per-class free
      lists (linked through ``pre``, a link split over two 16-bit slots).
    * presynaptic index: per cell a list of entries ``segment << 1 | connected`` in blocks that
      double. An entry names only the segment: a segment reaches a cell at most once, so the
      position inside the segment is found when needed (adapting a segment flips the bits of
      its few crossing synapses) and nothing has to be re-pointed when synapses move. Entries
      are uint16 while the model has fewer than 32,768 segment slots (promoted to int32 when it
      grows past that): with uint16 cells this cut the mature model of bench/density.py from
      4.08 to 2.98 MB with bit-identical outputs. Cell list headers live in per-column tables
      allocated only for columns that feed some synapse (65,536 headers per model would cost
      0.8 MB). The connected bit is flipped whenever a permanence crosses the threshold, so
      dendrite activity is one sequential read and one counter increment per synapse of an
      active cell, with no permanence lookups.
    Pools grow by 1.25× inside the kernels and are compacted (tight, column-local layout) when
    their high-water mark passes 1.25× its size after the last compaction; the cell-flag scratch
    array is shared by all instances (compute holds the GIL, so never used concurrently).

Restore (a swapped-in model is rebuilt on every sample when metrics outnumber resident models)
    `_validate` checks the serialized arrays in loops without early exits (they vectorise) and
    `_build` lays segments out in creation order and builds the presynaptic index the way
    `_compact` would, counting fan-in in the cell tables themselves: nothing is allocated per
    cell (65,536-entry temporaries were half a young model's restore), the two checks that
    need per-cell state come free while building (a cell's segment count; a segment repeating a
    presynaptic cell puts its entry right after its own in that cell's list), and arrays are
    read as views of the payload. bench/analyzer_codec.py: young (3 samples) 250 → 80-90 µs,
    mature (2,000 samples, 32,000 synapses) 760 → 300 µs (430 µs inside a whole analyzer's
    restore, cache-cold); `get_state` gathers live segments in one kernel (young 25 → 14 µs,
    mature 170 → 65 µs). Tried and slower: per-segment copy loops instead of block copies, a
    branch-free block-size computation, recomputing rows instead of keeping them per synapse.

Measured choice of the activity method (bench/tm_step.py, one core, 2048 × 32, after 3,500-7,000
steps): walking every synapse against an active-cell mask is on par only for small models
(rogue_agent_key_updown, 37k synapses: 84 µs index vs 76 µs walk; machine temperature, 22k: 21 vs
35 µs); the presynaptic index wins as models grow (nyc_taxi, 81k: 39 vs 206 µs; a synthetic
75 %-bursting stream, 2.8M synapses: 0.56 ms vs 11.6 ms).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from pensu.errors import CorruptData
from pensu.htm.rng import new_rng_state, rng_randint
from pensu.htm.serialization import pack_array, params_dict, require, unpack_array

EPSILON = 1e-5  # synapses whose permanence falls below this are destroyed (htm.core's value)
_OWNER = "TemporalMemory"
_IDX_BASE = 4  # smallest presynaptic-list block (entries)
COMPACT_RATIO = 1.25  # compact when a pool's high-water mark exceeds this × its last compacted size ...
COMPACT_SLACK = 4096  # ... plus this many slots (amortised O(1) per synapse, like array doubling)
_SYN_BASE = 32  # smallest synapse block (synapses)

# segi columns (int32 per segment slot)
_CELL, _START, _COUNT, _CAP = 0, 1, 2, 3
_SEGI_WIDTH = 4
# segl columns (int64 per segment slot)
_ORD, _LAST = 0, 1
# ctab columns (per cell of a column that has a cell table)
_XSTART, _XCOUNT, _XCAP = 0, 1, 2
# meta slots (int64)
_M_POOL_TOP, _M_IDX_TOP, _M_SEG_TOP, _M_SEG_FREE, _M_NEXT_ORD, _M_ITER = 0, 1, 2, 3, 4, 5
_M_NSEG, _M_NSYN, _M_NASEG, _M_NMSEG, _M_NTOUCH, _M_NTAB = 6, 7, 8, 9, 10, 11
_M_POOL_BASE, _M_IDX_BASE = 12, 13  # pool high-water marks right after the last compaction
_M_SYN_FREE = 16  # up to 8 synapse block classes
_M_IDX_FREE = 24  # up to 32 index block classes
_META_SIZE = 64
# ip (int64 parameters)
_P_NCOLS, _P_CPC, _P_ACT, _P_MIN, _P_NEW, _P_MAXSEG, _P_MAXSYN, _P_SHIFT, _P_NCLS = range(9)
_P_CLASSES = 9
# fp (float64 parameters)
_F_INIT, _F_CONN, _F_INC, _F_DEC, _F_PDEC = range(5)
# cell flags (shared scratch, all zero between calls)
_PREV_ACT, _PREV_WIN, _ON_SEG = 1, 2, 4
# activity counters: potential in the low 16 bits, connected above
_CONN_ONE = 1 << 16
_POT_MASK = 0xFFFF



@dataclass(frozen=True)
class TemporalMemoryParams:
    """Temporal Memory parameters (defaults: the community re-tune of htm.core's NAB detector)."""

    cells_per_column: int = 32
    activation_threshold: int = 20
    initial_permanence: float = 0.24
    connected_permanence: float = 0.5
    min_threshold: int = 13
    max_new_synapse_count: int = 31
    permanence_increment: float = 0.04
    permanence_decrement: float = 0.008
    predicted_segment_decrement: float = 0.001
    max_segments_per_cell: int = 128
    max_synapses_per_segment: int = 128


# -- numba kernels: allocation --------------------------------------------------------------
@njit(cache=True)
def _ensure(a, need):
    """Return `a`, or a 1.25×-grown copy when it holds fewer than `need` elements."""
    if need <= a.shape[0]:
        return a
    n = max(need, a.shape[0] + (a.shape[0] >> 2) + 256)
    b = np.zeros(n, dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _ensure_rows(a, need):
    """Return 2-D `a`, or a grown copy when it has fewer than `need` rows."""
    if need <= a.shape[0]:
        return a
    n = max(need, a.shape[0] + (a.shape[0] >> 1) + 64)
    b = np.zeros((n, a.shape[1]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _link_set(a, at, nxt):
    """Store free-list link `nxt` (-1 = end) in a[at], a[at+1] as two 16-bit halves (any int dtype)."""
    v = nxt + 1
    a[at] = v & 0xFFFF
    a[at + 1] = (v >> 16) & 0xFFFF


@njit(cache=True)
def _link_get(a, at):
    """The free-list link stored by `_link_set`."""
    return ((np.int64(a[at + 1]) << 16) | np.int64(a[at])) - 1


@njit(cache=True)
def _syn_class(cap, ip):
    """Index of the smallest synapse block class holding `cap` synapses."""
    for c in range(ip[_P_NCLS]):
        if ip[_P_CLASSES + c] >= cap:
            return c
    return ip[_P_NCLS] - 1


@njit(cache=True)
def _syn_alloc(cls, ip, meta, pre, perm):
    """Take a synapse block of class `cls`; return (start, pre, perm) with pools grown if needed."""
    head = meta[_M_SYN_FREE + cls]
    if head >= 0:
        meta[_M_SYN_FREE + cls] = _link_get(pre, head)
        return head, pre, perm
    size = ip[_P_CLASSES + cls]
    start = meta[_M_POOL_TOP]
    meta[_M_POOL_TOP] = start + size
    return start, _ensure(pre, start + size), _ensure(perm, start + size)


@njit(cache=True)
def _idx_class(cap):
    """Index of the presynaptic-list block class of size `cap`."""
    c = 0
    size = _IDX_BASE
    while size < cap:
        size <<= 1
        c += 1
    return c


@njit(cache=True)
def _cell_row(c, cpc, colx):
    """Row of cell `c` in the cell table, or -1 when its column has none."""
    t = colx[c // cpc]
    if t < 0:
        return -1
    return t * cpc + c % cpc


@njit(cache=True)
def _idx_add(c, entry, ip, colx, ctab, meta, iseg):
    """Append `entry` to cell `c`'s presynaptic list; return the (maybe grown) ctab and iseg."""
    cpc = ip[_P_CPC]
    col = c // cpc
    if colx[col] < 0:
        t = meta[_M_NTAB]
        meta[_M_NTAB] = t + 1
        ctab = _ensure_rows(ctab, (t + 1) * cpc)
        colx[col] = t
    row = colx[col] * cpc + c % cpc
    cnt = ctab[row, _XCOUNT]
    cap = ctab[row, _XCAP]
    if cnt == cap:
        new_cap = _IDX_BASE if cap == 0 else cap * 2
        cls = _idx_class(new_cap)
        head = meta[_M_IDX_FREE + cls]
        if head >= 0:
            start = head
            meta[_M_IDX_FREE + cls] = _link_get(iseg, head)
        else:
            start = meta[_M_IDX_TOP]
            meta[_M_IDX_TOP] = start + new_cap
            iseg = _ensure(iseg, start + new_cap)
        old = ctab[row, _XSTART]
        for i in range(cnt):
            iseg[start + i] = iseg[old + i]
        if cap > 0:
            oc = _idx_class(cap)
            _link_set(iseg, old, meta[_M_IDX_FREE + oc])
            meta[_M_IDX_FREE + oc] = old
        ctab[row, _XSTART] = start
        ctab[row, _XCAP] = new_cap
    iseg[ctab[row, _XSTART] + cnt] = entry
    ctab[row, _XCOUNT] = cnt + 1
    return ctab, iseg


@njit(cache=True)
def _idx_find(c, g, cpc, colx, ctab, iseg):
    """Position of segment `g`'s entry in cell `c`'s list (a segment reaches a cell at most once)."""
    row = _cell_row(c, cpc, colx)
    start = ctab[row, _XSTART]
    for i in range(start, start + ctab[row, _XCOUNT]):
        if np.int64(iseg[i]) >> 1 == g:
            return i
    raise AssertionError("presynaptic index lacks a synapse")


@njit(cache=True)
def _idx_remove(c, g, cpc, colx, ctab, iseg):
    """Remove segment `g`'s entry from cell `c`'s list (the last entry takes its place)."""
    i = _idx_find(c, g, cpc, colx, ctab, iseg)
    row = _cell_row(c, cpc, colx)
    last = ctab[row, _XSTART] + ctab[row, _XCOUNT] - 1
    iseg[i] = iseg[last]
    ctab[row, _XCOUNT] -= 1


# -- numba kernels: structure changes -------------------------------------------------------
@njit(cache=True)
def _destroy_synapse(g, k, ip, segi, pre, perm, colx, ctab, iseg, meta):
    """Destroy synapse `k` of segment `g`; the segment's last synapse moves into its place."""
    cpc = ip[_P_CPC]
    start = segi[g, _START]
    last = segi[g, _COUNT] - 1
    _idx_remove(pre[start + k], g, cpc, colx, ctab, iseg)
    if k != last:  # index entries name the segment, not the position: nothing to re-point
        pre[start + k] = pre[start + last]
        perm[start + k] = perm[start + last]
    segi[g, _COUNT] = last
    meta[_M_NSYN] -= 1


@njit(cache=True)
def _destroy_segment(g, ip, segi, cnt, nseg, pre, colx, ctab, iseg, meta):
    """Destroy segment `g` with its synapses and free its slot and block."""
    cpc = ip[_P_CPC]
    start = segi[g, _START]
    n = segi[g, _COUNT]
    for k in range(n):
        _idx_remove(pre[start + k], g, cpc, colx, ctab, iseg)
    cls = _syn_class(segi[g, _CAP], ip)
    _link_set(pre, start, meta[_M_SYN_FREE + cls])
    meta[_M_SYN_FREE + cls] = start
    nseg[segi[g, _CELL]] -= 1
    segi[g, _CELL] = -1
    segi[g, _COUNT] = 0
    cnt[g] = 0
    segi[g, _START] = meta[_M_SEG_FREE]
    meta[_M_SEG_FREE] = g
    meta[_M_NSEG] -= 1
    meta[_M_NSYN] -= n


@njit(cache=True)
def _destroy_unused(before, ip, segi, segl, cnt, nseg, pre, colx, ctab, iseg, meta):
    """Destroy every segment last active before iteration `before`; return how many."""
    n = 0
    for g in range(meta[_M_SEG_TOP]):
        if segi[g, _CELL] >= 0 and segl[g, _LAST] < before:
            _destroy_segment(g, ip, segi, cnt, nseg, pre, colx, ctab, iseg, meta)
            n += 1
    return n


@njit(cache=True)
def _create_segment(cell, ip, segi, segl, cnt, nseg, pre, perm, colx, ctab, iseg, meta):
    """Create an empty segment on `cell` (evicting its least recently used one at the cap)."""
    if nseg[cell] >= ip[_P_MAXSEG]:
        best = -1
        for s in range(meta[_M_SEG_TOP]):
            if segi[s, _CELL] == cell:
                if best < 0 or segl[s, _LAST] < segl[best, _LAST] or (
                        segl[s, _LAST] == segl[best, _LAST] and segl[s, _ORD] < segl[best, _ORD]):
                    best = s
        _destroy_segment(best, ip, segi, cnt, nseg, pre, colx, ctab, iseg, meta)
    g = meta[_M_SEG_FREE]
    if g >= 0:
        meta[_M_SEG_FREE] = segi[g, _START]
    else:
        g = meta[_M_SEG_TOP]
        meta[_M_SEG_TOP] = g + 1  # the caller guarantees the slot exists
    start, pre, perm = _syn_alloc(0, ip, meta, pre, perm)
    segi[g, _CELL] = cell
    segi[g, _START] = start
    segi[g, _COUNT] = 0
    segi[g, _CAP] = ip[_P_CLASSES]
    cnt[g] = 0
    segl[g, _ORD] = meta[_M_NEXT_ORD]
    segl[g, _LAST] = meta[_M_ITER]
    meta[_M_NEXT_ORD] += 1
    meta[_M_NSEG] += 1
    nseg[cell] += 1
    return g, pre, perm


@njit(cache=True)
def _adapt(g, inc, dec, flags, events, ip, fp, segi, cnt, nseg, pre, perm, colx, ctab, iseg, meta):
    """+inc on synapses to previously active cells, −dec on the rest; drop dead synapses/segment.

    `events` is scratch of at least max_synapses_per_segment + 1 int32."""
    conn = np.float32(fp[_F_CONN])
    eps = np.float32(EPSILON)
    start = segi[g, _START]
    n = segi[g, _COUNT]
    # Pass 1, a tight loop: new permanences; note the rare synapses that die or cross `conn`.
    n_events = 0
    for k in range(n):
        i = start + k
        old = perm[i]
        if flags[pre[i]] & _PREV_ACT:
            new = np.float32(min(float(old) + inc, 1.0))
        else:
            new = np.float32(min(float(old) - dec, 1.0))
        perm[i] = new
        lo = min(old, new)
        hi = max(old, new)
        events[n_events] = k  # branch-free: kept only when the synapse died or crossed
        n_events += (lo < eps) | ((lo < conn) & (hi >= conn))
    if n_events == 0:
        return
    # Pass 2: flip the index's connected bit of live synapses that crossed `conn` ...
    cpc = ip[_P_CPC]
    for t in range(n_events):
        k = events[t]
        if perm[start + k] >= eps:
            j = _idx_find(pre[start + k], g, cpc, colx, ctab, iseg)
            iseg[j] ^= 1
    # ... then destroy dead ones, highest first: destroying k moves the last synapse into k,
    # which going downwards is never one still pending.
    for t in range(n_events - 1, -1, -1):
        k = events[t]
        if perm[start + k] < eps:
            _destroy_synapse(g, k, ip, segi, pre, perm, colx, ctab, iseg, meta)
    if segi[g, _COUNT] == 0:
        _destroy_segment(g, ip, segi, cnt, nseg, pre, colx, ctab, iseg, meta)


@njit(cache=True)
def _grow(g, n_desired, prev_win, flags, rng, ip, fp, segi, pre, perm, colx, ctab, iseg, meta):
    """Grow up to `n_desired` synapses from segment `g` to random previous winners it lacks."""
    max_syn = ip[_P_MAXSYN]
    start = segi[g, _START]
    n = segi[g, _COUNT]
    for k in range(n):
        flags[pre[start + k]] |= _ON_SEG
    cands = np.empty(prev_win.shape[0], dtype=np.int32)
    nc = 0
    for w in prev_win:
        if not flags[w] & _ON_SEG:
            cands[nc] = w
            nc += 1
    for k in range(n):
        flags[pre[start + k]] &= ~_ON_SEG
    n_new = min(n_desired, nc)
    if n_new <= 0:
        return pre, perm, ctab, iseg
    overrun = n + n_new - max_syn
    if overrun > 0:
        # Make room by dropping the weakest synapses, never those to previous winners.
        for _ in range(overrun):
            weakest = -1
            wp = np.float32(2.0)
            for k in range(segi[g, _COUNT]):
                if not flags[pre[start + k]] & _PREV_WIN and perm[start + k] < wp:
                    wp = perm[start + k]
                    weakest = k
            if weakest < 0:
                break
            _destroy_synapse(g, weakest, ip, segi, pre, perm, colx, ctab, iseg, meta)
        n = segi[g, _COUNT]
        n_new = min(n_new, max_syn - n)
        if n_new <= 0:
            return pre, perm, ctab, iseg
    cap = segi[g, _CAP]
    if n + n_new > cap:
        cls = _syn_class(n + n_new, ip)
        new_start, pre, perm = _syn_alloc(cls, ip, meta, pre, perm)
        for k in range(n):
            pre[new_start + k] = pre[start + k]
            perm[new_start + k] = perm[start + k]
        old_cls = _syn_class(cap, ip)
        _link_set(pre, start, meta[_M_SYN_FREE + old_cls])
        meta[_M_SYN_FREE + old_cls] = start
        start = new_start
        segi[g, _START] = start
        segi[g, _CAP] = ip[_P_CLASSES + cls]
    init = np.float32(fp[_F_INIT])
    bit = 1 if init >= np.float32(fp[_F_CONN]) else 0
    for i in range(n_new):
        j = i + rng_randint(rng, nc - i)
        c = cands[j]
        cands[j] = cands[i]
        cands[i] = c
        pos = n + i
        pre[start + pos] = c
        perm[start + pos] = init
        ctab, iseg = _idx_add(c, (g << 1) | bit, ip, colx, ctab, meta, iseg)
    segi[g, _COUNT] = n + n_new
    meta[_M_NSYN] += n_new
    return pre, perm, ctab, iseg


# -- numba kernels: activity ----------------------------------------------------------------
@njit(cache=True)
def _sorted_by_key(segs, n, segi, segl):
    """The first `n` of `segs` ordered by (cell, creation ordinal)."""
    keys = np.empty(n, dtype=np.int64)
    for i in range(n):
        g = segs[i]
        keys[i] = (np.int64(segi[g, _CELL]) << 40) | segl[g, _ORD]
    order = np.argsort(keys)
    out = np.empty(n, dtype=np.int32)
    for i in range(n):
        out[i] = segs[order[i]]
    return out


@njit(cache=True)
def _activate_dendrites(act, learn, prev_touched, ip, segi, segl, cnt, colx, ctab, iseg, meta):
    """Count active synapses per segment from the active cells `act`; return the segment lists.

    Returns one int32 array: active segments, matching segments (both ordered by cell and creation
    ordinal), then every touched segment; the sizes go to meta (_M_NASEG, _M_NMSEG, _M_NTOUCH).
    """
    for g in prev_touched:
        cnt[g] = 0
    cpc = ip[_P_CPC]
    total = 0
    for c in act:
        row = _cell_row(c, cpc, colx)
        if row >= 0:
            total += ctab[row, _XCOUNT]
    touched = np.empty(min(total, meta[_M_NSEG]), dtype=np.int32)
    nt = 0
    for c in act:
        row = _cell_row(c, cpc, colx)
        if row < 0:
            continue
        start = ctab[row, _XSTART]
        for i in range(start, start + ctab[row, _XCOUNT]):
            e = iseg[i]
            g = np.int64(e) >> 1
            v = cnt[g]
            if v == 0:
                touched[nt] = g
                nt += 1
            cnt[g] = v + 1 + (e & 1) * _CONN_ONE
    act_thr = ip[_P_ACT] * _CONN_ONE
    min_thr = ip[_P_MIN]
    aseg = np.empty(nt, dtype=np.int32)
    mseg = np.empty(nt, dtype=np.int32)
    na = 0
    nm = 0
    for t in range(nt):
        g = touched[t]
        v = cnt[g]
        if v >= act_thr:
            aseg[na] = g
            na += 1
        if v & _POT_MASK >= min_thr:
            mseg[nm] = g
            nm += 1
    out = np.empty(na + nm + nt, dtype=np.int32)
    out[:na] = _sorted_by_key(aseg, na, segi, segl)
    out[na:na + nm] = _sorted_by_key(mseg, nm, segi, segl)
    out[na + nm:] = touched[:nt]
    if learn:
        it = meta[_M_ITER]
        for i in range(na):
            segl[out[i], _LAST] = it
        meta[_M_ITER] = it + 1
    meta[_M_NASEG] = na
    meta[_M_NMSEG] = nm
    meta[_M_NTOUCH] = nt
    return out


@njit(cache=True)
def _compute(columns, learn, prev_act, prev_win, seglists, flags, rng, ip, fp, segi, segl, cnt, nseg,
             pre, perm, colx, ctab, iseg, meta):
    """One TM step. Returns (anomaly, active cells, winner cells, segment lists, pre, perm, ctab, iseg)."""
    ncols = ip[_P_NCOLS]
    cpc = ip[_P_CPC]
    for i in range(columns.shape[0]):
        c = columns[i]
        if c < 0 or c >= ncols or (i > 0 and c <= columns[i - 1]):
            raise ValueError("active columns must be sorted, unique and in range")
    for c in prev_act:
        flags[c] |= _PREV_ACT
    for c in prev_win:
        flags[c] |= _PREV_WIN
    na_prev = meta[_M_NASEG]
    nm_prev = meta[_M_NMSEG]
    aseg = seglists[:na_prev]
    mseg = seglists[na_prev:na_prev + nm_prev]
    touched = seglists[na_prev + nm_prev:na_prev + nm_prev + meta[_M_NTOUCH]]
    inc = fp[_F_INC]
    dec = fp[_F_DEC]
    pdec = fp[_F_PDEC]
    max_new = ip[_P_NEW]
    events = np.empty(ip[_P_MAXSYN] + 1, dtype=np.int32)
    act = np.empty(columns.shape[0] * cpc, dtype=np.int32)
    win = np.empty(columns.shape[0] * cpc, dtype=np.int32)
    n_act = 0
    n_win = 0
    n_predicted = 0
    ia = 0
    im = 0
    for col in columns:
        # Matching segments of inactive columns before this one are punished.
        while im < mseg.shape[0] and segi[mseg[im], _CELL] // cpc < col:
            g = mseg[im]
            if learn and pdec > 0.0 and segi[g, _CELL] >= 0:
                _adapt(g, -pdec, 0.0, flags, events, ip, fp, segi, cnt, nseg, pre, perm, colx, ctab, iseg, meta)
            im += 1
        while ia < aseg.shape[0] and segi[aseg[ia], _CELL] // cpc < col:
            ia += 1
        a0 = ia
        while ia < aseg.shape[0] and segi[aseg[ia], _CELL] // cpc == col:
            ia += 1
        m0 = im
        while im < mseg.shape[0] and segi[mseg[im], _CELL] // cpc == col:
            im += 1
        if ia > a0:
            n_predicted += 1
            last = -1
            for t in range(a0, ia):
                g = aseg[t]
                cell = segi[g, _CELL]
                if cell != last:
                    act[n_act] = cell
                    win[n_win] = cell
                    n_act += 1
                    n_win += 1
                    last = cell
                if learn:
                    pot = cnt[g] & _POT_MASK
                    _adapt(g, inc, dec, flags, events, ip, fp, segi, cnt, nseg, pre, perm, colx, ctab, iseg, meta)
                    if segi[g, _CELL] >= 0 and max_new - pot > 0:
                        pre, perm, ctab, iseg = _grow(g, max_new - pot, prev_win, flags, rng, ip, fp, segi,
                                                      pre, perm, colx, ctab, iseg, meta)
            continue
        for c in range(col * cpc, (col + 1) * cpc):
            act[n_act] = c
            n_act += 1
        if im > m0:
            best = mseg[m0]
            for t in range(m0 + 1, im):
                if cnt[mseg[t]] & _POT_MASK > cnt[best] & _POT_MASK:
                    best = mseg[t]
            win[n_win] = segi[best, _CELL]
            n_win += 1
            if learn:
                pot = cnt[best] & _POT_MASK
                _adapt(best, inc, dec, flags, events, ip, fp, segi, cnt, nseg, pre, perm, colx, ctab, iseg, meta)
                if segi[best, _CELL] >= 0 and max_new - pot > 0:
                    pre, perm, ctab, iseg = _grow(best, max_new - pot, prev_win, flags, rng, ip, fp, segi,
                                                  pre, perm, colx, ctab, iseg, meta)
        else:
            fewest = 1 << 30
            ties = 0
            for c in range(col * cpc, (col + 1) * cpc):
                if nseg[c] < fewest:
                    fewest = nseg[c]
                    ties = 1
                elif nseg[c] == fewest:
                    ties += 1
            pick = rng_randint(rng, ties)
            winner = -1
            for c in range(col * cpc, (col + 1) * cpc):
                if nseg[c] == fewest:
                    if pick == 0:
                        winner = c
                        break
                    pick -= 1
            win[n_win] = winner
            n_win += 1
            if learn and prev_win.shape[0] > 0 and max_new > 0:
                g, pre, perm = _create_segment(winner, ip, segi, segl, cnt, nseg, pre, perm, colx, ctab, iseg,
                                               meta)
                pre, perm, ctab, iseg = _grow(g, min(max_new, prev_win.shape[0]), prev_win, flags, rng,
                                              ip, fp, segi, pre, perm, colx, ctab, iseg, meta)
    while im < mseg.shape[0]:
        g = mseg[im]
        if learn and pdec > 0.0 and segi[g, _CELL] >= 0:
            _adapt(g, -pdec, 0.0, flags, events, ip, fp, segi, cnt, nseg, pre, perm, colx, ctab, iseg, meta)
        im += 1
    for c in prev_act:
        flags[c] = 0
    for c in prev_win:
        flags[c] = 0
    act_out = act[:n_act].copy()
    win_out = win[:n_win].copy()
    lists = _activate_dendrites(act_out, learn, touched, ip, segi, segl, cnt, colx, ctab, iseg, meta)
    n = columns.shape[0]
    anomaly = 0.0 if n == 0 else (n - n_predicted) / n
    return anomaly, act_out, win_out, lists, pre, perm, ctab, iseg


@njit(cache=True)
def _full_walk(act, num_cells, segi, pre, perm, n_slots, conn):
    """Reference activity (potential, connected) per segment slot by walking every synapse."""
    active = np.zeros(num_cells, dtype=np.bool_)
    for c in act:
        active[c] = True
    pot = np.zeros(n_slots, dtype=np.int32)
    con = np.zeros(n_slots, dtype=np.int32)
    c32 = np.float32(conn)
    for g in range(n_slots):
        if segi[g, _CELL] < 0:
            continue
        start = segi[g, _START]
        for i in range(start, start + segi[g, _COUNT]):
            if active[pre[i]]:
                pot[g] += 1
                if perm[i] >= c32:
                    con[g] += 1
    return pot, con


@njit(cache=True)
def _compact(ip, segi, pre, perm, colx, ctab, iseg, meta):
    """Re-lay both pools tightly (segments grouped by cell, lists by cell); return (pre, perm, iseg).

    Only storage positions change (slots, synapse order and list contents stay), so behaviour is
    unaffected; it returns memory from freed blocks and puts a column's data side by side."""
    top = meta[_M_SEG_TOP]
    keys = np.empty(meta[_M_NSEG], dtype=np.int64)
    m = 0
    for g in range(top):
        if segi[g, _CELL] >= 0:
            keys[m] = (np.int64(segi[g, _CELL]) << 32) | g
            m += 1
    keys.sort()
    total = 0
    for t in range(m):
        g = np.int32(keys[t] & 0xFFFFFFFF)
        total += ip[_P_CLASSES + _syn_class(segi[g, _COUNT], ip)]
    new_pre = np.zeros(total + total // 16 + 256, dtype=pre.dtype)
    new_perm = np.zeros(total + total // 16 + 256, dtype=np.float32)
    pos = 0
    for t in range(m):
        g = np.int32(keys[t] & 0xFFFFFFFF)
        start = segi[g, _START]
        n = segi[g, _COUNT]
        for k in range(n):
            new_pre[pos + k] = pre[start + k]
            new_perm[pos + k] = perm[start + k]
        cap = ip[_P_CLASSES + _syn_class(n, ip)]
        segi[g, _START] = pos
        segi[g, _CAP] = cap
        pos += cap
    meta[_M_POOL_TOP] = pos
    ncls = ip[_P_NCLS]
    meta[_M_SYN_FREE:_M_SYN_FREE + ncls] = -1
    rows = meta[_M_NTAB] * ip[_P_CPC]
    total = 0
    for r in range(rows):
        if ctab[r, _XCOUNT] > 0:
            total += _IDX_BASE << _idx_class(ctab[r, _XCOUNT])
    new_iseg = np.zeros(total + total // 16 + 256, dtype=iseg.dtype)
    pos = 0
    for col in range(colx.shape[0]):
        t0 = colx[col]
        if t0 < 0:
            continue
        for r in range(t0 * ip[_P_CPC], (t0 + 1) * ip[_P_CPC]):
            n = ctab[r, _XCOUNT]
            if n == 0:
                ctab[r, _XSTART] = 0
                ctab[r, _XCAP] = 0
                continue
            start = ctab[r, _XSTART]
            for i in range(n):
                new_iseg[pos + i] = iseg[start + i]
            cap = _IDX_BASE << _idx_class(n)
            ctab[r, _XSTART] = pos
            ctab[r, _XCAP] = cap
            pos += cap
    meta[_M_IDX_TOP] = pos
    meta[_M_IDX_FREE:_M_IDX_FREE + 32] = -1
    meta[_M_POOL_BASE] = meta[_M_POOL_TOP]
    meta[_M_IDX_BASE] = pos
    return new_pre, new_perm, new_iseg


# -- numba kernels: (de)serialization -------------------------------------------------------
@njit(cache=True)
def _serialize(segi, segl, pre, perm, top, sizes_like, pre_like):
    """Live segments in creation order: (cells, last used, sizes, presynaptic cells, permanences).

    One kernel instead of a dozen numpy calls (flatnonzero, argsort, fancy indexing, casts):
    most of a young model's `get_state`. Sizes and cells take the dtypes of the `_like` arrays."""
    n = 0
    for g in range(top):
        if segi[g, _CELL] >= 0:
            n += 1
    slots = np.empty(n, dtype=np.int32)
    keys = np.empty(n, dtype=np.int64)
    n = 0
    total = 0
    for g in range(top):
        if segi[g, _CELL] >= 0:
            slots[n] = g
            keys[n] = segl[g, _ORD]
            total += segi[g, _COUNT]
            n += 1
    order = np.argsort(keys, kind="mergesort")  # ordinals are unique: any sort is stable
    cells = np.empty(n, dtype=np.int32)
    last = np.empty(n, dtype=np.int64)
    sizes = np.empty(n, dtype=sizes_like.dtype)
    out_pre = np.empty(total, dtype=pre_like.dtype)
    out_perm = np.empty(total, dtype=np.float32)
    j = 0
    for i in range(n):
        g = slots[order[i]]
        cells[i] = segi[g, _CELL]
        last[i] = segl[g, _LAST]
        k = segi[g, _COUNT]
        sizes[i] = k
        start = segi[g, _START]
        out_pre[j:j + k] = pre[start:start + k]
        out_perm[j:j + k] = perm[start:start + k]
        j += k
    return cells, last, sizes, out_pre, out_perm


# Codes of `_validate` and `_build` (0: valid), each with the message `_restore` raises.
_RESTORE_ERRORS = {
    1: "segment table out of range",
    2: "synapse arrays do not match the segment table",
    3: "permanence out of range",
    4: "active_cells must be sorted unique cell indices",
    5: "winner_cells must be sorted unique cell indices",
    6: "a segment repeats a presynaptic cell",
}


@njit(cache=True)
def _sorted_cells(a, ncells):
    """True when `a` holds strictly increasing cell indices in [0, ncells)."""
    for i in range(a.shape[0]):
        if a[i] < 0 or a[i] >= ncells or (i > 0 and a[i] <= a[i - 1]):
            return False
    return True


@njit(cache=True)
def _validate(cells, last, sizes, in_pre, in_perm, act, win, iteration, ip, ncells):
    """Check restored state before `_build` lays it out; return an error code (0: valid).

    Loops without early exits, so the synapse checks vectorise (one pass per array instead of a
    dozen numpy reductions, each a few µs of dispatch on a young model). Two checks are left to
    `_build`, where they cost nothing: segments per cell and repeated cells in a segment."""
    bad = False
    total = 0
    for g in range(cells.shape[0]):
        k = np.int64(sizes[g])
        bad |= (cells[g] < 0) | (cells[g] >= ncells) | (k < 1) | (k > ip[_P_MAXSYN]) | (last[g] > iteration)
        total += k
    if bad:
        return 1
    if total != in_pre.shape[0]:
        return 2
    for i in range(in_pre.shape[0]):
        bad |= (in_pre[i] < 0) | (in_pre[i] >= ncells)
    if bad:
        return 2
    for i in range(in_perm.shape[0]):
        p = in_perm[i]
        bad |= (p <= 0.0) | (p > 1.0) | (p != p)  # p != p: NaN
    if bad:
        return 3
    if not _sorted_cells(act, ncells):
        return 4
    if not _sorted_cells(win, ncells):
        return 5
    return 0


@njit(cache=True)
def _build(cells, last, counts, in_pre, in_perm, iteration, ip, fp, segi, segl, nseg, colx, meta, pre_like,
           iseg_like):
    """Lay out `_validate`d segments in slots 0..n-1 (creation order); build pools and the presynaptic index.

    Returns (code, pre, perm, ctab, iseg): pools of the dtypes of `pre_like` and `iseg_like`,
    code 0, or code 1 when a cell holds more than max_segments_per_cell segments, 6 when a
    segment repeats a presynaptic cell (its entry would follow itself in that cell's list).
    `colx` must be all -1 and `nseg` all 0. The layout is the one `_compact` makes: cell tables
    in column order, each cell's list in a block of the smallest class.

    Nothing is allocated per cell (65,536-cell temporaries cost more than the rest of a young
    model's restore): fan-in is counted in the cell tables themselves. The synapse loops are
    flat where they can be and each synapse's column is divided once (a mature model restores
    32,000 synapses; a scalar pass over them costs ~50 µs)."""
    cpc = ip[_P_CPC]
    conn = np.float32(fp[_F_CONN])
    n = cells.shape[0]
    m = in_pre.shape[0]
    pool = 0
    code = 0
    for g in range(n):
        c = cells[g]
        if nseg[c] >= ip[_P_MAXSEG]:
            code = 1
            break
        nseg[c] += 1
        cls = _syn_class(counts[g], ip)
        segi[g, _CELL] = c
        segi[g, _START] = pool
        segi[g, _COUNT] = counts[g]
        segi[g, _CAP] = ip[_P_CLASSES + cls]
        segl[g, _ORD] = g
        segl[g, _LAST] = last[g]
        pool += ip[_P_CLASSES + cls]
    pre = np.zeros(pool + pool // 8 + 64, dtype=pre_like.dtype)
    perm = np.zeros(pool + pool // 8 + 64, dtype=np.float32)
    if code:
        return code, pre, perm, np.zeros((0, 3), dtype=np.int32), np.zeros(0, dtype=iseg_like.dtype)
    j = 0
    for g in range(n):  # block copies
        start = segi[g, _START]
        k = segi[g, _COUNT]
        pre[start:start + k] = in_pre[j:j + k]
        perm[start:start + k] = in_perm[j:j + k]
        j += k
    # Each synapse's cell-table row: first its column (cells per column is a power of two in
    # every preset: a shift), then, once tables are numbered in column order, the row.
    shift = 0
    while (1 << shift) < cpc:
        shift += 1
    if (1 << shift) != cpc:
        shift = -1
    srow = np.empty(m, dtype=np.int32)
    for i in range(m):
        c = np.int64(in_pre[i])
        col = c >> shift if shift >= 0 else c // cpc
        srow[i] = col
        colx[col] = 0  # this column feeds a synapse: it gets a cell table
    ntab = 0
    for col in range(colx.shape[0]):
        if colx[col] == 0:
            colx[col] = ntab
            ntab += 1
    ctab = np.zeros((ntab * cpc + cpc, 3), dtype=np.int32)
    for i in range(m):  # fan-in per cell, counted in _XCAP
        col = srow[i]
        row = colx[col] * cpc + (np.int64(in_pre[i]) - col * cpc)
        srow[i] = row
        ctab[row, _XCAP] += 1
    total = 0
    for row in range(ntab * cpc):
        fan = ctab[row, _XCAP]
        cap = 0
        if fan > 0:
            cap = _IDX_BASE
            while cap < fan:
                cap <<= 1
        ctab[row, _XSTART] = total
        ctab[row, _XCAP] = cap
        total += cap
    iseg = np.zeros(total + total // 8 + 64, dtype=iseg_like.dtype)
    i = 0
    for g in range(n):
        for _ in range(counts[g]):
            row = srow[i]
            at = ctab[row, _XSTART] + ctab[row, _XCOUNT]
            if ctab[row, _XCOUNT] > 0 and np.int64(iseg[at - 1]) >> 1 == g:
                code = 6
            iseg[at] = (g << 1) | (1 if in_perm[i] >= conn else 0)
            ctab[row, _XCOUNT] += 1
            i += 1
    meta[_M_POOL_TOP] = pool
    meta[_M_IDX_TOP] = total
    meta[_M_POOL_BASE] = pool
    meta[_M_IDX_BASE] = total
    meta[_M_SEG_TOP] = n
    meta[_M_NSEG] = n
    meta[_M_NSYN] = m
    meta[_M_NTAB] = ntab
    meta[_M_NEXT_ORD] = n
    meta[_M_ITER] = iteration
    return code, pre, perm, ctab, iseg


@njit(cache=True)
def _check(ip, fp, segi, nseg, pre, perm, colx, ctab, iseg, meta, with_index):
    """Return an error code (0 = consistent) for the structure's invariants.

    `with_index=False` skips the presynaptic index (codes 5-8). (A restore does not call this:
    `_validate` and `_build` check what it would, at a fraction of the cost.)"""
    cpc = ip[_P_CPC]
    conn = np.float32(fp[_F_CONN])
    ncells = nseg.shape[0]
    counted = np.zeros(ncells, dtype=np.int64)
    seen = np.zeros(ncells, dtype=np.bool_)
    live = 0
    syns = 0
    for g in range(meta[_M_SEG_TOP]):
        cell = segi[g, _CELL]
        if cell < 0:
            continue
        live += 1
        n = segi[g, _COUNT]
        syns += n
        counted[cell] += 1
        if n < 1 or n > ip[_P_MAXSYN] or n > segi[g, _CAP]:
            return 1
        start = segi[g, _START]
        for i in range(start, start + n):
            if seen[pre[i]] or not (0.0 < perm[i] <= 1.0):
                return 2
            seen[pre[i]] = True
        for i in range(start, start + n):
            seen[pre[i]] = False
    if live != meta[_M_NSEG] or syns != meta[_M_NSYN]:
        return 3
    for c in range(ncells):
        if counted[c] != nseg[c] or nseg[c] > ip[_P_MAXSEG]:
            return 4
    if not with_index:
        return 0
    # Index against synapses in O(synapses): group the synapses by presynaptic cell (counting
    # sort), then per cell mark the segments its index list names and check every synapse of
    # that cell is marked, with the right connected bit, and that the counts agree.
    top = meta[_M_SEG_TOP]
    fan = np.zeros(ncells + 1, dtype=np.int64)
    for g in range(top):
        if segi[g, _CELL] >= 0:
            for i in range(segi[g, _START], segi[g, _START] + segi[g, _COUNT]):
                fan[pre[i] + 1] += 1
    for c in range(ncells):
        fan[c + 1] += fan[c]
    fill = fan[:ncells].copy()
    by_cell = np.empty(syns, dtype=np.int64)  # segment << 1 | connected, grouped by presynaptic cell
    for g in range(top):
        if segi[g, _CELL] >= 0:
            for i in range(segi[g, _START], segi[g, _START] + segi[g, _COUNT]):
                by_cell[fill[pre[i]]] = (np.int64(g) << 1) | (1 if perm[i] >= conn else 0)
                fill[pre[i]] += 1
    mark = np.full(top, -1, dtype=np.int64)  # cell << 1 | connected bit of the entry naming g
    for c in range(ncells):
        row = _cell_row(c, cpc, colx)
        n = 0 if row < 0 else ctab[row, _XCOUNT]
        if n != fan[c + 1] - fan[c]:
            return 8
        if n == 0:
            continue
        start = ctab[row, _XSTART]
        for i in range(start, start + n):
            g = np.int64(iseg[i]) >> 1
            if g >= top or segi[g, _CELL] < 0:
                return 5
            mark[g] = (np.int64(c) << 1) | (np.int64(iseg[i]) & 1)
        for j in range(fan[c], fan[c + 1]):
            g = by_cell[j] >> 1
            if mark[g] >> 1 != c:
                return 6
            if (mark[g] & 1) != (by_cell[j] & 1):
                return 7
    return 0


# -- the component --------------------------------------------------------------------------
_SCRATCH: dict[int, np.ndarray] = {}


def _flags_for(num_cells: int) -> np.ndarray:
    """The shared all-zero cell-flag scratch array for this cell count."""
    flags = _SCRATCH.get(num_cells)
    if flags is None:
        flags = np.zeros(num_cells, dtype=np.uint8)
        _SCRATCH[num_cells] = flags
    return flags


def _empty_i32() -> np.ndarray:
    out = np.zeros(0, dtype=np.int32)
    out.flags.writeable = False
    return out


class TemporalMemory:
    """HTM Temporal Memory over `num_columns` columns of `params.cells_per_column` cells."""

    def __init__(self, num_columns: int, params: TemporalMemoryParams, seed: int) -> None:
        self._setup(num_columns, params, seed)
        self._alloc(segments=0, pool=0, index=0)

    def _setup(self, num_columns: int, params: TemporalMemoryParams, seed: int) -> None:
        """Set parameters, derived constants and empty sequence state."""
        _check_params(num_columns, params)
        self.num_columns = int(num_columns)
        self.params = params
        self.seed = int(seed)
        self.num_cells = self.num_columns * params.cells_per_column
        # Block classes 32, 48, 64, 96, 128, ... (powers of two and 1.5×): less slack than doubling.
        classes: list[int] = []
        size = _SYN_BASE
        while size < params.max_synapses_per_segment and len(classes) < 7:
            classes.append(size)
            size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
        classes.append(params.max_synapses_per_segment)
        self._ip = np.array([self.num_columns, params.cells_per_column, params.activation_threshold,
                             params.min_threshold, params.max_new_synapse_count,
                             params.max_segments_per_cell, params.max_synapses_per_segment, 0,
                             len(classes), *classes], dtype=np.int64)
        self._fp = np.array([params.initial_permanence, params.connected_permanence,
                             params.permanence_increment, params.permanence_decrement,
                             params.predicted_segment_decrement], dtype=np.float64)
        self._rng = new_rng_state(self.seed, stream=2)
        self._flags = _flags_for(self.num_cells)
        self._act = _empty_i32()
        self._win = _empty_i32()
        self._lists = np.zeros(0, dtype=np.int32)

    def _alloc(self, segments: int, pool: int, index: int) -> None:
        """Allocate empty structure arrays with the given capacities."""
        p = self.params
        self._meta = np.zeros(_META_SIZE, dtype=np.int64)
        self._meta[_M_SEG_FREE] = -1
        self._meta[_M_SYN_FREE:_M_SYN_FREE + 8] = -1
        self._meta[_M_IDX_FREE:_M_IDX_FREE + 32] = -1
        self._segi = np.zeros((segments, _SEGI_WIDTH), dtype=np.int32)
        self._segl = np.zeros((segments, 2), dtype=np.int64)
        self._cnt = np.zeros(segments, dtype=np.int32)
        nseg_dtype = np.uint8 if p.max_segments_per_cell <= 255 else np.uint16
        self._nseg = np.zeros(self.num_cells, dtype=nseg_dtype)
        self._pre = np.zeros(pool, dtype=_cell_dtype(self.num_cells))
        self._perm = np.zeros(pool, dtype=np.float32)
        self._colx = np.full(self.num_columns, -1, dtype=np.int32)
        self._ctab = np.zeros((0, 3), dtype=np.int32)
        self._iseg = np.zeros(index, dtype=_entry_dtype(segments))

    def _grow_segments(self, need: int) -> None:
        """Make room for at least `need` segment slots."""
        limit = _MAX_SEGMENTS  # a slot number must fit an int32 index entry
        if need > limit:
            raise ValueError(f"TemporalMemory cannot hold more than {limit} segments")
        old = self._segi.shape[0]
        n = min(limit, max(need, old + old // 4 + 64))
        segi = np.zeros((n, _SEGI_WIDTH), dtype=np.int32)
        segi[:old] = self._segi
        segl = np.zeros((n, 2), dtype=np.int64)
        segl[:old] = self._segl
        cnt = np.zeros(n, dtype=np.int32)
        cnt[:old] = self._cnt
        self._segi, self._segl, self._cnt = segi, segl, cnt
        if self._iseg.dtype != _entry_dtype(n):  # more slots than 16-bit entries can name
            self._iseg = self._iseg.astype(_entry_dtype(n))

    # -- stepping -------------------------------------------------------------------------
    def compute(self, active_columns: np.ndarray, learn: bool = True) -> float:
        """Run one step on sorted unique int32 column indices; return the raw anomaly."""
        cols = np.asarray(active_columns, dtype=np.int32)
        meta = self._meta
        # Every bursting column may create one segment; make sure its slot exists.
        if meta[_M_SEG_TOP] + cols.shape[0] > self._segi.shape[0]:
            self._grow_segments(int(meta[_M_SEG_TOP]) + cols.shape[0])
        try:
            anomaly, act, win, lists, pre, perm, ctab, iseg = _compute(
                cols, bool(learn), self._act, self._win, self._lists, self._flags, self._rng, self._ip,
                self._fp, self._segi, self._segl, self._cnt, self._nseg, self._pre, self._perm, self._colx,
                self._ctab, self._iseg, meta)
        except Exception:
            # The flag scratch is shared by all instances: never leave it dirty. (Bad input is
            # rejected before anything changes; any other failure leaves this TM unusable.)
            self._flags.fill(0)
            raise
        act.flags.writeable = False
        win.flags.writeable = False
        self._act, self._win, self._lists = act, win, lists
        self._pre, self._perm, self._ctab, self._iseg = pre, perm, ctab, iseg
        if (meta[_M_POOL_TOP] > COMPACT_RATIO * meta[_M_POOL_BASE] + COMPACT_SLACK
                or meta[_M_IDX_TOP] > COMPACT_RATIO * meta[_M_IDX_BASE] + COMPACT_SLACK):
            self.compact()
        return float(anomaly)

    def forget_unused_before(self, iteration: int) -> int:
        """Destroy the segments last active before TM `iteration`; return how many.

        Dendrite activity is recomputed (a destroyed segment may have been matching) and the
        pools are re-laid tightly, so the memory is returned at once."""
        destroyed = int(_destroy_unused(int(iteration), self._ip, self._segi, self._segl, self._cnt, self._nseg,
                                        self._pre, self._colx, self._ctab, self._iseg, self._meta))
        if destroyed:
            self._refresh()
            self.compact()
        return destroyed

    def compact(self) -> None:
        """Re-lay the synapse pool and presynaptic lists tightly (runs by itself when fragmented)."""
        self._pre, self._perm, self._iseg = _compact(self._ip, self._segi, self._pre, self._perm, self._colx,
                                                     self._ctab, self._iseg, self._meta)

    def _refresh(self) -> None:
        """Recompute dendrite activity from the current active cells without learning."""
        meta = self._meta
        n = int(meta[_M_NASEG] + meta[_M_NMSEG])
        touched = self._lists[n:n + int(meta[_M_NTOUCH])]
        self._lists = _activate_dendrites(self._act, False, touched, self._ip, self._segi, self._segl, self._cnt,
                                          self._colx, self._ctab, self._iseg, meta)

    def reset(self) -> None:
        """Forget the sequence state (active, winner and predictive cells); keep learned synapses."""
        self._act = _empty_i32()
        self._win = _empty_i32()
        self._refresh()

    @property
    def active_cells(self) -> np.ndarray:
        """Sorted int32 indices of the cells active after the last step (read-only)."""
        return self._act

    @property
    def winner_cells(self) -> np.ndarray:
        """Sorted int32 indices of the winner cells of the last step (read-only)."""
        return self._win

    @property
    def predictive_cells(self) -> np.ndarray:
        """Sorted int32 indices of the cells predicted for the next step."""
        na = int(self._meta[_M_NASEG])
        cells = self._segi[self._lists[:na], _CELL]
        if cells.size == 0:
            return np.zeros(0, dtype=np.int32)
        keep = np.empty(cells.size, dtype=bool)
        keep[0] = True
        keep[1:] = cells[1:] != cells[:-1]  # the active list is sorted by cell
        return cells[keep].astype(np.int32)

    # -- introspection --------------------------------------------------------------------
    def num_segments(self) -> int:
        """Number of live segments."""
        return int(self._meta[_M_NSEG])

    def num_synapses(self) -> int:
        """Number of live synapses."""
        return int(self._meta[_M_NSYN])

    @property
    def iteration(self) -> int:
        """Number of learning steps taken."""
        return int(self._meta[_M_ITER])

    def memory_bytes(self) -> int:
        """Bytes held in this instance's arrays (capacities, not just live data)."""
        arrays: list[np.ndarray] = [self._meta, self._segi, self._segl, self._cnt, self._nseg, self._pre, self._perm,
                                    self._colx,
                  self._ctab, self._iseg, self._act, self._win, self._lists, self._ip, self._fp, self._rng]
        return int(sum(a.nbytes for a in arrays))

    def segments_for_cell(self, cell: int) -> list[int]:
        """Segment handles on `cell`, oldest first (valid until the next compute)."""
        top = int(self._meta[_M_SEG_TOP])
        slots = np.flatnonzero(self._segi[:top, _CELL] == cell)
        return [int(s) for s in slots[np.argsort(self._segl[slots, _ORD])]]

    def segment_cell(self, segment: int) -> int:
        """The cell a segment handle belongs to."""
        return int(self._segi[segment, _CELL])

    def synapses_for_segment(self, segment: int) -> tuple[np.ndarray, np.ndarray]:
        """(presynaptic cells int32, permanences float32) of a segment, copies in stored order."""
        start, count = int(self._segi[segment, _START]), int(self._segi[segment, _COUNT])
        return self._pre[start:start + count].copy(), self._perm[start:start + count].copy()

    def segment_activity(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment handles, active potential, active connected synapse counts) for the next step."""
        na, nm, nt = (int(self._meta[i]) for i in (_M_NASEG, _M_NMSEG, _M_NTOUCH))
        touched = np.sort(self._lists[na + nm:na + nm + nt])
        counts = self._cnt[touched]
        return touched, counts & _POT_MASK, counts >> 16

    def reference_activity(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like `segment_activity` but by walking every synapse (slow; a cross-check and benchmark)."""
        top = int(self._meta[_M_SEG_TOP])
        pot, con = _full_walk(self._act, self.num_cells, self._segi, self._pre, self._perm, top,
                              self.params.connected_permanence)
        hit = np.flatnonzero(pot > 0).astype(np.int32)
        return hit, pot[hit], con[hit]

    def check_invariants(self) -> None:
        """Raise `CorruptData` if the segment, synapse and index structures disagree."""
        code = _check(self._ip, self._fp, self._segi, self._nseg, self._pre, self._perm, self._colx,
                      self._ctab, self._iseg, self._meta, True)
        if code:
            raise CorruptData(f"{_OWNER}: structure invariant {code} violated")

    # -- serialization --------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Return live state as msgpack-native values, segments in creation order."""
        sizes_like = np.empty(0, dtype=np.uint8 if self.params.max_synapses_per_segment <= 255 else np.int32)
        cells, last, sizes, pre, perm = _serialize(self._segi, self._segl, self._pre, self._perm,
                                                   int(self._meta[_M_SEG_TOP]), sizes_like,
                                                   np.empty(0, dtype=_cell_dtype(self.num_cells)))
        return {
            "params": params_dict(self.params),
            "num_columns": self.num_columns,
            "seed": self.seed,
            "iteration": int(self._meta[_M_ITER]),
            "rng": pack_array(self._rng),
            "segment_cells": pack_array(cells),
            "segment_last_used": pack_array(last),
            "segment_sizes": pack_array(sizes),
            "presynaptic": pack_array(pre),
            "permanences": pack_array(perm),
            "active_cells": pack_array(self._act),
            "winner_cells": pack_array(self._win),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TemporalMemory:
        """Rebuild a TM from `get_state()` output; raise `CorruptData` if it is inconsistent."""
        tm = cls.__new__(cls)
        cls._restore(tm, state)  # the restore is written as a method of the object it fills
        return tm

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Fill a bare `cls.__new__` object from `get_state()` output (see `from_state`)."""
        raw_params = require(state, "params", _OWNER)
        try:
            params = TemporalMemoryParams(**raw_params)
            num_columns = int(require(state, "num_columns", _OWNER))
            seed = int(require(state, "seed", _OWNER))
            iteration = int(require(state, "iteration", _OWNER))
            self._setup(num_columns, params, seed)
        except (TypeError, ValueError) as exc:
            raise CorruptData(f"{_OWNER}: bad parameters ({exc})") from exc
        # Read-only views of the payload's bytes: the kernels copy what they keep (rng is written).
        arrays = {key: unpack_array(require(state, key, _OWNER), key, copy=False) for key in (
            "segment_cells", "segment_last_used", "segment_sizes", "presynaptic", "permanences",
            "active_cells", "winner_cells")}
        rng = unpack_array(require(state, "rng", _OWNER), "rng")
        cells, last, sizes = arrays["segment_cells"], arrays["segment_last_used"], arrays["segment_sizes"]
        pre, perm = arrays["presynaptic"], arrays["permanences"]
        act, win = arrays["active_cells"], arrays["winner_cells"]
        n = cells.shape[0]
        ok = (rng.dtype == np.uint64 and rng.shape == (1,) and iteration >= 0
              and cells.dtype == np.int32 and cells.shape == (n,) and last.dtype == np.int64
              and last.shape == (n,) and sizes.ndim == 1 and sizes.shape == (n,) and sizes.dtype.kind in "iu"
              and pre.ndim == 1 and pre.dtype.kind in "iu"
              and perm.dtype == np.float32 and perm.shape == pre.shape)
        if not ok:
            raise CorruptData(f"{_OWNER}: state arrays have wrong types or shapes")
        # The dtypes get_state writes go to the kernels as they are; any other integer type
        # (none is written) as int64, where out-of-range values fail validation.
        if sizes.dtype not in (np.uint8, np.int32):
            sizes = sizes.astype(np.int64)
        if pre.dtype not in (np.uint16, np.int32):
            pre = pre.astype(np.int64)
        for key, a in (("active_cells", act), ("winner_cells", win)):
            if a.dtype != np.int32 or a.ndim != 1:
                raise CorruptData(f"{_OWNER}: {key} must be sorted unique cell indices")
        code = _validate(cells, last, sizes, pre, perm, act, win, iteration, self._ip, self.num_cells)
        if not code:
            self._alloc(segments=n + n // 4 + 64, pool=0, index=0)
            code, self._pre, self._perm, self._ctab, self._iseg = _build(
                cells, last, sizes, pre, perm, iteration, self._ip, self._fp, self._segi, self._segl, self._nseg,
                self._colx, self._meta, self._pre, self._iseg)
        if code:
            raise CorruptData(f"{_OWNER}: {_RESTORE_ERRORS[code]}")
        self._rng = rng
        self._act, self._win = act, win  # read-only, as compute leaves them
        self._refresh()


def _cell_dtype(num_cells: int) -> np.dtype[Any]:
    """Smallest dtype holding a cell index (presynaptic cells, in memory and serialized)."""
    return np.dtype(np.uint16 if num_cells <= 1 << 16 else np.int32)


_MAX_SEGMENTS = 1 << 30  # entries are int32 (segment << 1 | connected)


def _entry_dtype(segment_slots: int) -> np.dtype[Any]:
    """Index entry dtype for this many segment slots: uint16 while slot << 1 | 1 fits."""
    return np.dtype(np.uint16 if segment_slots <= 1 << 15 else np.int32)


def _check_params(num_columns: int, p: TemporalMemoryParams) -> None:
    """Raise ValueError on parameters the TM cannot work with."""
    if num_columns < 1 or not 1 <= p.cells_per_column <= 256:
        raise ValueError("TemporalMemory needs >= 1 column and 1..256 cells per column")
    if num_columns * p.cells_per_column >= 1 << 23:
        raise ValueError("TemporalMemory supports fewer than 2**23 cells")
    if p.max_segments_per_cell < 1 or not 1 <= p.max_synapses_per_segment <= 1024:
        raise ValueError("max_segments_per_cell must be >= 1 and max_synapses_per_segment in 1..1024")
    if p.activation_threshold < 1 or p.min_threshold < 1 or p.max_new_synapse_count < 0:
        raise ValueError("thresholds must be >= 1 and max_new_synapse_count >= 0")
    for name in ("initial_permanence", "connected_permanence", "permanence_increment",
                 "permanence_decrement", "predicted_segment_decrement"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]")
    if p.initial_permanence < EPSILON:
        raise ValueError("initial_permanence must be positive")
