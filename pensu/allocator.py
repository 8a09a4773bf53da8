"""Allocator settings for a swapping service: keep large freed buffers in the heap.

Why: every swap builds and frees megabyte-sized buffers (the analyzer's msgpack bytes, the
checkpoint record, the payload read back, the arrays of the restored model). glibc serves an
allocation above its mmap threshold (128 kB at first, adapting up to 32 MB) with a fresh
mapping and unmaps it at free, so each swap page-faults its buffers in again, and it trims the
heap top whenever 128 kB are free there. Raising both thresholds keeps those pages mapped and
reused. Measured with `bench/swap_registry.py --store log` on the 2-core development machine
(load ~1), mature analyzers (`--metrics 400 --cap 40 --mature 20000`, 2.2 MB checkpoints):
45-54 → 71-74 swapped samples/s (CPU per swapped sample 16.5-19.5 → 11.5-12.2 ms; `--default-allocator`
is the "before"). Young ones (`--metrics 2000 --cap 200`, ~100 kB, below the default threshold
anyway) do not move beyond the noise (475-632 samples/s either way). The cost is at most
`TRIM_THRESHOLD` + `TOP_PAD` of freed memory kept by the process.

An operator's own `MALLOC_*` environment variables win: glibc has applied them at start and
nothing is changed here then. Other C libraries (musl, macOS) lack `mallopt`: nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 64 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
TOP_PAD = 16 * 1024 * 1024
_OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def keep_large_buffers(environ: dict[str, str] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); return whether it was done."""
    env = os.environ if environ is None else environ
    if any(name in env for name in _OPERATOR_VARIABLES):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    done = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not done:
        log.warning("could not raise the allocator's mmap/trim thresholds; swapping runs slower")
    return done


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    except OSError:
        return None
    function = getattr(libc, "mallopt", None)
    if function is None:
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int)
    function.restype = ctypes.c_int
    return function
