"""`kmemopt plan --apply -o out.keras`: the chosen plan written into a model file that trains with it.

A `.keras` file can hold the dtype policy of each layer, the `trainable` flags and the compiled
optimizer (with `gradient_accumulation_steps` in its config), so `keras.models.load_model(out).fit(...)`
trains with those parts of the plan. The rest is said, with the code that applies it:

- the batch size is `fit`'s argument;
- `keras.RematScope` is read when layers are made: load the model inside it;
- LoRA: Keras 3.15 writes `lora_rank` into the layer config, but its loader sets *both* adapter matrices
  to zeros (`Dense.load_own_variables`), where every gradient of the adapters is zero: a loaded LoRA
  layer never trains. Enabling LoRA after loading (`layer.enable_lora(r)`) initializes them properly;
- weight dtypes for inference are `kmemopt shrink`'s job (it measures fidelity);
- other strategies (channel pruning) change the weights themselves: `kmemopt shrink`'s passes.

The write follows `shrink`'s rules: the input's real weights (read by kmemopt's checked loader), the
model saved into an unnamed temp file, reloaded with plain Keras in a fresh limited process and run
on the same inputs, and only then named (exclusively unless `force`); never the input.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from kmemopt.errors import UsageError
from kmemopt.plan.planner import PlanResult
from kmemopt.plan.pricing import optimizer_identifier, with_policy
from kmemopt.plan.strategy import ModelSpec, Setting

# Strategies whose whole setting the written file holds (the batch size: its accumulation steps).
IN_FILE = frozenset({"batch_size", "mixed_precision", "optimizer", "freeze"})
WHY_NOT = {
    "batch_size": "the batch size is fit's argument",
    "remat": "keras.RematScope applies when the layers are made: load the model inside it",
    "lora": "Keras 3.15 zeroes both LoRA matrices when it loads a file, so a loaded LoRA layer never trains: "
    "enable LoRA after loading",
    "weight_dtype": "kmemopt shrink writes quantized weights and measures their fidelity",
}


def split_settings(settings: tuple[Setting, ...]) -> tuple[list[Setting], list[Setting]]:
    """(settings the file holds, settings applied in the training script)."""
    held = [s for s in settings if s.strategy in IN_FILE]
    rest = [s for s in settings if s.strategy not in IN_FILE]
    return held, rest


def not_in_file(setting: Setting, code: str) -> dict[str, Any]:
    why = WHY_NOT.get(setting.strategy, "it changes the weights: apply it with kmemopt shrink")
    return {"name": setting.strategy, "label": setting.label, "why": why, "keras_code": code}


def plan_optimizer(spec: ModelSpec) -> dict[str, Any]:
    """The serialized optimizer the plan trains with (mixed_float16: inside a LossScaleOptimizer, which
    Keras's compile adds only when the *model's* policy is mixed_float16, not a loaded model's layers')."""
    ident = optimizer_identifier(spec.optimizer_config, spec.gradient_accumulation_steps)
    if spec.dtype_policy == "mixed_float16":
        return {
            "module": "keras.optimizers",
            "class_name": "LossScaleOptimizer",
            "config": {"inner_optimizer": ident},
        }
    return ident


def build_plan_model(model, spec: ModelSpec, *, compile_config: dict[str, Any] | None, phase: str, custom=None):
    """`model` (loaded with its weights) changed as the file can hold the plan: a copy rebuilt under the
    plan's dtype policy with the same weights, its frozen layers' `trainable` off, compiled with the
    plan's optimizer and the file's own loss and metrics. `model` itself is changed only when no rebuild
    is needed (the caller loaded it for this)."""
    from kmemopt.keras_compat.layers import model_leaves

    new = _rebuilt_with_policy(model, spec, custom) if spec.dtype_policy else model
    if spec.frozen:
        from kmemopt.keras_compat.layers import flatten_layers, is_container

        patterns = [re.compile(p) for p in spec.frozen]
        for path, layer in model_leaves(new):
            if any(p.search(path) for p in patterns):
                layer.trainable = False
        # A nested model frozen whole is frozen as one: its own `trainable` flag is in its config even
        # when its layers' flags are not (a keras-hub backbone's config is its constructor's arguments).
        for layer in flatten_layers(new, include_self=False):
            if is_container(layer) and layer.weights and not layer.trainable_weights:
                layer.trainable = False
    if compile_config:
        config = copy.deepcopy(dict(compile_config))
        if phase == "train":
            config["optimizer"] = plan_optimizer(spec)
        # The file's loss and metrics passed the allowlist with the rest of its config; Keras's own
        # loader compiles a loaded model from this same dict (compile_from_config), optimizer built.
        new.compile_from_config(config)
    return new


def frozen_weights_lost(model, custom=None) -> list[str]:
    """Paths of the weights `model` freezes that its file would train again: the file holds what its
    config holds, and a nested model whose config is its constructor's arguments (a keras-hub backbone)
    does not hold its layers' `trainable` flags. Found by rebuilding `model`'s config, unallocated."""
    from keras.saving import serialize_keras_object

    from kmemopt.load.build import build_from_config

    frozen = {v.path for v in model.weights} - {v.path for v in model.trainable_weights}
    if not frozen:
        return []
    config = serialize_keras_object(model)
    config.pop("compile_config", None)
    rebuilt = build_from_config(config, custom_objects=custom)
    return sorted(frozen & {v.path for v in rebuilt.trainable_weights})


def _rebuilt_with_policy(model, spec: ModelSpec, custom):
    """The model built from its config under the plan's dtype policy, each variable allocated once from
    the loaded model's value (float32 master weights stay float32 under a mixed policy)."""
    from kmemopt.errors import MalformedModelError
    from kmemopt.keras_compat.saving import deserialize_model
    from kmemopt.keras_compat.variables import allocate_rest, assign_initializes, unallocated

    assert spec.dtype_policy is not None
    config = with_policy(spec.model_config, spec.dtype_policy)
    config.pop("compile_config", None)
    with unallocated() as deferred:
        new = deserialize_model(config, legacy=False, custom_objects=custom)
    source = {v.path: v for v in model.weights}
    with assign_initializes():
        for v in new.weights:
            old = source.pop(v.path, None)
            if old is None or tuple(old.shape) != tuple(v.shape):
                raise MalformedModelError(
                    f"The model rebuilt under {spec.dtype_policy} has a weight {v.path!r} the file's model does "
                    "not have with that shape; kmemopt cannot carry its weights over."
                )
            v.assign(np.asarray(old.numpy()))
    allocate_rest(deferred)
    if source:
        raise MalformedModelError(
            f"The model rebuilt under {spec.dtype_policy} lacks {len(source)} of the file's weights "
            f"(first: {next(iter(source))!r}); kmemopt cannot carry its weights over."
        )
    return new


def write_plan(
    result: PlanResult,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    force: bool = False,
    custom_objects: Any = None,
    data: str | os.PathLike | None = None,
    samples: int | None = None,
    max_memory_bytes: int | None = None,
    timeout_s: float | None = None,
    verify: bool = True,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
) -> dict[str, Any]:
    """Write `result.plan` into `out` (see the module docstring); return the report's `output` object.

    `verify=False` (for `--measure` without `-o`: a scratch file) skips the fresh-process reload check."""
    from kmemopt import sandbox
    from kmemopt.api import open_checked, open_model
    from kmemopt.api import profile as run_profile
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.pipeline import check_run_memory
    from kmemopt.write import save
    from kmemopt.write.fileio import atomic_path

    proposal = result.plan
    if proposal is None:
        raise UsageError("There is no plan to apply (no strategy applies to this model).")
    src, target = Path(src), Path(out)
    save.check_output(src, target, force)
    spec = proposal.spec
    held, rest = split_settings(proposal.settings)
    base = result.base_spec
    if base is not None and spec.model_config != base.model_config:
        raise UsageError(
            "The plan changes the architecture itself (" + ", ".join(s.label for s in rest) + "); "
            "--apply writes only what a .keras file holds of a plan: apply that part with kmemopt shrink."
        )
    limit = sandbox.resolve_max_memory(max_memory_bytes)
    model_file, _, allow = open_checked(src, custom_objects)
    custom = allow.custom_objects or None
    compile_config = model_file.compile_config or None
    if result.phase == "train" and not compile_config:
        raise UsageError(
            f"{src} was saved without a compiled loss, so a written model could not train with the plan; "
            "compile it with its loss, save it, and run plan --apply on that file."
        )
    if result.base_profile is not None:
        check_run_memory(result.base_profile, data=data, samples=samples, max_memory_bytes=limit)
    model, stored = open_model(src, custom_objects=custom_objects, compile=False)
    try:
        new = build_plan_model(model, spec, compile_config=compile_config, phase=result.phase, custom=custom)
    finally:
        if stored is not None:
            stored.close()
    if new is not model:
        del model
    lost = frozen_weights_lost(new, custom) if spec.frozen else []
    lost_freeze = [s for s in held if s.strategy == "freeze"] if lost else []
    custom_file = custom_objects if isinstance(custom_objects, (str, os.PathLike)) else None
    info: dict[str, Any] = {
        "path": str(target),
        "written": True,
        "in_file": [{"name": s.strategy, "label": s.label} for s in held if s not in lost_freeze],
        "not_in_file": [not_in_file(s, _code(result, s)) for s in rest]
        + [{**not_in_file(s, _code(result, s)), "why": _lost_why(len(lost)), "weights": lost} for s in lost_freeze],
        "optimizer": plan_optimizer(spec) if result.phase == "train" else None,
        "optimizer_state": "fresh (the input's saved optimizer state is not carried over)",
        "batch_size": spec.batch_size,
        "reload": None,
    }
    with atomic_path(target, replace=force) as tmp:
        save.save_container(new, tmp, compress=False)
        if verify:
            inputs = fid.load_inputs(new, data, samples=samples)
            expected = fid.predict(new, inputs)
            _, info["reload"] = save.verify_reload(
                tmp,
                inputs,
                expected,
                custom_layers=False,
                custom_objects=custom_file,
                max_memory_bytes=limit,
                timeout_s=timeout_s,
            )
        written = run_profile(
            tmp, batch_size=spec.batch_size, custom_objects=custom_objects, input_shapes=input_shapes, seq_len=seq_len
        )
        t = written.totals
        info["profile"] = {
            "param_bytes": t.param_bytes,
            "gradient_bytes": t.gradient_bytes,
            "optimizer_bytes": t.optimizer_bytes,
            "training_peak_bytes": t.training_peak_bytes,
            "inference_peak_bytes": t.inference_peak_bytes,
        }
        info["file_bytes"] = tmp.stat().st_size
    predicted = proposal.predicted
    # The file holds the whole plan's weights, gradients and optimizer state only when every setting is
    # in it (the batch size changes none of them): then its profile must give the plan's bytes exactly.
    info["holds_plan_state"] = all(s.strategy in IN_FILE for s in proposal.settings) and not lost
    info["matches_plan"] = (
        (info["profile"]["param_bytes"], info["profile"]["gradient_bytes"], info["profile"]["optimizer_bytes"])
        == (predicted.param_bytes, predicted.gradient_bytes, predicted.optimizer_bytes)
        if info["holds_plan_state"] and result.phase == "train"
        else None
    )
    return info


def _lost_why(n: int) -> str:
    return (
        f"{n} frozen weight(s) lie inside a nested model whose config holds its constructor's arguments, not "
        "its layers' trainable flags (a keras-hub backbone): they train in the written file; freeze them "
        "after loading"
    )


def _code(result: PlanResult, setting: Setting) -> str:
    for row in result.strategies:
        if row.setting == setting:
            return row.keras_code
    return ""
