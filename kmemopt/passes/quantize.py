"""--quantize int8|int4|float16|bfloat16: store weights in fewer bits.

int8/int4 delegate to Keras's own `model.quantize` for the layers it supports (Dense, EinsumDense,
Embedding, by exact type). Every other layer with float weights (convolutions, RNNs, ...) is stored
as float16 through its dtype policy, which plain Keras loads; with `allow_custom_layers`, convolutions
instead become kmemopt's int8 layers (per-output-channel scales). Normalisation layers keep float32.
float16/bfloat16 set a 16-bit dtype policy on weighted layers except normalisation layers and the
final softmax.
"""

from __future__ import annotations

import math

from kmemopt.keras_compat.layers import tracked_leaves
from kmemopt.passes.base import Action, Pass, PassResult, QuantizeMode, Reason, ShrinkOptions
from kmemopt.passes.rewrite import (
    float_weights,
    is_normalization,
    keras_quantizable,
    quantizable_sublayers,
    quantized_in_input,
)

COMPOSITE_NOT_RELOADABLE = (
    "Keras quantizes its sublayers but cannot reload them from the file (keras 3.15), so float16 instead"
)


def _policy_name(layer) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return getattr(policy, "name", str(policy))


class Quantize(Pass):
    name = "quantize"

    def enabled(self, options: ShrinkOptions) -> bool:
        return options.quantize is not None

    def rewrites_weights(self, options: ShrinkOptions) -> bool:
        return True

    def prepare(self, ctx, result: PassResult) -> None:
        mode = ctx.options.quantize
        keras = ctx.keras
        from kmemopt.layers import int8_class_for

        if not ctx.slots:
            self._prepare_in_place(ctx, result)
            return
        for slot in ctx.slots:
            layer, plan = slot.layer, ctx.plan[slot.path]
            reason = ctx.options.skipped(slot.path)
            if reason is None and not layer.weights:
                reason = Reason.NO_WEIGHTS
            if reason is None and quantized_in_input(layer):
                reason = Reason.ALREADY_QUANTIZED
            if reason is None and not float_weights(layer):
                reason = Reason.NO_FLOAT_WEIGHTS
            if reason is None and is_normalization(layer):
                reason = Reason.NORMALIZATION
            if reason is not None:
                result.skip(slot.path, slot.class_name, reason)
                continue
            params = sum(math.prod(int(d) for d in v.shape) for v in layer.weights)
            if mode in (QuantizeMode.float16, QuantizeMode.bfloat16):
                if slot.path in ctx.final_softmax:
                    result.skip(slot.path, slot.class_name, Reason.FINAL_SOFTMAX)
                    continue
                plan.dtype = mode.value
                action = Action.FLOAT16 if mode is QuantizeMode.float16 else Action.BFLOAT16
                result.apply(slot.path, slot.class_name, action, params=params, policy=mode.value)
                continue
            # int8 / int4
            if keras_quantizable(layer, keras):
                if "float16" in _policy_name(layer) or "bfloat16" in _policy_name(layer):
                    result.apply(slot.path, slot.class_name, Action.POLICY_TO_FLOAT32, was=_policy_name(layer))
                    plan.dtype = "float32"
                plan.keras_quantized = True
                ctx.keras_quantize_paths.append(slot.path)
                action = Action.KERAS_INT8 if mode is QuantizeMode.int8 else Action.KERAS_INT4
                result.apply(slot.path, slot.class_name, action, params=params)
                continue
            if quantizable_sublayers(layer, keras):
                # Keras quantizes the Dense/EinsumDense inside e.g. MultiHeadAttention, but the saved
                # config does not say so and plain Keras cannot reload the file: store them in float16.
                plan.dtype = "float16"
                result.apply(
                    slot.path,
                    slot.class_name,
                    Action.FLOAT16,
                    params=params,
                    policy="float16",
                    why=COMPOSITE_NOT_RELOADABLE,
                )
                continue
            custom = int8_class_for(type(layer)) if ctx.options.allow_custom_layers else None
            if custom is not None:
                if "float16" in _policy_name(layer):
                    plan.dtype = "float32"
                plan.int8_class = custom
                result.apply(
                    slot.path,
                    slot.class_name,
                    Action.KMEMOPT_INT8,
                    params=params,
                    layer_class=f"kmemopt>{custom.__name__}",
                )
                continue
            plan.dtype = "float16"
            result.apply(slot.path, slot.class_name, Action.FLOAT16, params=params, policy="float16")
        if mode in (QuantizeMode.int8, QuantizeMode.int4):
            if ctx.options.allow_custom_layers:
                result.notes.append(
                    "Convolutions use kmemopt's int8 layers: `import kmemopt` before keras.models.load_model."
                )
                if mode is QuantizeMode.int4:
                    result.notes.append("kmemopt's convolution layers are int8 (there is no int4 convolution).")
            else:
                result.notes.append("Layers Keras cannot quantize are stored as float16 (portable).")

    def _prepare_in_place(self, ctx, result: PassResult) -> None:
        """A model whose config does not list its layers (keras-hub backbones, subclassed models) cannot be
        rebuilt layer by layer; Keras's own `model.quantize` still works on it, in place, for int8/int4."""
        keras, mode = ctx.keras, ctx.options.quantize
        in_place = mode in (QuantizeMode.int8, QuantizeMode.int4) and ctx.release_source
        for path, layer in tracked_leaves(ctx.model, weighted=True):
            reason = ctx.options.skipped(path)
            if reason is None and quantized_in_input(layer):
                reason = Reason.ALREADY_QUANTIZED
            if reason is None and is_normalization(layer):
                reason = Reason.NORMALIZATION
            if reason is None and not keras_quantizable(layer, keras):
                reason = Reason.LAYERS_NOT_IN_CONFIG
            if reason is None and not in_place:
                reason = (
                    Reason.IN_PLACE_NEEDS_OWN_MODEL
                    if mode in (QuantizeMode.int8, QuantizeMode.int4)
                    else Reason.LAYERS_NOT_IN_CONFIG
                )
            if reason is not None:
                result.skip(path, type(layer).__name__, reason)
                continue
            ctx.in_place_quantize.append(layer)
            params = sum(math.prod(int(d) for d in v.shape) for v in layer.weights)
            action = Action.KERAS_INT8 if mode is QuantizeMode.int8 else Action.KERAS_INT4
            result.apply(path, type(layer).__name__, action, params=params)
        result.notes.append(
            "The model's config does not list its layers: Keras's model.quantize ran on it in place; other "
            "layers keep their dtype."
        )

    def finish(self, ctx, result: PassResult) -> None:
        import warnings

        from kmemopt.keras_compat.quantize import keras_quantization

        if ctx.in_place_quantize:
            ids = {id(layer) for layer in ctx.in_place_quantize}
            with warnings.catch_warnings(), keras_quantization():
                warnings.simplefilter("ignore")
                ctx.new_model.quantize(ctx.options.quantize.value, filters=lambda layer: id(layer) in ids)
            return
        paths = ctx.keras_quantize_paths
        if not paths:
            return
        from kmemopt.passes.rewrite import new_model_config_layers, walk_slots

        keras = ctx.keras
        slots = {s.path: s for s in walk_slots(ctx.new_model, new_model_config_layers(ctx.new_model, keras), keras)}
        targets = {id(slots[path].layer) for path in paths}
        with warnings.catch_warnings(), keras_quantization():
            warnings.simplefilter("ignore")
            ctx.new_model.quantize(ctx.options.quantize.value, filters=lambda layer: id(layer) in targets)
