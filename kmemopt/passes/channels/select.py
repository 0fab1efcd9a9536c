"""How many channels each group keeps, and which: amounts (uniform, global or sensitivity ranking) and importance.

Widths under a uniform amount depend only on the group sizes, so they are known from the config alone
(what `kmemopt plan` prices). Which channels survive depends on an importance score per channel:
filter magnitude (L1 or L2 of each output filter), BatchNormalization |gamma| where a BatchNorm reads
the group, or, given data, the mean |activation| of the group's channels or their first-order Taylor
importance |activation x gradient of the loss|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from kmemopt.passes.channels.graph import Analysis, Layout


class Criterion(str, Enum):
    l1 = "l1"
    l2 = "l2"
    bn = "bn"  # BatchNormalization |gamma| where a BatchNorm reads the group, L1 elsewhere
    activation = "activation"  # mean |activation| over the given data
    gradient = "gradient"  # first-order Taylor: |sum of activation x gradient| over the given data


class Ranking(str, Enum):
    uniform = "uniform"  # every group loses the same fraction
    global_ = "global"  # one ranking over all groups' (normalized) scores, with a per-group floor
    sensitivity = "sensitivity"  # per-group amounts from a sensitivity pass (sensitivity.py), floors kept


@dataclass(frozen=True)
class Amount:
    """How much to prune. `fraction` of the channels of every prunable group (uniform), or of all of
    them together (global: each group keeps at least `floor` of its channels). Heads of attention
    layers always lose `fraction` of their heads (uniform). Kept counts round to the nearest whole
    channel, at least 1, and up to a multiple of `round_to` (never above the original width)."""

    fraction: float
    ranking: Ranking = Ranking.uniform
    floor: float = 0.1
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1). Received: fraction={self.fraction!r}.")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1]. Received: floor={self.floor!r}.")
        if self.round_to < 1:
            raise ValueError(f"round_to must be at least 1. Received: round_to={self.round_to!r}.")

    def keep(self, size: int, fraction: float | None = None) -> int:
        frac = self.fraction if fraction is None else fraction
        kept = max(1, math.floor(size * (1.0 - frac) + 0.5))
        if self.round_to > 1:
            kept = math.ceil(kept / self.round_to) * self.round_to
        return min(size, kept)


@dataclass
class Selection:
    """The kept channel indices (sorted) of every group that loses channels; other groups keep all."""

    analysis: Analysis
    kept: dict[int, np.ndarray]

    def of(self, gid: int) -> np.ndarray | None:
        return self.kept.get(self.analysis.groups.find(gid))

    def width(self, gid: int) -> int:
        kept = self.of(gid)
        size = self.analysis.groups.size[self.analysis.groups.find(gid)]
        return len(kept) if kept is not None else int(size or 0)

    def layout_width(self, layout: Layout) -> int:
        return layout.repeat * sum(self.width(g) if s >= 0 else 0 for g, s in layout.segments)

    def layout_kept(self, layout: Layout) -> np.ndarray | None:
        """Indices along a tensor's channel axis that survive; None when all of them do."""
        if all(self.of(g) is None for g in layout.groups):
            return None
        parts, offset = [], 0
        for g, size in layout.segments:
            kept = self.of(g)
            parts.append(offset + (kept if kept is not None else np.arange(size)))
            offset += size
        one = np.concatenate(parts)
        return np.concatenate([r * offset + one for r in range(layout.repeat)])


def uniform_widths(analysis: Analysis, amount: Amount) -> dict[int, int]:
    """Kept count of every prunable group under a uniform amount: from the sizes alone."""
    return {g: amount.keep(int(analysis.groups.size[g] or 0)) for g in analysis.prunable()}


def select(
    analysis: Analysis,
    amount: Amount,
    scores: dict[int, np.ndarray] | None = None,
    weights: dict[int, float] | None = None,
) -> Selection:
    """Which channels each group keeps. Without scores, the first channels (what plan prices: the
    widths are what matter); with scores, the highest-scoring ones. Under sensitivity ranking,
    `weights` (sensitivity.py) scale each group's fraction: a group of weight w loses w x `fraction`
    of its channels, keeping at least its floor."""
    groups = analysis.groups
    prunable = analysis.prunable()
    widths = uniform_widths(analysis, amount)
    if amount.ranking is Ranking.global_ and scores:
        channel_groups = [g for g in prunable if groups.kind[g] == "channels"]
        widths.update(_global_widths(analysis, amount, channel_groups, scores))
    if amount.ranking is Ranking.sensitivity and weights:
        for g, w in weights.items():
            if g in widths:
                size = int(groups.size[g] or 0)
                floor = min(size, max(1, math.ceil(amount.floor * size)))
                widths[g] = max(floor, amount.keep(size, min(1.0, amount.fraction * w)))
    kept: dict[int, np.ndarray] = {}
    for g in prunable:
        size, k = int(groups.size[g] or 0), widths[g]
        if k >= size:
            continue
        if scores is not None and g in scores:
            # the k best, ties broken by position (stable): deterministic
            order = np.argsort(-np.asarray(scores[g], dtype=np.float64), kind="stable")[:k]
            kept[g] = np.sort(order)
        else:
            kept[g] = np.arange(k)
    return Selection(analysis, kept)


def _global_widths(
    analysis: Analysis, amount: Amount, channel_groups: list[int], scores: dict[int, np.ndarray]
) -> dict[int, int]:
    """One ranking over every channel of every group: scores divided by their group's mean, the lowest
    `fraction` of all channels removed, no group below its floor."""
    sizes = {g: int(analysis.groups.size[g] or 0) for g in channel_groups}
    floors = {g: min(sizes[g], max(1, math.ceil(amount.floor * sizes[g]))) for g in channel_groups}
    entries: list[tuple[float, int]] = []
    for g in channel_groups:
        s = np.asarray(scores.get(g, np.ones(sizes[g])), dtype=np.float64)
        mean = float(s.mean()) or 1.0
        entries.extend((float(v) / mean, g) for v in s)
    entries.sort(key=lambda e: e[0])
    target = int(round(amount.fraction * sum(sizes.values())))
    left = dict(sizes)
    removed = 0
    for _, g in entries:
        if removed >= target:
            break
        if left[g] > floors[g]:
            left[g] -= 1
            removed += 1
    if amount.round_to > 1:
        left = {g: min(sizes[g], math.ceil(k / amount.round_to) * amount.round_to) for g, k in left.items()}
    return left


# ---------------------------------------------------------------------------------------------
# importance


def layer_weights(layer: Any) -> dict[str, np.ndarray]:
    """A layer's weights in `get_weights` order, by name: the variable's name ("kernel", "gamma"), or
    for an attention layer its sublayer and name ("query/kernel"). The full path would not do: it
    starts with the names of whatever holds the layer (a Sequential model's name, for one)."""
    out = {}
    attention = type(layer).__name__ == "MultiHeadAttention"
    for v in layer.weights:
        parts = str(getattr(v, "path", v.name)).split("/")
        key = "/".join(parts[-2:]) if attention else parts[-1]
        out[key if key not in out else "/".join(parts)] = np.asarray(v.numpy())
    return out


def _norms(array: np.ndarray, axis: int, p: int) -> np.ndarray:
    axis = axis % array.ndim
    moved = np.moveaxis(np.abs(array.astype(np.float64)), axis, 0).reshape(array.shape[axis], -1)
    return moved.sum(axis=1) if p == 1 else np.sqrt((moved**2).sum(axis=1))


def _normalized(v: np.ndarray) -> np.ndarray:
    mean = float(np.mean(v)) if v.size else 0.0
    return v / mean if mean > 0 else np.ones_like(v)


def magnitude_scores(analysis: Analysis, model: Any, criterion: Criterion = Criterion.l1) -> dict[int, np.ndarray]:
    """A score per channel of every prunable group from the weights alone (no data)."""
    from kmemopt.passes.channels.graph import CONV_TRANSPOSE, RNN_GATES

    p = 2 if criterion is Criterion.l2 else 1
    groups = analysis.groups
    parts: dict[int, list[np.ndarray]] = {}
    bn_parts: dict[int, list[np.ndarray]] = {}
    wanted = set(analysis.prunable())
    by_name = {n.name: n for n in analysis.nodes}
    for name, usage in analysis.usage.items():
        node = by_name[name]
        if usage.own is None and usage.heads is None and node.class_name != "BatchNormalization":
            continue
        weights = layer_weights(model.get_layer(name))
        own = groups.find(usage.own) if usage.own is not None else None
        if own in wanted:
            score = _producer_norms(node.class_name, weights, p, node, CONV_TRANSPOSE, RNN_GATES)
            if score is not None:
                parts.setdefault(own, []).append(_normalized(score))
        if usage.heads is not None and groups.find(usage.heads) in wanted:
            heads = int(node.config.get("num_heads") or 0)
            score = np.zeros(heads)
            for key, w in weights.items():
                if key.endswith("kernel"):
                    axis = 0 if key.startswith("attention_output") else 1
                    score += _normalized(_norms(w, axis, p))
            parts.setdefault(groups.find(usage.heads), []).append(score)
        if node.class_name == "BatchNormalization" and criterion is Criterion.bn and "gamma" in weights:
            layout = usage.inputs.get("0")
            if layout is not None and len(layout.segments) == 1 and layout.repeat == 1:
                g = groups.find(layout.segments[0][0])
                if g in wanted:
                    bn_parts.setdefault(g, []).append(_normalized(np.abs(weights["gamma"].astype(np.float64))))
    scores = {}
    for g in wanted:
        chosen = bn_parts.get(g) or parts.get(g)
        if chosen:
            scores[g] = np.mean(chosen, axis=0)
    return scores


def _producer_norms(cls: str, weights: dict[str, np.ndarray], p: int, node, transpose, gates) -> np.ndarray | None:
    if cls in gates:
        kernel = next((w for k, w in weights.items() if k.endswith("/kernel") or k == "kernel"), None)
        if kernel is None:
            return None
        units = int(node.config["units"])
        cols = _norms(kernel, 1, p)
        return cols.reshape(gates[cls], units).sum(axis=0)
    if cls == "Embedding":
        return _norms(weights["embeddings"], 1, p)
    if cls == "MultiHeadAttention":
        return _norms(weights["attention_output/kernel"], 2, p)
    kernel = weights.get("pointwise_kernel", weights.get("kernel"))
    if kernel is None:
        return None
    return _norms(kernel, kernel.ndim - 2 if cls in transpose else kernel.ndim - 1, p)


def activation_scores(analysis: Analysis, model: Any, batches: list[Any]) -> dict[int, np.ndarray]:
    """Mean |activation| of each prunable group's channels over `batches` (model inputs), read at every
    tensor that carries exactly that group (a producer's output, its BatchNorm, its activation)."""
    from kmemopt._keras import import_keras

    keras = import_keras()
    groups = analysis.groups
    wanted = set(analysis.prunable())
    taps: list[tuple[int, Any]] = []
    heads: dict[int, np.ndarray] = {}
    for (layer, node_index, index), layout in analysis.layouts.items():
        if node_index != 0 or len(layout.segments) != 1 or layout.repeat != 1:
            continue
        g = groups.find(layout.segments[0][0])
        if g not in wanted or groups.kind[g] != "channels":
            continue
        out = model.get_layer(layer).output
        taps.append((g, out[index] if isinstance(out, (list, tuple)) else out))
    if not taps:
        return {}
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # called as the model is fed
    probe = keras.Model(inputs, [t for _, t in taps])
    sums: dict[int, list[np.ndarray]] = {}
    count = 0
    for x in batches:
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        count += 1
        for i, ((g, _), y) in enumerate(zip(taps, outs)):
            y = np.abs(np.asarray(y, dtype=np.float64))
            mean = y.reshape(-1, y.shape[-1]).mean(axis=0)
            acc = sums.setdefault(g, [])
            key = sum(1 for gg, _ in taps[:i] if gg == g)
            if key < len(acc):
                acc[key] += mean
            else:
                acc.append(mean)
    scores = {g: np.mean([_normalized(a / count) for a in acc], axis=0) for g, acc in sums.items()}
    # Heads have no single tensor of their own: rank them by their weights.
    heads.update({g: s for g, s in magnitude_scores(analysis, model).items() if groups.kind[g] == "heads"})
    scores.update(heads)
    return scores


def gradient_scores(
    analysis: Analysis, model: Any, batches: list[Any], labels: list[Any] | None = None, loss: Any = None
) -> dict[int, np.ndarray]:
    """First-order Taylor importance of each channel, averaged over `batches`: |sum over positions of
    activation x dL/dactivation| at the output of the layers that make it, i.e. how much the loss moves
    when the channel is scaled. Computed from weight gradients: scaling output channel c of a
    convolution or Dense scales its kernel slice and bias, so dL/dscale = sum(w * dL/dw) over them.
    A channel whose outgoing weights are all zero scores 0.

    The loss: `loss` (the model's compile loss) on `labels` when both are given; otherwise
    crossentropy against the model's own top-1 class for a model ending in a softmax, else half the
    mean square of the outputs. Groups made by other layers (RNNs, embeddings) and attention heads
    fall back to filter magnitude. Needs the TensorFlow backend."""
    from kmemopt._keras import import_keras
    from kmemopt.errors import UsageError
    from kmemopt.passes.channels.graph import CONV, CONV_TRANSPOSE, SEPARABLE

    keras = import_keras()
    if keras.backend.backend() != "tensorflow":
        raise UsageError(
            f"Gradient-based channel importance needs the TensorFlow backend (this is {keras.backend.backend()}); "
            "use --prune-criterion activation."
        )
    import tensorflow as tf

    groups = analysis.groups
    wanted = set(analysis.prunable())
    by_name = {n.name: n for n in analysis.nodes}
    producers: list[tuple[int, Any, Any, int]] = []  # (group, kernel, bias, output axis of the kernel)
    for name, usage in analysis.usage.items():
        node = by_name[name]
        g = groups.find(usage.own) if usage.own is not None else None
        if g not in wanted or groups.kind[g] != "channels":
            continue
        layer = model.get_layer(name)
        if node.class_name in CONV | {"Dense"}:
            kernel, axis = layer.kernel, -1
        elif node.class_name in CONV_TRANSPOSE:
            kernel, axis = layer.kernel, -2
        elif node.class_name in SEPARABLE:
            kernel, axis = layer.pointwise_kernel, -1
        else:
            continue
        producers.append((g, kernel, getattr(layer, "bias", None), axis))
    scores = {g: s for g, s in magnitude_scores(analysis, model).items() if g not in {p[0] for p in producers}}
    if not producers:
        return scores
    softmax = _ends_in_softmax(model)

    def loss_of(y_pred: Any, y_true: Any) -> Any:
        outs = y_pred if isinstance(y_pred, (list, tuple)) else [y_pred]
        if loss is not None and y_true is not None and len(outs) == 1:
            return tf.reduce_mean(loss(y_true, outs[0]))
        total = 0.0
        for y in outs:
            if softmax and len(outs) == 1:
                top = y_true if y_true is not None else tf.argmax(y, axis=-1)
                total += tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(top, y))
            else:
                total += 0.5 * tf.reduce_mean(tf.square(tf.cast(y, "float32")))
        return total

    variables = [v for _, k, b, _ in producers for v in (k, b) if v is not None]
    sums = [np.zeros(int(k.shape[axis])) for _, k, _, axis in producers]
    for i, x in enumerate(batches):
        y_true = labels[i] if labels is not None and i < len(labels) else None
        with tf.GradientTape() as tape:
            value = loss_of(model(x, training=False), y_true)
        grads = dict(zip((id(v) for v in variables), tape.gradient(value, [v.value for v in variables])))
        for j, (_, kernel, bias, axis) in enumerate(producers):
            grad = grads[id(kernel)]
            if grad is None:
                continue
            wg = np.asarray(kernel.numpy(), np.float64) * np.asarray(grad, np.float64)
            per = np.moveaxis(wg, axis % wg.ndim, 0).reshape(wg.shape[axis], -1).sum(axis=1)
            if bias is not None and grads[id(bias)] is not None:
                per = per + np.asarray(bias.numpy(), np.float64) * np.asarray(grads[id(bias)], np.float64)
            sums[j] += np.abs(per)
    parts: dict[int, list[np.ndarray]] = {}
    for (g, *_), total in zip(producers, sums):
        parts.setdefault(g, []).append(_normalized(total / max(len(batches), 1)))
    scores.update({g: np.mean(p, axis=0) for g, p in parts.items()})
    return scores


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1] if model.layers else None
    if last is None:
        return False
    if type(last).__name__ == "Softmax":
        return True
    return getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
