"""Issue 13: what composite and mixed-precision layers cost at run time, counted without fitting.

- op units: a layer that runs other layers counts one for its own call plus the units of the layers it
  holds (a subclass of a class with its own units counts as that class); the fitted six architectures
  hold no such layer, so the fitted constants stand;
- buffer forwarding: TensorFlow's element-wise CPU kernels write into an input's buffer when they are
  its last reader (`forward_input_or_allocate_output`), so a chain of them holds one buffer, not two;
- mixed precision: Keras 3.15's normalisations compute in float32 on 16-bit inputs, so they are traced.
"""

from __future__ import annotations

import pytest

import kmemopt
from kmemopt.profiling import internals, trace
from kmemopt.profiling.line import Line

F32, F16 = 4, 2
D, U = 6, 4


@pytest.fixture(scope="module")
def chain_class(keras):
    class Chain(keras.layers.Layer):
        """Dense, then exp and tanh element-wise, then a row sum: (B, D) -> (B, 1)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.a = keras.layers.Dense(U, name="a")
            self.b = keras.layers.Dense(U, name="b")  # held, never called: still counted (by structure)

        def build(self, shape):
            self.a.build(shape)
            self.b.build(shape)

        def call(self, x):
            return keras.ops.sum(keras.ops.tanh(keras.ops.exp(self.a(x))), axis=-1, keepdims=True)

    return Chain


def test_a_composite_layer_counts_its_own_call_and_the_layers_it_holds(keras, chain_class):
    chain = chain_class(name="chain")
    assert internals.op_units(chain) == 1 + 1 + 1
    # A shared sublayer counts once; a layer nested two deep counts with its parent's.
    outer = keras.layers.Layer(name="outer")
    outer.first, outer.again, outer.inner = chain.a, chain.a, chain
    # outer's own call, a (once, though held twice and again inside chain), chain's own call, b.
    assert internals.op_units(outer) == 1 + 1 + 1 + 1
    # Attention keeps its own units (8), not 1 + its projections; a subclass of it counts the same.

    class MyAttention(keras.layers.MultiHeadAttention):
        pass

    assert internals.op_units(keras.layers.MultiHeadAttention(2, 4)) == 8
    assert internals.op_units(MyAttention(2, 4)) == 8
    assert internals.op_units(keras.layers.Dense(3)) == 1


def test_the_traced_graph_term_follows_the_composite_layers_units(keras, chain_class):
    x = keras.Input((D,), name="x")
    t = kmemopt.profile(keras.Model(x, chain_class(name="chain")(x)), batch_size=3).totals
    # One layer call (chain: 3 op units), weights a and b: 2 x (6 x 4 + 4) floats = 224 bytes, largest 96.
    # loader = int(0.000 x 224 + 0.00 x 96) + int(0.054 MiB) = 0 + 56,623 = 56,623;
    # graph = 3 x int(0.1423 MiB) = 447,636 (inference) or 3 x int(2.155 MiB) = 6,779,043 (training);
    # input copy = 3 x 6 floats = 72 bytes.
    assert t.runtime_inference_bytes == 56_623 + 447_636 + 72
    assert t.runtime_training_bytes == 56_623 + 6_779_043 + 72


def test_an_element_wise_chain_reuses_one_buffer(keras, chain_class):
    chain = chain_class(name="chain")
    x = keras.Input((D,), name="x")
    chain(x)
    t = trace.OpTracer(batch_size=5).trace(chain, (x,), {})
    # Inference: MatMul makes (B, U); BiasAdd, Exp and Tanh each are the last reader of their input and
    # write into its buffer: one (B, U) buffer inside the layer (two without forwarding). The row sum
    # is the layer's output, counted by the model-level walk.
    assert t.transient == Line(0, U * F32)
    # Training: Exp's and Tanh's gradients read their outputs, so those are kept and cannot be
    # overwritten; the bias-add's output is Exp's input, read by nothing else: Exp may not take it over
    # (its own output is kept), but it is freed once Exp has run.
    assert t.saved == Line(0, 2 * U * F32)


def test_a_mixed_precision_batch_norm_is_traced_with_its_float32_copy(keras):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = keras.Input((4, 4, 3), name="x")
        bn = keras.layers.BatchNormalization(name="bn")
        y = bn(x)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert internals.activation_source(bn) == "traced"
    n = 4 * 4 * 3
    t = trace.OpTracer(batch_size=2).trace(bn, (x,), {})
    # Keras 3.15's BatchNormalization casts its (here float32, autocast to float16) input up to float32,
    # normalises (x * inv + offset: the multiply and add write into the float32 copy) and casts the
    # result back: inference holds the float16 autocast copy and the float32 copy at once.
    assert t.transient == Line(0, n * (F16 + F32))
    # The gradient of x * inv with respect to inv (and the variance's) reads the float32 copy: kept.
    assert t.saved == Line(0, n * F32)
    r = kmemopt.profile(keras.Model(x, y), batch_size=2)
    assert {row.name: row.activation_source for row in r.layers}["bn"] == "traced"
    # The float32 twin keeps its rule: one operation's outputs.
    plain = keras.layers.BatchNormalization()
    plain(keras.Input((4, 4, 3)))
    assert internals.activation_source(plain) == "exact"


def test_keras_hub_encoder_units_are_its_layers(keras):
    keras_hub = pytest.importorskip("keras_hub")
    from kmemopt.keras_compat.variables import unallocated

    with unallocated():
        enc = keras_hub.layers.TransformerEncoder(64, 4, name="enc")
        enc(keras.Input((16, 32)))
    # Its own call, attention (8), two layer normalisations, two dropouts and two dense layers.
    assert internals.op_units(enc) == 1 + 8 + 2 + 2 + 2
