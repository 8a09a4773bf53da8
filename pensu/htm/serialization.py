"""Helpers that turn component state into msgpack-friendly values and back.

Every HTM component exposes `get_state() -> dict` holding only msgpack-native values
(dict, list, str, int, float, bool, bytes, None); numpy arrays go through `pack_array`.
`from_state(state)` rebuilds the component exactly. Bad input raises `CorruptData`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pensu.errors import CorruptData

_ALLOWED_KINDS = set("biuf")


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Return a msgpack-native description of `array` (dtype, shape, raw bytes)."""
    contiguous = np.ascontiguousarray(array)
    return {"dtype": contiguous.dtype.str, "shape": list(contiguous.shape), "data": contiguous.tobytes()}


def unpack_array(packed: Any, name: str = "array") -> np.ndarray:
    """Rebuild an array packed by `pack_array` as a writable copy; raise `CorruptData` if malformed."""
    if not isinstance(packed, Mapping):
        raise CorruptData(f"{name}: expected a packed array, got {type(packed).__name__}")
    try:
        dtype = np.dtype(packed["dtype"])
        shape = tuple(int(s) for s in packed["shape"])
        data = packed["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptData(f"{name}: malformed packed array ({exc})") from exc
    if dtype.kind not in _ALLOWED_KINDS or not isinstance(data, (bytes, bytearray)):
        raise CorruptData(f"{name}: unsupported dtype {dtype.str!r} or data type")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if any(s < 0 for s in shape) or count * dtype.itemsize != len(data):
        raise CorruptData(f"{name}: {len(data)} bytes do not fit shape {shape} of {dtype.str}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def require(state: Any, key: str, owner: str) -> Any:
    """Return `state[key]`, raising `CorruptData` naming `owner` when it is missing."""
    if not isinstance(state, Mapping) or key not in state:
        raise CorruptData(f"{owner}: state lacks {key!r}")
    return state[key]
