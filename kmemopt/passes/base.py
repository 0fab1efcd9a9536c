"""What every pass shares: options, the per-layer plan, results with named reasons, the Pass base.

A pass never touches a file. It edits the *plan* (`prepare`: a layer's dtype policy, a class swap to
one of kmemopt's layers, a weight transform) before the model is rebuilt, and/or edits the rebuilt
model (`finish`: Keras's own `model.quantize`). `kmemopt.passes.rewrite` does the rebuild.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Reason(str, Enum):
    """Why a pass left a layer alone. The values are what the report prints."""

    SKIP_REGEX = "matched --skip"
    NOT_SELECTED = "not selected (explain runs one layer at a time)"
    NO_WEIGHTS = "no weights"
    NO_FLOAT_WEIGHTS = "no float weights"
    NORMALIZATION = "normalisation layers keep float32"
    FINAL_SOFTMAX = "the final softmax keeps float32"
    FIRST_OR_LAST = "first and last weighted layers are spared (--prune-first-last to prune them)"
    NO_KERNEL = "no kernel to prune"
    QUANTIZED = "quantized weights keep their float32 compute policy (Keras int8/int4 refuses float16)"
    ALREADY_QUANTIZED = "already quantized in the input (its int8/int4 weights are kept as they are)"
    LAYERS_NOT_IN_CONFIG = (
        "the model's config does not list its layers (a subclassed model, e.g. a keras-hub backbone), "
        "so kmemopt cannot rebuild them; only Keras's own in-place int8/int4 applies"
    )
    IN_PLACE_NEEDS_OWN_MODEL = (
        "quantizing in place needs a model kmemopt loaded itself (not an in-memory model, not with --explain)"
    )
    ALREADY_16BIT = "already stored in 16 bits by --quantize float16/bfloat16"
    NOT_COMPILED = "the input has no optimizer state"
    OPTIMIZER_INVALIDATED = "the weights were rewritten, so the saved optimizer state no longer matches"
    CHANNELS_KEPT = "kept its width (why: the Channels table, or detail.why in JSON)"


class Action(str, Enum):
    """What a pass did to a layer."""

    KERAS_INT8 = "int8 (Keras model.quantize)"
    KERAS_INT4 = "int4 (Keras model.quantize)"
    KMEMOPT_INT8 = "int8 per-output-channel (kmemopt layer)"
    FLOAT16 = "float16 storage"
    BFLOAT16 = "bfloat16 storage"
    POLICY_TO_FLOAT32 = "mixed policy rewritten to float32 before quantizing"
    PRUNED = "magnitude-pruned"
    CHANNELS_PRUNED = "channels pruned (a smaller layer)"
    MIXED = "mixed-precision policy"
    DROPPED_OPTIMIZER = "dropped optimizer state and compile config"
    KEPT_OPTIMIZER = "kept optimizer state"
    DEFLATE = "container written with deflate"


class QuantizeMode(str, Enum):
    int8 = "int8"
    int4 = "int4"
    float16 = "float16"
    bfloat16 = "bfloat16"


class MixedPrecision(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"


@dataclass(frozen=True)
class ShrinkOptions:
    """Which passes run and how. Defaults: strip the optimizer, nothing else."""

    strip_optimizer: bool = True
    quantize: QuantizeMode | None = None
    allow_custom_layers: bool = False
    prune: float | None = None
    prune_first_last: bool = False
    prune_channels: float | None = None  # structured: this fraction of channels removed (passes/channels)
    compress: bool = False
    mixed_precision: MixedPrecision | None = None
    skip: str | None = None
    only: frozenset[str] | None = None  # layer paths; everything else is left alone (used by --explain)

    def skipped(self, path: str) -> Reason | None:
        if self.only is not None and path not in self.only:
            return Reason.NOT_SELECTED
        if self.skip and re.search(self.skip, path):
            return Reason.SKIP_REGEX
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strip_optimizer": self.strip_optimizer,
            "quantize": self.quantize.value if self.quantize else None,
            "allow_custom_layers": self.allow_custom_layers,
            "prune": self.prune,
            "prune_first_last": self.prune_first_last,
            "prune_channels": self.prune_channels,
            "compress": self.compress,
            "mixed_precision": self.mixed_precision.value if self.mixed_precision else None,
            "skip": self.skip,
        }


@dataclass
class LayerAction:
    layer: str
    class_name: str
    action: Action | None = None
    reason: Reason | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": self.layer, "class_name": self.class_name}
        if self.action is not None:
            out["action"] = self.action.value
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.detail:
            out["detail"] = dict(self.detail)
        return out


@dataclass
class PassResult:
    name: str
    applied: list[LayerAction] = field(default_factory=list)
    skipped: list[LayerAction] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def apply(self, layer: str, class_name: str, action: Action, **detail: Any) -> LayerAction:
        entry = LayerAction(layer, class_name, action=action, detail=detail)
        self.applied.append(entry)
        return entry

    def skip(self, layer: str, class_name: str, reason: Reason, **detail: Any) -> None:
        self.skipped.append(LayerAction(layer, class_name, reason=reason, detail=detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "applied": [a.to_dict() for a in self.applied],
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
        }


Transform = Callable[[str, Any], Any]  # (variable name, float array) -> array


@dataclass
class SlotPlan:
    """What the rebuild does to one layer: dtype policy, class swap, weight transforms."""

    dtype: str | None = None
    int8_class: type | None = None
    transforms: list[Transform] = field(default_factory=list)
    keras_quantized: bool = False  # it (or a sublayer) goes through Keras's model.quantize

    @property
    def rewrites(self) -> bool:
        # keras_quantized too: model.quantize works in place, and must never touch the caller's model
        return self.dtype is not None or self.int8_class is not None or bool(self.transforms) or self.keras_quantized


class Pass:
    """One pass. `enabled` decides from the options; `prepare` plans, `finish` edits the rebuilt model."""

    name: str = ""

    def enabled(self, options: ShrinkOptions) -> bool:
        raise NotImplementedError

    def rewrites_weights(self, options: ShrinkOptions) -> bool:
        return False

    def prepare(self, ctx, result: PassResult) -> None:
        """Edit `ctx.plan` before the rebuild."""

    def finish(self, ctx, result: PassResult) -> None:
        """Edit `ctx.new_model` after the rebuild."""
