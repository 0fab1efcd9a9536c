"""Per-device memory under `keras.distribution` (JAX): what each of N devices holds for one model.

From a static profile (its variables' shapes and dtypes, its optimizer's variables, its activation
terms), the bytes each device holds for:

- `DataParallel` (kind "data"): a 1-D mesh ("batch",) of N devices; every weight, gradient and
  optimizer variable replicated on each; the batch split over the devices (B / N samples each).
- `ModelParallel` (kind "model") with a `LayoutMap` over a 2-D mesh ("batch", "model"), by default
  1 x N (every device on the model axis: the most weight memory saved; `mesh=(2, 4)` trades it for
  data parallelism). The batch is split over the "batch" axis only, as Keras's data layout does.

Layouts (model parallel):

- "auto", FSDP-style: each weight of at least `AUTO_MIN_BYTES` has its largest dimension that the
  model axis divides sharded over "model"; smaller weights, and weights no dimension of which the
  model axis divides, are replicated (and said so).
- a file of rules, regex -> axes (`parse_layout_file`: JSON or text), matched against each
  variable's path as Keras's `LayoutMap` matches them (an exact key first, else `re.fullmatch` of
  every key; a path two keys match is refused, as Keras refuses it).

What is exact: a dimension sharded over mesh axes of total size k holds dim / k on each device (Keras
and JAX require k to divide it: a rule that does not divide is refused), so each device's weights,
gradients (they take their weight's layout) and optimizer variables (Keras 3 creates a slot with its
variable's layout; other optimizer variables go through the layout map by their own path, as Keras's
`ModelParallel.get_variable_layout` does) are exact. Activations are an estimate: the static
profile's activation terms at the per-device batch (B / the batch axis's size), the output of a layer
whose kernel is sharded on its output axis counted at its slice (`_split_outputs`), plus, with a batch
axis, the local gradients awaiting their all-reduce (`_backward_walk`). Peaks compose these per-device
terms the way `profiling.static` composes its peaks.

`_distribution_child.py` checks the exact numbers against JAX's own shards (`verify`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmemopt.errors import UsageError
from kmemopt.profiling.dtypes import nbytes

if TYPE_CHECKING:
    from kmemopt.profiling.optimizer import OptimizerState
    from kmemopt.profiling.static import ProfileResult

BATCH_AXIS = "batch"
MODEL_AXIS = "model"
AXES = (BATCH_AXIS, MODEL_AXIS)
# "auto" shards weights of at least 1 MiB (a 512 x 512 float32 kernel): below it, the gathers cost
# more than the memory saved, and biases and normalization statistics stay whole.
AUTO_MIN_BYTES = 1024**2
MAX_DEVICES = 1 << 16
# A layout file is a short list of rules: these bound what reading one may cost.
MAX_LAYOUT_FILE_BYTES = 1024**2
MAX_RULES = 10_000
MAX_PATTERN_CHARS = 1000
AUTO = "auto"
REPLICATED = "replicated"


class Kind(str, Enum):
    """Which `keras.distribution` strategy: `DataParallel` or `ModelParallel` with a `LayoutMap`."""

    data = "data"
    model = "model"


@dataclass(frozen=True)
class VariableSpec:
    """One variable a training step holds: a model weight, an optimizer slot or an optimizer global."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    role: str  # "weight", "slot" (of the weight `owner`) or "global"
    trainable: bool = False
    owner: str | None = None  # a slot's variable (its path)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, jax_dtype(self.dtype))


# keras.distribution runs on JAX, whose arrays are 32-bit where Keras asks for 64 (jax_enable_x64 is off
# by default): Adam's int64 step counter on TensorFlow is an int32 on JAX.
_JAX_32 = {"int64": "int32", "uint64": "uint32", "float64": "float32", "complex128": "complex64"}


def jax_dtype(dtype: str) -> str:
    """The dtype JAX stores a Keras variable of `dtype` in (64-bit types are off by default)."""
    return _JAX_32.get(dtype, dtype)


def weight_table(model) -> list[tuple[Any, VariableSpec]]:
    """Every weight of `model`, each once (as the profile counts them), beside its `VariableSpec`."""
    trainable_ids = {id(v) for v in model.trainable_variables}
    seen: set[int] = set()
    rows: list[tuple[Any, VariableSpec]] = []
    for v in model.weights:
        if id(v) in seen:
            continue
        seen.add(id(v))
        spec = VariableSpec(
            path=str(v.path),
            shape=tuple(int(d) for d in v.shape),
            dtype=str(v.dtype),
            role="weight",
            trainable=id(v) in trainable_ids,
        )
        rows.append((v, spec))
    return rows


def variable_table(model, opt: OptimizerState) -> tuple[VariableSpec, ...]:
    """Every weight of `model` (each once, as the profile counts them) and every variable of the
    optimizer the profile built over it, with the paths Keras's `LayoutMap` matches."""
    trainable = list(model.trainable_variables)
    rows = [spec for _, spec in weight_table(model)]
    for path, shape, dtype, index in opt.variables:
        owner = str(trainable[index].path) if index is not None else None
        rows.append(VariableSpec(path, shape, dtype, "slot" if owner is not None else "global", owner=owner))
    return tuple(rows)


# ------------------------------------------------------------------------------------------ mesh


@dataclass(frozen=True)
class Mesh:
    """The device mesh: `batch` x `model` devices (data parallel: model == 1, axis "batch" only)."""

    batch: int
    model: int
    kind: Kind

    @property
    def devices(self) -> int:
        return self.batch * self.model

    @property
    def axis_names(self) -> tuple[str, ...]:
        return (BATCH_AXIS,) if self.kind is Kind.data else AXES

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch,) if self.kind is Kind.data else (self.batch, self.model)

    def size(self, axis: str) -> int:
        return self.batch if axis == BATCH_AXIS else self.model

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "axis_names": list(self.axis_names)}


def parse_mesh(text: str) -> tuple[int, int]:
    """Parse `--mesh`: "2x4" is (2, 4), batch x model devices."""
    found = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", text or "")
    if not found or int(found.group(1)) < 1 or int(found.group(2)) < 1:
        raise UsageError(f"--mesh takes BATCHxMODEL device counts such as 2x4. Received: {text!r}.")
    return int(found.group(1)), int(found.group(2))


def make_mesh(kind: Kind | str, devices: int | None, mesh: tuple[int, int] | str | None = None) -> Mesh:
    """The mesh for `kind` over `devices`: data parallel N x 1; model parallel `mesh`, else 1 x N."""
    kind = Kind(kind)
    if isinstance(mesh, str):
        mesh = parse_mesh(mesh)
    if devices is None:
        if mesh is None:
            raise UsageError("Say how many devices to profile for with --devices N.")
        devices = mesh[0] * mesh[1]
    if not 1 <= devices <= MAX_DEVICES:
        raise UsageError(f"--devices must be between 1 and {MAX_DEVICES:,}. Received: {devices}.")
    if kind is Kind.data:
        if mesh is not None and mesh != (devices, 1):
            raise UsageError(
                f"--mesh applies to --distribution model; data parallelism uses all {devices} devices on its "
                "one batch axis."
            )
        return Mesh(devices, 1, kind)
    batch, model = mesh if mesh is not None else (1, devices)
    if batch * model != devices:
        raise UsageError(f"--mesh {batch}x{model} has {batch * model} devices, but --devices is {devices}.")
    return Mesh(batch, model, kind)


# ------------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class Rule:
    """One layout rule: variables whose path the regex fully matches get these axes (None: whole)."""

    pattern: str
    axes: tuple[str | None, ...]
    where: str = ""  # "FILE:LINE" of a user rule, for the errors


@dataclass(frozen=True)
class Layout:
    """A resolved layout: each variable's axes (one entry per dimension, None for a whole dimension)."""

    name: str  # "replicated" (data parallel), "auto" or the layout file's path
    rules: tuple[Rule, ...]
    axes: dict[str, tuple[str | None, ...]]  # variable path -> its axes (every variable of the table)
    notes: tuple[str, ...] = ()
    threshold_bytes: int | None = None  # "auto": the smallest weight it shards

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name if self.name in (AUTO, REPLICATED) else "file"}
        if self.name not in (AUTO, REPLICATED):
            out["file"] = self.name
        if self.threshold_bytes is not None:
            out["threshold_bytes"] = self.threshold_bytes
        out["rules"] = [{"pattern": r.pattern, "axes": list(r.axes)} for r in self.rules]
        out["notes"] = list(self.notes)
        return out


def _axis(token: Any, where: str) -> str | None:
    if token is None:
        return None
    if isinstance(token, str):
        t = token.strip()
        if t.lower() in ("none", "null", "-", ""):
            return None
        if t in AXES:
            return t
    raise UsageError(
        f"Layout axis {str(token)[:40]!r} at {where} is not one of None, {BATCH_AXIS!r} or {MODEL_AXIS!r}."
    )


def _rule(pattern: Any, axes: Any, where: str) -> Rule:
    if not isinstance(pattern, str) or not pattern:
        raise UsageError(f"The layout rule at {where} has an empty pattern; give a regex of variable paths.")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UsageError(f"The layout pattern at {where} is over {MAX_PATTERN_CHARS} characters; shorten it.")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"The layout pattern at {where} is not a valid regex ({exc}); fix it.") from None
    if not isinstance(axes, (list, tuple)):
        raise UsageError(f"The layout rule at {where} must give a list of axes (one per dimension, None for whole).")
    parsed = tuple(_axis(a, where) for a in axes)
    named = [a for a in parsed if a is not None]
    if len(named) != len(set(named)):
        raise UsageError(f"The layout rule at {where} uses a mesh axis twice; JAX shards over each axis once.")
    return Rule(pattern, parsed, where)


def parse_layout(text: str, source: str = "<layout>") -> tuple[Rule, ...]:
    """Rules from a layout file's text: a JSON object {"regex": [axes]}, or lines `regex -> axes`.

    Text lines: `regex -> axis, axis, ...` with each axis `batch`, `model` or `None` (also `-`), `()`
    for a scalar; blank lines and lines starting with `#` are skipped; the regex is everything before
    the last `->`. Example: `.*dense.*/kernel -> None, model`."""
    stripped = text.lstrip()
    rules: list[Rule] = []
    if stripped.startswith("{"):

        def unique(pairs):
            keys = [k for k, _ in pairs]
            dup = next((k for k in keys if keys.count(k) > 1), None)
            if dup is not None:
                raise UsageError(f"{source} gives the pattern {dup[:80]!r} twice; give each pattern once.")
            return dict(pairs)

        try:
            data = json.loads(text, object_pairs_hook=unique)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{source} is not valid JSON (line {exc.lineno}: {exc.msg}); fix it.") from None
        if not isinstance(data, dict):
            raise UsageError(f"{source} must hold one JSON object of regex -> list of axes.")
        for i, (pattern, axes) in enumerate(data.items(), 1):
            rules.append(_rule(pattern, axes, f"{source} entry {i}"))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            body = line.strip()
            if not body or body.startswith("#"):
                continue
            where = f"{source}:{number}"
            pattern, arrow, axes_text = body.rpartition("->")
            if not arrow:
                raise UsageError(f"Line {where} has no '->'; write a rule as: regex -> None, model.")
            axes_text = axes_text.strip()
            if axes_text.startswith("(") and axes_text.endswith(")"):
                axes_text = axes_text[1:-1]
            tokens = [t for t in (s.strip() for s in axes_text.split(",")) if t] if axes_text.strip() else []
            if not tokens and axes_text.strip():
                raise UsageError(f"Line {where} gives no axes after '->'.")
            rules.append(_rule(pattern.strip(), tokens, where))
        seen: set[str] = set()
        for r in rules:
            if r.pattern in seen:
                raise UsageError(f"{source} gives the pattern {r.pattern[:80]!r} twice; give each pattern once.")
            seen.add(r.pattern)
    if len(rules) > MAX_RULES:
        raise UsageError(f"{source} has {len(rules):,} rules, over the limit of {MAX_RULES:,}.")
    if not rules:
        raise UsageError(f"{source} holds no layout rule; give at least one `regex -> axes` line.")
    return tuple(rules)


def parse_layout_file(path: str | Path) -> tuple[Rule, ...]:
    """`parse_layout` of a file, read with a size bound (unreadable or too large: exit 2)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_LAYOUT_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"Cannot read the layout file {str(p)!r} ({exc.strerror or exc}).") from None
    if len(raw) > MAX_LAYOUT_FILE_BYTES:
        raise UsageError(
            f"The layout file {str(p)!r} is over {MAX_LAYOUT_FILE_BYTES:,} bytes; a layout is a few rules."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"The layout file {str(p)!r} is not UTF-8 text.") from None
    return parse_layout(text, str(p))


def match(rules: Sequence[Rule], path: str) -> Rule | None:
    """The rule for `path`, as Keras's `LayoutMap.__getitem__` picks it: an exact key, else the one
    key that `re.fullmatch`es (two: refused, as Keras refuses them); None when none matches."""
    for r in rules:
        if r.pattern == path:
            return r
    found = [r for r in rules if re.fullmatch(r.pattern, path)]
    if len(found) > 1:
        raise UsageError(
            f"Variable {path!r} matches {len(found)} layout rules ({found[0].where} and {found[1].where}); "
            "Keras refuses a path that matches more than one: make the patterns exclusive."
        )
    return found[0] if found else None


def auto_rules(variables: Sequence[VariableSpec], mesh: Mesh, min_bytes: int = AUTO_MIN_BYTES):
    """The FSDP-style layout: one exact rule a weight of at least `min_bytes` that the model axis can
    shard (its largest dimension the axis divides), and a note for those it cannot."""
    rules: list[Rule] = []
    indivisible: list[str] = []
    if mesh.model == 1:
        return (), ("The model axis has 1 device: every weight is replicated.",)
    for v in variables:
        if v.role != "weight" or v.nbytes < min_bytes or not v.shape:
            continue
        order = sorted(range(len(v.shape)), key=lambda i: (-v.shape[i], i))
        dim = next((i for i in order if v.shape[i] % mesh.model == 0), None)
        if dim is None:
            indivisible.append(v.path)
            continue
        axes = tuple(MODEL_AXIS if i == dim else None for i in range(len(v.shape)))
        rules.append(Rule(re.escape(v.path), axes, f"auto:{v.path}"))
    notes: tuple[str, ...] = ()
    if indivisible:
        named = ", ".join(repr(p) for p in indivisible[:3]) + (
            f" and {len(indivisible) - 3} more" if len(indivisible) > 3 else ""
        )
        notes = (
            f"{len(indivisible)} weight(s) of at least {min_bytes:,} bytes have no dimension the model axis "
            f"({mesh.model}) divides and stay replicated: {named}.",
        )
    return tuple(rules), notes


def resolve_layout(variables: Sequence[VariableSpec], mesh: Mesh, layout: str | Path | Sequence[Rule] | None) -> Layout:
    """Each variable's axes under `mesh` and `layout` (None or "auto": FSDP-style for model parallel;
    a path: a layout file; rules: as given). Data parallel replicates everything."""
    if mesh.kind is Kind.data:
        if layout not in (None, AUTO):
            raise UsageError("--layout applies to --distribution model; data parallelism replicates every weight.")
        return Layout(REPLICATED, (), {v.path: (None,) * len(v.shape) for v in variables})
    notes: tuple[str, ...] = ()
    threshold = None
    if layout is None or layout == AUTO:
        rules, notes = auto_rules(variables, mesh)
        name, threshold = AUTO, AUTO_MIN_BYTES
    elif isinstance(layout, (str, Path)):
        rules, name = parse_layout_file(layout), str(layout)
    else:
        rules, name = tuple(layout), "rules"
    by_path = {v.path: v for v in variables}
    axes: dict[str, tuple[str | None, ...]] = {}
    used: set[str] = set()
    for v in variables:
        if v.role == "slot" and v.owner in axes and by_path[v.owner].shape == v.shape:
            axes[v.path] = axes[v.owner]  # Keras creates a slot with its variable's layout
            continue
        rule = match(rules, v.path)
        if rule is None:
            axes[v.path] = (None,) * len(v.shape)
            continue
        used.add(rule.pattern)
        _check(v, rule, mesh)
        axes[v.path] = rule.axes
    unused = [r for r in rules if r.pattern not in used]
    # Keras also looks up "<layer path>/output" in the layout map and relayouts that layer's output.
    outputs = [r for r in unused if r.pattern.endswith("output")]
    unused = [r for r in unused if r not in outputs]
    if outputs:
        notes += (
            f"{len(outputs)} layout rule(s) name layer outputs (Keras relayouts those activations): the per-device "
            "activation estimate does not split them.",
        )
    if unused and name != AUTO:
        notes += (
            f"{len(unused)} layout rule(s) match no variable (first: {unused[0].pattern[:60]!r} at {unused[0].where}).",
        )
    return Layout(name, tuple(rules), axes, notes, threshold)


def _check(v: VariableSpec, rule: Rule, mesh: Mesh) -> None:
    if len(rule.axes) != len(v.shape):
        raise UsageError(
            f"The layout rule at {rule.where} gives {len(rule.axes)} axes to {v.path!r}, which has "
            f"{len(v.shape)} dimension(s) {v.shape}; give one axis (or None) per dimension."
        )
    for dim, axis in zip(v.shape, rule.axes):
        if axis is not None and dim % mesh.size(axis) != 0:
            raise UsageError(
                f"The layout rule at {rule.where} shards {v.path!r} dimension {dim} over the {axis!r} axis of "
                f"{mesh.size(axis)} devices, which does not divide it (Keras and JAX refuse it): change the rule "
                "or the --mesh."
            )


def shard_shape(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh) -> tuple[int, ...]:
    """The shape each device holds: a sharded dimension divided by its axis's size."""
    return tuple(d // mesh.size(a) if a is not None else d for d, a in zip(shape, axes))


# ------------------------------------------------------------------------------------------ per device


@dataclass(frozen=True)
class DeviceBytes:
    device: int
    param_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    inference_peak_bytes: int
    training_peak_bytes: int
    inference_activation_peak_bytes: int = 0
    backward_transient_bytes: int = 0
    runtime_inference_bytes: int = 0
    runtime_training_bytes: int = 0
    # Local gradients awaiting their all-reduce over the batch axis, beyond the activations and backward
    # workspace they overlap (`_backward_walk`): 0 without a batch axis.
    allreduce_pending_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DistributionProfile:
    """What each device holds for one training (and inference) step under one distribution."""

    kind: Kind
    mesh: Mesh
    layout: Layout
    batch_size: int  # the global batch
    batch_per_device: int
    per_device: tuple[DeviceBytes, ...]
    variables: tuple[dict[str, Any], ...] = ()  # weights: path, shape, axes, shard_shape, bytes per device
    verified: Any = None  # _distribution_child.Verification, when --verify ran
    warnings: tuple[str, ...] = field(default=())

    @property
    def devices(self) -> int:
        return self.mesh.devices

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "devices": self.devices,
            "mesh": self.mesh.to_dict(),
            "layout": self.layout.to_dict(),
            "batch_size": self.batch_size,
            "batch_per_device": self.batch_per_device,
            "exact": ["param_bytes", "gradient_bytes", "optimizer_bytes"],
            "estimated": [
                "activation_bytes",
                "inference_peak_bytes",
                "training_peak_bytes",
                "inference_activation_peak_bytes",
                "backward_transient_bytes",
                "runtime_inference_bytes",
                "runtime_training_bytes",
                "allreduce_pending_bytes",
            ],
            "per_device": [d.to_dict() for d in self.per_device],
            "variables": list(self.variables),
            "warnings": list(self.warnings),
            "verified": self.verified.to_dict() if self.verified is not None else None,
        }


def per_device(
    result: ProfileResult,
    *,
    devices: int | None,
    kind: Kind | str = Kind.data,
    layout: str | Path | Sequence[Rule] | None = None,
    mesh: tuple[int, int] | str | None = None,
) -> DistributionProfile:
    """Each device's bytes for `result`'s model under `kind` over `devices` (see the module's doc).

    Example: per_device(kmemopt.profile("m.keras", batch_size=64), devices=8, kind="model").per_device[0]
    """
    from kmemopt.profiling import graph as g
    from kmemopt.profiling.internals import runtime_costs

    the_mesh = make_mesh(kind, devices, mesh)
    if not result.variables:
        raise UsageError("This profile holds no variable table; make it with kmemopt.profile to split it over devices.")
    graph = result._graph
    if graph is None:
        raise UsageError("This profile holds no graph; make it with kmemopt.profile to split it over devices.")
    batch = result.batch_size
    if batch % the_mesh.batch:
        over = "devices" if the_mesh.kind is Kind.data else "devices of the mesh's batch axis"
        raise UsageError(
            f"Batch size {batch} does not split evenly over {the_mesh.batch} {over}: give a --batch-size that is "
            f"a multiple of {the_mesh.batch} (Keras shards the batch over them)."
        )
    lay = resolve_layout(result.variables, the_mesh, layout)
    param = grad = opt = 0
    rows = []
    for v in result.variables:
        axes = lay.axes[v.path]
        local = nbytes(shard_shape(v.shape, axes, the_mesh), jax_dtype(v.dtype))
        if v.role == "weight":
            param += local
            if v.trainable:
                grad += local  # a gradient takes its weight's layout
            rows.append(
                {
                    "path": v.path,
                    "shape": list(v.shape),
                    "dtype": v.dtype,
                    "axes": list(axes),
                    "shard_shape": list(shard_shape(v.shape, axes, the_mesh)),
                    "bytes_per_device": local,
                }
            )
        else:
            opt += local
    b = batch // the_mesh.batch
    local_grads = {
        v.path: nbytes(shard_shape(v.shape, lay.axes[v.path], the_mesh), jax_dtype(v.dtype))
        for v in result.variables
        if v.role == "weight" and v.trainable
    }
    split = _split_outputs(graph, lay, the_mesh)
    trained = sum(local_grads.values())
    saved, back, pending = _backward_walk(
        graph, b, split, lambda w: local_grads.get(str(getattr(w, "path", "")), 0), trained if the_mesh.batch > 1 else 0
    )
    act_peak = g.inference_peak(graph, b)[0].at(b)
    costs = runtime_costs(graph, param)
    run_inf = (costs["loader_residue"] + costs["inference_graph"] + costs["input_copy"]).at(b)
    run_train = (costs["loader_residue"] + costs["training_graph"] + costs["input_copy"]).at(b)
    unscaled = grad if result.optimizer.get("name") == "LossScaleOptimizer" else 0
    # As profiling.static's _step composes it, with the per-device terms: the backward pass (activations
    # kept, the largest backward step, the local gradients awaiting their all-reduce), or the unscaled
    # gradients of a LossScaleOptimizer's update when larger (it runs after the backward pass).
    step = max(saved + back + pending, unscaled)
    one = DeviceBytes(
        device=0,
        param_bytes=param,
        gradient_bytes=grad,
        optimizer_bytes=opt,
        activation_bytes=saved,
        inference_peak_bytes=param + act_peak + run_inf,
        training_peak_bytes=param + grad + opt + step + run_train,
        inference_activation_peak_bytes=act_peak,
        backward_transient_bytes=back,
        runtime_inference_bytes=run_inf,
        runtime_training_bytes=run_train,
        allreduce_pending_bytes=pending,
    )
    # The layouts are even (every sharded dimension divides): each device holds the same bytes.
    import dataclasses

    devices_bytes = tuple(dataclasses.replace(one, device=i) for i in range(the_mesh.devices))
    warnings: list[str] = []
    if the_mesh.kind is Kind.model and the_mesh.model > 1:
        warnings.append(
            f"Activations per device: the outputs of {len(split)} layer(s) whose kernel is sharded on its output "
            f"axis are split over the model axis; every other activation is held whole for the batch slice's {b} "
            "sample(s)."
        )
    return DistributionProfile(
        kind=the_mesh.kind,
        mesh=the_mesh,
        layout=lay,
        batch_size=batch,
        batch_per_device=b,
        per_device=devices_bytes,
        variables=tuple(rows),
        warnings=tuple(warnings) + lay.notes,
    )


# Layers whose kernel's last axis is their output's last axis (a Dense's units, a convolution's filters,
# an embedding's width): that kernel sharded on its last axis makes each device compute a slice of the
# output, which XLA keeps split (the next layer's kernel, sharded on its input axis, consumes the slice).
_OUTPUT_AXIS_LAST = frozenset({"Dense", "Conv1D", "Conv2D", "Conv3D", "Embedding"})


def _split_outputs(graph, lay: Layout, mesh: Mesh) -> dict[int, int]:
    """Tensor id -> the number of slices XLA splits it into per device (model axis), for the outputs of
    layers whose kernel is sharded over the model axis on its output (last) axis."""
    out: dict[int, int] = {}
    if mesh.model <= 1:
        return out
    for call in graph.calls:
        if type(call.layer).__name__ not in _OUTPUT_AXIS_LAST:
            continue
        # The variable itself, by its name: a LoRA-enabled layer's `kernel` property computes kernel + A @ B,
        # which in an unallocated build runs the initializers into full-size temporary tensors, and is no
        # variable (no path), so the layout never found it.
        wanted = "embeddings" if type(call.layer).__name__ == "Embedding" else "kernel"
        kernel = next((w for w in call.layer.weights if w.name == wanted), None)
        axes = lay.axes.get(str(getattr(kernel, "path", ""))) if kernel is not None else None
        if axes and axes[-1] == MODEL_AXIS:
            for t in call.outputs:
                out[t] = mesh.model
    return out


def step_delta(graph, b: int, layout: Layout, mesh: Mesh, grad_of: Callable[[Any], int], trained: int) -> int:
    """What one device's backward pass holds beyond the static profile's (kept + largest backward step) at
    the per-device batch `b`: the activations split over the model axis (less) and the local gradients
    awaiting their all-reduce (more). `grad_of(weight)`: a trained weight's gradient bytes on a device (0
    for a frozen one); `trained`: their sum. `kmemopt plan --devices` prices its placements with it."""
    from kmemopt.profiling import graph as g

    saved, back, pending = _backward_walk(
        graph, b, _split_outputs(graph, layout, mesh), grad_of, trained if mesh.batch > 1 else 0
    )
    return saved + back + pending - g.saved_for_backward(graph).at(b) - g.backward_transient(graph, b).at(b)


def _backward_walk(
    graph, b: int, split: dict[int, int], grad_of: Callable[[Any], int], trained: int
) -> tuple[int, int, int]:
    """(the activations a device keeps, its largest backward step, the gradients' pending all-reduce bytes
    beyond what they overlap), at batch `b` a device.

    Kept activations: the static profile's kept tensors (`graph.kept_tensors`) and layers' internal
    saves; the largest backward step: one call's inputs and outputs (their gradients) and its internal
    workspace (`graph.backward_transient`). A tensor XLA splits over the model axis (`split`), and so its
    gradient, counted at its slice. Without a split both equal the static profile's terms.

    Pending all-reduce: with a batch axis, each device's backward pass first computes its local gradients
    (of its batch slice); SPMD then all-reduces them over the batch axis. XLA's all-reduce combiner merges
    the gradients' all-reduces into one at the end of the backward pass (seen in a compiled data-parallel
    MLP's HLO: one tuple all-reduce of every gradient, and temporaries of the gradients' bytes), so the
    local gradients accumulate while the pass frees the activations it no longer needs. Walked backward
    over the calls: at call i the device holds the kept tensors made by calls up to i, their internal saves,
    the local gradients of the weights of calls from i on, and call i's backward workspace; the peak of
    that walk over (kept + the largest workspace) is the third number (0 when `trained`, the local
    gradients' total, is 0). `grad_of(weight)`: its local gradient's bytes (0 if not trained).
    A weight is counted once, from its last call."""
    from kmemopt.profiling import graph as g

    kept = g.kept_tensors(graph)
    maker = {t: i for i, call in enumerate(graph.calls) for t in call.outputs}

    def size(t: int) -> int:
        return graph.tensors[t].size.at(b) // split.get(t, 1)

    extra = [c.saved_extra.at(b) for c in graph.calls]
    casts = sum(line.at(b) for line in graph.input_casts.values())
    total = sum(size(t) for t in kept) + sum(extra) + casts

    def step(c) -> int:
        return sum(size(t) for t in set(c.inputs) | set(c.outputs)) + c.backward_transient.at(b)

    workspace = max((step(c) for c in graph.calls), default=0)
    if not trained:
        return total, workspace, 0
    # kept bytes freed once the backward walk has passed call i (made by call i): a tensor made by no call
    # (a model input) stays to the end.
    freed = [0] * len(graph.calls)
    for t in kept:
        if t in maker:
            freed[maker[t]] += size(t)
    for i, e in enumerate(extra):
        freed[i] += e
    seen: set[int] = set()
    live, grads, peak = total, 0, 0
    for i in range(len(graph.calls) - 1, -1, -1):
        call = graph.calls[i]
        for w in getattr(call.layer, "trainable_weights", ()):
            if id(w) not in seen:
                seen.add(id(w))
                grads += grad_of(w)
        peak = max(peak, live + grads + step(call))
        live -= freed[i]
    peak = max(peak, live + trained)  # the end: every gradient, also of weights no call owns
    return total, workspace, max(0, peak - (total + workspace))


# ------------------------------------------------------------------------------------------ verification

ENV_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
VERIFY_TIMEOUT_S = 900.0
_EXACT = (("param_bytes", "weights"), ("gradient_bytes", "gradients"), ("optimizer_bytes", "optimizer"))


@dataclass(frozen=True)
class Verification:
    """The model distributed for real by Keras on JAX's virtual CPU devices, beside kmemopt's numbers.

    `measured`: per device, the bytes of its addressable shards (weights, optimizer variables) and of the
    gradients XLA's compiled gradient function lays out; `xla`: the per-device `memory_analysis()` of the
    sharded inference and training steps."""

    devices: tuple[str, ...]
    measured: dict[str, dict[str, int]]  # "weights" | "gradients" | "optimizer" -> device -> bytes
    xla: dict[str, dict[str, int]]  # "inference" | "training" -> XlaStep.to_dict()
    layouts: dict[str, list]  # variable path -> the PartitionSpec JAX holds it with
    seconds: float
    equal: bool  # every device's weights, gradients and optimizer bytes equal kmemopt's
    mismatches: tuple[str, ...] = ()
    compared: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": "jax",
            "platform": "cpu",
            "devices": list(self.devices),
            "measured": {k: dict(v) for k, v in self.measured.items()},
            "xla": self.xla,
            "equal": self.equal,
            "mismatches": list(self.mismatches),
            "compared": self.compared,
            "seconds": round(self.seconds, 2),
        }


def verify(
    profile: DistributionProfile,
    result: ProfileResult,
    path: str | Path,
    *,
    optimizer: str | None = None,
    timeout_s: float = VERIFY_TIMEOUT_S,
    max_memory_bytes: int | None = None,
) -> DistributionProfile:
    """`profile` with `verified` filled: the model file at `path` distributed for real by Keras's own
    `keras.distribution` on JAX, in a child with N virtual CPU devices (any parent backend).

    Needs jax installed; runs the model's weights for real (allocated, sharded): for models that fit this
    machine's memory. Example: verify(per_device(r, devices=8, kind="model"), r, "m.keras").verified.equal
    """
    import dataclasses
    import importlib.util
    import os

    from kmemopt import sandbox

    if importlib.util.find_spec("jax") is None:
        raise UsageError('--verify needs jax: pip install "kmemopt[jax]".')
    n = profile.devices
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(ENV_DEVICE_COUNT_FLAG))
    env = {
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{flags} {ENV_DEVICE_COUNT_FLAG}={n}".strip(),
        "CUDA_VISIBLE_DEVICES": "",
    }
    rules = [[r.pattern, list(r.axes)] for r in profile.layout.rules] if profile.kind is Kind.model else []
    request = {
        "path": str(path),
        "devices": n,
        "kind": profile.kind.value,
        "mesh": [profile.mesh.batch, profile.mesh.model],
        "rules": rules,
        "optimizer": optimizer,
        "batch_size": profile.batch_size,
        "inputs": [[i.name, list(i.shape), i.dtype] for i in result.inputs],
    }
    done = sandbox.run_child(
        "kmemopt.profiling._distribution_child:verify_in_child",
        request,
        max_memory_bytes=sandbox.resolve_max_memory(max_memory_bytes),
        timeout_s=timeout_s,
        what="the distributed model (--verify)",
        env=env,
        private_keras_home=True,
    )
    value = done.value
    mine = profile.per_device[0]
    mismatches = []
    for key, name in _EXACT:
        for device, got in value["measured"][name].items():
            if got != getattr(mine, key):
                mismatches.append(f"device {device}: {name} {got:,} measured, {getattr(mine, key):,} estimated")
    training = value["xla"]["training"]
    inference = value["xla"]["inference"]
    tensors_training = mine.training_peak_bytes - mine.runtime_training_bytes
    tensors_inference = mine.inference_peak_bytes - mine.runtime_inference_bytes
    # The forward and backward passes' temporaries: the activations kept and the backward workspace.
    xla_activations = value["xla"]["backward"]["temp_bytes"]
    one_device = value["xla"]["backward_one_device"]["temp_bytes"]
    ours_activations = mine.activation_bytes + mine.backward_transient_bytes + mine.allreduce_pending_bytes
    compared = {
        "kmemopt_training_tensor_bytes": tensors_training,
        "kmemopt_inference_tensor_bytes": tensors_inference,
        "training_ratio": _ratio(tensors_training, training["total_bytes"]),
        "inference_ratio": _ratio(tensors_inference, inference["total_bytes"]),
        "kmemopt_activation_bytes": ours_activations,
        "xla_activation_bytes": xla_activations,
        "activation_ratio": _ratio(ours_activations, xla_activations),
        # XLA's own figure for one device running the per-device batch unsharded: the split's share of
        # the difference (split_ratio near 1: splitting the batch is all the distribution changes).
        "xla_one_device_activation_bytes": one_device,
        "activation_ratio_one_device": _ratio(ours_activations, one_device),
        "split_ratio": _ratio(xla_activations, one_device),
    }
    checked = Verification(
        devices=tuple(value["devices"]),
        measured=value["measured"],
        xla=value["xla"],
        layouts=value["layouts"],
        seconds=float(value["seconds"]),
        equal=not mismatches,
        mismatches=tuple(mismatches),
        compared=compared,
    )
    return dataclasses.replace(profile, verified=checked)


def _ratio(ours: int, theirs: int) -> float | None:
    return round(ours / theirs, 3) if theirs > 0 else None


def distribute(
    result: ProfileResult,
    path: str | Path | None,
    *,
    devices: int | None,
    kind: Kind | str | None = None,
    layout: str | Path | None = None,
    mesh: str | tuple[int, int] | None = None,
    verify: bool = False,
    optimizer: str | None = None,
) -> ProfileResult:
    """`result` with its per-device profile (`kmemopt profile --devices N --distribution ...`): kind
    defaults to data; `verify` also distributes the model file at `path` for real (JAX, in a child)."""
    import dataclasses

    if kind is None:
        kind = Kind.model if (layout is not None or mesh is not None) else Kind.data
    try:
        kind = Kind(kind)
    except ValueError:
        raise UsageError(f"--distribution takes data or model. Received: {str(kind)[:40]!r}.") from None
    profile = per_device(result, devices=devices, kind=kind, layout=layout, mesh=mesh)
    if verify:
        if path is None:
            raise UsageError("--verify distributes a model file: give its path, not a model in memory.")
        profile = _verified(profile, result, path, optimizer)
    return dataclasses.replace(result, distribution=profile)


def _verified(profile: DistributionProfile, result: ProfileResult, path, optimizer):
    return verify(profile, result, path, optimizer=optimizer)
