"""Forward FLOPs per layer, from a built model's shapes (no weight is read, nothing runs).

Convention: FLOPs = 2 x multiply-adds, per sample (batch 1), of the layers' contractions:
matrix products and convolutions (Dense, EinsumDense, Conv1D/2D/3D, DepthwiseConv, SeparableConv,
ConvTranspose, MultiHeadAttention's four projections plus QK^T and AV, LSTM/GRU/SimpleRNN per step x
steps). Bias adds, activations, normalizations, pooling, merges and reshapes do no multiply-adds: they
are listed as elementwise and count 0, like the published figures (MobileNetV2 at 224x224: 300 M
multiply-adds; ResNet50: about 3.9 G). An Embedding is a lookup: 0. A convolution transpose counts
every input element times its kernel (the scatter form, products that land in cropped padding
included). A layer kmemopt does not know, or whose shapes are unknown, is listed as not counted, never
guessed.

Example:
    >>> result = model_flops(model)
    >>> result.total, [r.path for r in result.not_counted]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kmemopt.profiling import graph as g
from kmemopt.profiling.layer_kinds import MERGE, RNN_GATES, SPATIAL

CONVENTION = "2 x multiply-adds per sample (batch 1); elementwise layers, bias adds and activations count 0"

# Layers whose work is elementwise (or none): no multiply-adds.
ELEMENTWISE = (
    frozenset(
        {
            "InputLayer",
            "Activation",
            "ReLU",
            "LeakyReLU",
            "ELU",
            "PReLU",
            "Softmax",
            "Dropout",
            "SpatialDropout1D",
            "SpatialDropout2D",
            "SpatialDropout3D",
            "GaussianNoise",
            "GaussianDropout",
            "AlphaDropout",
            "ActivityRegularization",
            "Identity",
            "Masking",
            "BatchNormalization",
            "LayerNormalization",
            "RMSNormalization",
            "GroupNormalization",
            "UnitNormalization",
            "Normalization",
            "Rescaling",
            "Concatenate",
            "Flatten",
            "Reshape",
            "Permute",
        }
    )
    | SPATIAL
    | MERGE
)

UNKNOWN_LAYER = "kmemopt does not count this layer's FLOPs"
UNKNOWN_SHAPE = "a dimension is unknown (set it with --input-shape or --seq-len)"


@dataclass(frozen=True)
class LayerFlops:
    """One layer call: `flops` per sample (None: not counted, `reason` says why); `kind` is
    "contraction" (counted), "elementwise" (0 by the convention) or "not counted"."""

    path: str
    class_name: str
    flops: int | None
    kind: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FlopsResult:
    layers: tuple[LayerFlops, ...]

    @property
    def total(self) -> int:
        """FLOPs per sample of every counted layer (those not counted are in `not_counted`)."""
        return sum(r.flops or 0 for r in self.layers)

    @property
    def not_counted(self) -> list[LayerFlops]:
        return [r for r in self.layers if r.flops is None]

    def by_path(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for r in self.layers:
            if r.path in out and out[r.path] is not None and r.flops is not None:
                out[r.path] = int(out[r.path] or 0) + r.flops  # a shared layer: its calls summed
            else:
                out[r.path] = r.flops if r.path not in out else None
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "convention": CONVENTION,
            "total": self.total,
            "not_counted": [{"path": r.path, "class_name": r.class_name, "reason": r.reason} for r in self.not_counted],
            "layers": [r.to_dict() for r in self.layers],
        }


class _ArgumentsTracer(g.Tracer):
    """The profile's graph walk, also keeping each call's arguments (an attention layer's query, key
    and value are told apart by them, not by position among its input tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.arguments: list[tuple[Any, Any]] = []

    def _leaf(self, layer, in_ids, in_specs, args, kwargs, node, prefix):
        if args is None and node is not None:
            args, kwargs = node.arguments.args, node.arguments.kwargs
        self.arguments.append((args or (), kwargs or {}))
        return super()._leaf(layer, in_ids, in_specs, args, kwargs, node, prefix)


def model_flops(
    model: Any, *, input_shapes: dict[str, tuple[int, ...]] | None = None, seq_len: int | None = None
) -> FlopsResult:
    """Forward FLOPs of every layer call of a built (possibly unallocated) model; see the module's
    convention. Raises UsageError when an input's shape has an unknown dimension nothing fills."""
    from kmemopt.keras_compat.variables import unallocated
    from kmemopt.profiling.static import _input_specs

    specs, names, recompute = _input_specs(model, input_shapes, seq_len)
    tracer = _ArgumentsTracer()
    tracer.recompute = recompute
    with unallocated():
        graph = tracer.trace(model, specs, names)
    rows = []
    for call, (args, kwargs) in zip(graph.calls, tracer.arguments):
        ins = [graph.tensors[t].shape for t in call.inputs]
        outs = [graph.tensors[t].shape for t in call.outputs]
        rows.append(layer_flops(call.layer, call.path, ins, outs, args, kwargs))
    return FlopsResult(tuple(rows))


def _class(layer: Any) -> str:
    """The class whose arithmetic the layer does: its own, or for kmemopt's int8 layers the Keras
    class they extend (same products, int8 kernels)."""
    cls = type(layer)
    if cls.__module__.startswith("kmemopt.layers"):
        for base in cls.__mro__[1:]:
            if base.__module__.startswith("keras"):
                return base.__name__
    return cls.__name__


def layer_flops(
    layer: Any, path: str, ins: list[tuple], outs: list[tuple], args: Any = (), kwargs: Any = None
) -> LayerFlops:
    """One call's FLOPs from its input and output shapes (batch dimension first, ignored)."""
    cls = _class(layer)
    name = type(layer).__name__
    if cls in ELEMENTWISE:
        return LayerFlops(path, name, 0, "elementwise")
    if cls == "Embedding":
        return LayerFlops(path, name, 0, "contraction")
    counter = _COUNTERS.get(cls)
    if counter is None:
        return LayerFlops(path, name, None, "not counted", UNKNOWN_LAYER)
    try:
        macs = counter(layer, ins, outs, args, kwargs or {})
    except _Unsized as exc:
        return LayerFlops(path, name, None, "not counted", str(exc) or UNKNOWN_SHAPE)
    return LayerFlops(path, name, 2 * int(macs), "contraction")


class _Unsized(Exception):
    pass


def _prod(dims: Any) -> int:
    dims = list(dims)
    if any(d is None for d in dims):
        raise _Unsized
    return math.prod(int(d) for d in dims)


def _dim(d: Any) -> int:
    if d is None:
        raise _Unsized
    return int(d)


def _channels_first(layer: Any) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_first"


def _spatial_and_channels(layer: Any, shape: tuple) -> tuple[int, int]:
    if _channels_first(layer):
        return _prod(shape[2:]), _dim(shape[1])
    return _prod(shape[1:-1]), _dim(shape[-1])


def _dense(layer, ins, outs, args, kwargs) -> int:
    positions = _prod(outs[0][1:-1])
    n_in, n_out = _dim(ins[0][-1]), _dim(outs[0][-1])
    macs = positions * n_in * n_out
    if getattr(layer, "lora_enabled", False):  # x @ A @ B beside the frozen kernel
        rank = int(getattr(layer, "lora_rank", 0) or 0)
        macs += positions * rank * (n_in + n_out)
    return macs


def _einsum_dense(layer, ins, outs, args, kwargs) -> int:
    """Every output element sums over the letters the input and kernel share and the output lacks."""
    equation = str(layer.equation).replace(" ", "")
    operands, out_spec = equation.split("->")
    in_spec, kernel_spec = operands.split(",")
    if "..." in kernel_spec:
        raise _Unsized(UNKNOWN_LAYER)
    shape = tuple(ins[0])
    letters = in_spec.replace("...", "")
    # Letters after an ellipsis align with the shape's last dimensions.
    if in_spec.startswith("..."):
        dims = dict(zip(letters, shape[len(shape) - len(letters) :]))
    else:
        dims = dict(zip(letters, shape))
    contracted = [c for c in kernel_spec if c in letters and c not in out_spec]
    macs = _prod(outs[0][1:]) * _prod(dims.get(c) for c in contracted)
    if getattr(layer, "lora_enabled", False):
        raise _Unsized("a LoRA EinsumDense's extra products are not counted")
    return macs


def _conv(layer, ins, outs, args, kwargs) -> int:
    _, c_in = _spatial_and_channels(layer, ins[0])
    groups = int(getattr(layer, "groups", 1) or 1)
    return _prod(outs[0][1:]) * _prod(layer.kernel_size) * (c_in // groups)


def _conv_transpose(layer, ins, outs, args, kwargs) -> int:
    return _prod(ins[0][1:]) * _prod(layer.kernel_size) * int(layer.filters)


def _depthwise(layer, ins, outs, args, kwargs) -> int:
    return _prod(outs[0][1:]) * _prod(layer.kernel_size)


def _separable(layer, ins, outs, args, kwargs) -> int:
    spatial, _ = _spatial_and_channels(layer, outs[0])
    _, c_in = _spatial_and_channels(layer, ins[0])
    mid = c_in * int(layer.depth_multiplier)
    return spatial * mid * _prod(layer.kernel_size) + spatial * mid * int(layer.filters)


def _argument(args: Any, kwargs: dict, index: int, name: str) -> Any:
    if name in kwargs and kwargs[name] is not None:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _attention(layer, ins, outs, args, kwargs) -> int:
    query = _argument(args, kwargs, 0, "query")
    value = _argument(args, kwargs, 1, "value")
    key = _argument(args, kwargs, 2, "key")
    if query is None or value is None:
        raise _Unsized
    q, v = tuple(query.shape), tuple(value.shape)
    k = tuple(key.shape) if key is not None else v
    if getattr(layer, "_use_gate", False):
        raise _Unsized("its use_gate projection is not counted")
    heads, key_dim = int(layer.num_heads), int(layer.key_dim)
    value_dim = int(layer.value_dim or key_dim)
    axes = layer.attention_axes or tuple(range(1, len(q) - 1))
    n_q, n_k, n_v = _prod(q[1:-1]), _prod(k[1:-1]), _prod(v[1:-1])
    attended = _prod(k[a] for a in axes)  # the keys each query position sees
    projections = n_q * _dim(q[-1]) * heads * key_dim + n_k * _dim(k[-1]) * heads * key_dim
    projections += n_v * _dim(v[-1]) * heads * value_dim
    scores = heads * n_q * attended * key_dim  # Q K^T
    mixed = heads * n_q * attended * value_dim  # softmax(.) V
    out = _prod(outs[0][1:]) * heads * value_dim
    return projections + scores + mixed + out


def _rnn(layer, ins, outs, args, kwargs) -> int:
    steps, n_in = _dim(ins[0][1]), _dim(ins[0][-1])
    units = int(layer.units)
    return steps * RNN_GATES[_class(layer)] * (n_in * units + units * units)


def _bidirectional(layer, ins, outs, args, kwargs) -> int:
    total = 0
    for inner in (layer.forward_layer, layer.backward_layer):
        counter = _COUNTERS.get(_class(inner))
        if counter is None:
            raise _Unsized(UNKNOWN_LAYER)
        total += counter(inner, ins[:1], outs, args, kwargs)
    return total


_COUNTERS = {
    "Dense": _dense,
    "EinsumDense": _einsum_dense,
    "MultiHeadAttention": _attention,
    "Bidirectional": _bidirectional,
    **{c: _conv for c in ("Conv1D", "Conv2D", "Conv3D")},
    **{c: _conv_transpose for c in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")},
    **{c: _depthwise for c in ("DepthwiseConv1D", "DepthwiseConv2D")},
    **{c: _separable for c in ("SeparableConv1D", "SeparableConv2D")},
    **{c: _rnn for c in RNN_GATES},
}


def format_flops(value: int) -> str:
    """1234567 -> '1.23 M' (decimal prefixes, as FLOPs are quoted)."""
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return str(value)
