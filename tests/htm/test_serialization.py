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
