"""kmemopt shrink: prune, compress, keep-optimizer, mixed precision and --skip, checked in the written files."""

from __future__ import annotations

import json
import zipfile

import pytest

# The tiny trained CNN and the helpers that read the written files are shared with test_shrink.py.
from test_shrink import _dtypes_by_layer, _layer_config, _pass, cnn_path, work  # noqa: F401, F811

import kmemopt
from kmemopt.load.archive import read_model_file
from kmemopt.passes import Reason


@pytest.fixture(scope="module")
def compressed_only(cnn_path, work):  # noqa: F811
    return kmemopt.shrink(cnn_path, work / "deflated.keras", compress=True, keep_optimizer=True, samples=8)


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; test_shrink's fast tier keeps two shrinks: `make test` runs it
def test_compress_and_keep_optimizer_are_lossless(compressed_only, cnn_path):  # noqa: F811
    r = compressed_only
    with zipfile.ZipFile(r.output) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert read_model_file(r.output).optimizer_weights  # kept
    assert r.fidelity.outputs[0].max_abs_error == 0.0
    assert r.after.file_bytes < r.before.file_bytes


@pytest.mark.slow  # two shrinks with their reload checks (TensorFlow imports); test_shrink's fast tier keeps a shrink: `make test` runs it
def test_prune_zeroes_kernels_and_saves_bytes_compressed(cnn_path, work, compressed_only):  # noqa: F811
    r = kmemopt.shrink(cnn_path, work / "pruned.keras", prune=0.5, samples=8)
    applied = {a.layer: a for a in _pass(r, "prune").applied}
    skipped = {s.layer: s.reason for s in _pass(r, "prune").skipped}
    assert skipped["conv"] is Reason.FIRST_OR_LAST and skipped["classes"] is Reason.FIRST_OR_LAST
    assert set(applied) == {"depthwise", "conv2", "hidden"}
    assert all(a.detail["sparsity"] >= 0.5 for a in applied.values())
    assert [p.name for p in r.passes] == ["strip-optimizer", "prune", "compress"]
    with zipfile.ZipFile(r.output) as zf:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert r.after.file_bytes < compressed_only.after.file_bytes


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; test_shrink's fast tier keeps two shrinks: `make test` runs it
def test_mixed_precision_lowers_the_training_peak_not_the_file(cnn_path, work):  # noqa: F811
    r = kmemopt.shrink(cnn_path, work / "mixed.keras", mixed_precision="float16", samples=8)
    assert r.after.training_peak_bytes < r.before.training_peak_bytes
    assert r.after.param_bytes == r.before.param_bytes
    assert "mixed_float16" in json.dumps(_layer_config(r.output, "conv")["config"]["dtype"])
    skipped = {s.layer: s.reason for s in _pass(r, "mixed-precision").skipped}
    assert skipped["classes"] is Reason.FINAL_SOFTMAX


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; test_shrink's fast tier keeps two shrinks: `make test` runs it
def test_skip_regex_leaves_layers_alone(cnn_path, work):  # noqa: F811
    r = kmemopt.shrink(cnn_path, work / "skip.keras", quantize="int8", skip="^conv", samples=8)
    dtypes = _dtypes_by_layer(r.output)
    assert dtypes["conv"] == {"float32"} and dtypes["conv2"] == {"float32"} and dtypes["depthwise"] == {"float16"}
    skipped = {s.layer: s.reason for s in _pass(r, "quantize").skipped}
    assert skipped["conv"] is Reason.SKIP_REGEX


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; test_shrink's fast tier keeps two shrinks: `make test` runs it
def test_attention_is_stored_float16_because_keras_cannot_reload_its_quantized_sublayers(keras, work):  # noqa: F811
    from kmemopt.passes.quantize import COMPOSITE_NOT_RELOADABLE

    tokens = keras.Input((8,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(50, 16, name="embedding")(tokens)
    h = keras.layers.MultiHeadAttention(2, 8, name="attention")(h, h)
    out = keras.layers.Dense(3, name="out")(keras.layers.GlobalAveragePooling1D(name="pool")(h))
    keras.Model(tokens, out).save(work / "attention.keras")
    r = kmemopt.shrink(work / "attention.keras", work / "attention.int8.keras", quantize="int8", samples=8)
    assert r.written and r.reload["reproduced"]  # plain Keras reloaded it in a fresh process
    applied = {a.layer: a for a in _pass(r, "quantize").applied}
    assert applied["attention"].detail["why"] == COMPOSITE_NOT_RELOADABLE
    dtypes = _dtypes_by_layer(r.output)
    assert dtypes["attention"] == {"float16"} and dtypes["out"] == {"int8", "float32"}


@pytest.fixture(scope="module")
def keras_int8_path(keras, work):  # noqa: F811
    """A file Keras already quantized (int8 Dense layers) around a float convolution."""
    import warnings

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation="relu", name="first")(inp)
    h = keras.layers.Reshape((4, 8))(h)
    h = keras.layers.Flatten()(keras.layers.Conv1D(4, 3, name="conv")(h))
    model = keras.Model(inp, keras.layers.Dense(3, name="last")(h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.quantize("int8", filters=lambda layer: isinstance(layer, keras.layers.Dense))
    path = work / "keras_int8.keras"
    model.save(path)
    return path


@pytest.mark.parametrize(
    "options, pass_name",
    [
        # the same rule for every pass (a shrink run each, with its reload check): `make test` runs them
        pytest.param(dict(quantize="float16"), "quantize", marks=pytest.mark.slow),
        pytest.param(dict(quantize="int8"), "quantize", marks=pytest.mark.slow),
        pytest.param(dict(prune=0.5, prune_first_last=True), "prune", marks=pytest.mark.slow),
        pytest.param(dict(mixed_precision="float16"), "mixed-precision", marks=pytest.mark.slow),
    ],
)
def test_layers_already_quantized_in_the_input_are_kept(keras_int8_path, work, options, pass_name):  # noqa: F811
    r = kmemopt.shrink(keras_int8_path, work / f"kept_{pass_name}.keras", samples=8, force=True, **options)
    skipped = {s.layer: s.reason for s in _pass(r, pass_name).skipped}
    assert skipped["first"] is Reason.ALREADY_QUANTIZED and skipped["last"] is Reason.ALREADY_QUANTIZED
    assert "conv" in {a.layer for a in _pass(r, pass_name).applied}
    assert r.reload["reproduced"]
    dtypes = _dtypes_by_layer(r.output)
    assert "int8" in dtypes["first"] and "int8" in dtypes["last"]  # the input's int8 kernels, untouched


@pytest.mark.slow  # a shrink and its reload check (a TensorFlow import) each; test_shrink's fast tier keeps two shrinks: `make test` runs it
def test_a_compiled_in_memory_model_is_written_without_its_optimizer(keras, cnn_path, work):  # noqa: F811
    model = keras.models.load_model(cnn_path)  # compiled, with Adam's trained state
    assert model.optimizer is not None and model.optimizer.variables
    r = kmemopt.shrink(model, work / "in_memory_stripped.keras", samples=4)
    assert _pass(r, "strip-optimizer").applied[0].action.name == "DROPPED_OPTIMIZER"
    written = read_model_file(r.output)
    assert not written.optimizer_weights and not written.compile_config
    assert r.fidelity.outputs[0].max_abs_error == 0.0
    assert model.optimizer is not None and model.optimizer.variables  # the caller's model is untouched


@pytest.fixture(scope="module")
def gpt2_path(keras, work):  # noqa: F811
    """A small keras-hub backbone: its config holds its own arguments, not a list of layers."""
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=2000, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128, max_sequence_length=32
    )
    path = work / "gpt2.keras"
    backbone.save(path)
    return path


@pytest.mark.slow  # a keras-hub GPT-2 quantized, written and reloaded: make test
def test_a_model_whose_config_lists_no_layers_is_quantized_in_place(gpt2_path, work):  # noqa: F811
    r = kmemopt.shrink(gpt2_path, work / "gpt2.slim.keras", quantize="int8", seq_len=16, samples=8)
    applied = {a.layer: a.action for a in _pass(r, "quantize").applied}
    skipped = {s.layer: s.reason for s in _pass(r, "quantize").skipped}
    assert applied["token_embedding"].name == "KERAS_INT8"
    assert applied["transformer_layer_0/self_attention/query"].name == "KERAS_INT8"
    assert skipped["layer_norm"] is Reason.NORMALIZATION
    assert skipped["position_embedding"] is Reason.LAYERS_NOT_IN_CONFIG
    assert r.reload["reproduced"] and not r.custom_layers
    assert r.after.file_bytes < 0.5 * r.before.file_bytes
    assert r.fidelity.outputs[0].cosine_similarity > 0.999


@pytest.mark.slow
def test_a_callers_layerless_model_is_not_quantized_in_place(keras, gpt2_path, work):  # noqa: F811
    model = keras.models.load_model(gpt2_path)
    before = [v.numpy().tobytes() for v in model.weights]
    r = kmemopt.shrink(model, work / "gpt2.memory.keras", quantize="int8", seq_len=16, samples=4)
    assert not _pass(r, "quantize").applied
    assert Reason.IN_PLACE_NEEDS_OWN_MODEL in {s.reason for s in _pass(r, "quantize").skipped}
    assert [v.numpy().tobytes() for v in model.weights] == before  # the caller's model is untouched


@pytest.mark.slow
def test_a_model_whose_config_lists_no_layers_is_pruned_in_place(gpt2_path, work):  # noqa: F811
    r = kmemopt.shrink(gpt2_path, work / "gpt2.pruned.keras", prune=0.5, seq_len=16, samples=8)
    applied = {a.layer: a for a in _pass(r, "prune").applied}
    assert "transformer_layer_0/self_attention/query" in applied
    assert all(a.detail["sparsity"] >= 0.5 for a in applied.values())
    assert r.reload["reproduced"]
    compressed = kmemopt.shrink(gpt2_path, work / "gpt2.deflated.keras", compress=True, seq_len=16, samples=8)
    assert r.after.file_bytes < compressed.after.file_bytes
