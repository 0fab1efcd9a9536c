"""Optimizer state, counted from the real Keras optimizer built over the model without allocation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kmemopt.keras_compat.variables import unallocated
from kmemopt.load.build import make_optimizer
from kmemopt.profiling.dtypes import nbytes


@dataclass(frozen=True)
class OptimizerState:
    name: str  # class name, e.g. "Adam"
    config: dict[str, Any]
    total_bytes: int
    total_elements: int
    per_variable_bytes: dict[int, int] = field(default_factory=dict)  # id(model variable) -> bytes
    global_bytes: int = 0  # counters, learning rate, loss scale: not tied to one variable
    slots_per_variable: float = 0.0
    # Every optimizer variable as (path, shape, dtype, index of its trainable variable or None for a
    # global): what profiling.distribution shards (a slot follows its variable's layout in Keras 3).
    variables: tuple[tuple[str, tuple[int, ...], str, int | None], ...] = ()


def _variables_of(optimizer) -> list:
    seen: dict[int, Any] = {}
    for v in optimizer.variables:
        seen.setdefault(id(v), v)
    return list(seen.values())


def _slot_lists(optimizer, n_vars: int) -> list[list]:
    """Attribute lists that hold one slot (or None) per trainable variable, by Keras's own index."""
    lists = []
    for value in vars(optimizer).values():
        if isinstance(value, (list, tuple)) and len(value) == n_vars and n_vars > 0:
            if all(v is None or hasattr(v, "shape") and hasattr(v, "dtype") for v in value):
                lists.append(list(value))
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        lists.extend(_slot_lists(inner, n_vars))
    return lists


def optimizer_state(identifier: Any, model, mixed_float16: bool | None = None) -> OptimizerState:
    """Build `identifier` (name, config dict or Optimizer) over the model's trainable variables."""
    from kmemopt._keras import import_keras

    keras = import_keras()
    trainable = list(model.trainable_variables)
    if mixed_float16 is None:
        # Keras wraps the optimizer of a mixed_float16 model in a LossScaleOptimizer at compile.
        mixed_float16 = getattr(model.dtype_policy, "name", "") == "mixed_float16"
    base = make_optimizer(identifier)
    if mixed_float16 and not isinstance(base, keras.optimizers.LossScaleOptimizer):
        base = keras.optimizers.LossScaleOptimizer(base)
    optimizer = base
    for opt in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if opt is not None:
            _backend_neutral(opt)
    with unallocated(allow_constants=True):
        optimizer.build(trainable)

    owner: dict[int, int] = {}  # id(optimizer variable) -> index of model variable
    for slots in _slot_lists(optimizer, len(trainable)):
        for i, slot in enumerate(slots):
            if slot is not None:
                owner.setdefault(id(slot), i)
    prefixes = sorted(((v.path.replace("/", "_") + "_", i) for i, v in enumerate(trainable)), key=lambda p: -len(p[0]))
    per_var: dict[int, int] = {}
    global_bytes = 0
    total = 0
    elements = 0
    listed: list[tuple[str, tuple[int, ...], str, int | None]] = []
    for var in _variables_of(optimizer):
        size = nbytes(var.shape, var.dtype)
        total += size
        n = 1
        for d in var.shape:
            n *= int(d)
        elements += n
        index = owner.get(id(var))
        if index is None:
            name = var.name
            index = next((j for p, j in prefixes if name.startswith(p)), None)
        listed.append((str(var.path), tuple(int(d) for d in var.shape), str(var.dtype), index))
        if index is None:
            global_bytes += size
        else:
            key = id(trainable[index])
            per_var[key] = per_var.get(key, 0) + size
    trainable_bytes = sum(nbytes(v.shape, v.dtype) for v in trainable) or 1
    return OptimizerState(
        name=type(optimizer).__name__,
        config=_plain_config(optimizer),
        total_bytes=total,
        total_elements=elements,
        per_variable_bytes=per_var,
        global_bytes=global_bytes,
        slots_per_variable=(total - global_bytes) / trainable_bytes,
        variables=tuple(listed),
    )


def _backend_neutral(optimizer) -> None:
    """Build on the backend-neutral base methods (see `keras_compat.optimizer`)."""
    from kmemopt.keras_compat.optimizer import use_backend_neutral_methods

    use_backend_neutral_methods(optimizer)


def _plain_config(optimizer) -> dict[str, Any]:
    try:
        cfg = optimizer.get_config()
    except Exception:
        return {}
    return {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool, type(None)))}
