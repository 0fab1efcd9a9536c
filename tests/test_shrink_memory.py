"""How shrink keeps its memory down: the original is freed and read back from the file layer by layer,
and the result is the same, bit for bit, as rewriting a fully loaded original."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

# The tiny trained CNN (every kind of layer the passes treat differently) is shared with test_shrink.py.
from test_shrink import cnn_path, work  # noqa: F401

from kmemopt.api import open_model
from kmemopt.keras_compat.saving import open_stored_keras
from kmemopt.passes import fidelity as fid
from kmemopt.passes.base import ShrinkOptions
from kmemopt.passes.pipeline import _run_passes, make_options


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def test_a_freed_layer_reads_back_from_the_file_bit_for_bit(keras, nested_path):
    reference = keras.models.load_model(nested_path)
    stored = open_stored_keras(nested_path, custom_objects=None, compile=False)
    model = stored.model
    inner = model.get_layer("sub").get_layer("b")  # a layer of a nested, shared model
    assert stored.can_reload(inner)
    for v in inner.weights:
        v._value = None
    stored.reload(inner)
    stored.close()
    assert not stored.can_reload(inner)
    assert _weights(model).keys() == _weights(reference).keys()
    for path, value in _weights(reference).items():
        assert _weights(model)[path].tobytes() == value.tobytes(), path


@pytest.mark.parametrize(
    "options",
    [
        make_options(quantize="int8"),  # float16 convolutions + Keras int8 Dense
        # kmemopt int8 convolutions, a transform on the values: the same file path, run by `make test`
        pytest.param(make_options(quantize="int8", allow_custom_layers=True), marks=pytest.mark.slow),
        pytest.param(make_options(prune=0.5, prune_first_last=True), marks=pytest.mark.slow),
    ],
    ids=["int8", "int8-custom", "prune"],
)
def test_rewriting_from_the_file_equals_rewriting_the_loaded_model(keras, cnn_path, options: ShrinkOptions):  # noqa: F811
    info = {"compiled": True, "optimizer_variables": 0, "optimizer_bytes": 0}
    loaded, _ = open_model(cnn_path)
    kept_ctx, _ = _run_passes(loaded, options, keras, info)
    expected = _weights(kept_ctx.new_model)

    model, stored = open_model(cnn_path)
    assert stored is not None, "a stored .keras is read in place"
    old = [weakref.ref(v._value) for v in model.weights]
    ctx, _ = _run_passes(model, options, keras, info, release_source=True, weights_source=stored)
    stored.close()
    got = _weights(ctx.new_model)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        assert got[path].dtype == value.dtype and got[path].tobytes() == value.tobytes(), path
    # Nothing of the original is held any more: every variable freed, their arrays gone.
    assert all(v._value is None for v in model.weights)
    gc.collect()
    assert not any(r() is not None for r in old)


def test_rewriting_without_the_file_frees_the_original_as_it_copies(keras, cnn_path):  # noqa: F811
    """A legacy .h5 or compressed input has no file to read back: each variable is freed once copied."""
    info = {"compiled": True, "optimizer_variables": 0, "optimizer_bytes": 0}
    options = make_options(quantize="float16")
    expected = _weights(_run_passes(keras.models.load_model(cnn_path), options, keras, info)[0].new_model)
    model = keras.models.load_model(cnn_path)
    ctx, _ = _run_passes(model, options, keras, info, release_source=True)
    assert all(v._value is None for v in model.weights)
    got = _weights(ctx.new_model)
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in expected.items()}


@pytest.mark.slow  # a shrink with its reload check; the fast tier keeps the rewrite-from-file equality: `make test` runs it
def test_the_callers_model_is_never_freed(keras, cnn_path, work):  # noqa: F811
    import kmemopt

    model = keras.models.load_model(cnn_path)
    before = _weights(model)
    kmemopt.shrink(model, work / "from_memory.keras", quantize="int8", samples=4)
    assert all(v._value is not None for v in model.weights)
    assert {k: v.tobytes() for k, v in _weights(model).items()} == {k: v.tobytes() for k, v in before.items()}


def test_predict_matches_keras_predict_on_several_inputs_and_outputs(keras):
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(4, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], {"first": keras.layers.Dense(2)(h), "second": keras.layers.Dense(5)(h)})
    rng = np.random.default_rng(0)
    n = 2 * fid.PREDICT_BATCH + 3  # a last batch of another size
    inputs = fid.Inputs(
        arrays=(rng.standard_normal((n, 3)).astype("float32"), rng.standard_normal((n, 2)).astype("float32")),
        names=("a", "b"),
        labels=None,
        source="synthetic",
    )
    got = fid.predict(model, inputs)
    want = model.predict(list(inputs.arrays), batch_size=fid.predict_batch_size(inputs), verbose=0)
    assert [g.shape for g in got] == [(n, 2), (n, 5)]
    for g, w in zip(got, [want["first"], want["second"]], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
