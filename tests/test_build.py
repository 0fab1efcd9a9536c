"""keras_compat.variables.assign_initializes: variables allocated straight from their values, as Keras would assign them."""

from __future__ import annotations

import numpy as np
import pytest

from kmemopt.keras_compat.variables import aligned_empty, assign_initializes, unallocated


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = np.array(
        [0.0, -0.0, 1e-8, -3e-6, 6.1e-5, 65504.0, 65520.0, 1e6, np.inf, -np.inf, 1.0 + 2**-11, 1.0 + 3 * 2**-11],
        dtype="float32",
    )
    noise = (rng.standard_normal(500) * 10.0 ** rng.integers(-9, 6, 500)).astype("float32")
    return np.concatenate([special, noise]).reshape(8, 64)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_assigned_values_equal_keras_assign(keras, dtype):
    value = _values() if dtype != "int8" else np.arange(-256, 256, dtype="int32").reshape(8, 64).clip(-128, 127)
    value = value.astype("int8") if dtype == "int8" else value
    plain = keras.Variable(np.zeros(value.shape, dtype=dtype), dtype=dtype)
    plain.assign(value)  # Keras's own conversion (TensorFlow's cast)
    with unallocated():
        fresh = keras.Variable(initializer="zeros", shape=value.shape, dtype=dtype)
    assert fresh._value is None
    with assign_initializes():
        fresh.assign(value)
    got, want = np.asarray(fresh.numpy()), np.asarray(plain.numpy())
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    fresh.assign_add(np.ones(value.shape, dtype=dtype))  # an ordinary variable afterwards
    assert np.asarray(fresh.numpy()).tobytes() == (want + np.ones(value.shape, dtype=dtype)).astype(dtype).tobytes()


def test_aligned_empty_is_aligned_and_sized():
    for shape in [(3,), (7, 5), (2, 3, 4)]:
        a = aligned_empty(shape, "float16")
        assert a.shape == shape and a.dtype == np.float16 and a.ctypes.data % 64 == 0


def test_a_wrong_shape_gets_keras_error(keras):
    with unallocated():
        fresh = keras.Variable(initializer="zeros", shape=(2, 3), dtype="float32")
    with assign_initializes(), pytest.raises(ValueError, match="must match"):
        fresh.assign(np.zeros((3, 2), "float32"))
