"""The pruned model: its config with the smaller widths, and each layer's weights sliced to match.

Only width arguments change (`filters`, `units`, `output_dim`, `num_heads`, an attention
`output_shape`, a `Reshape` target); every class stays a plain Keras layer, so the result loads with
`keras.models.load_model` anywhere. Layer names are kept, so weights move by name.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from kmemopt.passes.channels.graph import (
    CONV,
    CONV_TRANSPOSE,
    DEPTHWISE,
    PER_CHANNEL,
    RNN_GATES,
    SEPARABLE,
    Analysis,
    Node,
)
from kmemopt.passes.channels.select import Selection, layer_weights

Slices = list[tuple[int, np.ndarray | None]]  # (axis, kept indices or None: all)

WIDTH_KEYS = {"Dense": "units", "Embedding": "output_dim", **{c: "units" for c in RNN_GATES}}


def _layer_entries(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(config.get("config", {}).get("layers", []))


def pruned_config(selection: Selection) -> dict[str, Any]:
    """The model config with every layer's new width (the input config is not changed)."""
    analysis = selection.analysis
    config = copy.deepcopy(analysis.config)
    by_name = {n.name: n for n in analysis.nodes}
    for entry in _layer_entries(config):
        c = entry.get("config", {})
        name = str(entry.get("name") or c.get("name"))
        # A layer's saved build shape is the old one; the model builds every layer again when it
        # is called, so the stale record goes.
        if name in analysis.usage or entry.get("class_name") == "Reshape":
            entry.pop("build_config", None)
        node = by_name.get(name)
        if node is None or name in analysis.left_alone:
            continue
        usage = analysis.usage.get(name)
        if usage is not None and usage.own is not None:
            width = selection.width(usage.own)
            key = WIDTH_KEYS.get(node.class_name, "filters")
            if node.class_name == "MultiHeadAttention":
                c["output_shape"] = [width] if isinstance(c.get("output_shape"), (list, tuple)) else width
            else:
                c[key] = width
        if usage is not None and usage.heads is not None:
            c["num_heads"] = selection.width(usage.heads)
        if node.class_name == "Reshape":
            c["target_shape"] = _reshape_target(analysis, selection, node, list(c["target_shape"]))
    return config


def _reshape_target(analysis: Analysis, selection: Selection, node: Node, target: list[int]) -> list[int]:
    out = analysis.layouts[(node.name, 0, 0)]
    if len(target) == 1:
        return [selection.layout_width(out)]
    return target[:-1] + [selection.layout_width(out)]


def _expand(kept: np.ndarray | None, step: int) -> np.ndarray | None:
    """Indices c*step + j for each kept c: the columns a depth multiplier or a gate block spreads."""
    if kept is None:
        return None
    return (kept[:, None] * step + np.arange(step)[None, :]).ravel()


def _gates(kept: np.ndarray | None, gates: int, units: int) -> np.ndarray | None:
    if kept is None:
        return None
    return np.concatenate([g * units + kept for g in range(gates)])


def weight_slices(selection: Selection, node: Node, key: str, ndim: int) -> Slices:
    """How one weight of a layer is cut: a list of (axis, kept indices)."""
    analysis = selection.analysis
    usage = analysis.usage.get(node.name)
    if usage is None:
        return []
    cls = node.class_name
    layout_in = usage.inputs.get("0")
    kin = selection.layout_kept(layout_in) if layout_in is not None else None
    own = selection.of(usage.own) if usage.own is not None else None
    leaf = key.rsplit("/", 1)[-1]
    if cls in CONV or cls == "Dense":
        return [(ndim - 2, kin), (ndim - 1, own)] if leaf == "kernel" else [(0, own)]
    if cls in CONV_TRANSPOSE:
        return [(ndim - 1, kin), (ndim - 2, own)] if leaf == "kernel" else [(0, own)]
    if cls in DEPTHWISE:
        return [(ndim - 2, kin)] if leaf == "kernel" else [(0, kin)]
    if cls in SEPARABLE:
        if leaf == "depthwise_kernel":
            return [(ndim - 2, kin)]
        if leaf == "pointwise_kernel":
            return [(ndim - 2, _expand(kin, int(node.config.get("depth_multiplier", 1) or 1))), (ndim - 1, own)]
        return [(0, own)]
    if cls in PER_CHANNEL:
        return [(ndim - 1, kin)]
    if cls == "Embedding":
        return [(1, own)]
    if cls in RNN_GATES:
        units = int(analysis.groups.size[analysis.groups.find(usage.own)] or 0) if usage.own is not None else 0
        cols = _gates(own, RNN_GATES[cls], units)
        if leaf == "kernel":
            return [(0, kin), (1, cols)]
        if leaf == "recurrent_kernel":
            return [(0, own), (1, cols)]
        return [(ndim - 1, cols)]
    if cls == "MultiHeadAttention":
        heads = selection.of(usage.heads) if usage.heads is not None else None
        out = selection.layout_kept(usage.out) if usage.out is not None else None
        part = key.split("/", 1)[0]
        if part == "attention_output":
            return [(0, heads), (2, out)] if leaf == "kernel" else [(0, out)]
        role = {"query": "query", "key": "key", "value": "value"}.get(part)
        if role is None:
            return []
        if leaf == "kernel":
            return [(0, selection.layout_kept(usage.inputs[role])), (1, heads)]
        return [(0, heads)]
    return []


def cut(array: np.ndarray, slices: Slices) -> np.ndarray:
    for axis, kept in slices:
        if kept is not None:
            array = np.take(array, kept, axis=axis)
    return array


def pruned_weights(selection: Selection, model: Any) -> dict[str, list[np.ndarray]]:
    """Every weighted layer's new weights (in `get_weights` order), by layer name."""
    out: dict[str, list[np.ndarray]] = {}
    by_name = {n.name: n for n in selection.analysis.nodes}
    for layer in model.layers:
        if not layer.weights:
            continue
        node = by_name.get(layer.name)
        if node is None or layer.name in selection.analysis.left_alone:
            out[layer.name] = layer.get_weights()
            continue
        weights = layer_weights(layer)
        out[layer.name] = [cut(w, weight_slices(selection, node, key, w.ndim)) for key, w in weights.items()]
    return out


def rebuild(selection: Selection, model: Any, custom_objects: dict[str, Any] | None = None) -> Any:
    """A new model with the pruned widths and the kept channels' weights (the input is not changed)."""
    from kmemopt.keras_compat.saving import deserialize_model

    config = pruned_config(selection)
    new = deserialize_model(config, legacy=False, custom_objects=custom_objects)
    for name, values in pruned_weights(selection, model).items():
        new.get_layer(name).set_weights(values)
    return new
