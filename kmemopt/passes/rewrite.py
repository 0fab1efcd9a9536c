"""The rebuild behind every weight-changing pass: edit the model's config, rebuild it, copy weights.

Keras fixes a layer's dtype policy and variables when it is built, so changing how a layer stores
its weights means rebuilding the model from an edited config (dtype policy, or a class swap to one of
kmemopt's layers) and copying the weights across, one layer at a time. The new model is built
unallocated, so each of its variables is allocated once, from its copied value. When shrink loaded the
original itself (`release_source`), the original is freed first and each layer read back from the
input file as it is copied, so the two models never hold more than one layer twice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmemopt.keras_compat.layers import flatten_layers
from kmemopt.keras_compat.variables import (
    allocate_rest,
    assign_initializes,
    can_move_value,
    free_variable,
    lean_build_available,
    move_value,
    unallocated,
)
from kmemopt.memory import release_memory
from kmemopt.passes.base import ShrinkOptions, SlotPlan

NORMALIZATION_CLASS_NAMES = (
    "BatchNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "UnitNormalization",
    "RMSNormalization",
    "SpectralNormalization",
    "Normalization",
)


@dataclass
class Slot:
    """A leaf layer of the model (nested Functional/Sequential models are walked into)."""

    path: str
    layer: Any
    entry: dict[str, Any]  # its entry in the (copied) model config; edits go here

    @property
    def class_name(self) -> str:
        return type(self.layer).__name__


def _is_container(layer, keras) -> bool:
    from kmemopt.keras_compat.layers import is_container

    return is_container(layer)


def walk_slots(model, config_layers: list[dict[str, Any]], keras, prefix: str = "") -> list[Slot]:
    by_name: dict[str, dict[str, Any]] = {}
    for config_entry in config_layers:
        cfg = config_entry.get("config", {})
        if isinstance(cfg, dict) and "name" in cfg:
            by_name[cfg["name"]] = config_entry
    slots: list[Slot] = []
    for layer in model.layers:
        entry = by_name.get(layer.name)
        if entry is None:
            continue
        path = f"{prefix}{layer.name}"
        if _is_container(layer, keras) and isinstance(entry["config"].get("layers"), list):
            slots.extend(walk_slots(layer, entry["config"]["layers"], keras, prefix=f"{path}/"))
        else:
            slots.append(Slot(path, layer, entry))
    return slots


def is_normalization(layer) -> bool:
    return any(type(c).__name__ in NORMALIZATION_CLASS_NAMES for c in [layer]) or any(
        c.__name__ in NORMALIZATION_CLASS_NAMES and c.__module__.startswith("keras.") for c in type(layer).__mro__
    )


def keras_quantizable(layer, keras) -> bool:
    """Keras's `model.quantize` picks layers by exact type (a Dense subclass is skipped)."""
    supported = [keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding]
    reversible = getattr(keras.layers, "ReversibleEmbedding", None)
    if reversible is not None:
        supported.append(reversible)
    return type(layer) in supported


def quantizable_sublayers(layer, keras) -> list[Any]:
    return [
        sub
        for sub in flatten_layers(layer, include_self=True)
        if keras_quantizable(sub, keras) and len(list(flatten_layers(sub))) == 1
    ]


def quantized_in_input(layer) -> bool:
    """The layer (or one inside it) already holds Keras-quantized weights (an int8/int4 dtype policy)."""
    for sub in flatten_layers(layer, include_self=True):
        try:
            if getattr(sub, "quantization_mode", None):
                return True
        except (AttributeError, KeyError, TypeError):  # policy maps without an entry for the layer
            continue
    return False


def float_weights(layer) -> list[Any]:
    return [v for v in layer.weights if "float" in str(v.dtype)]


def final_softmax_paths(model, slots: list[Slot], keras) -> set[str]:
    """Output layers whose activation is softmax (Dense(..., activation="softmax"), Softmax, ...)."""
    from kmemopt.keras_compat.layers import keras_history

    outputs = set()
    for tensor in getattr(model, "outputs", None) or []:
        history = keras_history(tensor)
        if history is not None:
            outputs.add(id(history[0]))
    if not outputs and slots:
        outputs.add(id(slots[-1].layer))
    found = set()
    for slot in slots:
        if id(slot.layer) not in outputs:
            continue
        layer = slot.layer
        act = getattr(layer, "activation", None)
        if isinstance(layer, keras.layers.Softmax) or act is keras.activations.softmax:
            found.add(slot.path)
    return found


@dataclass
class RewriteContext:
    """The original model, its slots, the plan each pass fills in, and the rebuilt model."""

    model: Any
    options: ShrinkOptions
    keras: Any
    config: dict[str, Any]
    slots: list[Slot]
    plan: dict[str, SlotPlan] = field(default_factory=dict)
    new_model: Any = None
    final_softmax: set[str] = field(default_factory=set)
    file_info: dict[str, Any] = field(default_factory=dict)  # compiled?, optimizer variables and bytes
    will_rewrite: bool = False  # some enabled pass rewrites weights (set before any pass prepares)
    keep_optimizer: bool = False
    keras_quantize_paths: list[str] = field(default_factory=list)
    compress: bool = False
    # Free each original layer's weights once copied (the caller no longer needs the original model).
    release_source: bool = False
    # With release_source: the open file the original was loaded from (`keras_compat.saving.StoredKeras`). Then the
    # whole original is freed before the rebuild and each layer is read back from the file as it is
    # copied, so the original and the rebuilt model never share memory beyond one layer.
    weights_source: Any = None
    # Rebuild even when no layer changes (a compiled in-memory model whose optimizer must not be saved).
    force_rebuild: bool = False
    # Layers Keras quantizes in place, in a model whose config does not list its layers (no slots).
    in_place_quantize: list[Any] = field(default_factory=list)
    # (layer, report entry) pairs pruned in place in such a model.
    in_place_prune: list[Any] = field(default_factory=list)

    @classmethod
    def from_model(cls, model, options: ShrinkOptions, keras) -> RewriteContext:
        config = copy.deepcopy(keras.saving.serialize_keras_object(model))
        layers = config.get("config", {}).get("layers")
        slots = walk_slots(model, layers, keras) if isinstance(layers, list) else []
        ctx = cls(model=model, options=options, keras=keras, config=config, slots=slots)
        ctx.plan = {s.path: SlotPlan() for s in slots}
        ctx.final_softmax = final_softmax_paths(model, slots, keras)
        return ctx

    @property
    def needs_rebuild(self) -> bool:
        return self.force_rebuild or any(p.rewrites for p in self.plan.values())

    def rebuild(self) -> Any:
        """Build the edited model and copy every layer's weights into it (transformed as planned)."""
        keras = self.keras
        if not self.needs_rebuild:
            self.new_model = self.model
            return self.new_model
        from kmemopt.layers import custom_objects

        config = copy.deepcopy(self.config)
        new_entries = {}
        layers = config.get("config", {}).get("layers")
        for slot in walk_slots(self.model, layers, keras):
            new_entries[slot.path] = slot.entry
        for path, plan in self.plan.items():
            entry = new_entries[path]
            if plan.dtype is not None:
                entry["config"]["dtype"] = plan.dtype
            if plan.int8_class is not None:
                cls = plan.int8_class
                entry["class_name"] = cls.__name__
                entry["module"] = cls.__module__
                entry["registered_name"] = f"kmemopt>{cls.__name__}"
        # A rewrite drops the optimizer state (it no longer matches the weights): no compile config.
        config.pop("compile_config", None)
        # Built unallocated, each new variable is allocated once, from its copied value.
        with unallocated() as deferred:
            new_model = keras.saving.deserialize_keras_object(config, custom_objects=custom_objects())
        new_slots = {s.path: s for s in walk_slots(new_model, new_model_config_layers(new_model, keras), keras)}
        # Freed variables are read back from the file only where they can be allocated from it again.
        source = self.weights_source if self.release_source and lean_build_available() else None
        from_file = set()
        if source is not None:
            for slot in self.slots:
                if slot.layer.weights and source.can_reload(slot.layer):
                    for v in slot.layer.weights:
                        free_variable(v)
                    from_file.add(slot.path)
            release_memory()
        with assign_initializes():
            for slot in self.slots:
                if source is not None and slot.path in from_file:
                    source.reload(slot.layer)
                target = new_slots[slot.path].layer
                self._copy_weights(slot, target, self.plan[slot.path])
        allocate_rest(deferred)
        self.new_model = new_model
        return new_model

    def _copy_weights(self, slot: Slot, target, plan: SlotPlan) -> None:
        source = slot.layer.weights
        if plan.int8_class is None and len(source) != len(target.weights):
            raise RuntimeError(
                f"Layer {slot.path} has {len(source)} weights but its rebuilt copy has {len(target.weights)}."
            )
        if self.release_source and plan.int8_class is None and not plan.transforms:
            if all(can_move_value(v, t) for v, t in zip(source, target.weights, strict=True)):
                for v, t in zip(source, target.weights, strict=True):
                    move_value(v, t)  # the original's own backend variable: nothing is copied
                return
        values = []
        for v in source:
            value = self._take(v)
            for transform in plan.transforms:
                value = transform(v.name, value)
            values.append(value)
        if plan.int8_class is not None:
            target.set_float_kernels({v.name: value for v, value in zip(source, values, strict=True)})
            return
        for v, t, value in zip(source, target.weights, values, strict=True):
            if tuple(value.shape) != tuple(t.shape):
                raise RuntimeError(f"Weight {v.path} changed shape in the rebuild: {value.shape} vs {t.shape}.")
            t.assign(value)  # Keras casts to the variable's dtype (float16, bfloat16, ...)

    def _take(self, variable) -> np.ndarray:
        """The variable's value as an array of its own; with `release_source` the variable is then freed,
        so the framework can reuse its memory for the rebuilt copy."""
        value = np.asarray(variable.numpy())  # a copy (TensorFlow's numpy() always copies)
        if self.release_source:
            free_variable(variable)
        return value


def new_model_config_layers(model, keras) -> list[dict[str, Any]]:
    return keras.saving.serialize_keras_object(model).get("config", {}).get("layers") or []
