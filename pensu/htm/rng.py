"""A tiny seeded random generator usable from numba kernels and plain Python.

Its whole state is one uint64 held in a 1-element array, so it serialises exactly and a
restored component continues the same random stream (numba's own np.random state cannot
be saved). The generator is splitmix64: fast, 64-bit, good enough for HTM's tie breaks and
sampling.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


def new_rng_state(seed: int, stream: int = 0) -> np.ndarray:
    """Return a fresh generator state for `seed`; `stream` derives independent sub-streams."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xD1B54A32D192ED03 + 1) % (1 << 64)
    state = np.array([mixed], dtype=np.uint64)
    rng_next(state)  # one warm-up step so small seeds do not start with small outputs
    return state


@njit(cache=True)
def rng_next(state: np.ndarray) -> np.uint64:
    """Advance `state` and return the next 64-bit value."""
    state[0] = state[0] + _GOLDEN
    z = state[0]
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True)
def rng_uniform(state: np.ndarray) -> float:
    """Return a float uniform in [0, 1)."""
    return float(rng_next(state) >> _S11) * _INV53


@njit(cache=True)
def rng_randint(state: np.ndarray, n: int) -> int:
    """Return an int uniform in [0, n) for n >= 1."""
    return int(rng_uniform(state) * n)


@njit(cache=True)
def rng_shuffle(state: np.ndarray, arr: np.ndarray) -> None:
    """Shuffle `arr` in place (Fisher-Yates)."""
    for i in range(arr.shape[0] - 1, 0, -1):
        j = rng_randint(state, i + 1)
        tmp = arr[i]
        arr[i] = arr[j]
        arr[j] = tmp
