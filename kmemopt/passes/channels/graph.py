"""Which channels of a Keras model are tied together, read from its config (no weights needed).

Every tensor's last axis (channels-last) is described by a `Layout`: the channel *groups* it is made of,
in order, repeated for a flattened spatial layout. A group is born where a layer makes new channels (a
convolution's filters, a Dense's units, an attention layer's heads) and is carried through the layers
that keep channels apart (BatchNormalization, activations, pooling, depthwise convolutions).
Channels that must stay aligned (the inputs of a residual `Add`, a shared broadcast) are tied with a
union-find; `Concatenate` places groups side by side. A group is *pinned* (kept at full width, with the
reason) when any tensor carrying it reaches something kmemopt does not rewrite: the model's outputs, a
layer class it does not know, a shared layer, a layout it cannot follow. Everything else can be pruned:
which channels go is decided later (`select.py`), the widths depend only on the group sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kmemopt.profiling.layer_kinds import MERGE, RNN_GATES, SPATIAL

Ref = tuple[str, int, int]  # (layer name, node index, tensor index), as the config's keras_history says

# Classes a pass-through handler accepts: the channel axis is left alone, channel c out is channel c in.
ELEMENTWISE = frozenset(
    {
        "Activation",
        "ReLU",
        "LeakyReLU",
        "ELU",
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
        "UnitNormalization",
        "Masking",
    }
)
CONV = frozenset({"Conv1D", "Conv2D", "Conv3D"})
CONV_TRANSPOSE = frozenset({"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"})
DEPTHWISE = frozenset({"DepthwiseConv1D", "DepthwiseConv2D"})
SEPARABLE = frozenset({"SeparableConv1D", "SeparableConv2D"})
PER_CHANNEL = frozenset({"BatchNormalization", "LayerNormalization", "RMSNormalization", "PReLU"})

# Why a group keeps its width. The values are what the report prints.
MODEL_OUTPUT = "reaches a model output (output widths never change)"
MODEL_INPUT = "comes from a model input"
SHARED_LAYER = "passes through a layer called more than once (shared weights)"
NOT_KERAS = "passes through a layer kmemopt does not know ({cls}, module {module})"
NOT_HANDLED = "passes through {cls}, which channel pruning does not handle"
CHANNELS_FIRST = "passes through a channels_first layer"
GROUPED_CONV = "feeds a grouped convolution"
DEPTH_MULTIPLIER = "feeds a depthwise convolution with depth_multiplier > 1"
AXIS = "reaches {cls} on an axis other than the last"
LAYOUT = "is rearranged by {cls} in a way kmemopt does not follow"
MISMATCH = "is tied by {cls} to channels of another width"
ARGUMENT = "reaches {cls} as its {role!r} argument"
QUANTIZED = "passes through a quantized layer ({policy})"
UNKNOWN_WIDTH = "has an unknown width"
OPTION = "reaches {cls} with an option kmemopt does not rewrite ({option})"


@dataclass(frozen=True)
class Layout:
    """A tensor's channel axis: group segments `(group, size)` in order, the whole repeated `repeat`
    times (a Flatten of a channels-last tensor repeats the channels once per spatial position)."""

    segments: tuple[tuple[int, int], ...]
    repeat: int = 1

    @property
    def width(self) -> int:
        return self.repeat * sum(size for _, size in self.segments)

    @property
    def groups(self) -> list[int]:
        return [g for g, _ in self.segments]


@dataclass
class Node:
    """One layer of the model as its config describes it (a Sequential model becomes a chain)."""

    name: str
    class_name: str
    module: str | None
    config: dict[str, Any]
    calls: int
    inputs: list[tuple[str, Ref]]  # (role, tensor): "0", "1", "0.1" (second tensor of the first arg), "key"
    outputs: int  # tensors made by its first call


@dataclass
class Usage:
    """How a layer's weights hang on channel groups (what slicing them needs)."""

    inputs: dict[str, Layout] = field(default_factory=dict)  # role -> the layout it reads
    own: int | None = None  # the group of channels this layer makes
    heads: int | None = None  # MultiHeadAttention: the group of its heads
    out: Layout | None = None  # MultiHeadAttention: the layout of its output


class Groups:
    """Union-find over channel groups, each with a size, the layers that make it, and a pin reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int | None] = []
        self.kind: list[str] = []
        self.makers: list[list[str]] = []
        self.reason: dict[int, tuple[str, str]] = {}  # root -> (layer, why)

    def new(self, size: int | None, maker: str | None = None, kind: str = "channels") -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(size)
        self.kind.append(kind)
        self.makers.append([maker] if maker else [])
        if size is None:
            self.reason[gid] = (maker or "", UNKNOWN_WIDTH)
        return gid

    def find(self, gid: int) -> int:
        root = gid
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[gid] != root:
            self.parent[gid], gid = root, self.parent[gid]
        return root

    def pin(self, gid: int, layer: str, why: str) -> None:
        root = self.find(gid)
        self.reason.setdefault(root, (layer, why))

    def pinned(self, gid: int) -> tuple[str, str] | None:
        return self.reason.get(self.find(gid))

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        self.parent[rb] = ra
        self.makers[ra].extend(self.makers[rb])
        if rb in self.reason:
            self.reason.setdefault(ra, self.reason.pop(rb))
        return ra

    def roots(self) -> list[int]:
        return [g for g in range(len(self.parent)) if self.find(g) == g]


@dataclass
class Analysis:
    """The channel groups of a model and how each layer's weights depend on them."""

    model_class: str  # "Functional" or "Sequential"
    nodes: list[Node]
    groups: Groups
    usage: dict[str, Usage]
    layouts: dict[Ref, Layout]
    shapes: dict[Ref, tuple]
    left_alone: dict[str, str]  # layer -> why it was not rewritten at all (unknown class, shared, ...)
    config: dict[str, Any] = field(default_factory=dict)  # the serialized model it was read from

    def prunable(self) -> list[int]:
        """Root groups that may lose channels (not pinned, with a known size above 1)."""
        out = []
        for g in self.groups.roots():
            size = self.groups.size[g]
            if self.groups.pinned(g) is None and size is not None and size > 1 and self.groups.makers[g]:
                out.append(g)
        return out


class NotAGraph(ValueError):
    """The config is not a Functional or Sequential model's: there is no layer graph to read."""


class _Unsupported(Exception):
    """A handler's way of saying: leave this layer (and every group it touches) alone, for this reason."""


# ---------------------------------------------------------------------------------------------
# reading the config


def _tensor_refs(value: Any, role: str, out: list[tuple[str, Ref]], shapes: dict[Ref, tuple]) -> None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        cfg = value.get("config", {})
        hist = cfg.get("keras_history")
        ref = (str(hist[0]), int(hist[1]), int(hist[2]))
        out.append((role, ref))
        if "shape" in cfg:
            shapes.setdefault(ref, tuple(cfg["shape"]))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _tensor_refs(item, f"{role}.{i}", out, shapes)
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensor_refs(item, f"{role}.{key}", out, shapes)


def _flat_refs(spec: Any) -> list[Ref]:
    """input_layers / output_layers: one [name, node, tensor] or a (nested) structure of them."""
    if isinstance(spec, (list, tuple)) and len(spec) == 3 and isinstance(spec[0], str):
        return [(spec[0], int(spec[1]), int(spec[2]))]
    if isinstance(spec, dict):
        spec = list(spec.values())
    out: list[Ref] = []
    for item in spec or []:
        out.extend(_flat_refs(item))
    return out


def read_graph(config: dict[str, Any], model: Any = None) -> tuple[str, list[Node], list[Ref], list[Ref], dict]:
    """(model class, nodes in call order, input refs, output refs, tensor shapes) from a serialized model.

    A Sequential model is read as a chain; its tensor shapes come from `model` (built), as its config
    does not record them."""
    cls = config.get("class_name")
    inner = config.get("config", {})
    shapes: dict[Ref, tuple] = {}
    if cls == "Sequential":
        nodes: list[Node] = []
        prev: Ref | None = None
        inputs: list[Ref] = []
        for entry in inner.get("layers", []):
            c = entry.get("config", {})
            name = str(c.get("name"))
            if entry.get("class_name") == "InputLayer":
                nodes.append(Node(name, "InputLayer", entry.get("module"), c, 1, [], 1))
                prev = (name, 0, 0)
                inputs = [prev]
                continue
            if prev is None:  # built without an Input: the first layer reads the model's input
                nodes.append(Node("<input>", "InputLayer", "keras.layers", {}, 1, [], 1))
                prev = ("<input>", 0, 0)
                inputs = [prev]
            nodes.append(Node(name, str(entry.get("class_name")), entry.get("module"), c, 1, [("0", prev)], 1))
            prev = (name, 0, 0)
        if model is not None:
            for node in nodes:
                if node.class_name == "InputLayer":  # not among a Sequential model's layers
                    shapes[(node.name, 0, 0)] = tuple(model.inputs[0].shape)
                    continue
                layer = model.get_layer(node.name)
                shapes[(node.name, 0, 0)] = tuple(layer.output.shape)
        return "Sequential", nodes, inputs, [prev] if prev else [], shapes
    if cls not in ("Functional", "Model"):
        raise NotAGraph(f"a {cls} model's config does not list its layers")
    nodes = []
    for entry in inner.get("layers", []):
        c = entry.get("config", {})
        name = str(entry.get("name") or c.get("name"))
        inbound = entry.get("inbound_nodes") or []
        refs: list[tuple[str, Ref]] = []
        if inbound:
            first = inbound[0]
            if isinstance(first, dict):
                for i, arg in enumerate(first.get("args", [])):
                    _tensor_refs(arg, str(i), refs, shapes)
                for key, arg in (first.get("kwargs") or {}).items():
                    _tensor_refs(arg, str(key), refs, shapes)
        n_out = 1
        node = Node(name, str(entry.get("class_name")), entry.get("module"), c, max(len(inbound), 1), refs, n_out)
        nodes.append(node)
    if model is not None:
        for out_ref, tensor in zip(_flat_refs(inner.get("output_layers")), list(model.outputs)):
            shapes.setdefault(out_ref, tuple(tensor.shape))
    # Roles "0.0", "0.1" of a single list argument are the merge layers' inputs; a plain tensor stays "0".
    return "Functional", nodes, _flat_refs(inner.get("input_layers")), _flat_refs(inner.get("output_layers")), shapes


# ---------------------------------------------------------------------------------------------
# the walk


class _Walk:
    def __init__(self, shapes: dict[Ref, tuple]):
        self.groups = Groups()
        self.layouts: dict[Ref, Layout] = {}
        self.shapes = shapes
        self.usage: dict[str, Usage] = {}
        self.left_alone: dict[str, str] = {}

    def fixed(self, ref: Ref, layer: str, why: str) -> Layout:
        shape = self.shapes.get(ref)
        size = shape[-1] if shape else None
        gid = self.groups.new(int(size) if size is not None else None, None, kind="fixed")
        self.groups.pin(gid, layer, why)
        return Layout(((gid, size if size is not None else -1),))

    def pin(self, layouts: list[Layout], layer: str, why: str) -> None:
        for layout in layouts:
            for gid in layout.groups:
                self.groups.pin(gid, layer, why)

    def tie(self, a: Layout, b: Layout, layer: str, cls: str) -> bool:
        """Tie two layouts channel by channel; False (and both pinned) when their structure differs."""
        same = a.repeat == b.repeat and [s for _, s in a.segments] == [s for _, s in b.segments]
        if not same or any(s < 0 for _, s in a.segments):
            self.pin([a, b], layer, MISMATCH.format(cls=cls))
            return False
        for (ga, _), (gb, _) in zip(a.segments, b.segments):
            self.groups.union(ga, gb)
        return True


def _size(shape: tuple | None) -> int | None:
    if not shape or shape[-1] is None:
        return None
    return int(shape[-1])


def _channels_last(node: Node) -> None:
    fmt = node.config.get("data_format")
    if fmt not in (None, "channels_last"):
        raise _Unsupported(CHANNELS_FIRST)


def _only(node: Node, in_layouts: dict[str, Layout], *roles: str) -> None:
    for role in in_layouts:
        if role not in roles:
            raise _Unsupported(ARGUMENT.format(cls=node.class_name, role=role))


def _plain(node: Node, layout: Layout) -> None:
    if layout.repeat != 1:
        raise _Unsupported(LAYOUT.format(cls=node.class_name))


def _last_axis(node: Node, axis: Any, rank: int | None) -> None:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1 or not (axes[0] == -1 or (rank is not None and axes[0] == rank - 1)):
        raise _Unsupported(AXIS.format(cls=node.class_name))


Handler = Callable[[_Walk, Node, dict[str, Layout], dict[str, tuple]], list[Layout]]


def _producer(walk: _Walk, node: Node, size: Any) -> Layout:
    gid = walk.groups.new(int(size) if size is not None else None, node.name)
    walk.usage.setdefault(node.name, Usage()).own = gid
    return Layout(((gid, int(size) if size is not None else -1),))


def _consumer(walk: _Walk, node: Node, role: str, layout: Layout) -> None:
    walk.usage.setdefault(node.name, Usage()).inputs[role] = layout


def _conv(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    _channels_last(node)
    if int(node.config.get("groups", 1) or 1) != 1:
        raise _Unsupported(GROUPED_CONV)
    _plain(node, ins["0"])
    _consumer(walk, node, "0", ins["0"])
    return [_producer(walk, node, node.config.get("filters"))]


def _dense(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    if node.config.get("lora_rank"):
        raise _Unsupported(OPTION.format(cls=node.class_name, option="lora_rank"))
    _consumer(walk, node, "0", ins["0"])
    return [_producer(walk, node, node.config.get("units"))]


def _embedding(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    # Its input holds token ids, not channels: whatever made them keeps its width.
    walk.pin(list(ins.values()), node.name, ARGUMENT.format(cls=node.class_name, role="0"))
    if node.config.get("lora_rank"):
        raise _Unsupported(OPTION.format(cls=node.class_name, option="lora_rank"))
    return [_producer(walk, node, node.config.get("output_dim"))]


def _depthwise(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    _channels_last(node)
    _plain(node, ins["0"])
    if int(node.config.get("depth_multiplier", 1) or 1) != 1:
        raise _Unsupported(DEPTH_MULTIPLIER)
    _consumer(walk, node, "0", ins["0"])
    return [ins["0"]]


def _separable(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    _channels_last(node)
    _plain(node, ins["0"])
    _consumer(walk, node, "0", ins["0"])
    return [_producer(walk, node, node.config.get("filters"))]


def _per_channel(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    rank = len(shapes["0"]) if shapes.get("0") else None
    if node.class_name == "PReLU":
        # alpha's last axis is the channel axis unless it is shared (then it has size 1)
        shared = node.config.get("shared_axes") or []
        if rank is None or any(a in (-1, rank - 1) for a in shared):
            raise _Unsupported(AXIS.format(cls=node.class_name))
    else:
        _last_axis(node, node.config.get("axis", -1), rank)
    _consumer(walk, node, "0", ins["0"])
    return [ins["0"]]


def _elementwise(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    if node.class_name == "Softmax":
        _last_axis(node, node.config.get("axis", -1), len(shapes["0"]) if shapes.get("0") else None)
    noise = node.config.get("noise_shape")
    if noise and noise[-1] not in (None, 1):
        raise _Unsupported(OPTION.format(cls=node.class_name, option="noise_shape"))
    return [ins["0"]]


def _spatial(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    _channels_last(node)
    _plain(node, ins["0"])
    return [ins["0"]]


def _rescaling(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    for key in ("scale", "offset"):
        if not isinstance(node.config.get(key, 0.0), (int, float)):
            raise _Unsupported(OPTION.format(cls=node.class_name, option=f"per-channel {key}"))
    return [ins["0"]]


def _flatten(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    _channels_last(node)
    shape = shapes.get("0")
    if not shape or any(d is None for d in shape[1:]):
        raise _Unsupported(LAYOUT.format(cls=node.class_name))
    spatial = math.prod(int(d) for d in shape[1:-1]) if len(shape) > 2 else 1
    layout = ins["0"]
    return [Layout(layout.segments, layout.repeat * spatial)]


def _reshape(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    shape, target = shapes.get("0"), list(node.config.get("target_shape") or [])
    layout = ins["0"]
    if not shape or not target or any(d is None for d in shape[1:]):
        raise _Unsupported(LAYOUT.format(cls=node.class_name))
    channels = int(shape[-1])
    if layout.repeat == 1 and target[-1] == channels and -1 not in target:
        return [layout]  # the channel axis stays last and whole; only the positions move
    total = math.prod(int(d) for d in shape[1:])
    if len(target) == 1 and target[0] in (-1, total):
        spatial = total // max(channels, 1)
        return [Layout(layout.segments, layout.repeat * spatial)]  # a Flatten, written as a Reshape
    raise _Unsupported(LAYOUT.format(cls=node.class_name))


def _permute(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    dims = list(node.config.get("dims") or [])
    _plain(node, ins["0"])
    if not dims or dims[-1] != len(dims):
        raise _Unsupported(LAYOUT.format(cls=node.class_name))
    return [ins["0"]]


def _merge(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    roles = sorted(ins, key=lambda r: [int(p) if p.isdigit() else p for p in r.split(".")])
    if not roles or any(not r.startswith("0.") for r in roles):
        raise _Unsupported(ARGUMENT.format(cls=node.class_name, role=roles[0] if roles else "?"))
    layouts = [ins[r] for r in roles]
    widest = max(layouts, key=lambda layout: layout.width)
    out = widest
    for layout in layouts:
        if layout is widest:
            continue
        if layout.width == 1 and widest.width > 1:
            # A one-channel input broadcast over all the others' channels: it keeps its single channel.
            walk.pin([layout], node.name, MISMATCH.format(cls=node.class_name))
            continue
        walk.tie(widest, layout, node.name, node.class_name)
    return [out]


def _concatenate(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    roles = sorted(ins, key=lambda r: [int(p) if p.isdigit() else p for p in r.split(".")])
    if not roles or any(not r.startswith("0.") for r in roles):
        raise _Unsupported(ARGUMENT.format(cls=node.class_name, role=roles[0] if roles else "?"))
    layouts = [ins[r] for r in roles]
    rank = len(shapes[roles[0]]) if shapes.get(roles[0]) else None
    axis = node.config.get("axis", -1)
    if axis == -1 or (rank is not None and axis == rank - 1):
        if any(layout.repeat != 1 for layout in layouts) or any(s < 0 for lo in layouts for _, s in lo.segments):
            raise _Unsupported(LAYOUT.format(cls=node.class_name))
        return [Layout(tuple(seg for layout in layouts for seg in layout.segments))]
    for layout in layouts[1:]:  # joined along another axis: the channels line up one to one
        walk.tie(layouts[0], layout, node.name, node.class_name)
    return [layouts[0]]


MHA_ROLES = {"0": "query", "1": "value", "2": "key", "query": "query", "value": "value", "key": "key"}


def _attention(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    if node.config.get("use_gate"):
        raise _Unsupported(OPTION.format(cls=node.class_name, option="use_gate"))
    named: dict[str, Layout] = {}
    for role, layout in ins.items():
        if role in MHA_ROLES:
            named[MHA_ROLES[role]] = layout
        else:  # masks: their last axis is a sequence, not channels
            walk.pin([layout], node.name, ARGUMENT.format(cls=node.class_name, role=role))
    if "query" not in named or "value" not in named:
        raise _Unsupported(ARGUMENT.format(cls=node.class_name, role="?"))
    named.setdefault("key", named["value"])
    for role, layout in named.items():
        _plain(node, layout)
        _consumer(walk, node, role, layout)
    usage = walk.usage[node.name]
    heads = int(node.config.get("num_heads") or 0)
    usage.heads = walk.groups.new(heads, node.name, kind="heads")
    out_shape = node.config.get("output_shape")
    if out_shape is None:
        usage.out = named["query"]  # the output has the query's width: its channels follow the query's
    else:
        dims = out_shape if isinstance(out_shape, (list, tuple)) else [out_shape]
        if len(dims) != 1:
            raise _Unsupported(OPTION.format(cls=node.class_name, option="output_shape"))
        usage.out = _producer(walk, node, dims[0])
    return [usage.out]


def _rnn(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    _only(node, ins, "0")
    if node.config.get("return_state"):
        raise _Unsupported(OPTION.format(cls=node.class_name, option="return_state"))
    _plain(node, ins["0"])
    _consumer(walk, node, "0", ins["0"])
    return [_producer(walk, node, node.config.get("units"))]


def _input(walk: _Walk, node: Node, ins: dict[str, Layout], shapes: dict[str, tuple]) -> list[Layout]:
    return [walk.fixed((node.name, 0, 0), node.name, MODEL_INPUT)]


HANDLERS: dict[str, Handler] = {"InputLayer": _input}
HANDLERS.update({c: _conv for c in CONV | CONV_TRANSPOSE})
HANDLERS.update({c: _depthwise for c in DEPTHWISE})
HANDLERS.update({c: _separable for c in SEPARABLE})
HANDLERS.update({c: _merge for c in MERGE})
HANDLERS.update({c: _per_channel for c in PER_CHANNEL})
HANDLERS.update({c: _elementwise for c in ELEMENTWISE})
HANDLERS.update({c: _spatial for c in SPATIAL})
HANDLERS.update({c: _rnn for c in RNN_GATES})
HANDLERS.update(
    {
        "Dense": _dense,
        "Embedding": _embedding,
        "Flatten": _flatten,
        "Reshape": _reshape,
        "Permute": _permute,
        "Concatenate": _concatenate,
        "MultiHeadAttention": _attention,
        "Rescaling": _rescaling,
    }
)


def _policy_name(config: dict[str, Any]) -> str:
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        return str((dtype.get("config") or {}).get("name", ""))
    return str(dtype or "")


def analyze(config: dict[str, Any], model: Any = None) -> Analysis:
    """The channel groups of a serialized Functional or Sequential model.

    `model` (the same model, built; its weights may be unallocated) gives a Sequential model's
    tensor shapes. Raises ValueError for any other kind of model.
    """
    model_class, nodes, inputs, outputs, shapes = read_graph(config, model)
    walk = _Walk(shapes)
    by_name = {node.name: node for node in nodes}
    done: set[str] = set()
    order: list[Node] = []
    # Topological order (a config lists its layers in one already; this makes sure of it).
    pending = list(nodes)
    while pending:
        progressed = []
        for node in pending:
            if all(ref[0] in done or ref[0] not in by_name for _, ref in node.inputs):
                order.append(node)
                done.add(node.name)
                progressed.append(node)
        if not progressed:
            raise NotAGraph("the layers' connections form a cycle")
        pending = [n for n in pending if n.name not in done]
    for node in order:
        ins: dict[str, Layout] = {}
        in_shapes: dict[str, tuple] = {}
        for role, ref in node.inputs:
            if ref not in walk.layouts:
                walk.layouts[ref] = walk.fixed(ref, ref[0], UNKNOWN_WIDTH)
            ins[role] = walk.layouts[ref]
            if ref in shapes:
                in_shapes[role] = shapes[ref]
        # A single tensor in a list argument (`Concatenate()([x])`) reads as role "0.0"; a lone "0.0"
        # for a one-input layer is the same tensor.
        if set(ins) == {"0.0"} and node.class_name not in MERGE and node.class_name != "Concatenate":
            ins = {"0": ins["0.0"]}
            in_shapes = {"0": in_shapes["0.0"]} if "0.0" in in_shapes else {}
        module = node.module or ""
        handler = HANDLERS.get(node.class_name)
        why: str | None = None
        if module not in ("keras.layers", "keras") and not (model_class == "Sequential" and node.name == "<input>"):
            why = NOT_KERAS.format(cls=node.class_name, module=module or "?")
        elif handler is None:
            why = NOT_HANDLED.format(cls=node.class_name)
        elif node.calls > 1:
            why = SHARED_LAYER
        elif any(q in _policy_name(node.config) for q in ("int8", "int4", "float8", "gptq", "awq")):
            why = QUANTIZED.format(policy=_policy_name(node.config))
        outs: list[Layout] | None = None
        if why is None and handler is not None:
            try:
                outs = handler(walk, node, ins, in_shapes)
            except _Unsupported as exc:
                why = str(exc)
                walk.usage.pop(node.name, None)
        if why is not None or outs is None:
            why = why or NOT_HANDLED.format(cls=node.class_name)
            walk.left_alone[node.name] = why
            walk.pin(list(ins.values()), node.name, why)
            usage = walk.usage.pop(node.name, None)
            if usage is not None and usage.own is not None:
                walk.groups.pin(usage.own, node.name, why)
            n_out = max(node.outputs, 1)
            outs = [walk.fixed((node.name, 0, i), node.name, why) for i in range(n_out)]
        for i, layout in enumerate(outs):
            walk.layouts[(node.name, 0, i)] = layout
    for ref in outputs:
        if ref in walk.layouts:
            walk.pin([walk.layouts[ref]], ref[0], MODEL_OUTPUT)
    return Analysis(model_class, order, walk.groups, walk.usage, walk.layouts, shapes, walk.left_alone, config)
