"""`kmemopt plan`: the baseline, every strategy priced alone, and the cheapest combination that fits.

Example:
    >>> result = plan("model.keras", make_request(budget="8GiB", batch_size=64))
    >>> result.plan.fits, result.plan.keras_code
"""

from __future__ import annotations

import itertools
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kmemopt.errors import UsageError
from kmemopt.plan.devices import Infeasible
from kmemopt.plan.pricing import Breakdown, Pricer
from kmemopt.plan.request import PlanRequest
from kmemopt.plan.strategy import Cost, ModelSpec, Setting, Strategy

SCHEMA_VERSION = 1
# Settings of a strategy that rebuilds the model (a dtype policy, LoRA, pruning) enter the search at
# most this many at a time (the ones that save most alone): each is one more unallocated build.
REBUILDS_PER_STRATEGY = 1


@dataclass(frozen=True)
class StrategyRow:
    setting: Setting
    predicted: Breakdown
    saving_bytes: int
    cost: Cost
    applies_to_file: bool
    keras_code: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.setting.strategy,
            "label": self.setting.label,
            "settings": dict(self.setting.settings),
            "predicted_peak_bytes": self.predicted.peak_bytes,
            "saving_bytes": self.saving_bytes,
            "cost": self.cost.to_dict(),
            "applies_to_file": self.applies_to_file,
            "penalty": self.setting.penalty,
            "breakdown": self.predicted.to_dict(),
            "keras_code": self.keras_code,
        }


@dataclass(frozen=True)
class Proposal:
    settings: tuple[Setting, ...]
    spec: ModelSpec
    predicted: Breakdown
    fits: bool
    penalty: float
    keras_code: str
    command: str
    costs: tuple[Cost, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategies": [
                {"name": s.strategy, "label": s.label, "settings": dict(s.settings), "cost": c.to_dict()}
                for s, c in zip(self.settings, self.costs)
            ],
            "predicted_peak_bytes": self.predicted.peak_bytes,
            "fits": self.fits,
            "penalty": round(self.penalty, 3),
            "breakdown": self.predicted.to_dict(),
            "keras_code": self.keras_code,
            "command": self.command,
        }


@dataclass(frozen=True)
class PlanResult:
    model_name: str
    path: str | None
    budget_bytes: int
    batch_size: int
    phase: str
    baseline_inference_peak_bytes: int
    baseline_training_peak_bytes: int
    baseline_priced: Breakdown
    strategies: tuple[StrategyRow, ...]
    plan: Proposal | None  # the cheapest combination that fits, or the closest one (fits False)
    combinations: int
    builds: int
    seconds: float
    measured: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()
    devices: int | None = None  # --devices: the budget is each device's
    base_spec: ModelSpec | None = field(default=None, repr=False, compare=False)
    base_profile: Any = field(default=None, repr=False, compare=False)  # the baseline's ProfileResult

    @property
    def baseline_peak_bytes(self) -> int:
        return self.baseline_training_peak_bytes if self.phase == "train" else self.baseline_inference_peak_bytes

    @property
    def baseline_fits(self) -> bool:
        return self.baseline_peak_bytes <= self.budget_bytes

    def to_dict(self) -> dict[str, Any]:
        from kmemopt.profiling.static import _version

        return {
            "schema_version": SCHEMA_VERSION,
            "kmemopt_version": _version(),
            "model": {"name": self.model_name, "path": self.path},
            "baseline": {
                "inference_peak_bytes": self.baseline_inference_peak_bytes,
                "training_peak_bytes": self.baseline_training_peak_bytes,
                "fits": self.baseline_fits,
                "priced_peak_bytes": self.baseline_priced.peak_bytes,
                "breakdown": self.baseline_priced.to_dict(),
            },
            "budget_bytes": self.budget_bytes,
            "devices": self.devices,
            "batch_size": self.batch_size,
            "phase": self.phase,
            "strategies": [row.to_dict() for row in self.strategies],
            "plan": self.plan.to_dict() if self.plan else None,
            "search": {"combinations": self.combinations, "builds": self.builds, "seconds": round(self.seconds, 3)},
            "measured": self.measured,
            "output": self.output,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------- the plan


def plan(path_or_model, request: PlanRequest, *, strategies: Sequence[Strategy] | None = None) -> PlanResult:
    """Price every strategy on the model rebuilt with it and search the cheapest combination that fits.

    `request` (`make_request`): the budget, batch size, phase ("train" or "infer"), the freezing
    strategy's regex (or `train_last` N weighted layers), the strategies to use (`only`), ...
    `strategies`: instead of the built-in and contributed ones.
    """
    started = time.perf_counter()
    phase, batch_size, budget_bytes = request.phase, request.batch_size, request.budget_bytes
    input_shapes = dict(request.input_shapes) if request.input_shapes else None
    seq_len, optimizer, only = request.seq_len, request.optimizer, request.only
    model_file, model, custom, path = _open(path_or_model, request.custom_objects)
    from kmemopt.profiling.static import _optimizer_identifier, profile_model

    baseline = profile_model(
        model,
        model_file=model_file,
        batch_size=batch_size,
        optimizer=optimizer,
        input_shapes=input_shapes,
        seq_len=seq_len,
    )
    ident, _ = _optimizer_identifier(model_file, optimizer)
    base = ModelSpec(
        model_config=_model_config(model_file, model),
        optimizer_config=_optimizer_config(ident),
        batch_size=batch_size,
    )
    pricer = Pricer(
        custom_objects=custom,
        input_shapes=input_shapes,
        seq_len=seq_len,
        legacy=model_file is not None and model_file.format == "h5",
    )
    # The baseline's profile is the base variant's: same model, batch and input shapes (the optimizer
    # changes no term the pricer reads from it), so the largest model is traced once.
    base_variant = pricer.seed(base, model, baseline)
    from kmemopt.plan.strategies import builtin_strategies, contributed_strategies

    if strategies is None:
        strategies = builtin_strategies(base_variant.model, freeze=request.freeze, train_last=request.train_last)
        strategies += contributed_strategies()
        if request.devices:
            from kmemopt.plan.devices import Distribution

            strategies.append(Distribution(request.devices, model=base_variant.model))
    if only:
        unknown = set(only) - {s.name for s in strategies}
        if unknown:
            names = ", ".join(s.name for s in strategies)
            raise UsageError(f"Unknown strategy {sorted(unknown)}; the strategies are: {names}.")
        strategies = [s for s in strategies if s.name in only]
    strategies = [s for s in strategies if phase in s.phases]

    base_price = pricer.price(base, phase)
    rows: list[StrategyRow] = []
    options: list[list[Setting]] = []
    for strategy in strategies:
        priced = []
        for setting in strategy.settings(base, phase):
            spec = strategy.apply(base, setting)
            predicted = pricer.price(spec, phase)
            row = StrategyRow(
                setting=setting,
                predicted=predicted,
                saving_bytes=base_price.peak_bytes - predicted.peak_bytes,
                cost=strategy.cost(base, setting),
                applies_to_file=strategy.applies_to_file,
                keras_code=strategy.keras_code(setting),
            )
            rows.append(row)
            priced.append((row, pricer.key(spec) != pricer.key(base)))
        cheap = [row.setting for row, rebuild in priced if not rebuild]
        rebuilt = sorted(
            (row for row, rebuild in priced if rebuild), key=lambda r: (-r.saving_bytes, r.setting.penalty)
        )
        options.append(cheap + [r.setting for r in rebuilt[:REBUILDS_PER_STRATEGY] if r.saving_bytes > 0])

    by_name = {s.name: s for s in strategies}
    best: tuple | None = None
    closest: tuple | None = None
    count = 0
    for combo in itertools.product(*[[None, *opts] for opts in options]):
        chosen = tuple(s for s in combo if s is not None)
        if not chosen:
            continue
        spec = base
        for setting in chosen:
            spec = by_name[setting.strategy].apply(spec, setting)
        try:
            predicted = pricer.price(spec, phase)
        except Infeasible:  # e.g. a smaller batch that the devices' batch axis does not divide
            continue
        count += 1
        penalty = sum(s.penalty for s in chosen)
        if predicted.peak_bytes <= budget_bytes:
            key = (penalty, predicted.peak_bytes)
            if best is None or key < best[0]:
                best = (key, chosen, spec, predicted)
        if closest is None or predicted.peak_bytes < closest[0]:
            closest = (predicted.peak_bytes, chosen, spec, predicted)

    proposal = None
    notes: list[str] = []
    if base_price.peak_bytes <= budget_bytes:
        notes.append("The baseline already fits the budget; the plan below is what fits with the least change.")
    picked = best or (closest[0:0] + closest[1:] if closest else None)
    if best is not None:
        _, chosen, spec, predicted = best
        proposal = _proposal(chosen, spec, predicted, budget_bytes, by_name, base, path, phase)
    elif closest is not None:
        _, chosen, spec, predicted = closest
        proposal = _proposal(chosen, spec, predicted, budget_bytes, by_name, base, path, phase)
        notes.append("No combination fits the budget; the plan is the one that comes closest.")
    del picked
    if request.devices:
        notes.append(
            f"The budget is each device's, of {request.devices}; a plan with the distribution strategy gives one "
            "device's peak (weights, gradients and optimizer slots exactly as kmemopt profile --devices shards "
            "them; activations of the per-device batch, estimated). keras.distribution runs on the JAX backend."
        )
    if phase == "train" and any(r.setting.strategy == "remat" for r in rows):
        notes.append(
            'Only RematScope(mode="activations") is priced: on the TensorFlow backend, modes "full", '
            '"larger_than" and "list_of_layers" fail in model.fit (tf.recompute_grad rejects keyword arguments '
            "in graph mode)."
        )
    return PlanResult(
        model_name=model.name,
        path=str(path) if path is not None else None,
        budget_bytes=budget_bytes,
        batch_size=batch_size,
        phase=phase,
        baseline_inference_peak_bytes=baseline.totals.inference_peak_bytes,
        baseline_training_peak_bytes=baseline.totals.training_peak_bytes,
        baseline_priced=base_price,
        strategies=tuple(rows),
        plan=proposal,
        combinations=count,
        builds=pricer.builds,
        seconds=time.perf_counter() - started,
        notes=tuple(notes),
        devices=request.devices,
        base_spec=base,
        base_profile=baseline,
    )


def _open(path_or_model, custom_objects):
    if isinstance(path_or_model, (str, os.PathLike)):
        from kmemopt.api import open_checked

        model_file, model, allow = open_checked(path_or_model, custom_objects)
        return model_file, model, allow.custom_objects or None, model_file.path
    from kmemopt._keras import import_keras

    if not isinstance(path_or_model, import_keras().Model):
        raise UsageError(f"plan() takes a path or a keras.Model. Received: {type(path_or_model).__name__}.")
    from kmemopt.api import resolve_custom_objects

    return None, path_or_model, resolve_custom_objects(custom_objects) or None, None


def _model_config(model_file, model) -> dict[str, Any]:
    import copy

    if model_file is not None:
        config = copy.deepcopy(model_file.config)
        config.pop("compile_config", None)
        return config
    from keras.saving import serialize_keras_object

    return serialize_keras_object(model)


def _optimizer_config(ident: Any) -> Any:
    from kmemopt.load.build import make_optimizer

    opt = make_optimizer(ident)
    return {"module": "keras.optimizers", "class_name": type(opt).__name__, "config": opt.get_config()}


# --------------------------------------------------------------------------------------------- proposal


def _proposal(chosen, spec, predicted, budget_bytes, by_name, base, path, phase) -> Proposal:
    costs = tuple(by_name[s.strategy].cost(base, s) for s in chosen)
    return Proposal(
        settings=tuple(chosen),
        spec=spec,
        predicted=predicted,
        fits=predicted.peak_bytes <= budget_bytes,
        penalty=sum(s.penalty for s in chosen),
        keras_code=plan_code(spec, chosen, by_name, phase),
        command=plan_command(path, budget_bytes, base.batch_size, phase, chosen),
        costs=costs,
    )


BUILTIN = frozenset({"batch_size", "mixed_precision", "optimizer", "freeze", "lora", "remat", "weight_dtype"})


def plan_code(spec: ModelSpec, chosen: Sequence[Setting], by_name, phase: str) -> str:
    """A training (or inference) script that applies the whole plan, in the order Keras needs."""
    lines = ["import keras", ""]
    for setting in chosen:
        if setting.strategy == "distribution":  # set before the model's variables are made
            lines.append(f"# {setting.label}")
            lines.extend(by_name[setting.strategy].keras_code(setting).splitlines())
    if spec.dtype_policy:
        lines.append(f'keras.mixed_precision.set_global_policy("{spec.dtype_policy}")  # before loading')
    if spec.weight_dtype == "float16":
        lines.append('keras.config.set_dtype_policy("float16")  # before loading')
    if spec.remat:
        lines.append(f'with keras.RematScope(mode="{spec.remat}"):  # the layers made here rematerialize')
        lines.append('    model = keras.models.load_model("model.keras")')
    else:
        lines.append('model = keras.models.load_model("model.keras")')
    for setting in chosen:
        if setting.strategy not in BUILTIN and setting.strategy != "distribution":  # its own code, as it gives it
            lines.append(f"# {setting.label}")
            lines.extend(by_name[setting.strategy].keras_code(setting).splitlines())
    if spec.weight_dtype in ("int8", "int4"):
        lines.append(f'model.quantize("{spec.weight_dtype}")')
    if spec.lora_rank or spec.frozen:
        from kmemopt.plan.strategies import LEAVES_CODE

        lines.extend(LEAVES_CODE.splitlines())
    if spec.lora_rank:
        lines.append("for path, layer in leaves(model):")
        lines.append("    if type(layer) in (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding):")
        lines.append(f"        layer.enable_lora({spec.lora_rank})")
    if spec.frozen:
        lines.append("import re")
        lines.append("for path, layer in leaves(model):")
        lines.append(f"    if re.search({'|'.join(spec.frozen)!r}, path):")
        lines.append("        layer.trainable = False")
    if phase == "infer":
        lines.append(f"model.predict(x, batch_size={spec.batch_size})")
        return "\n".join(lines)
    lines.append(f"optimizer = {_optimizer_code(spec)}")
    lines.append("model.compile(optimizer=optimizer, loss=loss)  # your loss and metrics")
    lines.append(f"model.fit(x, y, batch_size={spec.batch_size})")
    return "\n".join(lines)


def _optimizer_code(spec: ModelSpec) -> str:
    config = spec.optimizer_config
    name = config.get("class_name", "Adam") if isinstance(config, dict) else str(config or "Adam")
    args: list[str] = []
    if isinstance(config, dict):
        from kmemopt.plan.strategies import OPTIMIZERS

        for _, class_name, extra, _ in OPTIMIZERS:
            if class_name == name:
                args.extend(f"{k}={v!r}" for k, v in extra.items())
        lr = (config.get("config") or {}).get("learning_rate")
        if isinstance(lr, (int, float)):
            args.insert(0, f"learning_rate={lr:.6g}")
    if spec.gradient_accumulation_steps and spec.gradient_accumulation_steps > 1:
        args.append(f"gradient_accumulation_steps={spec.gradient_accumulation_steps}")
    return f"keras.optimizers.{name}({', '.join(args)})"


def plan_command(path, budget_bytes: int, batch_size: int, phase: str, chosen: Sequence[Setting]) -> str:
    """The kmemopt command that writes this plan's model (`--apply`), restricted to its strategies."""
    target = str(path) if path is not None else "model.keras"
    out = os.path.splitext(os.path.basename(target))[0] + ".plan.keras"
    names = sorted({s.strategy for s in chosen})
    args = ["kmemopt", "plan", target, "--budget", str(budget_bytes), "-b", str(batch_size), "--phase", phase]
    for setting in chosen:
        if setting.strategy == "freeze" and "pattern" in setting.settings:
            args += ["--freeze", str(setting.settings["pattern"])]
    spread = [s for s in chosen if s.strategy == "distribution"]
    if spread:  # a distributed step is set up in the training script: the command re-plans, it cannot write
        return shlex.join(args + ["--devices", str(spread[0].settings["devices"]), "--only", ",".join(names)])
    args += ["--only", ",".join(names), "--apply", "-o", out]
    return shlex.join(args)
