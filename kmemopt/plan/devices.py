"""`kmemopt plan --devices N`: spreading the step over N devices with `keras.distribution`, as a strategy.

With `--devices`, the budget is what one device holds, and the planner weighs `DataParallel` (every
weight, gradient and optimizer slot replicated, the batch split) and `ModelParallel` with the automatic
FSDP-style layout of `kmemopt.profiling.distribution` (big weights sharded over the mesh's "model" axis,
their gradients and same-shaped slots with them, the batch split over its "batch" axis), alone or with
the other strategies ("fits on 8 x 16 GiB with model parallel + mixed_bfloat16").

A device's price is composed from the same terms as one device's (`Pricer.price` at the per-device
batch) with the weights, gradients and slots replaced by each device's shards, counted exactly as
`kmemopt profile --devices` counts them (in JAX's dtypes: `keras.distribution` runs on JAX). Activations
per device are those of the per-device batch, whole (an estimate: XLA may split some over the model axis).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from kmemopt.plan.strategy import Cost, ModelSpec, Setting

DATA, MODEL = "data", "model"


@dataclass(frozen=True)
class Placement:
    """How a step is spread: `kind` over a mesh of `batch` x `model` devices (data parallel: model 1)."""

    kind: str
    batch: int
    model: int

    @property
    def devices(self) -> int:
        return self.batch * self.model

    def label(self) -> str:
        if self.kind == DATA:
            return f"data parallel over {self.devices} devices"
        return f"model parallel over {self.devices} devices (mesh {self.batch}x{self.model}, auto layout)"


def meshes(devices: int, batch_size: int) -> list[Placement]:
    """The placements worth pricing: data parallel, and model parallel over 1xN and 2x(N/2) (each only
    where the batch splits evenly over the mesh's batch axis)."""
    out = []
    if batch_size % devices == 0:
        out.append(Placement(DATA, devices, 1))
    out.append(Placement(MODEL, 1, devices))
    if devices >= 4 and devices % 2 == 0 and batch_size % 2 == 0:
        out.append(Placement(MODEL, 2, devices // 2))
    return out


@dataclass
class Distribution:
    """The `keras.distribution` strategy (JAX backend): offered only when `--devices` is given."""

    devices: int
    model: Any = None  # the baseline's model, for the layout's rules in the Keras code
    name: str = "distribution"
    phases: frozenset[str] = frozenset({"train", "infer"})
    applies_to_file: bool = False  # set in the training script before the model is built or loaded

    def settings(self, spec: ModelSpec, phase: str) -> Iterable[Setting]:
        for p in meshes(self.devices, spec.batch_size):
            # The user asked for these devices: using them costs compute only, data parallel the least.
            penalty = 0.1 if p.kind == DATA else 0.2 + 0.05 * math.log2(p.model)
            yield Setting(
                self.name,
                {"kind": p.kind, "devices": p.devices, "mesh": [p.batch, p.model], "layout": "auto"},
                p.label(),
                penalty=penalty,
            )

    def apply(self, spec: ModelSpec, setting: Setting) -> ModelSpec:
        batch, model = setting.settings["mesh"]
        return spec.with_changes(placement=Placement(setting.settings["kind"], batch, model))

    def cost(self, spec: ModelSpec, setting: Setting) -> Cost:
        kind = setting.settings["kind"]
        compute = (
            "an all-reduce of the gradients each step"
            if kind == DATA
            else "all-gathers of the sharded weights each step (and an all-reduce over the batch axis)"
        )
        return Cost(extra_compute=compute, evidence="estimated")

    def keras_code(self, setting: Setting) -> str:
        n = setting.settings["devices"]
        if setting.settings["kind"] == DATA:
            return (
                "# KERAS_BACKEND=jax; before the model is loaded or built\n"
                f"devices = keras.distribution.list_devices()[:{n}]\n"
                "keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))"
            )
        batch, model = setting.settings["mesh"]
        rules = layout_rules(self.model, Placement(MODEL, batch, model)) if self.model is not None else []
        lines = [f"layout_map[{pattern!r}] = {axes!r}" for pattern, axes in rules[:MAX_RULE_LINES]]
        if len(rules) > MAX_RULE_LINES:
            lines.append(f"# ... and {len(rules) - MAX_RULE_LINES} more: kmemopt profile --devices lists them all")
        if not rules:
            lines.append("# no weight is big enough to shard: every weight is replicated")
        return "\n".join(
            [
                "# KERAS_BACKEND=jax; before the model is loaded or built. The automatic layout: each weight of at",
                "# least 1 MiB sharded on its largest dimension that the model axis divides.",
                f"devices = keras.distribution.list_devices()[:{n}]",
                f'mesh = keras.distribution.DeviceMesh(({batch}, {model}), ["batch", "model"], devices)',
                "layout_map = keras.distribution.LayoutMap(mesh)",
                *lines,
                "keras.distribution.set_distribution(",
                '    keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")',
                ")",
            ]
        )


MAX_RULE_LINES = 24


def _layout(model: Any, placement: Placement):
    from kmemopt.profiling import distribution as d

    mesh = d.make_mesh(d.Kind(placement.kind), placement.devices, (placement.batch, placement.model))
    pairs = d.weight_table(model)
    seen = [id(v) for v, _ in pairs]
    table = [spec for _, spec in pairs]
    return mesh, seen, table, d.resolve_layout(table, mesh, d.AUTO if placement.kind == MODEL else None)


def layout_rules(model: Any, placement: Placement) -> list[tuple[str, tuple[str | None, ...]]]:
    """The automatic layout's rules for `model` (exact weight paths, as Keras's LayoutMap takes them)."""
    *_, layout = _layout(model, placement)
    return [(v_path, axes) for v_path, axes in layout.axes.items() if any(a is not None for a in axes)]


@dataclass
class Shards:
    """Each device's bytes of every weight and optimizer variable of one variant under one placement."""

    weights: dict[int, int]  # id(variable) -> bytes on each device
    slots: dict[int, int]  # id(trainable variable) -> its optimizer slots' bytes on each device
    globals_bytes: int  # optimizer counters etc., replicated
    mesh: Any = None  # profiling.distribution.Mesh and Layout the shards were cut by
    layout: Any = None
    runtime: Any = None  # profiling.internals.runtime_costs at these shards' weight bytes, once computed


def shards(variant: Any, opt: Any, placement: Placement) -> Shards:
    """Shard every weight and slot of `variant` as `kmemopt profile --devices` does (same layout rules)."""
    from kmemopt.profiling import distribution as d
    from kmemopt.profiling.dtypes import nbytes

    model = variant.model
    mesh, seen, table, layout = _layout(model, placement)

    def local(shape, dtype, axes) -> int:
        return nbytes(d.shard_shape(shape, axes, mesh), d.jax_dtype(str(dtype)))

    weights = {i: local(s.shape, s.dtype, layout.axes[s.path]) for i, s in zip(seen, table)}
    trainable = list(model.trainable_variables)
    slots: dict[int, int] = {}
    globals_bytes = 0
    for _, shape, dtype, index in opt.variables:
        if index is None:
            globals_bytes += nbytes(shape, d.jax_dtype(str(dtype)))
            continue
        owner = trainable[index]
        owner_shape = tuple(int(x) for x in owner.shape)
        # Keras creates a slot with its variable's layout; a slot of another shape (Adafactor's factors)
        # has no rule in the automatic layout and is replicated.
        axes = layout.axes[str(owner.path)] if tuple(shape) == owner_shape else (None,) * len(shape)
        slots[id(owner)] = slots.get(id(owner), 0) + local(shape, dtype, axes)
    return Shards(weights, slots, globals_bytes, mesh, layout)


class Infeasible(Exception):
    """A combination that cannot run (a batch the mesh's batch axis does not divide): not priced."""


def per_device(pricer: Any, spec: ModelSpec, phase: str):
    """One device's `Breakdown` for `spec` (whose `placement` is set): the step at the per-device batch
    with the weights, gradients and slots each device holds."""
    placement = spec.placement
    assert placement is not None
    if spec.batch_size % placement.batch:
        raise Infeasible(f"batch {spec.batch_size} over {placement.batch} devices")
    local_spec = replace(spec, placement=None, batch_size=spec.batch_size // placement.batch)
    whole = pricer.price(local_spec, phase)
    variant = pricer.variant(local_spec)
    opt = pricer.optimizer(variant, local_spec)
    key = (placement, pricer.optimizer_key(local_spec))
    found = variant.shards.get(key)
    if found is None:
        found = variant.shards[key] = shards(variant, opt, placement)
    param = sum(found.weights.values())
    # The runtime's terms that scale with the weights (the loader's residue) follow each device's share,
    # as in `kmemopt profile --devices`.
    from kmemopt.profiling.internals import runtime_costs

    b = local_spec.batch_size
    if found.runtime is None:  # a function of the variant's graph and the weights on a device: once per shards
        found.runtime = runtime_costs(variant.graph, param)
    costs = found.runtime
    graph_term = costs["inference_graph"] if phase == "infer" else costs["training_graph"]
    runtime = (costs["loader_residue"] + graph_term + costs["input_copy"]).at(b)
    if phase == "infer":
        peak = whole.peak_bytes - whole.param_bytes - whole.runtime_bytes + param + runtime
        return replace(whole, peak_bytes=peak, param_bytes=param, runtime_bytes=runtime)
    from kmemopt.plan.pricing import trainable_set

    trained = variant.trainable.get(local_spec.frozen)
    if trained is None:
        trained = variant.trainable[local_spec.frozen] = trainable_set(variant, local_spec.frozen)
    gradient = sum(found.weights[v] for v, _ in trained.variables)
    optimizer = found.globals_bytes + sum(found.slots.get(v, 0) for v, _ in trained.variables)
    # As `kmemopt profile --devices`: activations split over the model axis, local gradients awaiting
    # their all-reduce (profiling.distribution.step_delta).
    from kmemopt.profiling.distribution import step_delta

    mesh, layout = found.mesh, found.layout  # cut once per variant and placement
    ids = {v for v, _ in trained.variables}
    delta = step_delta(
        variant.graph, b, layout, mesh, lambda w: found.weights.get(id(w), 0) if id(w) in ids else 0, gradient
    )
    peak = delta + (
        whole.peak_bytes
        - whole.param_bytes
        - whole.gradient_bytes
        - whole.optimizer_bytes
        - whole.runtime_bytes
        + param
        + gradient
        + optimizer
        + runtime
    )
    return replace(
        whole,
        peak_bytes=peak,
        param_bytes=param,
        gradient_bytes=gradient,
        optimizer_bytes=optimizer,
        runtime_bytes=runtime,
    )
