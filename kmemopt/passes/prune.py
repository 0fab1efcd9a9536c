"""--prune SPARSITY: zero the smallest-magnitude fraction of each kernel, layer by layer.

Zeros only save bytes in a compressed container, so this pass turns `--compress` on. The first and
last weighted layers are spared by default (they are small and sensitive).
"""

from __future__ import annotations

import numpy as np

from kmemopt.keras_compat.layers import tracked_leaves
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
        if not ctx.slots:
            self._prepare_in_place(ctx, result, sparsity)
            return
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

    def _prepare_in_place(self, ctx, result: PassResult, sparsity: float) -> None:
        """A model whose config lists no layers is pruned in place (its layers cannot be rebuilt), when
        shrink loaded it itself."""
        leaves = tracked_leaves(ctx.model, weighted=True)
        weighted = [layer for _, layer in leaves if any(is_kernel(v.name) and len(v.shape) >= 2 for v in layer.weights)]
        spared = set() if ctx.options.prune_first_last or len(weighted) < 3 else {id(weighted[0]), id(weighted[-1])}
        for path, layer in leaves:
            reason = ctx.options.skipped(path)
            if reason is None and layer not in weighted:
                reason = Reason.NO_KERNEL
            if reason is None and quantized_in_input(layer):
                reason = Reason.ALREADY_QUANTIZED
            if reason is None and id(layer) in spared:
                reason = Reason.FIRST_OR_LAST
            if reason is None and not ctx.release_source:
                reason = Reason.IN_PLACE_NEEDS_OWN_MODEL
            if reason is not None:
                result.skip(path, type(layer).__name__, reason)
                continue
            entry = result.apply(path, type(layer).__name__, Action.PRUNED, target_sparsity=sparsity)
            ctx.in_place_prune.append((layer, entry))
        result.notes.append("--prune writes the container with deflate: zeros only save bytes compressed.")
        if ctx.in_place_prune:
            result.notes.append("The model's config does not list its layers: its kernels were pruned in place.")

    def finish(self, ctx, result: PassResult) -> None:
        sparsity = float(ctx.options.prune)
        for layer, entry in ctx.in_place_prune:
            for v in layer.weights:
                if not is_kernel(v.name) or len(v.shape) < 2:
                    continue
                pruned = magnitude_prune(np.asarray(v.numpy()), sparsity)
                zeros = entry.detail.get("zeros", 0) + int(np.count_nonzero(pruned == 0))
                total = entry.detail.get("elements", 0) + int(pruned.size)
                entry.detail.update(zeros=zeros, elements=total, sparsity=round(zeros / total, 6))
                v.assign(pruned)
