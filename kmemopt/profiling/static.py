"""The static profile: exact parameter, gradient and optimizer bytes; estimated activations and peaks.

Nothing here allocates a weight: the model is built unallocated (kmemopt.load.build), its graph traced
symbolically (graph.py), the optimizer built over it unallocated (optimizer.py). The numbers that can
be exact are exact (they equal what Keras counts); activations and peaks follow the memory model
documented in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kmemopt.errors import UsageError
from kmemopt.keras_compat.layers import model_leaves
from kmemopt.load.archive import FileComposition, ModelFile
from kmemopt.profiling import graph as g
from kmemopt.profiling.dtypes import nbytes
from kmemopt.profiling.internals import layer_internals, least_certain, runtime_costs
from kmemopt.profiling.line import ZERO, Line
from kmemopt.profiling.optimizer import OptimizerState, optimizer_state

if TYPE_CHECKING:
    from kmemopt.profiling.measure import MeasuredProfile

SCHEMA_VERSION = 1
MAX_BATCH = 2**40


@dataclass(frozen=True)
class LayerProfile:
    path: str
    name: str
    class_name: str
    output_shape: Any  # list (batch as None), a list of lists for several outputs, or None if never called
    calls: int
    params: int
    trainable_params: int
    param_bytes: int
    param_dtypes: tuple[str, ...]
    compute_dtype: str | None
    output_bytes: int
    activation_bytes: int
    activation_bytes_per_sample: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_source: str = "exact"  # internals.Source: exact, traced, rule or opaque

    @property
    def non_trainable_params(self) -> int:
        return self.params - self.trainable_params

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "class_name": self.class_name,
            "output_shape": self.output_shape,
            "calls": self.calls,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "param_bytes": self.param_bytes,
            "param_dtypes": list(self.param_dtypes),
            "compute_dtype": self.compute_dtype,
            "output_bytes": self.output_bytes,
            "activation_bytes": self.activation_bytes,
            "activation_bytes_per_sample": self.activation_bytes_per_sample,
            "gradient_bytes": self.gradient_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "activation_source": self.activation_source,
        }


@dataclass(frozen=True)
class Totals:
    params: int
    trainable_params: int
    non_trainable_params: int
    param_bytes: int
    activation_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    optimizer_global_bytes: int
    inference_peak_bytes: int
    training_peak_bytes: int
    inference_activation_peak_bytes: int
    backward_transient_bytes: int
    runtime_inference_bytes: int = 0  # TensorFlow's own costs for this model (see internals.runtime_costs)
    runtime_training_bytes: int = 0
    activation_source: str = "exact"  # the least certain source among the rows (internals.least_certain)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BudgetFit:
    budget_bytes: int
    max_inference_batch: int
    max_training_batch: int

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    name: str
    format: str  # "keras", "h5" or "memory"
    file_bytes: int | None
    keras_version: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ProfileResult:
    model: ModelInfo
    batch_size: int
    optimizer: dict[str, Any]
    inputs: tuple[InputSpec, ...]
    layers: tuple[LayerProfile, ...]
    totals: Totals
    inference: Line
    training: Line
    file: FileComposition | None
    budget: BudgetFit | None
    warnings: tuple[str, ...] = ()
    measured: MeasuredProfile | None = None  # filled by profiling.measure.measure_profile (--measure)
    estimate: str = "static"
    elapsed_s: float = 0.0
    backend: str = "tensorflow"  # the Keras backend the profile ran on
    xla: Any = None  # profiling.xla.XlaEstimate: XLA's own accounting (JAX backend only)
    # profiling.distribution: every weight and optimizer variable (path, shape, dtype), and the
    # per-device profile when one was asked for (--devices)
    variables: tuple = field(default=(), repr=False, compare=False)
    distribution: Any = None
    _graph: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kmemopt_version": _version(),
            "model": self.model.to_dict(),
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "inputs": [i.to_dict() for i in self.inputs],
            "layers": [row.to_dict() for row in self.layers],
            "totals": self.totals.to_dict(),
            "batch_line": {"inference": self.inference.to_dict(), "training": self.training.to_dict()},
            "budget": self.budget.to_dict() if self.budget else None,
            "file": self.file.to_dict() if self.file else None,
            "warnings": list(self.warnings),
            "estimate": self.estimate,
            "measured": self.measured.to_dict() if self.measured is not None else None,
            "timeline": _timeline(self),
            "backend": self.backend,
            "xla_estimate": self.xla.to_dict() if self.xla is not None else None,
            **({"distribution": self.distribution.to_dict()} if self.distribution is not None else {}),
        }


def _timeline(result: ProfileResult) -> dict[str, Any] | None:
    from kmemopt.profiling.timeline import timeline_dict  # the training step, step by step (HTML report)

    return timeline_dict(result)


def _version() -> str:
    from kmemopt import __version__

    return __version__


# ---------------------------------------------------------------------------------------------


def _input_specs(model, input_shapes: dict[str, tuple[int, ...]] | None, seq_len: int | None):
    """KerasTensors for the model's inputs (batch None), unknown dimensions filled as asked."""
    from kmemopt._keras import import_keras

    keras = import_keras()
    from keras import tree

    from kmemopt.keras_compat.layers import keras_history

    inputs = list(tree.flatten(model.inputs)) if getattr(model, "inputs", None) else []
    if not inputs:
        raise UsageError(f"Model {model.name!r} has no known inputs; kmemopt profiles built models only.")
    names = []
    for x in inputs:
        history = keras_history(x)
        names.append(history.operation.name if history is not None else x.name)
    input_shapes = dict(input_shapes or {})
    unknown_names = set(input_shapes) - set(names)
    if unknown_names:
        raise UsageError(f"--input-shape names {sorted(unknown_names)}, but the model's inputs are {names}.")
    specs, recompute = [], False
    for x, name in zip(inputs, names):
        shape = list(x.shape)
        if shape and shape[0] is not None:
            recompute = True  # a fixed batch dimension: trace again with the batch free
        shape = [None] + shape[1:] if shape else shape
        if name in input_shapes:
            dims = list(input_shapes[name])
            if len(dims) != len(shape) - 1:
                raise UsageError(
                    f"Input {name!r} has shape {tuple(x.shape)}; --input-shape must give {len(shape) - 1} "
                    f"dimension(s) after the batch, got {len(dims)}."
                )
            # A declared dimension is part of the model (a Flatten feeding a Dense was built for it):
            # --input-shape may fill the unknown (None) ones, never change a declared one.
            if any(d is not None and d != given for d, given in zip(shape[1:], dims)):
                declared = ",".join("N" if d is None else str(d) for d in shape[1:])
                fix = (
                    f"give --input-shape {name}={declared} with each N filled"
                    if None in shape[1:]
                    else f"this input has none, leave {name!r} out of --input-shape"
                )
                raise UsageError(
                    f"--input-shape {name}={','.join(map(str, dims))} conflicts with the input's declared shape "
                    f"{tuple(x.shape)}: only unknown (None) dimensions can be set; {fix}."
                )
            shape = [None] + dims
            recompute = True
        elif seq_len is not None and any(d is None for d in shape[1:]):
            shape = [None] + [seq_len if d is None else d for d in shape[1:]]
            recompute = True
        missing = [i for i, d in enumerate(shape) if i > 0 and d is None]
        if missing:
            raise UsageError(
                f"Input {name!r} has unknown dimension(s) {missing} (shape {tuple(x.shape)}); set them with "
                f"--input-shape {name}="
                + ",".join("N" if d is None else str(d) for d in shape[1:])
                + " or --seq-len N."
            )
        if recompute or list(x.shape) != shape:
            spec = keras.KerasTensor(tuple(shape), dtype=x.dtype, name=name)
        else:
            spec = x
        specs.append(spec)
    return specs, names, recompute or any(s is not x for s, x in zip(specs, inputs))


def _optimizer_identifier(model_file: ModelFile | None, optimizer: Any) -> tuple[Any, str]:
    if optimizer is not None:
        return optimizer, "argument"
    cc = model_file.compile_config if model_file is not None else None
    if cc:
        opt = cc.get("optimizer") or cc.get("optimizer_config")
        if isinstance(opt, dict) and "class_name" in opt and "module" not in opt:
            # Keras 2 training_config: {"class_name": "Adam", "config": {...}}
            opt = {"class_name": opt["class_name"], "config": opt.get("config", {}), "module": "keras.optimizers"}
        if opt:
            return opt, "file"
    return "adam", "default"


def profile_model(
    model,
    *,
    model_file: ModelFile | None = None,
    batch_size: int = 32,
    optimizer: Any = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    budget_bytes: int | None = None,
    xla: bool | None = False,
) -> ProfileResult:
    """Profile a built (possibly unallocated) Keras model.

    `xla`: also compile the steps with XLA and report its accounting (JAX only; None: for a model
    file on JAX unless KMEMOPT_XLA=0, see profiling.xla). Off by default: compiling a training step
    can take minutes, so only `kmemopt profile` (and `kmemopt.profile`) ask for it."""
    import time

    started = time.perf_counter()
    if batch_size < 1:
        raise UsageError(f"The batch size must be at least 1. Received: batch_size={batch_size}.")
    specs, names, recompute = _input_specs(model, input_shapes, seq_len)
    from kmemopt.profiling.trace import OpTracer

    tracer = g.Tracer(internals=layer_internals, ops=OpTracer(batch_size))
    tracer.recompute = recompute
    from kmemopt.keras_compat.variables import unallocated

    with unallocated():  # shape inference must never initialize (allocate) unallocated variables
        graph = tracer.trace(model, specs, names)

    ident, source = _optimizer_identifier(model_file, optimizer)
    opt: OptimizerState = optimizer_state(ident, model)

    trainable_ids = {id(v) for v in model.trainable_variables}
    calls_by_layer: dict[int, list[g.Call]] = {}
    for call in graph.calls:
        calls_by_layer.setdefault(id(call.layer), []).append(call)
    input_tensor_of: dict[str, int] = dict(zip(names, graph.inputs))

    seen_vars: set[int] = set()
    kept = g.kept_tensors(graph)
    rows: list[LayerProfile] = []
    walked = list(model_leaves(model))
    walked_ids = {id(layer) for _, layer in walked}
    # Operations called directly in a functional graph (keras.ops.add(x, y)) are graph nodes
    # without being layers of the model: they get rows too, so every tensor belongs to a row.
    for call in graph.calls:
        if id(call.layer) not in walked_ids:
            walked_ids.add(id(call.layer))
            walked.append((call.path, call.layer))
    for path, layer in walked:
        params = trainable = pbytes = tbytes = obytes = 0
        dtypes: list[str] = []
        for v in getattr(layer, "weights", ()):
            if id(v) in seen_vars:
                continue
            seen_vars.add(id(v))
            n = 1
            for d in v.shape:
                n *= int(d)
            b = nbytes(v.shape, v.dtype)
            params += n
            pbytes += b
            if str(v.dtype) not in dtypes:
                dtypes.append(str(v.dtype))
            if id(v) in trainable_ids:
                trainable += n
                tbytes += b
                obytes += opt.per_variable_bytes.get(id(v), 0)
        calls = calls_by_layer.get(id(layer), [])
        out_line = ZERO
        sources: list[str] = []
        act_line = ZERO  # what training keeps of this layer's calls: kept outputs + internal saves
        shapes = []
        for call in calls:
            for t in call.outputs:
                out_line = out_line + graph.tensors[t].size
                if t in kept:
                    act_line = act_line + graph.tensors[t].size
            act_line = act_line + call.saved_extra
            sources.append(call.source)
            shapes.append([list(graph.tensors[t].shape) for t in call.outputs])
        if type(layer).__name__ == "InputLayer" and layer.name in input_tensor_of:
            tensor = graph.tensors[input_tensor_of[layer.name]]
            out_line = tensor.size
            # Model inputs are always kept (with their compute-dtype copy, mixed precision).
            act_line = tensor.size + graph.input_casts.get(input_tensor_of[layer.name], ZERO)
            shapes = [[list(tensor.shape)]]
        shape = None
        if shapes:
            first = shapes[0]
            shape = first[0] if len(first) == 1 else first
        policy = getattr(layer, "dtype_policy", None)
        rows.append(
            LayerProfile(
                path=path,
                name=layer.name,
                class_name=type(layer).__name__,
                output_shape=shape,
                calls=len(calls),
                params=params,
                trainable_params=trainable,
                param_bytes=pbytes,
                param_dtypes=tuple(dtypes),
                compute_dtype=getattr(policy, "compute_dtype", None),
                output_bytes=out_line.at(batch_size),
                activation_bytes=act_line.at(batch_size),
                activation_bytes_per_sample=act_line.per_sample_bytes,
                gradient_bytes=tbytes,
                optimizer_bytes=obytes,
                activation_source=str(least_certain(sources)),
            )
        )

    # Inputs that no InputLayer row claims (a Sequential model's input) get a row of their own, first.
    claimed = {r.name for r in rows if r.class_name == "InputLayer"}
    unclaimed: list[LayerProfile] = []
    for name, tid in zip(names, graph.inputs):
        if name not in claimed:
            tensor = graph.tensors[tid]
            unclaimed.append(
                LayerProfile(
                    path=name,
                    name=name,
                    class_name="InputLayer",
                    output_shape=list(tensor.shape),
                    calls=0,
                    params=0,
                    trainable_params=0,
                    param_bytes=0,
                    param_dtypes=(),
                    compute_dtype=tensor.dtype,
                    output_bytes=tensor.size.at(batch_size),
                    activation_bytes=(tensor.size + graph.input_casts.get(tid, ZERO)).at(batch_size),
                    activation_bytes_per_sample=(tensor.size + graph.input_casts.get(tid, ZERO)).per_sample_bytes,
                    gradient_bytes=0,
                    optimizer_bytes=0,
                ),
            )
    rows[:0] = reversed(unclaimed)  # as before: the last input's row first

    # Variables no leaf layer owns (a model's own variables) still count.
    extra = [v for v in model.weights if id(v) not in seen_vars]
    params = sum(r.params for r in rows)
    trainable = sum(r.trainable_params for r in rows)
    param_bytes = sum(r.param_bytes for r in rows)
    gradient_bytes = sum(r.gradient_bytes for r in rows)
    warnings: list[str] = list(graph.warnings)  # layers that could not be traced
    if extra:
        warnings.append(f"{len(extra)} variable(s) belong to no layer row; they are counted in the totals.")
        for v in extra:
            n = 1
            for d in v.shape:
                n *= int(d)
            params += n
            param_bytes += nbytes(v.shape, v.dtype)
            if id(v) in trainable_ids:
                trainable += n
                gradient_bytes += nbytes(v.shape, v.dtype)

    saved = g.saved_for_backward(graph)
    act_peak, _ = g.inference_peak(graph, batch_size)
    back = g.backward_transient(graph, batch_size)
    unscaled = _unscaled_gradients(opt, gradient_bytes)
    step = _step(saved, back, unscaled, batch_size)
    # The runtime's own costs (loader residue, traced graph, input copy): see internals.runtime_costs.
    costs = runtime_costs(graph, param_bytes)
    run_inf = costs["loader_residue"] + costs["inference_graph"] + costs["input_copy"]
    run_train = costs["loader_residue"] + costs["training_graph"] + costs["input_copy"]
    inference = Line(
        param_bytes + act_peak.fixed_bytes + run_inf.fixed_bytes, act_peak.per_sample_bytes + run_inf.per_sample_bytes
    )
    fixed_train = param_bytes + gradient_bytes + opt.total_bytes
    training = Line(
        fixed_train + step.fixed_bytes + run_train.fixed_bytes, step.per_sample_bytes + run_train.per_sample_bytes
    )

    totals = Totals(
        params=params,
        trainable_params=trainable,
        non_trainable_params=params - trainable,
        param_bytes=param_bytes,
        activation_bytes=saved.at(batch_size),
        gradient_bytes=gradient_bytes,
        optimizer_bytes=opt.total_bytes,
        optimizer_global_bytes=opt.global_bytes,
        inference_peak_bytes=inference.at(batch_size),
        training_peak_bytes=training.at(batch_size),
        inference_activation_peak_bytes=act_peak.at(batch_size),
        backward_transient_bytes=back.at(batch_size),
        runtime_inference_bytes=run_inf.at(batch_size),
        runtime_training_bytes=run_train.at(batch_size),
        activation_source=str(least_certain(r.activation_source for r in rows)),
    )

    fit = None
    if budget_bytes is not None:
        fit = BudgetFit(
            budget_bytes=budget_bytes,
            max_inference_batch=_max_batch(
                lambda b: param_bytes + g.inference_peak(graph, b)[0].at(b) + run_inf.at(b), budget_bytes
            ),
            max_training_batch=_max_batch(
                lambda b: (
                    fixed_train + _step(saved, g.backward_transient(graph, b), unscaled, b).at(b) + run_train.at(b)
                ),
                budget_bytes,
            ),
        )

    file_comp = model_file.composition if model_file is not None else None
    if file_comp is not None:
        declared = file_comp.weights_declared_bytes
        if not file_comp.weights_fully_stored:
            warnings.append(
                f"The file declares {declared:,} bytes of weights but stores only {file_comp.weights_bytes:,}: "
                "its weights are not all stored, so it cannot be loaded or run (the static profile is still valid)."
            )
        if declared and declared != param_bytes:
            warnings.append(
                f"The file's weights declare {declared:,} bytes, the architecture {param_bytes:,}; they differ."
            )
    backend = _backend()
    if backend != "tensorflow":
        warnings.append(
            f"The runtime terms ({run_train.at(batch_size):,} bytes of the training peak) are calibrated on "
            f"TensorFlow's CPU runtime, not on {backend}'s, whose measured peaks ran well above these estimates "
            "(docs/backends.md): --measure gives the real ones."
        )
    xla_result = None
    from kmemopt.profiling.xla import wanted as xla_wanted

    if backend == "jax" and (xla if xla is not None else xla_wanted(model_file)):
        xla_result, problem = _xla_estimate(model, model_file, specs, names, batch_size, ident, totals)
        if problem:
            warnings.append(problem)
    optimizer_info = {
        "name": opt.name,
        "source": source,
        "config": opt.config,
        "slots_per_variable": round(opt.slots_per_variable, 4),
    }
    info = ModelInfo(
        path=str(model_file.path) if model_file is not None else None,
        name=model.name,
        format=model_file.format if model_file is not None else "memory",
        file_bytes=model_file.file_bytes if model_file is not None else None,
        keras_version=model_file.keras_version if model_file is not None else None,
    )
    return ProfileResult(
        model=info,
        batch_size=batch_size,
        optimizer=optimizer_info,
        inputs=tuple(InputSpec(n, tuple(s.shape), str(s.dtype)) for n, s in zip(names, specs)),
        layers=tuple(rows),
        totals=totals,
        inference=inference,
        training=training,
        file=file_comp,
        budget=fit,
        warnings=tuple(warnings),
        elapsed_s=time.perf_counter() - started,
        backend=backend,
        xla=xla_result,
        variables=_variable_table(model, opt),
        _graph=graph,
    )


def _variable_table(model, opt: OptimizerState) -> tuple:
    from kmemopt.profiling.distribution import variable_table

    return variable_table(model, opt)


def _backend() -> str:
    from kmemopt._keras import import_keras

    return str(import_keras().backend.backend())


def _xla_estimate(model, model_file, specs, names, batch_size: int, optimizer, totals: Totals):
    """XLA's accounting of the compiled steps (profiling.xla) beside kmemopt's count of the same tensors
    (the peaks without the runtime terms), or None and a warning saying why there is none."""
    import dataclasses

    from kmemopt.profiling.xla import xla_estimate

    loss = (model_file.compile_config or {}).get("loss") if model_file is not None else None
    inputs = {name: (tuple(s.shape), str(s.dtype)) for name, s in zip(names, specs)}
    try:
        found = xla_estimate(model, inputs, batch_size, optimizer, loss)
    except Exception as exc:  # a second estimate: its failure must not cost the user the profile
        return None, f"XLA's own accounting could not be made ({type(exc).__name__}); the profile stands without it."
    return dataclasses.replace(
        found,
        kmemopt_inference_tensor_bytes=totals.inference_peak_bytes - totals.runtime_inference_bytes,
        kmemopt_training_tensor_bytes=totals.training_peak_bytes - totals.runtime_training_bytes,
    ), None


def peaks_at(result: ProfileResult, batch_size: int) -> tuple[int, int]:
    """(inference, training) static peaks at any batch size, computed as `totals` are at `result.batch_size`.

    The batch lines are exact only at the profiled batch size (the peak may move to another layer at
    another batch); code that is about to run the model at another batch size asks here.
    """
    graph = result._graph
    t = result.totals
    if graph is None or batch_size == result.batch_size:
        return (result.inference.at(batch_size), result.training.at(batch_size))
    costs = runtime_costs(graph, t.param_bytes)
    run_inf = costs["loader_residue"] + costs["inference_graph"] + costs["input_copy"]
    run_train = costs["loader_residue"] + costs["training_graph"] + costs["input_copy"]
    inference = t.param_bytes + g.inference_peak(graph, batch_size)[0].at(batch_size) + run_inf.at(batch_size)
    fixed_train = t.param_bytes + t.gradient_bytes + t.optimizer_bytes
    saved = g.saved_for_backward(graph)
    back = g.backward_transient(graph, batch_size)
    unscaled = t.gradient_bytes if result.optimizer.get("name") == "LossScaleOptimizer" else 0
    return inference, fixed_train + _step(saved, back, unscaled, batch_size).at(batch_size) + run_train.at(batch_size)


def _unscaled_gradients(opt: OptimizerState, gradient_bytes: int) -> int:
    """Mixed precision's loss scaling: a LossScaleOptimizer (what Keras's compile wraps the optimizer
    in when the model's own policy is mixed_float16) divides every gradient by the scale before the
    inner update, a second float32 copy of all the gradients while the update runs."""
    return gradient_bytes if opt.name == "LossScaleOptimizer" else 0


def _step(saved: Line, back: Line, unscaled: int, batch_size: int) -> Line:
    """A training step's memory on top of weights, gradients and slots at its peak: the activations kept
    plus the largest backward step; or, when larger, the unscaled gradients of the update (it runs after
    the backward pass has freed the activations)."""
    backward = saved + back
    return backward if backward.at(batch_size) >= unscaled else Line(unscaled, 0)


def _max_batch(peak, budget: int) -> int:
    """Largest B >= 0 with peak(B) <= budget; peak is non-decreasing in B."""
    if peak(1) > budget:
        return 0
    lo, hi = 1, 2
    while hi < MAX_BATCH and peak(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if peak(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo
