"""Parameters, parameter bytes, gradients and optimizer state are exact: they equal what Keras counts."""

from __future__ import annotations

import numpy as np
import pytest

import kmemopt
from kmemopt.profiling.dtypes import nbytes


def _var_bytes(variables) -> int:
    return sum(nbytes(v.shape, v.dtype) for v in variables)


def _assert_rows_sum_to_totals(result):
    t = result.totals
    rows = result.layers
    assert sum(r.params for r in rows) == t.params
    assert sum(r.trainable_params for r in rows) == t.trainable_params
    assert sum(r.param_bytes for r in rows) == t.param_bytes
    assert sum(r.gradient_bytes for r in rows) == t.gradient_bytes
    assert sum(r.activation_bytes for r in rows) == t.activation_bytes
    assert sum(r.optimizer_bytes for r in rows) + t.optimizer_global_bytes == t.optimizer_bytes


def test_in_memory_counts_equal_keras(mlp_model):
    r = kmemopt.profile(mlp_model, batch_size=4)
    assert r.totals.params == mlp_model.count_params() == 16 * 32 + 32 + 4 * 32 + 32 * 4 + 4
    assert r.totals.trainable_params == sum(int(np.prod(v.shape)) for v in mlp_model.trainable_variables)
    assert r.totals.non_trainable_params == 64  # BatchNormalization moving mean and variance
    assert r.totals.param_bytes == _var_bytes(mlp_model.weights)
    assert r.totals.gradient_bytes == _var_bytes(mlp_model.trainable_variables)
    _assert_rows_sum_to_totals(r)


def test_file_counts_equal_loaded_model(keras, mlp_path):
    r = kmemopt.profile(mlp_path, batch_size=4)
    loaded = keras.models.load_model(mlp_path)
    assert r.totals.params == loaded.count_params()
    assert r.totals.param_bytes == sum(w.nbytes for w in loaded.get_weights())
    # The file was compiled with Adam and trained: its optimizer is used, and the file holds its state.
    assert r.optimizer["name"] == "Adam" and r.optimizer["source"] == "file"
    assert r.file.optimizer_bytes == r.totals.optimizer_bytes
    assert r.file.weights_bytes == r.totals.param_bytes
    assert r.model.format == "keras" and r.model.file_bytes == mlp_path.stat().st_size
    _assert_rows_sum_to_totals(r)


OPTIMIZERS = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "nesterov": True}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("Adam", {"use_ema": True}),
    ("AdamW", {}),
    ("RMSprop", {}),
    ("RMSprop", {"momentum": 0.9, "centered": True}),
    ("Adagrad", {}),
    ("Adadelta", {}),
    ("Adamax", {}),
    ("Nadam", {}),
    ("Ftrl", {}),
    ("Lion", {}),
    ("Lamb", {}),
    ("Adafactor", {}),
]


@pytest.mark.parametrize("name, kwargs", OPTIMIZERS, ids=[f"{n}{kw}" for n, kw in OPTIMIZERS])
def test_optimizer_state_equals_the_real_optimizer(keras, mlp_model, name, kwargs):
    identifier = name if not kwargs else getattr(keras.optimizers, name)(**kwargs)
    r = kmemopt.profile(mlp_model, batch_size=2, optimizer=identifier)
    real = getattr(keras.optimizers, name)(**kwargs)
    real.build(mlp_model.trainable_variables)  # allocated, the ordinary way
    assert r.totals.optimizer_bytes == _var_bytes(real.variables)
    _assert_rows_sum_to_totals(r)
    # Slots belong to the layers that own the variables; BatchNorm's moving statistics get none.
    bn = next(row for row in r.layers if row.name == "bn")
    hidden = next(row for row in r.layers if row.name == "hidden")
    assert bn.gradient_bytes == 2 * 32 * 4 and bn.param_bytes == 4 * 32 * 4
    slots = {"Adam": 2, "SGD": 1 if kwargs else 0}.get(name)
    if slots is not None and not kwargs.get("amsgrad") and not kwargs.get("use_ema"):
        assert hidden.optimizer_bytes == slots * hidden.param_bytes
        assert bn.optimizer_bytes == slots * bn.gradient_bytes


@pytest.mark.parametrize("alias", ["sgd", "adamw", "Lamb", "lion", "ADAFACTOR"])
def test_optimizer_names_are_case_insensitive(mlp_model, alias):
    r = kmemopt.profile(mlp_model, optimizer=alias)
    assert r.optimizer["name"].lower() == alias.lower() and r.optimizer["source"] == "argument"


def test_unknown_optimizer_is_a_usage_error(mlp_model):
    from kmemopt.errors import UsageError

    with pytest.raises(UsageError, match="Unknown optimizer"):
        kmemopt.profile(mlp_model, optimizer="no_such_optimizer")


def test_mixed_precision_halves_activations_and_wraps_the_optimizer(keras):
    def build(policy):
        keras.config.set_dtype_policy(policy)
        try:
            inp = keras.Input((16,))
            h = keras.layers.Dense(32, name="hidden")(inp)
            out = keras.layers.Dense(4, name="out", dtype="float32")(h)
            return keras.Model(inp, out)
        finally:
            keras.config.set_dtype_policy("float32")

    full, mixed = build("float32"), build("mixed_float16")
    rf, rm = kmemopt.profile(full, batch_size=8), kmemopt.profile(mixed, batch_size=8)
    assert rm.totals.param_bytes == rf.totals.param_bytes  # variables stay float32
    hidden_f = next(r for r in rf.layers if r.name == "hidden")
    hidden_m = next(r for r in rm.layers if r.name == "hidden")
    assert hidden_m.compute_dtype == "float16"
    assert hidden_m.activation_bytes * 2 == hidden_f.activation_bytes
    assert rm.optimizer["name"] == "LossScaleOptimizer"
    mixed.compile(optimizer="adam", loss="mse")
    mixed.optimizer.build(mixed.trainable_variables)
    assert rm.totals.optimizer_bytes == _var_bytes(mixed.optimizer.variables)


def test_nested_and_shared_layers(nested_shared_model, nested_path):
    for source in (nested_shared_model, nested_path):
        r = kmemopt.profile(source, batch_size=5)
        by_path = {row.path: row for row in r.layers}
        assert set(by_path) == {"x", "shared", "sub/a", "sub/b"}
        shared = by_path["shared"]
        assert shared.calls == 2
        assert shared.output_bytes == 2 * 5 * 8 * 4
        assert by_path["sub/a"].params == 8 * 4 + 4
        assert r.totals.params == nested_shared_model.count_params()
        _assert_rows_sum_to_totals(r)


def test_16_bit_weights_count_16_bits(keras):
    inp = keras.Input((10,))
    out = keras.layers.Dense(6, dtype="float16", name="half")(inp)
    r = kmemopt.profile(keras.Model(inp, out), batch_size=1)
    row = next(r for r in r.layers if r.name == "half")
    assert row.param_dtypes == ("float16",)
    assert row.param_bytes == (10 * 6 + 6) * 2


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_model_reports_stored_bytes(keras, models_dir, mode):
    inp = keras.Input((64,), name="x")
    h = keras.layers.Dense(128, name="d1")(inp)
    model = keras.Model(inp, keras.layers.Dense(10, name="d2")(h))
    model.quantize(mode)
    path = models_dir / f"quantized_{mode}.keras"
    model.save(path)
    r = kmemopt.profile(path, batch_size=2)
    loaded = keras.models.load_model(path)
    assert r.totals.params == loaded.count_params()
    assert r.totals.param_bytes == sum(w.nbytes for w in loaded.get_weights())
    d1 = next(row for row in r.layers if row.name == "d1")
    assert "int8" in d1.param_dtypes and "float32" in d1.param_dtypes  # int8 kernel, float32 scales
    expected_kernel = 64 * 128 if mode == "int8" else 32 * 128  # int4: two values a byte
    assert d1.param_bytes < (64 * 128 + 128) * 4 / 3
    assert any(nbytes(w.shape, w.dtype) == expected_kernel for w in loaded.get_layer("d1").weights)


def test_legacy_h5_profiles_like_keras_format(keras, mlp_model, models_dir):
    model = keras.models.clone_model(mlp_model)
    model.compile(optimizer="rmsprop", loss="mse")
    path = models_dir / "legacy.h5"
    model.save(path)
    r = kmemopt.profile(path, batch_size=3)
    assert r.model.format == "h5"
    assert r.totals.params == mlp_model.count_params()
    assert r.file.weights_bytes == r.totals.param_bytes
    _assert_rows_sum_to_totals(r)


def test_declared_but_unstored_weights_profile_and_warn(keras, tmp_path):
    from factories import dense_stack, write_declared_model

    model = dense_stack(keras, [1024, 4096, 4096, 10])
    path = write_declared_model(tmp_path / "declared.keras", model)
    r = kmemopt.profile(path, batch_size=1)
    assert r.totals.params == model.count_params()
    assert r.file.weights_bytes == 0 and not r.file.weights_fully_stored
    assert any("not all stored" in w for w in r.warnings)
