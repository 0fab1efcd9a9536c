"""--prune SPARSITY: zero the smallest-magnitude fraction of each kernel, layer by layer.

Zeros only save bytes in a compressed container, so this pass turns `--compress` on. The first and
last weighted layers are spared by default (they are small and sensitive).
"""

from __future__ import annotations

import numpy as np

from kmemopt.passes.base import Action, Pass, PassResult, Reason, ShrinkOptions
from kmemopt.passes.rewrite import quantized_in_input


def is_kernel(name: str) -> bool:
    return name.endswith("kernel")


def magnitude_prune(value: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the `sparsity` fraction of entries with the smallest absolute value (ties may add a few)."""
    k = int(round(sparsity * value.size))
    if k <= 0:
        return value
    flat = np.abs(value).ravel()
    threshold = np.partition(flat, k - 1)[k - 1]
    return np.where(np.abs(value) <= threshold, np.zeros_like(value), value)


class Prune(Pass):
    name = "prune"

    def enabled(self, options: ShrinkOptions) -> bool:
        return options.prune is not None and options.prune > 0

    def rewrites_weights(self, options: ShrinkOptions) -> bool:
        return True

    def prepare(self, ctx, result: PassResult) -> None:
        sparsity = float(ctx.options.prune)
        weighted = [s.path for s in ctx.slots if any(is_kernel(v.name) and len(v.shape) >= 2 for v in s.layer.weights)]
        spared = set() if ctx.options.prune_first_last or len(weighted) < 3 else {weighted[0], weighted[-1]}
        for slot in ctx.slots:
            reason = ctx.options.skipped(slot.path)
            if reason is None and slot.path not in weighted:
                reason = Reason.NO_KERNEL if slot.layer.weights else Reason.NO_WEIGHTS
            if reason is None and quantized_in_input(slot.layer):
                reason = Reason.ALREADY_QUANTIZED
            if reason is None and slot.path in spared:
                reason = Reason.FIRST_OR_LAST
            if reason is not None:
                result.skip(slot.path, slot.class_name, reason)
                continue
            entry = result.apply(slot.path, slot.class_name, Action.PRUNED, target_sparsity=sparsity)

            def transform(name, value, entry=entry):
                if not is_kernel(name) or value.ndim < 2:
                    return value
                pruned = magnitude_prune(value, sparsity)
                zeros = entry.detail.get("zeros", 0) + int(np.count_nonzero(pruned == 0))
                total = entry.detail.get("elements", 0) + int(pruned.size)
                entry.detail.update(zeros=zeros, elements=total, sparsity=round(zeros / total, 6))
                return pruned

            ctx.plan[slot.path].transforms.append(transform)
        result.notes.append("--prune writes the container with deflate: zeros only save bytes compressed.")
