"""Operation-level tracing: the tensors a layer really creates, forward and backward.

A layer that runs other layers and operations in its `call` (a keras-hub transformer block, a ViT
encoder, any user layer doing more than one thing) creates many tensors its outputs do not show. Its
call is traced here the way TensorFlow traces a training step: `tf.function` builds the graph of one
call under a Keras `StatelessScope` that maps every variable to a placeholder (no weight is read or
allocated), and `tf.gradients` adds the backward pass. Nothing is ever run: the graph's operations
carry their output shapes, so every tensor is sized without being computed, and the cost of a trace
is the cost of building the graph (bounded by `MAX_OPS`).

Each graph is built at two batch sizes (`BATCHES`): a tensor's bytes at both give its line
`fixed + per_sample x B` exactly, also for tensors whose leading dimension is the batch folded into
another one by a reshape (which one trace with an unknown batch dimension cannot size).

Then a liveness walk over the operations in graph order (TensorFlow's executor frees a tensor after
its last consumer has run) gives, beyond the layer's own inputs and outputs (which the model-level
walk in graph.py counts):
  transient           inference: the most bytes alive at once inside the layer (a `training=False` trace);
  saved               training: the forward tensors the gradient operations read (kept for the backward pass);
  backward_transient  training: the most bytes alive at once that are not kept, forward or backward,
                      final weight gradients left out (the profile counts every weight gradient as held);
and whether the backward pass reads each of the layer's inputs and outputs.

Tensors that share their input's buffer (reshapes, identities, expand/squeeze, stop-gradient) cost
nothing and extend their source's life; constants live in the graph, not in a step; a tensor of at
most `BOOKKEEPING_BYTES` that does not grow with the batch (shapes, scalars) is graph bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kmemopt.profiling.dtypes import itemsize
from kmemopt.profiling.line import ZERO, Line

BATCHES = (2, 3)  # two batch sizes above 1, so no broadcast of a size-1 batch changes the graph
MAX_OPS = 50_000  # operations one traced layer may create (forward and backward); beyond: opaque
MAX_FORWARD_OPS = 12_000  # checked before the backward pass is built, so an oversized layer stops early
MAX_PROFILE_OPS = 400_000  # operations all traces of one profile may create together
MAX_SUBLAYERS = 4_000  # checked before tracing: a layer's operations grow with the layers it runs
BOOKKEEPING_BYTES = 64
# Operations whose outputs are their inputs' buffers (TensorFlow forwards the buffer): output i is input i.
ALIASING_OPS = frozenset(
    {
        "Reshape",
        "Identity",
        "IdentityN",
        "ExpandDims",
        "Squeeze",
        "StopGradient",
        "PreventGradient",
        "EnsureShape",
        "Snapshot",
    }
)
# Operations that make no step memory: graph constants and placeholders (weights are counted as weights).
FREE_OPS = frozenset({"Const", "Placeholder", "NoOp"})
# Operations whose insides a graph walk cannot see (their bodies are separate functions).
CONTROL_FLOW_OPS = frozenset(
    {
        "While",
        "StatelessWhile",
        "If",
        "StatelessIf",
        "Case",
        "StatelessCase",
        "PartitionedCall",
        "StatefulPartitionedCall",
    }
)
# Operations whose outputs are shapes or broadcast indices: graph bookkeeping.
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "BroadcastGradientArgs"})
# Element-wise operations whose CPU kernels write their output into an input's buffer when this
# operation is that input's last reader and the sizes match (TensorFlow's
# `forward_input_or_allocate_output`, used by the cwise, bias-add and activation kernels): no new
# memory then. Their outputs have their inputs' dtype, so equal bytes mean an equal shape.
FORWARDING_OPS = frozenset(
    {
        "Abs",
        "Add",
        "AddN",
        "AddV2",
        "BiasAdd",
        "Div",
        "DivNoNan",
        "Elu",
        "EluGrad",
        "Erf",
        "Exp",
        "Log",
        "Maximum",
        "Minimum",
        "Mul",
        "Neg",
        "Pow",
        "RealDiv",
        "Reciprocal",
        "Relu",
        "Relu6",
        "Relu6Grad",
        "ReluGrad",
        "Rsqrt",
        "RsqrtGrad",
        "Selu",
        "Sigmoid",
        "SigmoidGrad",
        "Sqrt",
        "SqrtGrad",
        "Square",
        "SquaredDifference",
        "Sub",
        "Tanh",
        "TanhGrad",
    }
)


class Untraceable(Exception):
    """A layer whose call cannot be traced here; the message says why (for the profile's warning)."""


@dataclass(frozen=True)
class OpTrace:
    """What one call of a layer holds beyond its inputs and outputs (see the module docstring)."""

    transient: Line
    saved: Line
    backward_transient: Line
    reads_inputs: tuple[bool, ...]  # per flattened tensor input: the backward pass reads it
    reads_outputs: tuple[bool, ...]  # per flattened output
    unsized: int = 0  # tensors whose shape the graph does not know (not counted)
    control_flow: int = 0  # control-flow operations (their insides are not seen)


@dataclass
class _Graph:
    """One traced graph as plain data: operation types, output sizes, input references."""

    types: list[str]
    sizes: list[list[int | None]]  # bytes of each output, None when its shape is not fully known
    inputs: list[list[tuple[int, int]]]  # (op index, output index) of each data input
    n_forward: int  # operations of the forward pass (placeholders included)
    n_upstream: int  # ... and of the upstream gradients made for the backward pass
    layer_inputs: list[tuple[int, int]]
    layer_outputs: list[tuple[int, int]]
    params: set[tuple[int, int]]  # variable placeholders
    input_grads: set[tuple[int, int]] = field(default_factory=set)
    weight_grads: set[tuple[int, int]] = field(default_factory=set)


class OpTracer:
    """Traces layers' calls for one profile: identical layers on identical inputs are traced once."""

    def __init__(self, batch_size: int, max_profile_ops: int = MAX_PROFILE_OPS):
        self.batch_size = batch_size
        self.ops_left = max_profile_ops
        self._done: dict[Any, OpTrace | Untraceable] = {}

    def trace(self, layer: Any, args: tuple, kwargs: dict) -> OpTrace:
        """The op-level account of `layer(*args, **kwargs)` (KerasTensor arguments, batch dimension None).

        Raises `Untraceable` with the reason when the call cannot be traced here."""
        key = _cache_key(layer, args, kwargs)
        if key is not None and key in self._done:
            cached = self._done[key]
            if isinstance(cached, Untraceable):
                raise cached
            return cached
        try:
            result = self._trace(layer, args, kwargs)
        except Untraceable as exc:
            if key is not None:
                self._done[key] = exc
            raise
        if key is not None:
            self._done[key] = result
        return result

    def _trace(self, layer: Any, args: tuple, kwargs: dict) -> OpTrace:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise Untraceable(f"operation-level tracing needs the TensorFlow backend, not {keras.backend.backend()}")
        if self.ops_left <= 0:
            raise Untraceable("the profile's tracing budget is spent")
        from kmemopt.keras_compat.layers import flatten_layers

        if sum(1 for _ in zip(range(MAX_SUBLAYERS + 1), flatten_layers(layer, include_self=False))) > MAX_SUBLAYERS:
            raise Untraceable(f"it runs over {MAX_SUBLAYERS:,} layers")
        inference = [_build(layer, args, kwargs, b, training=False, backward=False) for b in BATCHES]
        training = [_build(layer, args, kwargs, b, training=True, backward=True) for b in BATCHES]
        self.ops_left -= len(inference[1].types) + len(training[1].types)
        inf_lines = _lines(*inference)
        train_lines = _lines(*training)
        return _account(inference[1], inf_lines, training[1], train_lines, self.batch_size)


# ---------------------------------------------------------------------------------------------
# Building the graph (TensorFlow)


def _build(layer: Any, args: tuple, kwargs: dict, batch: int, *, training: bool, backward: bool) -> _Graph:
    import keras
    import tensorflow as tf
    from keras import tree

    from kmemopt.keras_compat.variables import unallocated

    flat = tree.flatten((args, kwargs))
    positions = [i for i, x in enumerate(flat) if isinstance(x, keras.KerasTensor)]
    in_specs = [_spec(flat[i], batch) for i in positions]
    variables = list(layer.trainable_variables) + list(layer.non_trainable_variables)
    n_trainable = len(layer.trainable_variables)
    var_specs = [tf.TensorSpec(tuple(int(d) for d in v.shape), str(v.dtype)) for v in variables]
    marks: dict[str, Any] = {}

    def step(var_values, tensors):
        graph = tf.compat.v1.get_default_graph()
        values = list(flat)
        for i, t in zip(positions, tensors):
            values[i] = t
        call_args, call_kwargs = tree.pack_sequence_as((args, kwargs), values)
        if _accepts_training(layer) and "training" not in call_kwargs:  # a call's own `training` stands
            call_kwargs = {**call_kwargs, "training": training}
        with keras.StatelessScope(state_mapping=list(zip(variables, var_values))):
            outputs = layer(*call_args, **call_kwargs)
        out_flat = [o for o in tree.flatten(outputs) if tf.is_tensor(o)]
        marks["n_forward"] = len(graph.get_operations())
        marks["outputs"] = [o.name for o in out_flat]
        marks["inputs"] = [t.name for t in tensors]
        marks["params"] = [t.name for t in var_values]
        if marks["n_forward"] > MAX_FORWARD_OPS:
            raise Untraceable(f"its forward pass has over {MAX_FORWARD_OPS:,} operations")
        if not backward:
            marks["n_upstream"] = marks["n_end"] = marks["n_forward"]
            return out_flat
        ys = [o for o in out_flat if o.dtype.is_floating]
        upstream = [tf.ones_like(y) for y in ys]
        marks["n_upstream"] = len(graph.get_operations())
        xs_inputs = [t for t in tensors if t.dtype.is_floating]
        xs_weights = list(var_values[:n_trainable])
        grads = tf.gradients(ys, xs_inputs + xs_weights, grad_ys=upstream) if ys else []
        marks["input_grads"] = [gr.name for gr in grads[: len(xs_inputs)] if gr is not None]
        marks["weight_grads"] = [gr.name for gr in grads[len(xs_inputs) :] if gr is not None]
        marks["n_end"] = len(graph.get_operations())  # tf.function's own output identities come after
        return out_flat, [gr for gr in grads if gr is not None]

    try:
        with unallocated():  # nothing the call creates may allocate a weight behind our back
            graph = tf.function(step, autograph=False).get_concrete_function(var_specs, in_specs).graph
    except Untraceable:
        raise
    except Exception as exc:  # noqa: BLE001  (any failure of a user's call is a reason, not a crash)
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise Untraceable(f"its call failed under tracing ({type(exc).__name__}{': ' + text if text else ''})") from exc
    ops = graph.get_operations()[: marks["n_end"]]
    if len(ops) > MAX_OPS:
        raise Untraceable(f"it creates over {MAX_OPS:,} operations")
    return _to_data(ops, marks)


def _spec(x: Any, batch: int) -> Any:
    import tensorflow as tf

    if getattr(x, "sparse", False) or getattr(x, "ragged", False):
        raise Untraceable("it takes a sparse or ragged input")
    shape = list(x.shape)
    if shape and shape[0] is None:
        shape[0] = batch
    if any(d is None for d in shape):
        raise Untraceable(f"an input has an unknown dimension (shape {tuple(x.shape)})")
    return tf.TensorSpec(tuple(int(d) for d in shape), str(x.dtype))


def _accepts_training(layer: Any) -> bool:
    import inspect

    try:
        params = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False
    return "training" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _to_data(ops: list, marks: dict[str, Any]) -> _Graph:
    where: dict[str, tuple[int, int]] = {}
    types: list[str] = []
    sizes: list[list[int | None]] = []
    inputs: list[list[tuple[int, int]]] = []
    for i, op in enumerate(ops):
        types.append(op.type)
        inputs.append([where[t.name] for t in op.inputs if t.name in where])
        out_sizes: list[int | None] = []
        for j, t in enumerate(op.outputs):
            where[t.name] = (i, j)
            out_sizes.append(_bytes(t, op.type))
        sizes.append(out_sizes)

    def refs(names: Iterable[str]) -> list[tuple[int, int]]:
        return [where[n] for n in names if n in where]

    return _Graph(
        types=types,
        sizes=sizes,
        inputs=inputs,
        n_forward=marks["n_forward"],
        n_upstream=marks["n_upstream"],
        layer_inputs=refs(marks["inputs"]),
        layer_outputs=refs(marks["outputs"]),
        params=set(refs(marks["params"])),
        input_grads=set(refs(marks.get("input_grads", ()))),
        weight_grads=set(refs(marks.get("weight_grads", ()))),
    )


def _bytes(t: Any, op_type: str) -> int | None:
    if op_type in SHAPE_OPS:
        return 0  # shapes and broadcast indices: graph bookkeeping, sizes unknown to the graph itself
    dtype = t.dtype
    if dtype.name in ("resource", "variant", "string"):
        return 0 if dtype.name != "variant" else None
    dims = t.shape.as_list() if t.shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        return None
    n = 1
    for d in dims:
        n *= int(d)
    return n * itemsize(dtype.name)


# ---------------------------------------------------------------------------------------------
# Sizes as lines, and the walks


def _lines(a: _Graph, b: _Graph) -> dict[tuple[int, int], Line | None]:
    """Each tensor's bytes as a line in the batch, from the same graph traced at BATCHES[0] and BATCHES[1]."""
    if a.types != b.types:
        raise Untraceable("its operations change with the batch size")
    b0, b1 = BATCHES
    lines: dict[tuple[int, int], Line | None] = {}
    for i, (sa, sb) in enumerate(zip(a.sizes, b.sizes)):
        for j, (x, y) in enumerate(zip(sa, sb)):
            if x is None or y is None:
                lines[(i, j)] = None
                continue
            per = (y - x) // (b1 - b0)
            lines[(i, j)] = Line(x - per * b0, per)
    return lines


def _roots(g: _Graph) -> dict[tuple[int, int], tuple[int, int]]:
    """Each tensor's buffer: its own, or (through aliasing operations) the tensor it was made from."""
    root: dict[tuple[int, int], tuple[int, int]] = {}
    for i, kind in enumerate(g.types):
        for j in range(len(g.sizes[i])):
            ref = (i, j)
            if kind in ALIASING_OPS and g.inputs[i]:
                src = g.inputs[i][j] if kind == "IdentityN" and j < len(g.inputs[i]) else g.inputs[i][0]
                root[ref] = root.get(src, src)
            else:
                root[ref] = ref
    return root


def _forwarding(g: _Graph, lines, root, last: dict, protected: set, ops: range) -> tuple[dict, dict]:
    """Buffers and last uses once element-wise operations reuse their inputs' buffers (FORWARDING_OPS).

    An input's buffer is taken over when this operation is its last reader, it is the same size as
    the output, and it is not `protected` (the layer's own inputs and outputs, which the model-level
    walk owns); the buffer then lives until the output's last reader. Returns (buffer of each
    tensor, last use of each buffer)."""
    took: dict[tuple[int, int], tuple[int, int]] = {}  # output -> the input buffer it took over

    def buffer(ref: tuple[int, int]) -> tuple[int, int]:
        while ref in took:
            ref = took[ref]
        return ref

    last = dict(last)
    for i in ops:
        out = (i, 0)
        if g.types[i] not in FORWARDING_OPS or len(g.sizes[i]) != 1 or root[out] != out:
            continue
        line = lines.get(out)
        for ref in g.inputs[i]:
            buf = buffer(root[ref])
            if buf in protected or last.get(buf) != i or lines.get(buf) != line:
                continue
            if _counted(g, lines, root, buf) is None:  # constants, weights, bookkeeping: not reusable
                continue
            took[out] = buf
            last[buf] = last.get(out, i)
            break
    return {ref: buffer(r) for ref, r in root.items()}, last


def _account(inf: _Graph, inf_lines, train: _Graph, train_lines, batch: int) -> OpTrace:
    transient = _inference_transient(inf, inf_lines, batch)
    saved, backward, reads_in, reads_out = _training(train, train_lines, batch)
    unsized = sum(1 for v in inf_lines.values() if v is None) + sum(1 for v in train_lines.values() if v is None)
    control = sum(1 for t in train.types if t in CONTROL_FLOW_OPS)
    return OpTrace(transient, saved, backward, reads_in, reads_out, unsized, control)


def _counted(g: _Graph, lines, root, ref: tuple[int, int]) -> Line | None:
    """The bytes a tensor's own buffer adds, or None when it adds none (alias, constant, bookkeeping)."""
    i = ref[0]
    if root[ref] != ref or g.types[i] in FREE_OPS or ref in g.params:
        return None
    line = lines.get(ref)
    if line is None or (line.per_sample_bytes == 0 and line.fixed_bytes <= BOOKKEEPING_BYTES):
        return None
    return line


def _last_uses(g: _Graph, root, skip: range = range(0)) -> dict[tuple[int, int], int]:
    last: dict[tuple[int, int], int] = {}
    for i, ins in enumerate(g.inputs):
        if i in skip:
            continue
        for ref in ins:
            last[root[ref]] = i
    return last


def _peak(g: _Graph, lines, root, ops: range, last: dict, excluded: set, batch: int) -> Line:
    """The most bytes alive at once over `ops`, counting only tensors those ops make (not `excluded`)."""
    frees: dict[int, list[Line]] = {}  # op index -> lines of the tensors freed after it
    fixed = per = 0
    best = ZERO
    for i in ops:
        for j in range(len(g.sizes[i])):
            ref = (i, j)
            line = _counted(g, lines, root, ref)
            if line is None or ref in excluded:
                continue
            frees.setdefault(max(i, last.get(ref, i)), []).append(line)
            fixed, per = fixed + line.fixed_bytes, per + line.per_sample_bytes
        current = Line(fixed, per)
        if current.at(batch) > best.at(batch):
            best = current
        for line in frees.pop(i, ()):
            fixed, per = fixed - line.fixed_bytes, per - line.per_sample_bytes
    return best


def _inference_transient(g: _Graph, lines, batch: int) -> Line:
    root = _roots(g)
    ends = {root[r] for r in g.layer_inputs + g.layer_outputs}
    buffers, last = _forwarding(g, lines, root, _last_uses(g, root), ends, range(len(g.types)))
    excluded = {buffers[r] for r in ends}
    return _peak(g, lines, buffers, range(len(g.types)), last, excluded, batch)


def _training(g: _Graph, lines, batch: int) -> tuple[Line, Line, tuple[bool, ...], tuple[bool, ...]]:
    root = _roots(g)
    upstream = range(g.n_forward, g.n_upstream)  # the ones_like seeds: not a read of the forward pass
    read_later: set[tuple[int, int]] = set()
    for i in range(g.n_upstream, len(g.types)):
        read_later.update(root[ref] for ref in g.inputs[i] if ref[0] < g.n_forward)
    ends = {root[r] for r in g.layer_inputs + g.layer_outputs}
    reads_in = tuple(root[r] in read_later for r in g.layer_inputs)
    reads_out = tuple(root[r] in read_later for r in g.layer_outputs)
    saved_refs = set()
    saved = ZERO
    for ref in read_later - ends:
        line = _counted(g, lines, root, ref)
        if line is not None:
            saved_refs.add(ref)
            saved = saved + line
    # Forward: what is alive and not kept; backward: what the gradient operations make, final
    # gradients left out (weight gradients are counted as held, input gradients as the inputs' size).
    # A buffer an element-wise operation reuses is counted once, as the tensor it ends up holding.
    finals = {root[r] for r in g.weight_grads | g.input_grads}
    buffers, last = _forwarding(g, lines, root, _last_uses(g, root, skip=upstream), ends, range(len(g.types)))
    kept = {buffers[r] for r in ends | saved_refs}
    forward = _peak(g, lines, buffers, range(g.n_forward), last, kept, batch)
    backward = _peak(
        g, lines, buffers, range(g.n_upstream, len(g.types)), last, {buffers[r] for r in finals | ends}, batch
    )
    return saved, (forward if forward.at(batch) > backward.at(batch) else backward), reads_in, reads_out


def _cache_key(layer: Any, args: tuple, kwargs: dict) -> Any:
    """Identical class, config, weights and call arguments trace identically; None when unsure."""
    import json

    import keras
    from keras import tree

    try:
        named = layer.get_config()
        config = json.dumps({k: v for k, v in named.items() if k != "name"}, sort_keys=True, default=str)
    except Exception:  # noqa: BLE001  (keras-hub's LlamaTransformerDecoder.get_config reads unset attributes)
        settings = _settings(layer)
        if settings is None:
            return None  # traced on its own
        config = repr(settings)

    def describe(x: Any) -> Any:
        if isinstance(x, keras.KerasTensor):
            return ("tensor", tuple(x.shape), str(x.dtype))
        if isinstance(x, (int, float, str, bool, type(None))):
            return x
        return ("object", id(x))

    args_key = tuple(describe(x) for x in tree.flatten((args, kwargs)))
    weights = tuple((tuple(v.shape), str(v.dtype), bool(v.trainable)) for v in layer.weights)
    policy = getattr(getattr(layer, "dtype_policy", None), "name", None)
    return (type(layer), config, policy, weights, repr(tree.map_structure(lambda _: 0, (args, kwargs))), args_key)


# Attributes that name a layer (identical layers differ only in these).
_NAME_ATTRIBUTES = frozenset({"name", "_name", "_path", "_parent_path"})


def _settings(layer: Any, depth: int = 0) -> Any:
    """What a layer whose `get_config` fails is made of, names left out: its plain attributes, functions
    by qualified name, objects by their config (else their type), variables by shape and dtype, and its
    sublayers' settings. Two layers with equal settings, weights and arguments trace identically (the
    32 decoder blocks of a keras-hub Llama: traced once, not 32 times). None past a nesting depth."""
    import json

    import keras

    if depth > 6:
        return None

    def describe(v: Any, level: int) -> Any:
        if isinstance(v, (int, float, str, bool, type(None))):
            return v
        if isinstance(v, keras.layers.Layer):
            try:
                return (type(v).__qualname__, json.dumps(
                    {k: c for k, c in v.get_config().items() if k != "name"}, sort_keys=True, default=str
                ))  # fmt: skip
            except Exception:  # noqa: BLE001
                inner = _settings(v, depth + 1)
                if inner is None:
                    raise _Undescribed from None
                return inner
        if isinstance(v, keras.Variable):
            return ("variable", tuple(v.shape), str(v.dtype), bool(v.trainable))
        if level > 3:
            return type(v).__qualname__
        if isinstance(v, (list, tuple)):
            return tuple(describe(x, level + 1) for x in v)
        if isinstance(v, dict):
            return tuple(sorted(((str(k), describe(x, level + 1)) for k, x in v.items()), key=repr))
        if isinstance(v, (set, frozenset)):
            return tuple(sorted(repr(describe(x, level + 1)) for x in v))
        if callable(v) and hasattr(v, "__qualname__"):
            return f"{getattr(v, '__module__', '?')}.{v.__qualname__}"
        if hasattr(v, "get_config"):
            try:
                return (type(v).__qualname__, json.dumps(v.get_config(), sort_keys=True, default=str))
            except Exception:  # noqa: BLE001
                return type(v).__qualname__
        return type(v).__qualname__

    try:
        described = tuple(
            (k, describe(v, 0))
            for k, v in sorted(vars(layer).items())
            if k not in _NAME_ATTRIBUTES and k not in ("_inbound_nodes", "_outbound_nodes")  # not the graph around it
        )
    except _Undescribed:
        return None
    return (type(layer).__qualname__, described)


class _Undescribed(Exception):
    """A sublayer too deeply nested to describe."""
