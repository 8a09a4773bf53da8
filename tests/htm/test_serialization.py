import msgpack
import numpy as np
import pytest

from pensu.errors import CorruptData, PensuError
from pensu.htm.serialization import pack_array, unpack_array


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint16, np.uint64, np.bool_])
def test_round_trip_through_msgpack_is_exact(dtype):
    a = (np.arange(24) * 1.37).astype(dtype).reshape(4, 6)
    b = unpack_array(msgpack.unpackb(msgpack.packb(pack_array(a))))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    b[0, 0] = 1  # writable copy


def test_truncated_data_raises_corrupt():
    packed = pack_array(np.arange(10, dtype=np.int64))
    packed["data"] = packed["data"][:-3]
    with pytest.raises(CorruptData):
        unpack_array(packed)
    with pytest.raises(PensuError):
        unpack_array({"dtype": "O", "shape": [1], "data": b"x"})
    with pytest.raises(CorruptData):
        unpack_array([1, 2, 3])


def test_packb_is_msgpack_packb_and_survives_a_failed_pack():
    from pensu.htm.serialization import packb

    values = [{"a": 1, "b": [1.5, None, True], "c": b"\x00" * 300_000}, {"x": "é", "y": -(2**40)}, [], b""]
    for value in values:
        assert packb(value) == msgpack.packb(value, use_bin_type=True)
    with pytest.raises(TypeError):
        packb({"data": b"\x01" * 1000, "bad": object()})  # fails after part of the map was written
    for value in values:
        assert packb(value) == msgpack.packb(value, use_bin_type=True)


def test_cached_params_builds_once_per_exact_dict():
    from pensu.htm.serialization import cached_params

    calls = []

    def build(values):
        calls.append(values)
        if values.get("fail"):
            raise ValueError("bad")
        return tuple(sorted(values.items()))

    first = cached_params("test-kind", {"a": 1, "b": [2, 3]}, build)
    assert cached_params("test-kind", {"a": 1, "b": [2, 3]}, build) is first
    assert len(calls) == 1
    assert cached_params("test-kind", {"a": 1.0, "b": [2, 3]}, build) is not first  # 1.0 is not 1
    assert cached_params("other-kind", {"a": 1, "b": [2, 3]}, build) is not first
    for _ in range(2):  # a failing build caches nothing
        with pytest.raises(ValueError):
            cached_params("test-kind", {"fail": True}, build)
    assert len(calls) == 5
    cached_params("test-kind", {"a": object()}, build)  # not msgpack-native: built, not cached
    cached_params("test-kind", {"a": object()}, build)
    assert len(calls) == 7


def test_params_dict_returns_a_fresh_copy_each_time():
    from pensu.htm.model import ModelParams
    from pensu.htm.serialization import params_dict

    params = ModelParams()
    first = params_dict(params)
    first["sp"]["column_count"] = -1
    first["predictor"] = "edited"
    second = params_dict(params)
    assert second["sp"]["column_count"] == params.sp.column_count and second["predictor"] is None
    assert second == dataclasses_asdict_lists(params)


def dataclasses_asdict_lists(params):
    import dataclasses

    def native(v):
        if isinstance(v, dict):
            return {k: native(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [native(x) for x in v]
        return v

    return native(dataclasses.asdict(params))


def test_unpack_without_copy_is_a_read_only_view():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    packed = msgpack.unpackb(msgpack.packb(pack_array(a)))
    view = unpack_array(packed, copy=False)
    assert np.array_equal(view, a) and not view.flags.writeable
    packed_mutable = dict(packed, data=bytearray(packed["data"]))
    assert not unpack_array(packed_mutable, copy=False).flags.writeable
    for shape in ([-3, -4], [3, "x"], "12", None, [2.0, 6.0, 1]):
        try:
            out = unpack_array(dict(packed, shape=shape))
        except CorruptData:
            continue
        assert out.size == 12  # a shape that converts to one fitting the data is accepted, as before
