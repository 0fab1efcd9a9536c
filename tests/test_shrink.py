"""kmemopt shrink end to end on a tiny CNN: what each pass writes, verified by reading the output file."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kmemopt
from kmemopt.load.archive import read_model_file
from kmemopt.passes import Reason


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("shrink")


@pytest.fixture(scope="module")
def cnn_path(keras, work):
    """A small trained CNN saved with its Adam state: every kind of layer the passes treat differently."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inp)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    out = keras.layers.Dense(4, activation="softmax", name="classes")(h)
    model = keras.Model(inp, out, name="tiny_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 1)).astype("float32")
    model.fit(x, rng.integers(0, 4, 64), epochs=1, verbose=0)
    path = work / "cnn.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def data_path(keras, cnn_path, work):
    """Inputs keyed by input name, labels = the original's own predictions (accuracy before = 100%)."""
    model = keras.models.load_model(cnn_path)
    x = np.random.default_rng(1).standard_normal((48, 8, 8, 1)).astype("float32")
    path = work / "data.npz"
    np.savez(path, image=x, y=np.argmax(model.predict(x, verbose=0), axis=1))
    return path


def _dtypes_by_layer(path) -> dict[str, set[str]]:
    """Each layer's variable dtypes, as plain Keras loads them from the written file."""
    from kmemopt._keras import import_keras

    model = import_keras().models.load_model(path, compile=False)
    return {layer.name: {str(v.dtype) for v in layer.weights} for layer in model.layers if layer.weights}


def _pass(result, name):
    return next(p for p in result.passes if p.name == name)


def _layer_config(path, name):
    cfg = read_model_file(path).config
    return next(entry for entry in cfg["config"]["layers"] if entry["config"]["name"] == name)


@pytest.fixture(scope="module")
def int8(cnn_path, data_path, work):
    return kmemopt.shrink(cnn_path, work / "int8.keras", quantize="int8", data=data_path)


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; the fast tier keeps this module's int8 and in-memory shrinks: `make test` runs it
def test_int8_portable_stores_what_keras_and_float16_can(int8, cnn_path):
    assert int8.written and int8.output.endswith("int8.keras")
    dtypes = _dtypes_by_layer(int8.output)
    assert dtypes["hidden"] == {"int8", "float32"} and dtypes["classes"] == {"int8", "float32"}
    assert dtypes["conv"] == {"float16"} and dtypes["depthwise"] == {"float16"} and dtypes["conv2"] == {"float16"}
    assert dtypes["bn"] == {"float32"}
    skipped = {s.layer: s.reason for s in _pass(int8, "quantize").skipped}
    assert skipped["bn"] is Reason.NORMALIZATION and skipped["gap"] is Reason.NO_WEIGHTS
    assert not int8.custom_layers and int8.reload["imports_kmemopt"] is False and int8.reload["reproduced"]


def test_int8_strips_the_optimizer(int8, cnn_path):
    before, after = read_model_file(cnn_path), read_model_file(int8.output)
    assert before.optimizer_weights and before.compile_config
    assert after.optimizer_weights == () and not after.compile_config
    applied = _pass(int8, "strip-optimizer").applied[0]
    assert applied.detail["optimizer_variables"] == len(before.optimizer_weights)


def test_report_numbers_match_the_files(int8, cnn_path):
    after_file = read_model_file(int8.output)
    assert int8.before.file_bytes == cnn_path.stat().st_size
    assert int8.after.file_bytes == after_file.file_bytes
    assert int8.after.param_bytes == sum(a.declared_bytes for a in after_file.weights)
    assert int8.before.param_bytes == sum(a.declared_bytes for a in read_model_file(cnn_path).weights)
    rows = {r["layer"]: r for r in int8.layers}
    assert rows["conv2"]["param_bytes_after"] * 2 == rows["conv2"]["param_bytes_before"]
    assert sum(r["param_bytes_after"] for r in int8.layers) == int8.after.param_bytes


def test_json_report_has_the_documented_keys(int8):
    data = json.loads(json.dumps(int8.to_dict()))
    assert data["schema_version"] == 1
    for side in ("before", "after"):
        assert set(data[side]) >= {"file_bytes", "param_bytes", "inference_peak_bytes", "training_peak_bytes"}
    assert {p["name"] for p in data["passes"]} == {"strip-optimizer", "quantize"}
    assert data["fidelity"]["source"] == "data" and data["fidelity"]["samples"] == 48
    assert data["fidelity"]["accuracy_before"] == 1.0
    assert list(data["fidelity"]) == [
        "source",
        "samples",
        "note",
        "outputs",
        "top1_agreement",
        "accuracy_before",
        "accuracy_after",
        "accuracy_drop",
        "gates",
        "passed",
        "explain",
    ]
    assert list(data["fidelity"]["outputs"][0]) == [
        "name",
        "max_abs_error",
        "relative_l2_error",
        "cosine_similarity",
        "top1_agreement",
        "kind",
    ]
    assert (data["fidelity"]["gates"], data["fidelity"]["passed"], data["fidelity"]["explain"]) == ([], True, [])
    assert data["output"] == int8.output and data["loads_with_plain_keras"] is True


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; the fast tier keeps this module's int8 and in-memory shrinks: `make test` runs it
def test_allow_custom_layers_quantizes_convolutions(cnn_path, data_path, work, int8):
    r = kmemopt.shrink(cnn_path, work / "custom.keras", quantize="int8", allow_custom_layers=True, data=data_path)
    dtypes = _dtypes_by_layer(r.output)
    assert dtypes["conv"] == {"int8", "float32"} and dtypes["depthwise"] == {"int8", "float32"}
    assert _layer_config(r.output, "conv")["registered_name"] == "kmemopt>Int8Conv2D"
    assert _layer_config(r.output, "depthwise")["registered_name"] == "kmemopt>Int8DepthwiseConv2D"
    assert r.custom_layers and r.to_dict()["needs_import_kmemopt"] and r.reload["imports_kmemopt"]
    assert r.after.param_bytes < int8.after.param_bytes
    assert r.fidelity.top1_agreement >= 0.9


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; the fast tier keeps this module's int8 and in-memory shrinks: `make test` runs it
def test_float16_keeps_normalisation_and_final_softmax(cnn_path, work):
    r = kmemopt.shrink(cnn_path, work / "f16.keras", quantize="float16", samples=16)
    dtypes = _dtypes_by_layer(r.output)
    assert dtypes["conv"] == {"float16"} and dtypes["hidden"] == {"float16"}
    assert dtypes["bn"] == {"float32"} and dtypes["classes"] == {"float32"}
    skipped = {s.layer: s.reason for s in _pass(r, "quantize").skipped}
    assert skipped["classes"] is Reason.FINAL_SOFTMAX
    assert r.fidelity.source == "synthetic" and "synthetic" in r.fidelity.note
    assert r.fidelity.outputs[0].relative_l2_error < 0.01


def test_dry_run_writes_nothing(cnn_path, work):
    r = kmemopt.shrink(cnn_path, work / "dry.keras", quantize="int8", dry_run=True)
    assert r.dry_run and not r.written and r.after is None
    assert not (work / "dry.keras").exists()
    assert {a.layer for a in _pass(r, "quantize").applied} >= {"conv", "hidden", "classes"}


def test_in_memory_model_is_written_and_not_modified(keras, mlp_model, work):
    before = [w.copy() for w in mlp_model.get_weights()]
    r = kmemopt.shrink(mlp_model, work / "memory2.keras", quantize="int8", samples=8, explain=True)
    assert r.written and r.before.file_bytes is None
    assert keras.models.load_model(work / "memory2.keras").get_layer("hidden").quantization_mode == "int8"
    assert {row.layer for row in r.fidelity.explain} == {"hidden", "out"}  # one layer at a time
    errors = [row.relative_l2_error for row in r.fidelity.explain]
    assert errors == sorted(errors, reverse=True)  # the layer that hurts most first
    keys = ["layer", "top1_agreement", "relative_l2_error", "max_abs_error", "accuracy_after"]
    assert [list(row) for row in r.to_dict()["fidelity"]["explain"]] == [keys, keys]
    assert all(np.array_equal(a, b) for a, b in zip(before, mlp_model.get_weights(), strict=True))
    assert getattr(mlp_model.get_layer("hidden"), "quantization_mode", None) is None


def test_unknown_input_length_is_filled_and_said(text_path, work):
    r = kmemopt.shrink(text_path, work / "text.keras", quantize="int8", dry_run=True)
    assert any("unknown length" in w for w in r.warnings)
    assert {a.layer for a in _pass(r, "quantize").applied} == {"embedding", "lstm", "out"}
