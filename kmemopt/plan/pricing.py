"""Pricing a model spec with the static profile: one rebuild per model variant, cheap terms per combination.

A *variant* is the architecture as a change rebuilds it: the config (a pruned one, say), a global dtype
policy, LoRA adapters, quantized weights. Each variant is built unallocated from its config
(`kmemopt.load.build.build_from_config`) and profiled once with `kmemopt.profiling.static.profile_model`,
the estimator behind `kmemopt profile`. What does not change the architecture is priced on that
variant's graph and variables without another build, because those terms add up exactly:

- the batch size: every tensor is a line in the batch size (the peaks are re-walked at each batch);
- the optimizer and gradient accumulation: the real optimizer is built over the variant's trainable
  variables (unallocated); its slots are per variable, so a subset (freezing) sums a subset;
- freezing: gradients and slots only for trainable variables; a tensor is kept for the backward pass
  only when the gradient tape records its consumer (TensorFlow records an operation only when an
  input depends on a trainable variable, so nothing is kept below the first trainable layer);
- `keras.RematScope(mode="activations")`: see `_remat_activations`.

Terms the static profile does not hold and this module adds (estimated, the report says so):
- mixed precision keeps a 16-bit copy of each weight a recorded layer reads (autocast; the backward
  pass of a matmul or convolution reads it);
- LoRA (Keras's `enable_lora`) computes the merged kernel `W + (alpha/r) A @ B` in every call: the
  merged kernel is kept for the backward pass of Dense/EinsumDense and two kernel-sized temporaries
  live while the layer runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kmemopt.plan.strategy import ModelSpec
from kmemopt.profiling import graph as g
from kmemopt.profiling.dtypes import itemsize, nbytes
from kmemopt.profiling.line import ZERO, Line

LORA_CLASSES = ("Dense", "EinsumDense", "Embedding")
QUANTIZABLE = ("Dense", "EinsumDense", "Embedding")  # what Keras's own model.quantize handles, by exact type
# A frozen layer of these kinds needs its input only for its weight gradient (dx reads the weights):
# once frozen, its input is not kept. A frozen BatchNormalization runs in inference mode (an affine map).
INPUT_FOR_WEIGHTS_ONLY = frozenset(
    {
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "SeparableConv1D",
        "SeparableConv2D",
        "Dense",
        "EinsumDense",
        "Embedding",
        "BatchNormalization",
    }
)
REMAT_MODES = ("activations",)  # the modes TensorFlow's graph mode runs (see docs/plan.md)


@dataclass(frozen=True)
class Breakdown:
    """A priced step: the peak and the terms it is made of (bytes)."""

    peak_bytes: int
    param_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # kept for the backward pass (training) or the live activations at the peak
    transient_bytes: int  # the largest backward step (training); 0 for inference
    runtime_bytes: int
    estimated_terms: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes,
            "param_bytes": self.param_bytes,
            "gradient_bytes": self.gradient_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activation_bytes": self.activation_bytes,
            "transient_bytes": self.transient_bytes,
            "runtime_bytes": self.runtime_bytes,
            "estimated_terms": list(self.estimated_terms),
        }


@dataclass(frozen=True)
class TrainableSet:
    """The variables a step trains once some layers are frozen, and their gradients' bytes."""

    ids: frozenset[int]
    variables: tuple[tuple[int, int], ...]  # (id, bytes) of each trained variable, once, in model order
    gradient_bytes: int


@dataclass(frozen=True)
class BackwardLines:
    """What the backward pass of one (frozen, remat) choice holds, as lines in the batch size: the tensors
    kept from the forward pass, and each recorded call's backward working set (the peak is the largest
    of these at the batch size, found per combination)."""

    saved: Line
    steps: tuple[Line, ...]
    estimated: tuple[str, ...]

    def worst(self, batch_size: int) -> Line:
        """The first largest backward step at `batch_size` (the order the whole-graph walk picks it in)."""
        worst = ZERO
        for line in self.steps:
            if line.at(batch_size) > worst.at(batch_size):
                worst = line
        return worst


@dataclass
class Variant:
    """One architecture, built unallocated and profiled once."""

    model: Any
    profile: Any  # ProfileResult at the plan's batch size
    policy: str | None
    lora_rank: int | None
    weight_dtype: str | None
    paths: dict[int, str] = field(default_factory=dict)  # id(layer) -> layer path
    optimizers: dict[str, Any] = field(default_factory=dict)  # optimizer key -> OptimizerState
    # The per-layer terms a training step is composed of, each computed once (see `Pricer.training`).
    runtime: Line | None = None  # loader residue + training graph + input copy
    trainable: dict[tuple[str, ...], TrainableSet] = field(default_factory=dict)  # frozen patterns -> ...
    backward: dict[tuple[tuple[str, ...], str | None], BackwardLines] = field(default_factory=dict)
    inference: dict[int, Breakdown] = field(default_factory=dict)  # batch size -> the inference step
    shards: dict[tuple, Any] = field(default_factory=dict)  # (placement, optimizer key) -> plan.devices.Shards

    @property
    def graph(self):
        return self.profile._graph


def config_key(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- config edits


def _layer_dicts(config: Any):
    """Every serialized layer dict in a model config (nested models included), iteratively."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("class_name")
            # Node arguments ("__keras_tensor__") carry a dtype too; they are not layers.
            if isinstance(name, str) and not name.startswith("__") and isinstance(node.get("config"), dict):
                yield node
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def _is_float_policy(dtype: Any) -> bool:
    if isinstance(dtype, str):
        return dtype in ("float32", "float16", "bfloat16", "float64") or dtype.startswith("mixed_")
    if isinstance(dtype, dict) and dtype.get("class_name") == "DTypePolicy":
        name = (dtype.get("config") or {}).get("name", "")
        return isinstance(name, str) and (name.startswith("float") or name.startswith("mixed_") or name == "bfloat16")
    return False


def _policy(name: str) -> dict[str, Any]:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": name}, "registered_name": None}


def with_policy(config: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """The config with every float layer's dtype policy set to `policy` (inputs keep their dtype)."""
    out = copy.deepcopy(dict(config))
    for layer in _layer_dicts(out):
        cfg = layer["config"]
        if layer.get("class_name") == "InputLayer" or "dtype" not in cfg:
            continue
        if _is_float_policy(cfg["dtype"]) and not _is_model_dict(layer):
            cfg["dtype"] = _policy(policy)
    return out


def _is_model_dict(layer: Mapping[str, Any]) -> bool:
    return isinstance(layer.get("config"), dict) and "layers" in layer["config"]


def with_quantized_weights(config: Mapping[str, Any], mode: str) -> dict[str, Any]:
    """The config Keras's `model.quantize(mode)` would save: quantized policies on Dense, EinsumDense and
    Embedding (by exact class, as Keras does); "float16" stores every float layer's weights in 16 bits."""
    if mode == "float16":
        return with_policy(config, "float16")
    out = copy.deepcopy(dict(config))
    for layer in _layer_dicts(out):
        cfg = layer["config"]
        if layer.get("class_name") not in QUANTIZABLE or layer.get("module") not in ("keras.layers", None):
            continue
        if not _is_float_policy(cfg.get("dtype", "float32")):
            continue
        if mode == "int8":
            policy = {"class_name": "QuantizedDTypePolicy", "config": {"mode": "int8", "source_name": "float32"}}
        else:
            policy = {"class_name": "Int4DTypePolicy", "config": {"mode": "int4/128", "source_name": "float32"}}
        cfg["dtype"] = {"module": "keras.dtype_policies", **policy, "registered_name": None}
    return out


# --------------------------------------------------------------------------------------------- building


class Pricer:
    """Builds each variant once and prices specs on them. Not shared between plans."""

    def __init__(self, *, custom_objects=None, input_shapes=None, seq_len=None, legacy: bool = False):
        self.custom_objects = custom_objects
        self.input_shapes = input_shapes
        self.seq_len = seq_len
        self.legacy = legacy
        self.variants: dict[tuple, Variant] = {}
        self.builds = 0
        self._config_keys: dict[int, tuple[Mapping[str, Any], str]] = {}  # id(config) -> (config, key)

    def key(self, spec: ModelSpec) -> tuple:
        """What identifies the spec's variant (the architecture as built): its config and dtypes."""
        held = self._config_keys.get(id(spec.model_config))
        if held is None or held[0] is not spec.model_config:  # the config is kept: its id is not reused
            held = (spec.model_config, config_key(spec.model_config))
            self._config_keys[id(spec.model_config)] = held
        return (held[1], spec.dtype_policy, spec.lora_rank, spec.weight_dtype)

    def seed(self, spec: ModelSpec, model, profile=None) -> Variant:
        """Use `model` (built unallocated from `spec.model_config`, unchanged) as the spec's variant, with
        `profile`, its static profile at the spec's batch size and the pricer's input shapes, if made."""
        key = self.key(spec)
        self.variants[key] = self._variant(spec, model, profile)
        return self.variants[key]

    def variant(self, spec: ModelSpec) -> Variant:
        key = self.key(spec)
        found = self.variants.get(key)
        if found is None:
            found = self._build(spec)
            self.variants[key] = found
        return found

    def _build(self, spec: ModelSpec) -> Variant:
        from kmemopt.keras_compat.layers import model_leaves
        from kmemopt.keras_compat.variables import unallocated
        from kmemopt.load.build import build_from_config

        config = copy.deepcopy(dict(spec.model_config))
        config.pop("compile_config", None)
        if spec.dtype_policy:
            config = with_policy(config, spec.dtype_policy)
        if spec.weight_dtype:
            config = with_quantized_weights(config, spec.weight_dtype)
        model = build_from_config(config, legacy=self.legacy, custom_objects=self.custom_objects)
        self.builds += 1
        if spec.lora_rank:
            with unallocated():
                for _, layer in model_leaves(model):
                    if lora_target(layer):
                        layer.enable_lora(spec.lora_rank)
        return self._variant(spec, model)

    def _variant(self, spec: ModelSpec, model, profile=None) -> Variant:
        from kmemopt.keras_compat.layers import model_leaves
        from kmemopt.profiling.static import profile_model

        if profile is None:  # the graph, the weights and the inference peak: the optimizer changes none
            profile = profile_model(
                model,
                batch_size=spec.batch_size,
                optimizer=_base_optimizer(spec.optimizer_config),
                input_shapes=self.input_shapes,
                seq_len=self.seq_len,
            )
        paths = {id(layer): path for path, layer in model_leaves(model)}
        for call in profile._graph.calls:
            paths.setdefault(id(call.layer), call.path)
        return Variant(model, profile, spec.dtype_policy, spec.lora_rank, spec.weight_dtype, paths)

    def optimizer_key(self, spec: ModelSpec) -> str:
        ident = optimizer_identifier(spec.optimizer_config, spec.gradient_accumulation_steps)
        return json.dumps([ident, spec.dtype_policy == "mixed_float16"], sort_keys=True, default=str)

    def optimizer(self, variant: Variant, spec: ModelSpec):
        from kmemopt.profiling.optimizer import optimizer_state

        # mixed_float16 trains with loss scaling: a LossScaleOptimizer around the optimizer (Keras's compile
        # adds it under a global mixed_float16 policy; `plan --apply` writes it into the compile config).
        key = self.optimizer_key(spec)
        state = variant.optimizers.get(key)
        if state is None:
            ident = optimizer_identifier(spec.optimizer_config, spec.gradient_accumulation_steps)
            state = optimizer_state(ident, variant.model, mixed_float16=spec.dtype_policy == "mixed_float16" or None)
            variant.optimizers[key] = state
        return state

    # ----------------------------------------------------------------------------------------- pricing

    def frozen_layers(self, variant: Variant, patterns: tuple[str, ...]) -> set[int]:
        return frozen_layers(variant, patterns)

    def price(self, spec: ModelSpec, phase: str) -> Breakdown:
        if spec.placement is not None:  # one device's share of a distributed step (--devices)
            from kmemopt.plan.devices import per_device

            return per_device(self, spec, phase)
        variant = self.variant(spec)
        if phase == "infer":  # a function of the variant and the batch size only
            found = variant.inference.get(spec.batch_size)
            if found is None:
                found = variant.inference[spec.batch_size] = inference_breakdown(variant, spec.batch_size)
            return found
        return self.training(variant, spec)

    def training(self, variant: Variant, spec: ModelSpec) -> Breakdown:
        """The training step composed from the variant's terms, each computed once: the runtime, the
        trained variables of each freezing, the optimizer state of each optimizer, and the backward lines of
        each (freezing, remat) pair; a combination then costs a sum and one pass over the backward steps.
        Equal to `training_breakdown`, the whole walk (tested)."""
        from kmemopt.profiling.internals import runtime_costs

        opt = self.optimizer(variant, spec)
        trained = variant.trainable.get(spec.frozen)
        if trained is None:
            trained = variant.trainable[spec.frozen] = trainable_set(variant, spec.frozen)
        backward = variant.backward.get((spec.frozen, spec.remat))
        if backward is None:
            backward = backward_lines(variant.graph, trained.ids, remat=spec.remat)
            variant.backward[(spec.frozen, spec.remat)] = backward
        if variant.runtime is None:
            runtime = runtime_costs(variant.graph, variant.profile.totals.param_bytes)
            variant.runtime = runtime["loader_residue"] + runtime["training_graph"] + runtime["input_copy"]
        optimizer = opt.global_bytes + sum(opt.per_variable_bytes.get(v, 0) for v, _ in trained.variables)
        return _breakdown(variant, spec.batch_size, trained.gradient_bytes, optimizer, backward, variant.runtime)


def frozen_layers(variant: Variant, patterns: tuple[str, ...]) -> set[int]:
    if not patterns:
        return set()
    compiled = [re.compile(p) for p in patterns]
    return {lid for lid, path in variant.paths.items() if any(c.search(path) for c in compiled)}


def trainable_set(variant: Variant, patterns: tuple[str, ...]) -> TrainableSet:
    """The variables that train with the layers matching `patterns` frozen: gradients and slots only for these."""
    model = variant.model
    trainable = {id(v) for v in model.trainable_variables}
    for layer_id in frozen_layers(variant, patterns):
        layer = _layer_by_id(variant, layer_id)
        for v in getattr(layer, "weights", ()):
            trainable.discard(id(v))
    seen: set[int] = set()
    variables = []
    for v in model.trainable_variables:
        if id(v) in trainable and id(v) not in seen:
            seen.add(id(v))
            variables.append((id(v), nbytes(v.shape, v.dtype)))
    return TrainableSet(frozenset(trainable), tuple(variables), sum(n for _, n in variables))


def training_breakdown(variant: Variant, spec: ModelSpec, opt) -> Breakdown:
    """The training step of `spec` on its variant by the whole walk, nothing reused: the definition that
    `Pricer.training`'s composition of cached terms must equal. `opt`: the spec's OptimizerState."""
    from kmemopt.profiling.internals import runtime_costs

    trained = trainable_set(variant, spec.frozen)
    # Slots keyed to variables the model no longer trains (none unless Keras changes) are not counted.
    optimizer = opt.global_bytes + sum(opt.per_variable_bytes.get(v, 0) for v, _ in trained.variables)
    backward = backward_lines(variant.graph, trained.ids, remat=spec.remat)
    runtime = runtime_costs(variant.graph, variant.profile.totals.param_bytes)
    run_train = runtime["loader_residue"] + runtime["training_graph"] + runtime["input_copy"]
    return _breakdown(variant, spec.batch_size, trained.gradient_bytes, optimizer, backward, run_train)


def _breakdown(variant: Variant, b: int, gradient: int, optimizer: int, backward: BackwardLines, run_train: Line):
    param_bytes = variant.profile.totals.param_bytes
    saved, transient = backward.saved, backward.worst(b)
    peak = param_bytes + gradient + optimizer + saved.at(b) + transient.at(b) + run_train.at(b)
    return Breakdown(
        peak_bytes=peak,
        param_bytes=param_bytes,
        gradient_bytes=gradient,
        optimizer_bytes=optimizer,
        activation_bytes=saved.at(b),
        transient_bytes=transient.at(b),
        runtime_bytes=run_train.at(b),
        estimated_terms=backward.estimated,
    )


def _layer_by_id(variant: Variant, layer_id: int):
    for call in variant.graph.calls:
        if id(call.layer) == layer_id:
            return call.layer
    from kmemopt.keras_compat.layers import model_leaves

    for _, layer in model_leaves(variant.model):
        if id(layer) == layer_id:
            return layer
    return None


def lora_target(layer) -> bool:
    """Layers Keras's `enable_lora` supports (Dense, EinsumDense, Embedding), with weights, not quantized."""
    return (
        type(layer).__name__ in LORA_CLASSES
        and hasattr(layer, "enable_lora")
        and bool(getattr(layer, "weights", ()))
        and not getattr(layer, "lora_enabled", False)
        and getattr(layer, "quantization_mode", None) in (None, "int8")  # Keras: LoRA on int8 (QLoRA-style)
    )


def _base_optimizer(config: Mapping[str, Any] | str | None) -> Any:
    if config is None:
        return "adam"
    return copy.deepcopy(dict(config)) if isinstance(config, Mapping) else config


def optimizer_identifier(config: Mapping[str, Any] | str | None, accumulation: int | None) -> Any:
    """A serialized Keras optimizer (a dict make_optimizer takes), with gradient accumulation set."""
    base = _base_optimizer(config)
    if isinstance(base, str):
        from kmemopt.load.build import make_optimizer

        base = _serialize_optimizer(make_optimizer(base))
    else:
        base = {**base, "config": dict(base.get("config") or {})}
        base.setdefault("module", "keras.optimizers")
    base["config"]["gradient_accumulation_steps"] = accumulation if accumulation and accumulation > 1 else None
    return base


def _serialize_optimizer(optimizer) -> dict[str, Any]:
    config = optimizer.get_config()
    return {"module": "keras.optimizers", "class_name": type(optimizer).__name__, "config": config}


# --------------------------------------------------------------------------------------------- graph terms


def inference_breakdown(variant: Variant, batch_size: int) -> Breakdown:
    from kmemopt.profiling.static import peaks_at

    t = variant.profile.totals
    inference, _ = peaks_at(variant.profile, batch_size)
    act, _ = g.inference_peak(variant.graph, batch_size)
    return Breakdown(
        peak_bytes=inference,
        param_bytes=t.param_bytes,
        gradient_bytes=0,
        optimizer_bytes=0,
        activation_bytes=act.at(batch_size),
        transient_bytes=0,
        runtime_bytes=inference - t.param_bytes - act.at(batch_size),
    )


def _out_line(graph, call) -> Line:
    return g._sum(graph.tensors[t].size for t in call.outputs)


def _sixteen_bit(layer) -> bool:
    policy = getattr(layer, "dtype_policy", None)
    compute = str(getattr(policy, "compute_dtype", "") or "")
    variable = str(getattr(policy, "variable_dtype", "") or "")
    return compute in ("float16", "bfloat16") and variable == "float32"


def _merged_kernel_bytes(layer) -> int:
    kernel = getattr(layer, "_kernel", None)
    if kernel is None:
        kernel = getattr(layer, "_embeddings", None)
    if kernel is None:
        return 0
    policy = getattr(layer, "dtype_policy", None)
    compute = str(getattr(policy, "compute_dtype", None) or "float32")
    n = 1
    for d in kernel.shape:
        n *= int(d)
    return n * itemsize(compute)


def backward_lines(graph, trainable: set[int] | frozenset[int], *, remat: str | None = None) -> BackwardLines:
    """The kept tensors and every recorded call's backward working set, as lines in the batch size.

    With every weight trainable and no remat this is the static profile's own rule
    (`graph.saved_for_backward`, `graph.backward_transient`), restricted to the operations the gradient
    tape records. See the module docstring for the terms added here.
    """
    from kmemopt.profiling.internals import ALIASING, grad_needs_input, grad_needs_output

    alias: dict[int, int] = {}
    for call in graph.calls:
        if type(call.layer).__name__ in ALIASING and len(call.inputs) == 1 and len(call.outputs) == 1:
            alias[call.outputs[0]] = call.inputs[0]

    def root(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    dependent: set[int] = set()
    needed = {root(t) for t in list(graph.inputs) + list(graph.outputs)}
    extra = ZERO
    steps: list[Line] = []
    estimated: set[str] = set()
    for call in graph.calls:
        layer = call.layer
        trains = any(id(v) in trainable for v in getattr(layer, "weights", ()))
        dep_in = any(t in dependent for t in call.inputs)
        if not (trains or dep_in):
            continue  # the tape does not record it: nothing of it is kept, no backward step
        dependent.update(call.outputs)
        name = type(layer).__name__
        # A call the profile traced op by op says which inputs/outputs its gradient reads; else the tables.
        reads_in = getattr(call, "reads_inputs", None) or (grad_needs_input(layer),) * len(call.inputs)
        reads_out = getattr(call, "reads_outputs", None) or (grad_needs_output(layer),) * len(call.outputs)
        saved_extra = call.saved_extra
        transient = getattr(call, "backward_transient", call.transient)
        out = _out_line(graph, call)
        if remat == "activations" and getattr(layer, "activation", None) is not None:
            saved_extra, needs_in, needs_out, recompute = _remat_activations(layer, name, out, saved_extra)
            transient = transient + recompute
            estimated.add("remat")
            reads_in = (needs_in or grad_needs_input(layer),) * len(call.inputs)
            reads_out = (needs_out,) * len(call.outputs)
        if not trains and name in INPUT_FOR_WEIGHTS_ONLY:
            reads_in = (False,) * len(call.inputs)  # frozen: dx reads the weights, not the input
        needed.update(root(t) for t, read in zip(call.inputs, reads_in) if read)
        needed.update(root(t) for t, read in zip(call.outputs, reads_out) if read)
        extra = extra + saved_extra
        if _sixteen_bit(layer):
            copies = sum(nbytes(v.shape, "float16") for v in getattr(layer, "weights", ()) if str(v.dtype) == "float32")
            if copies:
                extra = extra + Line(copies, 0)
                estimated.add("mixed_precision_weight_copies")
        if getattr(layer, "lora_enabled", False):
            merged = _merged_kernel_bytes(layer)
            if name != "Embedding":
                extra = extra + Line(merged, 0)
            transient = transient + Line(2 * merged, 0)
            estimated.add("lora_merged_kernel")
        steps.append(g._sum(graph.tensors[t].size for t in set(call.inputs) | set(call.outputs)) + transient)
    saved = g._sum(graph.tensors[t].size for t in needed) + extra
    return BackwardLines(saved, tuple(steps), tuple(sorted(estimated)))


def _remat_activations(layer, name: str, out: Line, saved_extra: Line):
    """`keras.RematScope(mode="activations")` on TensorFlow: the layer's activation function runs under
    `tf.recompute_grad`, which keeps the function's input (the pre-activation) and recomputes the
    activation in the backward pass. Measured (docs/plan.md): a gelu MLP keeps less (gelu's internals
    are dropped), a relu MLP keeps *more* (the pre-activation beside the output the next layer keeps).

    Returns (saved_extra, needs_input, needs_output, recompute transient)."""
    from kmemopt.profiling.internals import OUTPUT_GRAD_ACTIVATIONS, _activation_name, activation_extra

    act = _activation_name(layer)
    if name == "Activation":
        inner = 0 if act in OUTPUT_GRAD_ACTIVATIONS else 1
        return saved_extra, True, False, out + Line(out.fixed_bytes * inner, out.per_sample_bytes * inner)
    kept_inside = activation_extra(layer)
    scale = 1 - kept_inside  # the pre-activation replaces the activation's own saves
    adjusted = saved_extra + Line(out.fixed_bytes * scale, out.per_sample_bytes * scale)
    recompute = Line(out.fixed_bytes * (1 + kept_inside), out.per_sample_bytes * (1 + kept_inside))
    if act in ("linear", None):
        return saved_extra, False, True, recompute  # linear: its input is the output, kept for the recompute
    return adjusted, False, False, recompute
