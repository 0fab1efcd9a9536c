"""--mixed-precision float16|bfloat16: a mixed dtype policy for training.

Variables stay float32 (the file does not shrink); activations and gradients of activations halve,
which the report shows as the training peak before and after. Quantized layers keep float32 compute
(Keras int8/int4 refuses a float16 compute dtype) and the final softmax stays float32 for stability.
"""

from __future__ import annotations

from kmemopt.passes.base import Action, Pass, PassResult, Reason, ShrinkOptions
from kmemopt.passes.rewrite import quantized_in_input


class MixedPrecisionPass(Pass):
    name = "mixed-precision"

    def enabled(self, options: ShrinkOptions) -> bool:
        return options.mixed_precision is not None

    def rewrites_weights(self, options: ShrinkOptions) -> bool:
        return True

    def prepare(self, ctx, result: PassResult) -> None:
        policy = f"mixed_{ctx.options.mixed_precision.value}"
        for slot in ctx.slots:
            plan = ctx.plan[slot.path]
            reason = ctx.options.skipped(slot.path)
            if reason is None and slot.class_name == "InputLayer":
                reason = Reason.NO_WEIGHTS
            if reason is None and (plan.keras_quantized or plan.int8_class is not None):
                reason = Reason.QUANTIZED
            if reason is None and quantized_in_input(slot.layer):
                reason = Reason.ALREADY_QUANTIZED
            if reason is None and plan.dtype in ("float16", "bfloat16"):
                reason = Reason.ALREADY_16BIT
            if reason is None and slot.path in ctx.final_softmax:
                reason = Reason.FINAL_SOFTMAX
            if reason is not None:
                result.skip(slot.path, slot.class_name, reason)
                continue
            plan.dtype = policy
            result.apply(slot.path, slot.class_name, Action.MIXED, policy=policy)
