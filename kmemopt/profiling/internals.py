"""What some layers hold beyond their outputs: memory inside a layer that the graph does not show.

Each rule returns two lines in the batch size: `saved` (kept by a training step for the backward
pass) and `transient` (alive only while the layer runs). Layers without a rule hold nothing extra.
These rules are the part of the static model that measurements calibrate (see README, "Memory model").
"""

from __future__ import annotations

from enum import Enum

from kmemopt.profiling.dtypes import itemsize
from kmemopt.profiling.line import ZERO, Line


class Source(str, Enum):
    """Where a layer's activation bytes come from, most certain first."""

    EXACT = "exact"  # its outputs (a Keras layer that is one operation, or a bare operation)
    TRACED = "traced"  # an operation-level trace of its call (trace.py)
    RULE = "rule"  # its outputs plus a per-class rule below (recurrent layers, attention, activations)
    OPAQUE = "opaque"  # it could not be traced: its outputs and rules only, named in a warning

    def __str__(self) -> str:
        return self.value


_UNCERTAINTY = {Source.EXACT: 0, Source.TRACED: 1, Source.RULE: 2, Source.OPAQUE: 3}


def least_certain(sources) -> Source:
    """The least certain of `sources` (EXACT when there are none): what a sum of them can claim."""
    return max((Source(s) for s in sources), key=_UNCERTAINTY.__getitem__, default=Source.EXACT)


def activation_source(layer) -> Source:
    """How the profile counts `layer`'s activations: a Keras layer that is one operation by its
    outputs (EXACT), a layer with a rule below by the rule (RULE), any other (a layer running other
    layers or operations in its `call`: keras-hub blocks, user layers, subclassed models) by tracing
    its operations (TRACED; OPAQUE when that fails)."""
    import keras

    from kmemopt.keras_compat.layers import flatten_layers

    name = type(layer).__name__
    if name in _RULES or name == "Bidirectional":
        return Source.RULE
    if not isinstance(layer, keras.layers.Layer):  # a bare operation in a functional graph (keras.ops.add)
        return Source.EXACT
    builtin = type(layer).__module__.split(".")[0] == "keras"
    if builtin and name in UPCASTING_NORMALIZATIONS and _is_16_bit(layer):
        return Source.TRACED  # it computes in float32 on 16-bit inputs: copies no rule counts
    if builtin and not any(True for _ in flatten_layers(layer, include_self=False)):
        return Source.RULE if activation_extra(layer) else Source.EXACT
    return Source.TRACED


# Keras 3.15's normalisations compute in float32 when their compute dtype is 16-bit (they cast the
# input up, normalise, and cast the result back: layers/normalization/*.py), so under mixed precision
# they hold float32 copies of their input and output that their outputs do not show: traced.
UPCASTING_NORMALIZATIONS = frozenset(
    {"BatchNormalization", "LayerNormalization", "GroupNormalization", "RMSNormalization", "UnitNormalization"}
)


def _is_16_bit(layer) -> bool:
    compute = str(getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32"))
    return compute in ("float16", "bfloat16")


def _per_sample(shape, dtype) -> int:
    n = 1
    for d in list(shape)[1:]:
        if d is None:
            return 0
        n *= int(d)
    return n * itemsize(dtype)


def _rnn(layer, in_specs, out_specs):
    """Recurrent layers keep what every time step computed for backpropagation through time."""
    cell = getattr(layer, "cell", None)
    units = getattr(cell, "units", None) or getattr(layer, "units", None)
    if units is None or not in_specs:
        return ZERO, ZERO
    shape = in_specs[0].shape
    if len(shape) < 3 or shape[1] is None:
        return ZERO, ZERO
    steps = int(shape[1])
    dtype = str(out_specs[0].dtype) if out_specs else "float32"
    gates = {"LSTMCell": 4, "GRUCell": 3, "SimpleRNNCell": 1}.get(type(cell).__name__, 1)
    # Per step: the input projection and recurrent projection of every gate, the activated gates,
    # and the cell/hidden states (LSTM: c, tanh(c), h).
    # TensorFlow's CPU loop keeps, per step, the activated gates and the states (LSTM: c, tanh(c), h);
    # the gates' pre-activations are not kept (sigmoid and tanh are differentiated from their outputs).
    states = 3 if gates == 4 else 1
    per_step = (gates + states) * int(units) * itemsize(dtype)
    saved = Line(0, steps * per_step)
    transient = Line(0, (2 * gates + states) * int(units) * itemsize(dtype))
    return saved, transient


def _attention(layer, in_specs, out_specs):
    """Multi-head attention materialises the score matrix (B, heads, Tq, Tk) and its softmax."""
    heads = getattr(layer, "num_heads", None)
    key_dim = getattr(layer, "key_dim", None) or getattr(layer, "_key_dim", None)
    value_dim = getattr(layer, "value_dim", None) or getattr(layer, "_value_dim", None) or key_dim
    if not heads or not key_dim or not in_specs:
        return ZERO, ZERO
    q = in_specs[0].shape
    v = in_specs[1].shape if len(in_specs) > 1 else q
    if len(q) < 3 or q[1] is None or v[1] is None:
        return ZERO, ZERO
    tq, tk = int(q[1]), int(v[1])
    dtype = str(out_specs[0].dtype) if out_specs else "float32"
    size = itemsize(dtype)
    scores = heads * tq * tk * size
    projections = heads * (tq * key_dim + tk * key_dim + tk * value_dim) * size
    context = heads * tq * value_dim * size
    saved = Line(0, projections + 2 * scores + context)
    transient = Line(0, projections + 2 * scores + context)
    return saved, transient


_RULES = {
    "LSTM": _rnn,
    "GRU": _rnn,
    "SimpleRNN": _rnn,
    "MultiHeadAttention": _attention,
    "GroupedQueryAttention": _attention,
}


def layer_internals(layer, in_specs, out_specs) -> tuple[Line, Line]:
    saved, transient = _layer_rule(layer, in_specs, out_specs)
    out = Line(0, sum(_per_sample(s.shape, s.dtype) for s in out_specs))
    extra = activation_extra(layer)
    if extra:
        saved = saved + Line(0, extra * out.per_sample_bytes)
    if type(layer).__name__ in ONEDNN_REORDERING:
        inp = Line(0, sum(_per_sample(s.shape, s.dtype) for s in in_specs))
        transient = transient + inp + out
    return saved, transient


def _layer_rule(layer, in_specs, out_specs) -> tuple[Line, Line]:
    rule = _RULES.get(type(layer).__name__)
    if rule is None and type(layer).__name__ == "Bidirectional":
        f_saved, f_tr = _rnn(layer.forward_layer, in_specs, out_specs)
        b_saved, b_tr = _rnn(layer.backward_layer, in_specs, out_specs)
        return f_saved + b_saved, f_tr + b_tr
    if rule is None:
        return ZERO, ZERO
    return rule(layer, in_specs, out_specs)


# ---------------------------------------------------------------------------------------------
# What a training step keeps for the backward pass (TensorFlow's gradient functions, graph mode).
#
# A tensor stays alive after the forward pass only if some gradient needs it: the gradient of the
# layer that made it (ReLU, sigmoid, tanh, softmax and ELU are differentiated from their *output*),
# or the gradient of a layer that consumes it (a convolution or matmul needs its input to form the
# weight gradient; batch/layer normalization and max pooling need their input). Additions,
# concatenations, padding, average pooling and reshapes need neither, so their outputs are freed as
# soon as the forward pass has used them. Unknown layers keep both (the conservative choice).

OUTPUT_GRAD_ACTIVATIONS = {"relu", "relu6", "sigmoid", "tanh", "softmax", "elu", "exponential", "linear", None}
# Layers whose gradient reads neither their input nor their output: additions, concatenations,
# padding, average pooling, reshapes, dropout, upsampling.
_NEITHER = frozenset(
    {
        "Add",
        "Average",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "Concatenate",
        "Cropping1D",
        "Cropping2D",
        "Cropping3D",
        "Dropout",
        "Flatten",
        "GaussianNoise",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
        "Identity",
        "InputLayer",
        "Normalization",
        "Permute",
        "RepeatVector",
        "Rescaling",
        "Reshape",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "SpatialDropout3D",
        "Subtract",
        "UpSampling1D",
        "UpSampling2D",
        "UpSampling3D",
        "ZeroPadding1D",
        "ZeroPadding2D",
        "ZeroPadding3D",
    }
)
# Their gradient does not read the input (it reads the output, or nothing).
INPUT_FREE = _NEITHER | {"ELU", "GaussianDropout", "ReLU", "Softmax"}
# Their gradient does not read the output (it reads the input, or keeps its own saves).
OUTPUT_FREE = _NEITHER | {
    "BatchNormalization",
    "Embedding",
    "GRU",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "GroupNormalization",
    "GroupedQueryAttention",
    "LSTM",
    "LayerNormalization",
    "MultiHeadAttention",
    "Multiply",
    "SimpleRNN",
}
# Layers whose output shares its input's buffer (no new memory in TensorFlow's graph).
ALIASING = {"Reshape", "Flatten"}
# Convolutions run through oneDNN on TensorFlow's CPU build: each call reorders its input into a
# blocked layout and computes its output there before reordering it back, so while it runs it holds
# a second copy of both.
CONVOLUTIONS = frozenset(
    {
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv1D",
        "SeparableConv2D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
    }
)
ONEDNN_REORDERING = CONVOLUTIONS


def _activation_name(layer) -> str | None:
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", None) or str(act)


def grad_needs_output(layer) -> bool:
    """True when the layer's own gradient is computed from its output."""
    name = type(layer).__name__
    if name in ("ReLU", "Softmax", "ELU"):
        return True
    if name in OUTPUT_FREE:
        return False
    act = _activation_name(layer)
    if name == "Activation":
        return act in OUTPUT_GRAD_ACTIVATIONS and act != "linear"
    if hasattr(layer, "activation") and act in OUTPUT_GRAD_ACTIVATIONS:
        return act not in ("linear", None)
    return name not in _KNOWN_INPUT_ONLY


def grad_needs_input(layer) -> bool:
    """True when the layer's gradient reads its input(s)."""
    name = type(layer).__name__
    if name in INPUT_FREE:
        return False
    if name == "Activation":
        return _activation_name(layer) not in OUTPUT_GRAD_ACTIVATIONS
    return True


def activation_extra(layer) -> int:
    """Output-sized tensors an activation inside the layer keeps (its pre-activation, for input-based grads)."""
    name = type(layer).__name__
    if name == "Activation" or not hasattr(layer, "activation"):
        return 0
    act = _activation_name(layer)
    if act in OUTPUT_GRAD_ACTIVATIONS:
        return 0
    return 2 if act == "gelu" else 1  # gelu keeps its input and erf(x / sqrt 2)


# Layers known to need only their input (so their output is free unless a consumer needs it).
_KNOWN_INPUT_ONLY = CONVOLUTIONS | {
    "Dense",
    "EinsumDense",
    "LeakyReLU",
    "PReLU",
    "Dot",
    "Maximum",
    "Minimum",
}


# ---------------------------------------------------------------------------------------------
# Mixed precision (a layer whose compute dtype differs from its variables' dtype: `mixed_float16`,
# `mixed_bfloat16`). Read from Keras 3.15 (layers/layer.py `__call__`, backend/common/variables.py
# `_maybe_autocast`) and a TensorFlow training step's graph:
#   weight casts   inside the call every float variable is read through a Cast to the compute dtype
#                  (unless the layer or the variable has autocast off: Embedding, the normalisations).
#                  The casts need no input, so the executor runs them as the step starts: each is
#                  alive from the start of the step until its layer has run;
#   kept casts     the input gradient of a matmul or convolution (dX = dY . W^T) reads the *cast*
#                  kernel, so a training step keeps the 16-bit copy of every kernel (weights of rank
#                  2 or more) of a layer whose input needs a gradient; biases are read by no gradient;
#   input casts    a float input in another dtype is cast to the compute dtype by the layer (the
#                  model's float32 inputs, at the first layer): a copy, kept when the layer's gradient
#                  reads its input;
#   16-bit grads   the gradient of a cast weight is computed in the compute dtype, then cast back to
#                  float32 (the variable's dtype): the 16-bit weight gradients are backward workspace.
# The loss (float32 copy of 16-bit predictions) and loss scaling are in static.py.


def autocast_dtype(layer) -> str | None:
    """The dtype `layer`'s call casts its float variables and inputs to, or None when it casts nothing."""
    policy = getattr(layer, "dtype_policy", None)
    compute = getattr(policy, "compute_dtype", None)
    variable = getattr(policy, "variable_dtype", None)
    if compute is None or compute == variable or not getattr(layer, "autocast", True):
        return None
    return str(compute) if "float" in str(compute) else None


def weight_casts(layer) -> tuple[int, int, int]:
    """Bytes of the compute-dtype copies of `layer`'s weights in one call: (all of them, the kernels
    an input gradient reads, the trainable ones: the 16-bit weight gradients). Zero when it does not autocast."""
    compute = autocast_dtype(layer)
    if compute is None:
        return 0, 0, 0
    size = itemsize(compute)
    cast = kernels = trainable = 0
    for v in getattr(layer, "weights", ()):
        # `_autocast` is Keras's own per-variable switch (BatchNormalization's moving statistics: off).
        if not getattr(v, "_autocast", True) or "float" not in str(v.dtype) or str(v.dtype) == compute:
            continue
        n = 1
        for d in v.shape:
            n *= int(d)
        cast += n * size
        if len(v.shape) >= 2:
            kernels += n * size
        if getattr(v, "trainable", False):
            trainable += n * size
    return cast, kernels, trainable


def input_casts(layer, in_specs) -> Line:
    """The compute-dtype copies `layer` makes of its float inputs in another float dtype."""
    compute = autocast_dtype(layer)
    if compute is None:
        return ZERO
    total = ZERO
    for s in in_specs:
        dtype = str(getattr(s, "dtype", "float32"))
        if "float" in dtype and dtype != compute:
            total = total + Line(0, _per_sample(s.shape, compute))
    return total


# ---------------------------------------------------------------------------------------------
# The runtime's own costs for a model, beyond its tensors (TensorFlow's CPU runtime, Keras 3.15).
#
# Calibrated against measurements (docs/measure.md; benchmarks/suite_estimate.py): the constants
# below are fitted once, by least squares on the relative error (every constant at least 0), over six
# architectures at batch 1, 8 and 32, and are the same for every model. What each term stands for:
#   loader residue   after `load_model`, resident memory exceeds the weights: Keras's objects for
#                    every layer; and, where the allocator keeps them, the initializer's temporaries
#                    (Keras creates every variable with its initializer before the file's values
#                    overwrite it: measured 1.69x the largest weight + 0.149x the weights on
#                    2026-12-03). Measured again on 2026-12-04 with numpy 2.4.6, ml_dtypes 0.7.0 and
#                    protobuf 7.36.2 (TensorFlow and Keras unchanged), the loads came out at the
#                    weights plus the per-layer term: those two fit to 0, and stay in the model so
#                    that a refit where the temporaries stay resident finds them again;
#   traced graph     the first predict or train step traces a tf.function and optimises its graph;
#                    the graph, its kernels and oneDNN primitives stay alive. Its size follows the
#                    number of operations: one unit a plain layer, more for layers made of many
#                    operations (attention, recurrent loops unrolled into while-loop bodies);
#   input copy       each input array is copied into a framework tensor (one more copy of the batch).

MiB = 1024**2
LOADER_WEIGHT_FRACTION = 0.000  # fitted on the load phase alone (refit from benchmarks/calibration.json)
LOADER_LARGEST_WEIGHT_FACTOR = 0.00
LOADER_BYTES_PER_LAYER = int(0.054 * MiB)
GRAPH_BYTES_PER_UNIT_INFERENCE = int(0.1423 * MiB)  # fitted on the peaks, the loader terms held fixed
GRAPH_BYTES_PER_UNIT_TRAINING = int(2.155 * MiB)
OP_UNITS = {
    "MultiHeadAttention": 8,
    "GroupedQueryAttention": 8,
    "LSTM": 14,
    "GRU": 12,
    "SimpleRNN": 6,
    "InputLayer": 0,
    "Reshape": 0,
    "Flatten": 0,
    "Identity": 0,
}


def op_units(layer) -> int:
    """The op units of one call of `layer` (see the table above).

    A layer of a class OP_UNITS names, or of a subclass of one (keras-hub's cached attention is a
    MultiHeadAttention), counts as that class. A layer that runs other layers in its call (a keras-hub
    transformer block, a user's composite layer, a subclassed model: the calls the profile traces at
    operation level) counts one for its own call plus the units of each layer it holds, as if those
    were called one by one in a functional model; nothing is fitted for it."""
    known = _known_units(layer)
    if known is not None:
        return known
    from kmemopt.keras_compat.layers import flatten_layers

    units = 1
    seen: set[int] = set()
    todo = [layer]
    while todo:  # each layer once, however deep or shared (a walk, not a recursion)
        outer = todo.pop()
        for sub in flatten_layers(outer, include_self=False, recursive=False):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            known = _known_units(sub)
            if known is None:
                units += 1
                todo.append(sub)
            else:
                units += known
    return units


def _known_units(layer) -> int | None:
    """The units of a class OP_UNITS names (or a subclass of one), of a Bidirectional wrapper, or of a
    layer that holds no other layer (1); None for a composite layer."""
    if type(layer).__name__ == "Bidirectional":
        return op_units(layer.forward_layer) + op_units(layer.backward_layer)
    for cls in type(layer).__mro__:
        if cls.__name__ in OP_UNITS:
            return OP_UNITS[cls.__name__]
    if not getattr(layer, "_layers", None):  # a leaf layer, or a bare operation (keras.ops.add)
        return 1
    return None


def runtime_costs(graph, param_bytes: int) -> dict[str, Line]:
    """The runtime terms of the memory model, each a line in the batch size (see the table above)."""
    calls = len(graph.calls)
    units = sum(op_units(call.layer) for call in graph.calls)
    inputs = Line(0, 0)
    for t in graph.inputs:
        inputs = inputs + graph.tensors[t].size
    largest = 0
    for call in graph.calls:
        for v in getattr(call.layer, "weights", ()):
            n = 1
            for d in v.shape:
                n *= int(d)
            largest = max(largest, n * itemsize(v.dtype))
    loader = (
        int(LOADER_WEIGHT_FRACTION * param_bytes + LOADER_LARGEST_WEIGHT_FACTOR * largest)
        + LOADER_BYTES_PER_LAYER * calls
    )
    return {
        "loader_residue": Line(loader, 0),
        "inference_graph": Line(GRAPH_BYTES_PER_UNIT_INFERENCE * units, 0),
        "training_graph": Line(GRAPH_BYTES_PER_UNIT_TRAINING * units, 0),
        "input_copy": inputs,
    }
