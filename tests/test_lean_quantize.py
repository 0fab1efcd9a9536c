"""kmemopt's slice-by-slice quantizer gives Keras's own int8/int4 values, bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from kmemopt.keras_compat import quantize as lean_quantize


@pytest.fixture()
def small_slices(monkeypatch):
    monkeypatch.setattr(lean_quantize, "SLICE_BYTES", 4096)  # many slices even on small arrays
    monkeypatch.setattr(lean_quantize, "LEAN_FROM_BYTES", 0)


@pytest.mark.parametrize(
    "shape, axis, value_range",
    [
        ((300, 70), 0, (-127, 127)),  # Dense: per output column, over the rows
        ((300, 70), -1, (-127, 127)),  # Embedding: per row
        ((40, 6, 50), (0, 1), (-127, 127)),  # EinsumDense: several reduced axes
        ((40, 6, 50), (1,), (-127, 127)),  # the first axis kept
        ((300, 70), 0, (-8, 7)),  # int4's range
    ],
)
def test_same_values_as_keras(keras, small_slices, shape, axis, value_range):
    from keras.src.quantizers.quantizers import abs_max_quantize

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 5, shape[-1])).astype("float32")
    x[3] = 0.0  # an all-zero slice: epsilon guards the scale
    variable = keras.Variable(x)
    want_q, want_s = abs_max_quantize(variable, axis, value_range=value_range, to_numpy=True)
    got_q, got_s = lean_quantize.lean_abs_max_quantize(variable, axis, value_range=value_range)
    assert np.asarray(got_q).dtype == np.asarray(want_q).dtype
    assert np.asarray(got_q).tobytes() == np.asarray(want_q).tobytes()
    assert np.asarray(got_s).shape == np.asarray(want_s).shape
    assert np.asarray(got_s).tobytes() == np.asarray(want_s).tobytes()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_keras_quantize_through_it_equals_keras_quantize(keras, small_slices, monkeypatch, mode):
    def model():
        keras.utils.set_random_seed(0)
        inp = keras.Input((37,))
        h = keras.layers.Dense(64, name="d1")(inp)
        h = keras.layers.Reshape((8, 8))(h)
        h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(8, 16), name="e1")(h)
        return keras.Model(inp, h)

    calls = []
    real = lean_quantize.lean_abs_max_quantize

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(lean_quantize, "lean_abs_max_quantize", counted)
    plain, lean = model(), model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.quantize(mode)
        with lean_quantize.keras_quantization():
            lean.quantize(mode)
    # int8 goes through the slice-by-slice quantizer; Keras 3.15's int4 defaults to grouped quantization
    # (abs_max_quantize_grouped_with_zero_point), which stays Keras's own.
    assert len(calls) == {"int8": 2, "int4": 0}[mode]
    assert [v.path for v in lean.weights] == [v.path for v in plain.weights]
    for a, b in zip(lean.weights, plain.weights, strict=True):
        assert np.asarray(a.numpy()).tobytes() == np.asarray(b.numpy()).tobytes(), a.path
    from keras.src.quantizers import quantizers

    assert quantizers.abs_max_quantize is not None and quantizers.abs_max_quantize.__module__ == quantizers.__name__
