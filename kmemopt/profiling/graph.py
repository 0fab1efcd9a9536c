"""The model's layer graph flattened into one list of leaf-layer calls, with every tensor sized.

Nested functional and sequential models are expanded (their layers get paths like `encoder/dense`);
a layer called several times (a shared layer) appears once per call. Tensors are sized as a line in
the batch size: `fixed + per_sample * B`, so peaks can be evaluated at any batch size exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kmemopt.errors import UsageError
from kmemopt.keras_compat.layers import is_container, is_functional, is_sequential
from kmemopt.profiling.dtypes import itemsize
from kmemopt.profiling.internals import Source, activation_source, grad_needs_input, input_casts, weight_casts
from kmemopt.profiling.line import ZERO, Line
from kmemopt.profiling.trace import OpTrace, OpTracer, Untraceable


@dataclass
class TensorInfo:
    tid: int
    shape: tuple  # batch dimension is None
    dtype: str
    size: Line


@dataclass
class Call:
    """One call of a leaf layer in the flattened graph.

    A traced call (see trace.py) also knows its backward workspace, which of its inputs and outputs
    its gradient reads, and how many operations it runs; other calls leave those to the layer rules."""

    layer: Any
    path: str
    inputs: list[int]
    outputs: list[int]
    saved_extra: Line = ZERO  # internal activations a training step keeps for the backward pass
    transient: Line = ZERO  # internal workspace alive only while the layer runs (forward)
    source: str = Source.EXACT  # where saved_extra and transient come from
    backward: Line | None = None  # internal workspace of its backward step, when it differs from `transient`
    reads_inputs: tuple[bool, ...] | None = None  # per input: its gradient reads it (None: the layer tables say)
    reads_outputs: tuple[bool, ...] | None = None
    weight_casts: int = 0  # mixed precision: compute-dtype copies of its weights, alive from the step's start

    @property
    def backward_transient(self) -> Line:
        """Internal workspace while the call's backward step runs."""
        return self.transient if self.backward is None else self.backward


@dataclass
class Graph:
    tensors: dict[int, TensorInfo] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # layers that could not be traced, and why
    # Mixed precision: compute-dtype copies of model inputs a training step keeps (by input tensor; the
    # input's row shows them), and the loss's float32 copies of 16-bit outputs (by the call that made them).
    input_casts: dict[int, Line] = field(default_factory=dict)


class UnknownDimension(UsageError):
    pass


def tensor_line(shape, dtype, where: str) -> Line:
    """Size of a symbolic tensor whose first dimension (if None) is the batch."""
    dims = list(shape)
    if not dims:
        return Line(itemsize(dtype), 0)
    batched = dims[0] is None
    rest = dims[1:] if batched else dims
    n = 1
    for d in rest:
        if d is None:
            raise UnknownDimension(
                f"The output of {where} has an unknown dimension (shape {tuple(shape)}); set the input's "
                "unknown dimensions with --input-shape NAME=D1,D2 or --seq-len N."
            )
        n *= int(d)
    b = n * itemsize(dtype)
    return Line(0, b) if batched else Line(b, 0)


class Tracer:
    """Walks a built model's graph symbolically; no tensor is ever allocated."""

    def __init__(self, internals=None, ops: OpTracer | None = None):
        self.graph = Graph()
        self._next = 0
        self.internals = internals  # callable(layer, in_specs, out_specs) -> (saved_extra, transient)
        self.ops = ops  # traces the calls of layers no rule knows exactly (None: rules only)
        self.recompute = False
        self._untraced: dict[tuple[str, str], list[str]] = {}  # (class, reason) -> paths
        self._with_grad: set[int] = set()  # tensors a training step differentiates (downstream of a trainable weight)

    def _new_tensor(self, spec, where: str) -> int:
        tid = self._next
        self._next += 1
        shape = tuple(spec.shape)
        dtype = str(getattr(spec, "dtype", "float32"))
        self.graph.tensors[tid] = TensorInfo(tid, shape, dtype, tensor_line(shape, dtype, where))
        return tid

    def trace(self, model, input_specs: list, input_names: list[str]) -> Graph:
        """`input_specs`: one KerasTensor per model input; `recompute` when they differ from the model's."""
        ids = [self._new_tensor(s, f"input {n!r}") for s, n in zip(input_specs, input_names)]
        self.graph.inputs = ids
        self.graph.input_names = list(input_names)
        out_ids, _ = self._trace_model(model, ids, list(input_specs), prefix="")
        self.graph.outputs = out_ids
        if self.internals is not None:
            _add_loss_casts(self.graph)
        for (cls, reason), paths in self._untraced.items():
            named = ", ".join(repr(p) for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            self.graph.warnings.append(
                f"{cls} layer(s) {named} could not be traced ({reason}); their activations are estimated "
                "from their outputs and layer rules only (source 'opaque'), likely an under-estimate."
            )
        return self.graph

    def _trace_model(self, model, in_ids, in_specs, prefix):
        if is_sequential(model) and getattr(model, "_functional", None) is not None:
            return self._trace_functional(model._functional, in_ids, in_specs, prefix)
        if is_functional(model):
            return self._trace_functional(model, in_ids, in_specs, prefix)
        if is_sequential(model):
            ids, specs = in_ids, in_specs
            for layer in model.layers:
                ids, specs = self._leaf(layer, ids, specs, (specs[0] if len(specs) == 1 else specs,), {}, None, prefix)
            return ids, specs
        # A subclassed model is opaque: one row for the whole thing.
        args = (in_specs[0] if len(in_specs) == 1 else in_specs,)
        return self._leaf(model, in_ids, in_specs, args, {}, None, prefix)

    def _trace_functional(self, model, in_ids, in_specs, prefix):
        td_id: dict[int, int] = {}
        td_spec: dict[int, Any] = {}
        if len(model.inputs) != len(in_ids):
            raise UsageError(
                f"Model {model.name!r} expects {len(model.inputs)} inputs but its caller passes {len(in_ids)}."
            )
        for x, tid, spec in zip(model.inputs, in_ids, in_specs):
            td_id[id(x)] = tid
            td_spec[id(x)] = spec
        # A nested model whose own inputs leave a dimension unknown that its caller fixes (a keras-hub
        # backbone under fixed-length token inputs): its nodes' shapes lack it, so it is traced from the specs.
        outer = self.recompute
        if any(tuple(x.shape)[1:] != tuple(s.shape)[1:] for x, s in zip(model.inputs, in_specs)):
            self.recompute = True
        try:
            return self._trace_nodes(model, td_id, td_spec, prefix)
        finally:
            self.recompute = outer

    def _trace_nodes(self, model, td_id, td_spec, prefix):
        from keras import tree

        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input or not node.operation:
                    continue
                if any(id(x) not in td_id for x in node.input_tensors):
                    continue
                op = node.operation
                ids = [td_id[id(x)] for x in node.input_tensors]
                specs = [td_spec[id(x)] for x in node.input_tensors]
                if is_container(op):
                    out_ids, out_specs = self._trace_model(op, ids, specs, prefix + op.name + "/")
                else:
                    if self.recompute:
                        args, kwargs = node.arguments.fill_in(td_spec)
                    else:
                        args, kwargs = None, None
                    out_ids, out_specs = self._leaf(op, ids, specs, args, kwargs, node, prefix)
                node_outputs = tree.flatten(node.outputs)
                for x, tid, spec in zip(node_outputs, out_ids, out_specs):
                    td_id[id(x)] = tid
                    td_spec[id(x)] = spec
        outs = tree.flatten(model.outputs)
        return [td_id[id(x)] for x in outs], [td_spec[id(x)] for x in outs]

    def _leaf(self, layer, in_ids, in_specs, args, kwargs, node, prefix):
        from keras import tree

        path = prefix + layer.name
        if node is not None and not self.recompute:
            out_specs = list(tree.flatten(node.outputs))
        else:
            try:
                out = layer.compute_output_spec(*args, **(kwargs or {}))
            except Exception as exc:  # a layer that cannot take these shapes
                raise UsageError(
                    f"Layer {path!r} ({type(layer).__name__}) cannot run on the given input shapes: "
                    f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}."
                ) from exc
            out_specs = list(tree.flatten(out))
        out_ids = [self._new_tensor(s, f"layer {path!r}") for s in out_specs]
        call = Call(layer, path, list(in_ids), out_ids)
        if self.internals is not None:
            call.source = activation_source(layer)
            if call.source == Source.TRACED:
                if args is None:  # the functional node's own arguments (KerasTensors)
                    args, kwargs = node.arguments.args, node.arguments.kwargs
                self._traced(call, args, kwargs or {}, len(out_ids))
            if call.source != Source.TRACED:
                call.saved_extra, call.transient = self.internals(layer, in_specs, out_specs)
                self._autocast(call, in_specs)  # a traced call's casts are in its trace
        if getattr(layer, "trainable_weights", None) or any(t in self._with_grad for t in in_ids):
            self._with_grad.update(out_ids)
        self.graph.calls.append(call)
        return out_ids, out_specs

    def _autocast(self, call: Call, in_specs) -> None:
        """Mixed precision's copies for a rule-counted call (see internals, "Mixed precision")."""
        casts, kernels, grads16 = weight_casts(call.layer)
        copies = [input_casts(call.layer, [spec]) for spec in in_specs]
        if not (casts or any(c.per_sample_bytes for c in copies)):
            return
        call.weight_casts = casts
        # The input gradient reads the cast kernels: needed when an input is differentiated, and always
        # by a recurrent layer (each backward time step reads the recurrent kernel).
        needs_dx = any(t in self._with_grad for t in call.inputs) or _recurrent(call.layer)
        kept = Line(kernels if needs_dx else 0, 0)
        for t, copy in zip(call.inputs, copies):
            call.transient = call.transient + copy
            if not grad_needs_input(call.layer):
                continue
            if t in self.graph.inputs:  # the weight gradient reads the cast input
                self.graph.input_casts[t] = self.graph.input_casts.get(t, ZERO) + copy
            else:
                kept = kept + copy
        call.backward = call.transient + Line(grads16, 0)  # 16-bit weight gradients, before their cast to float32
        call.saved_extra = call.saved_extra + kept

    def _traced(self, call: Call, args, kwargs, n_outputs: int) -> None:
        """Fill `call` from an operation-level trace of its layer; an untraceable one becomes opaque."""
        t: OpTrace | None = None
        if self.ops is None:
            reason: str | None = "operation-level tracing is off"
        else:
            try:
                t = self.ops.trace(call.layer, tuple(args), dict(kwargs))
                reason = _incomplete(t)
            except Untraceable as exc:
                reason = str(exc)
        if t is None or reason is not None:
            call.source = Source.OPAQUE
            self._untraced.setdefault((type(call.layer).__name__, str(reason)), []).append(call.path)
            return
        call.saved_extra, call.transient, call.backward = t.saved, t.transient, t.backward_transient
        # Inputs and outputs are matched to the trace's by position; any doubt keeps them all.
        if len(t.reads_inputs) == len(call.inputs):
            call.reads_inputs = t.reads_inputs
        if len(t.reads_outputs) == n_outputs:
            call.reads_outputs = t.reads_outputs


def _recurrent(layer) -> bool:
    return type(layer).__name__ in ("LSTM", "GRU", "SimpleRNN", "Bidirectional")


def _incomplete(t: OpTrace) -> str | None:
    """Why a trace does not account for every tensor (None when it does)."""
    if t.control_flow:
        return f"it runs {t.control_flow} control-flow operation(s) whose insides a graph walk cannot size"
    if t.unsized:
        return f"{t.unsized} of its tensors have shapes the graph does not know"
    return None


# ---------------------------------------------------------------------------------------------
# Peaks over the flattened graph


def inference_peak(graph: Graph, batch_size: int) -> tuple[Line, int]:
    """The largest set of tensors alive at once when the calls run in order.

    A tensor lives from the call that makes it to its last consumer; model inputs from the start,
    model outputs to the end. While a layer runs, its inputs, its outputs and its internal workspace
    are all alive. Returns the live-bytes line at the peak (exact at `batch_size`) and the call index.
    """
    last_use: dict[int, int] = {}
    for i, call in enumerate(graph.calls):
        for t in call.inputs:
            last_use[t] = i
    end = len(graph.calls)
    for t in graph.outputs:
        last_use[t] = end
    # The live set's total is kept as it changes (adding and removing tensors), so each call costs
    # its own inputs and outputs, not the live set: linear in the graph even when thousands of
    # branches are alive at once.
    live: set[int] = set()
    fixed = per = 0
    for t in graph.inputs:
        if t not in live:
            live.add(t)
            fixed, per = fixed + graph.tensors[t].size.fixed_bytes, per + graph.tensors[t].size.per_sample_bytes
    # Mixed precision: the weights' compute-dtype copies are made as the step starts (they need no
    # input) and each lives until its layer has run.
    pending = sum(call.weight_casts for call in graph.calls)
    best = Line(fixed + pending, per)
    best_at = -1
    for i, call in enumerate(graph.calls):
        for t in call.outputs:
            if t not in live:
                live.add(t)
                fixed, per = fixed + graph.tensors[t].size.fixed_bytes, per + graph.tensors[t].size.per_sample_bytes
        current = Line(fixed + pending, per) + call.transient
        pending -= call.weight_casts
        if current.at(batch_size) > best.at(batch_size):
            best, best_at = current, i
        for t in set(call.inputs) | set(call.outputs):
            if last_use.get(t, i) <= i and t in live:
                live.discard(t)
                fixed, per = fixed - graph.tensors[t].size.fixed_bytes, per - graph.tensors[t].size.per_sample_bytes
    return best, best_at


def kept_tensors(graph: Graph) -> set[int]:
    """The tensors a training step keeps from the forward pass for the backward pass.

    A tensor is kept when a gradient reads it (see internals: the gradient of the layer that made it,
    or of a layer that consumes it), plus the model's inputs and outputs (the loss reads the
    predictions). A reshape's output is its input's buffer: the kept tensor is the input.
    """
    from kmemopt.profiling.internals import ALIASING, grad_needs_input, grad_needs_output

    alias: dict[int, int] = {}
    for call in graph.calls:
        if type(call.layer).__name__ in ALIASING and len(call.inputs) == 1 and len(call.outputs) == 1:
            alias[call.outputs[0]] = call.inputs[0]

    roots: dict[int, int] = {}

    def root(t: int) -> int:
        # Each chain of reshapes is followed once: a long chain costs linear time, not quadratic.
        path = []
        while t in alias and t not in roots:
            path.append(t)
            t = alias[t]
        r = roots.get(t, t)
        for p in path:
            roots[p] = r
        return r

    needed = {root(t) for t in list(graph.inputs) + list(graph.outputs)}
    for call in graph.calls:
        # A traced call says which of its inputs and outputs its gradient reads; others follow the tables.
        reads_in = call.reads_inputs or (grad_needs_input(call.layer),) * len(call.inputs)
        reads_out = call.reads_outputs or (grad_needs_output(call.layer),) * len(call.outputs)
        needed.update(root(t) for t, read in zip(call.inputs, reads_in) if read)
        needed.update(root(t) for t, read in zip(call.outputs, reads_out) if read)
    return needed


def saved_for_backward(graph: Graph) -> Line:
    """Bytes a training step keeps for the backward pass: the kept tensors plus layers' internal saves
    (and, mixed precision, the model inputs' compute-dtype copies)."""
    total = _sum(graph.tensors[t].size for t in kept_tensors(graph))
    return total + _sum(c.saved_extra for c in graph.calls) + _sum(graph.input_casts.values())


def _add_loss_casts(graph: Graph) -> None:
    """Mixed precision: a Keras loss casts 16-bit predictions to float32 and computes in float32; its
    gradient reads that copy, so a training step keeps a float32 copy of every 16-bit float output
    (counted with the call that made the output)."""
    maker = {t: call for call in graph.calls for t in call.outputs}
    for t in dict.fromkeys(graph.outputs):
        info = graph.tensors[t]
        if t in maker and "float" in info.dtype and itemsize(info.dtype) < 4:
            maker[t].saved_extra = maker[t].saved_extra + tensor_line(info.shape, "float32", "a model output")


def backward_transient(graph: Graph, batch_size: int) -> Line:
    """The largest set of gradient tensors one layer's backward step holds: d(outputs) and d(inputs),
    plus its internal workspace."""
    best = ZERO
    for call in graph.calls:
        line = _sum(graph.tensors[t].size for t in set(call.inputs) | set(call.outputs)) + call.backward_transient
        if line.at(batch_size) > best.at(batch_size):
            best = line
    return best


def _sum(lines) -> Line:
    fixed = per = 0
    for line in lines:
        fixed += line.fixed_bytes
        per += line.per_sample_bytes
    return Line(fixed, per)
