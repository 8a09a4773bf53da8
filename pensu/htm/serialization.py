"""Helpers that turn component state into msgpack-friendly values and back.

Every HTM component exposes `get_state() -> dict` holding only msgpack-native values
(dict, list, str, int, float, bool, bytes, None); numpy arrays go through `pack_array`.
`from_state(state)` rebuilds the component exactly. Bad input raises `CorruptData`.

Swap cost (issue #16: with more metrics than resident models, every sample serializes one
analyzer and restores another; bench/analyzer_codec.py times both by part). What made it slow
and what this module does about it:

* `packb`: a fresh msgpack packer grows its buffer by reallocation, and the fresh pages of a
  mature analyzer's 0.9 MB cost ~1 ms in page faults on this kind of VM; a per-thread packer
  keeps its buffer (same bytes out).
* `unpack_array(..., copy=False)`: a read-only view of the payload for arrays a kernel copies
  (or checks) anyway, instead of a copy nobody writes.
* `cached_params` / `params_dict`: frozen parameters are rebuilt (and re-checked) once per
  distinct dict and converted to a dict once per parameter object; copies are msgpack
  round-trips in C.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgpack
import numpy as np

from pensu.errors import CorruptData

_ALLOWED_KINDS = set("biuf")


_T = TypeVar("_T")
_PARAMS_CACHE_SIZE = 512
_params_cache: dict[tuple[Any, bytes], Any] = {}


def cached_params(kind: Any, values: Any, build: Callable[[Any], _T]) -> _T:
    """`build(values)`, cached by `kind` and the msgpack encoding of `values`.

    Restoring a component rebuilds its frozen parameters from a dict and re-runs their checks
    (35 µs for a model's eight nested dataclasses) though a process sees few distinct sets. The
    encoding is an exact key (1, 1.0 and True encode differently); values that are not
    msgpack-native are built uncached, and a `build` that raises caches nothing."""
    try:
        key = (kind, msgpack.packb(values, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        return build(values)
    found = _params_cache.get(key)
    if found is None:
        found = build(values)
        if len(_params_cache) >= _PARAMS_CACHE_SIZE:
            _params_cache.clear()
        _params_cache[key] = found
    return found


_packers = threading.local()


def packb(value: Any) -> bytes:
    """`msgpack.packb(value, use_bin_type=True)`, through a packer kept per thread.

    A fresh packer starts with a 256 kB buffer and reallocates it as a checkpoint grows; those
    fresh pages are what a mature analyzer's save cost (0.9 MB: 1.1 ms in `msgpack.packb`,
    70 µs with a buffer already the right size; page faults on this kind of VM are expensive).
    A packer that `autoreset`s keeps its grown buffer, so after the first large save each
    save costs one copy into the returned bytes. The bytes are identical to `msgpack.packb`'s.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        _packers.packer = packer
    try:
        return packer.pack(value)
    except BaseException:
        # A failed pack may leave a partial object in the buffer: start the next one afresh.
        _packers.packer = None
        raise


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Return a msgpack-native description of `array` (dtype, shape, raw bytes)."""
    contiguous = np.ascontiguousarray(array)
    return {"dtype": contiguous.dtype.str, "shape": list(contiguous.shape), "data": contiguous.tobytes()}


_DTYPES: dict[str, np.dtype[Any]] = {}  # dtype strings met so far whose kind is allowed


def _allowed_dtype(spec: Any) -> np.dtype[Any] | None:
    """The dtype named by `spec` when its kind is allowed, else None (np.dtype() costs ~1 µs)."""
    found = _DTYPES.get(spec) if type(spec) is str else None
    if found is not None:
        return found
    dtype = np.dtype(spec)
    if dtype.kind not in _ALLOWED_KINDS:
        return None
    if type(spec) is str and len(_DTYPES) < 64:  # bounded: hostile payloads cannot grow it
        _DTYPES[spec] = dtype
    return dtype


def unpack_array(packed: Any, name: str = "array", copy: bool = True) -> np.ndarray:
    """Rebuild an array packed by `pack_array`; raise `CorruptData` if malformed.

    With `copy` (the default) the array is a writable copy; without, a read-only view of the
    packed bytes (for data a kernel copies anyway: one copy of a mature model's arrays less)."""
    if type(packed) is not dict and not isinstance(packed, Mapping):  # dict first: the ABC check is slow
        raise CorruptData(f"{name}: expected a packed array, got {type(packed).__name__}")
    try:
        dtype = _allowed_dtype(packed["dtype"])
        shape = packed["shape"]
        if type(shape) is list and len(shape) == 1 and type(shape[0]) is int:  # most arrays: no loops
            count = shape[0]
            negative = count < 0
        else:
            shape = [int(s) for s in shape]
            count = math.prod(shape)  # np.prod costs more than the rest of this function
            negative = any(s < 0 for s in shape)
        data = packed["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptData(f"{name}: malformed packed array ({exc})") from exc
    if dtype is None or not isinstance(data, (bytes, bytearray)):
        raise CorruptData(f"{name}: unsupported dtype {packed['dtype']!r} or data type")
    if negative or count * dtype.itemsize != len(data):
        raise CorruptData(f"{name}: {len(data)} bytes do not fit shape {tuple(shape)} of {dtype.str}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if copy:
        return array.copy()
    array.flags.writeable = False  # a bytearray's view would be writable
    return array


def require(state: Any, key: str, owner: str) -> Any:
    """Return `state[key]`, raising `CorruptData` naming `owner` when it is missing."""
    if (type(state) is not dict and not isinstance(state, Mapping)) or key not in state:
        raise CorruptData(f"{owner}: state lacks {key!r}")
    return state[key]


def params_dict(params: Any) -> dict[str, Any]:
    """`dataclasses.asdict(params)` of a frozen params dataclass, as a fresh copy.

    Every checkpoint packs its components' parameters; `asdict` walks them recursively and cost
    ~0.25 ms per analyzer save (a third of `to_bytes` for a young model). Parameters are frozen
    and hashable, so the conversion is cached, as msgpack bytes: unpacking them is a deep copy
    in C (callers may edit what they get), ~5× faster than copying the dicts in Python (which
    was a quarter of a young analyzer's `to_bytes`)."""
    try:
        packed = _params_packed(params)
    except (TypeError, ValueError, OverflowError):  # a value msgpack cannot hold: convert afresh
        return _to_native(params)
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


@functools.lru_cache(maxsize=256)
def _params_packed(params: Any) -> bytes:
    return msgpack.packb(_to_native(params), use_bin_type=True)


def _to_native(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_native(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_native(v) for v in value]
    return value
