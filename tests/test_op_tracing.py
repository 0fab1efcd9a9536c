"""Operation-level tracing of composite layers (profiling/trace.py): the tensors a layer really creates.

The hand-computed numbers below follow TensorFlow's gradient functions: a matmul's gradient reads
both operands, softmax's gradient reads its output, a bias-add's gradient reads nothing, an
expand-dims or squeeze shares its input's buffer.
"""

from __future__ import annotations

import json

import pytest

import kmemopt
from kmemopt.profiling import graph as g
from kmemopt.profiling import trace
from kmemopt.profiling.internals import layer_internals

F32 = 4
D, U = 6, 4  # the block's input width and its two Dense layers' width


@pytest.fixture(scope="module")
def block_class(keras):
    class Block(keras.layers.Layer):
        """Two Dense sublayers, an outer product, a softmax and a matmul: (B, D) -> (B, U)."""

        def __init__(self, units=U, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.a = keras.layers.Dense(units, name="a")
            self.b = keras.layers.Dense(units, name="b")

        def build(self, shape):
            self.a.build(shape)
            self.b.build(shape)

        def call(self, x):
            h1, h2 = self.a(x), self.b(x)  # (B, U) each: MatMul then BiasAdd
            s = keras.ops.matmul(keras.ops.expand_dims(h1, -1), keras.ops.expand_dims(h2, 1))  # (B, U, U)
            p = keras.ops.softmax(s, axis=-1)  # (B, U, U)
            return keras.ops.squeeze(keras.ops.matmul(p, keras.ops.expand_dims(h1, -1)), -1)  # (B, U)

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    return Block


@pytest.fixture(scope="module")
def block_model(keras, block_class):
    x = keras.Input((D,), name="x")
    return keras.Model(x, block_class(name="blk")(x))


def test_a_composite_layer_is_traced_to_hand_computed_bytes(block_model):
    b = 5
    r = kmemopt.profile(block_model, batch_size=b)
    rows = {row.name: row for row in r.layers}
    assert rows["blk"].activation_source == "traced" and rows["x"].activation_source == "exact"
    assert r.totals.activation_source == "traced" and r.warnings == ()
    # Kept for the backward pass inside the block: h1 and h2 (the outer product's operands, through
    # their expand-dims views) and p (softmax's output, which the second matmul also reads); not s
    # (softmax's gradient reads its output), not the matmuls before their bias-adds, not the output
    # (a squeeze's gradient reads no data). Plus the block's output as the model's output.
    saved = (U + U + U * U) * F32
    assert rows["blk"].activation_bytes == b * (saved + U * F32)
    # Plus the model's input, which the Dense kernels' gradients read.
    assert r.totals.activation_bytes == b * (saved + U * F32 + D * F32)
    # Inference: at the softmax, h1 (still needed by the last matmul), s and p are alive: U + 2 U^2
    # floats inside the block, besides its input and output.
    assert r.totals.inference_activation_peak_bytes == b * ((U + 2 * U * U) + D + U) * F32
    # Backward, after the upstream gradient: d(p) [U^2], d(h1) from the last matmul [U], then
    # d(p) * p [U^2] and its row sum [U], then d(s) = (d(p) - sum) * p: at most 2 U^2 + 2 U floats
    # alive beyond the block's input and output sizes (which stand for d(input) and d(output)).
    assert r.totals.backward_transient_bytes == b * ((2 * U * U + 2 * U) + D + U) * F32


def test_trace_reads_which_inputs_and_outputs_the_gradient_needs(keras, block_model):
    t = trace.OpTracer(batch_size=3).trace(block_model.get_layer("blk"), (block_model.inputs[0],), {})
    assert t.reads_inputs == (True,)  # the Dense kernels' gradients read x
    assert t.reads_outputs == (False,)
    assert t.saved.fixed_bytes == 0 and t.saved.per_sample_bytes == (2 * U + U * U) * F32
    assert t.unsized == 0 and t.control_flow == 0


def test_identical_layers_are_traced_once(keras, block_class, monkeypatch):
    built = []
    original = trace._build
    monkeypatch.setattr(trace, "_build", lambda *a, **k: built.append(1) or original(*a, **k))
    x = keras.Input((D,), name="x")
    h = block_class(units=D, name="first")(x)
    model = keras.Model(x, block_class(units=D, name="second")(h))  # same class, config and inputs
    r = kmemopt.profile(model, batch_size=2)
    assert [row.activation_source for row in r.layers] == ["exact", "traced", "traced"]
    assert len(built) == 2 * len(trace.BATCHES)  # inference and training graphs, each at two batch sizes


def test_tracing_allocates_no_weight(keras, block_class):
    from kmemopt.keras_compat.variables import is_unallocated, unallocated

    with unallocated():
        x = keras.Input((D,), name="x")
        model = keras.Model(x, block_class(name="blk")(x))
    r = kmemopt.profile(model, batch_size=2)
    assert r.layers[1].activation_source == "traced"
    assert model.weights and all(is_unallocated(v) for v in model.weights)


def test_an_untraceable_layer_is_opaque_and_named_in_a_warning(keras):
    class ToNumpy(keras.layers.Layer):
        """Runs fine eagerly, but reads its input's values: no graph can be traced from it."""

        def call(self, x):
            return keras.ops.convert_to_tensor(keras.ops.convert_to_numpy(x) * 2)

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, x.dtype)

    x = keras.Input((3,), name="x")
    h = ToNumpy(name="numpy_layer")(keras.layers.Dense(3, name="d")(x))
    r = kmemopt.profile(keras.Model(x, h), batch_size=2)
    row = next(row for row in r.layers if row.name == "numpy_layer")
    assert row.activation_source == "opaque"
    assert row.activation_bytes == 2 * 3 * F32  # its output (the model's), never silently zero
    assert r.totals.activation_source == "opaque"
    assert len(r.warnings) == 1 and "'numpy_layer'" in r.warnings[0] and "could not be traced" in r.warnings[0]
    data = r.to_dict()
    assert data["totals"]["activation_source"] == "opaque" and data["warnings"] == list(r.warnings)
    assert {layer["activation_source"] for layer in data["layers"]} == {"exact", "opaque"}


@pytest.mark.parametrize(
    ("cap", "reason"), [("MAX_FORWARD_OPS", "over 5 operations"), ("MAX_SUBLAYERS", "over 1 layers")]
)
def test_a_layer_over_a_tracing_cap_is_opaque(keras, block_model, monkeypatch, cap, reason):
    monkeypatch.setattr(trace, cap, 5 if cap == "MAX_FORWARD_OPS" else 1)
    r = kmemopt.profile(block_model, batch_size=2)
    assert next(row for row in r.layers if row.name == "blk").activation_source == "opaque"
    assert reason in r.warnings[0]


def test_rules_and_single_operation_layers_are_not_traced(keras):
    x = keras.Input((6, 8), name="x")
    h = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    h = keras.layers.Dense(4, activation="gelu", name="gelu")(h)
    h = keras.layers.Dense(4, name="plain")(h)
    r = kmemopt.profile(keras.Model(x, h), batch_size=2)
    sources = {row.name: row.activation_source for row in r.layers}
    assert sources == {"x": "exact", "mha": "rule", "gelu": "rule", "plain": "exact"}
    assert r.totals.activation_source == "rule"


def test_timeline_peak_stays_the_training_peak_with_traced_layers(block_model):
    data = kmemopt.profile(block_model, batch_size=4).to_dict()
    assert data["timeline"]["peak_bytes"] == data["totals"]["training_peak_bytes"]
    json.dumps(data)


@pytest.fixture(scope="module")
def encoder_model(keras):
    keras_hub = pytest.importorskip("keras_hub")
    from kmemopt.keras_compat.variables import unallocated

    with unallocated():
        x = keras.Input((16, 32), name="x")
        h = keras_hub.layers.TransformerEncoder(64, 4, name="enc")(x)
        return keras.Model(x, keras.layers.Dense(8, name="head")(h))


def test_keras_hub_encoder_is_traced_and_counts_what_it_creates(encoder_model):
    b, heads, t, width = 8, 4, 16, 32
    r = kmemopt.profile(encoder_model, batch_size=b)
    row = next(row for row in r.layers if row.name == "enc")
    assert row.activation_source == "traced" and r.warnings == ()
    # At least the attention probabilities (read by the backward pass of the probabilities-times-values
    # matmul), and the query, key and value projections.
    assert row.activation_bytes >= b * (heads * t * t + 3 * t * width) * F32
    # More than the rule-based profile counted: its output alone.
    rules_only = g.Tracer(internals=layer_internals)
    rules_only.recompute = False
    old = rules_only.trace(encoder_model, list(encoder_model.inputs), ["x"])
    new = r._graph
    assert g.saved_for_backward(new).at(b) > 4 * g.saved_for_backward(old).at(b)
    assert r.totals.inference_activation_peak_bytes > g.inference_peak(old, b)[0].at(b)


def test_identical_layers_without_a_config_are_traced_once(keras, monkeypatch):
    """keras-hub's LlamaTransformerDecoder.get_config raises, which made every block of a Llama traced on
    its own (32 traces of a 7 B model). Blocks are keyed by their attributes instead: identical ones are
    traced once, one with another setting on its own, and the profile is the same number."""
    from kmemopt.profiling.static import profile_model

    class NoConfig(keras.layers.Layer):
        def __init__(self, slope=0.5, **kwargs):
            super().__init__(**kwargs)
            self.slope = slope
            self.d = keras.layers.Dense(D, name="d")

        def build(self, shape):
            self.d.build(shape)

        def call(self, x):
            return keras.ops.leaky_relu(self.d(x), self.slope) * keras.ops.sigmoid(x)

        def get_config(self):
            raise AttributeError("'NoConfig' object has no attribute 'rope_scaling_factor'")

    inp = keras.Input((D,), name="x")
    h = inp
    for n, slope in enumerate((0.5, 0.5, 0.5, 0.25)):
        h = NoConfig(slope, name=f"block{n}")(h)
    model = keras.Model(inp, h, name="no_config")
    traced = []
    real = trace.OpTracer._trace
    monkeypatch.setattr(
        trace.OpTracer, "_trace", lambda self, layer, *a: traced.append(layer.name) or real(self, layer, *a)
    )
    keyed = profile_model(model, batch_size=8).totals
    assert traced == ["block0", "block3"]
    traced.clear()
    monkeypatch.setattr(trace, "_settings", lambda layer, depth=0: None)  # each traced on its own
    alone = profile_model(model, batch_size=8).totals
    assert traced == ["block0", "block1", "block2", "block3"]
    assert keyed.training_peak_bytes == alone.training_peak_bytes
    assert keyed.inference_peak_bytes == alone.inference_peak_bytes
