"""Mixed precision in the static estimate, term by term, on a tiny mixed_float16 model (bytes by hand).

The model: x (16 floats, float32) -> Dense(32, relu) "hidden" -> Dense(4, softmax) "out", built under
mixed_float16: float32 variables (hidden 16x32 + 32, out 32x4 + 4: 676 floats, 2,704 bytes), float16
activations. What a TensorFlow step holds beyond a float32 model's terms (internals, "Mixed precision"):
- weight casts: a float16 copy of every weight (1,088 + 264 bytes), made as the step starts and alive
  until its layer has run (inference);
- kept casts: the float16 kernel that an input gradient reads (out's 32x4: 256 bytes; hidden's input
  is the model input, which needs no gradient, so its cast kernel is not kept);
- input cast: hidden casts x to float16 (32 bytes a sample), kept: its kernel gradient reads it;
- loss cast: the loss's float32 copy of out's float16 predictions (16 bytes a sample);
- 16-bit weight gradients: backward workspace of each layer before the cast to float32;
- loss scaling: the model's own policy is mixed_float16, so the optimizer is a LossScaleOptimizer,
  which divides the gradients by the scale before the update: 2,704 more bytes while it runs.
"""

from __future__ import annotations

import pytest

import kmemopt

WEIGHTS = (16 * 32 + 32 + 32 * 4 + 4) * 4  # float32 variables
HIDDEN_CAST = (16 * 32 + 32) * 2
OUT_CAST = (32 * 4 + 4) * 2
OUT_KERNEL_CAST = 32 * 4 * 2


def _build(keras, policy: str):
    keras.config.set_dtype_policy(policy)
    try:
        inp = keras.Input((16,), name="x")
        h = keras.layers.Dense(32, activation="relu", name="hidden")(inp)
        return keras.Model(inp, keras.layers.Dense(4, activation="softmax", name="out")(h), name=policy)
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def mixed(keras):
    return _build(keras, "mixed_float16")


@pytest.fixture(scope="module")
def full(keras):
    return _build(keras, "float32")


def _row(result, name):
    return next(r for r in result.layers if r.name == name)


def _step(result) -> int:
    """The training peak less weights, gradients, slots and runtime terms: what the step itself holds."""
    t = result.totals
    return t.training_peak_bytes - t.param_bytes - t.gradient_bytes - t.optimizer_bytes - t.runtime_training_bytes


def test_weight_casts_by_layer(mixed, keras):
    from kmemopt.profiling.internals import autocast_dtype, weight_casts

    assert autocast_dtype(mixed.get_layer("hidden")) == "float16"
    assert weight_casts(mixed.get_layer("hidden")) == (HIDDEN_CAST, 16 * 32 * 2, HIDDEN_CAST)
    assert weight_casts(mixed.get_layer("out")) == (OUT_CAST, OUT_KERNEL_CAST, OUT_CAST)
    keras.config.set_dtype_policy("mixed_float16")
    try:
        # Keras turns autocast off for an embedding table and a normalisation's variables.
        emb = keras.layers.Embedding(100, 8)
        emb.build((None, 3))
        bn = keras.layers.BatchNormalization()
        bn.build((None, 8))
        dense32 = keras.layers.Dense(4, dtype="float32")
        dense32.build((None, 8))
    finally:
        keras.config.set_dtype_policy("float32")
    assert weight_casts(emb) == weight_casts(bn) == weight_casts(dense32) == (0, 0, 0)


def test_kept_activations_rows_by_hand(mixed):
    r = kmemopt.profile(mixed, batch_size=8)
    assert r.optimizer["name"] == "LossScaleOptimizer"
    assert r.totals.param_bytes == r.totals.gradient_bytes == WEIGHTS  # float32 master weights and gradients
    assert _row(r, "x").activation_bytes == 8 * 16 * 4 + 8 * 16 * 2  # the input and its float16 copy
    assert _row(r, "hidden").activation_bytes == 8 * 32 * 2  # its float16 ReLU output; no kept cast
    # softmax output (float16) + the cast kernel dX reads + the loss's float32 copy of the predictions
    assert _row(r, "out").activation_bytes == 8 * 4 * 2 + OUT_KERNEL_CAST + 8 * 4 * 4
    assert r.totals.activation_bytes == sum(row.activation_bytes for row in r.layers) == 768 + 512 + 448


def test_inference_peak_holds_every_weight_cast_until_its_layer(mixed):
    r = kmemopt.profile(mixed, batch_size=8)
    # At "hidden": x, its float16 copy, hidden's output, and every weight's float16 cast (made at the start).
    assert r.totals.inference_activation_peak_bytes == 8 * 16 * 4 + 8 * 16 * 2 + 8 * 32 * 2 + HIDDEN_CAST + OUT_CAST


def test_backward_step_holds_the_16_bit_weight_gradients(mixed):
    r = kmemopt.profile(mixed, batch_size=8)
    # hidden's backward step: d(x) and d(h), x's float16 copy, and its float16 weight gradients.
    assert r.totals.backward_transient_bytes == 8 * 16 * 4 + 8 * 32 * 2 + 8 * 16 * 2 + HIDDEN_CAST
    assert _step(r) == r.totals.activation_bytes + r.totals.backward_transient_bytes  # backward is the peak


def test_loss_scaling_unscaled_gradients_set_the_peak_at_batch_1(mixed):
    r = kmemopt.profile(mixed, batch_size=1)
    kept = (16 * 4 + 16 * 2) + 32 * 2 + (4 * 2 + OUT_KERNEL_CAST + 4 * 4)
    backward = 16 * 4 + 32 * 2 + 16 * 2 + HIDDEN_CAST
    assert (r.totals.activation_bytes, r.totals.backward_transient_bytes) == (kept, backward)
    assert kept + backward < WEIGHTS
    assert _step(r) == WEIGHTS  # the update's unscaled float32 gradients
    assert kmemopt.profile(mixed, batch_size=1, optimizer="adam").optimizer["name"] == "LossScaleOptimizer"


def test_float32_twin_has_none_of_the_terms(full):
    r = kmemopt.profile(full, batch_size=8)
    assert r.optimizer["name"] == "Adam"
    assert _row(r, "x").activation_bytes == 8 * 16 * 4
    assert _row(r, "out").activation_bytes == 8 * 4 * 4
    assert r.totals.inference_activation_peak_bytes == 8 * 16 * 4 + 8 * 32 * 4
    assert _step(r) == r.totals.activation_bytes + r.totals.backward_transient_bytes
