"""Structured channel pruning of a built Keras model: analyze, score, select, rebuild, report."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmemopt.errors import UsageError
from kmemopt.passes.channels.graph import Analysis, NotAGraph, analyze
from kmemopt.passes.channels.rewrite import pruned_config, rebuild
from kmemopt.passes.channels.select import (
    Amount,
    Criterion,
    Selection,
    activation_scores,
    magnitude_scores,
    select,
)

FLOPS_NOT_COMPUTED = "not computed"


@dataclass(frozen=True)
class LayerWidth:
    """One layer's width before and after; `kept_because` says why a layer kept its width."""

    layer: str
    class_name: str
    what: str  # "filters", "units", "heads", "output_dim"
    before: int
    after: int
    kept_because: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Totals:
    params: int
    inference_peak_bytes: int | None = None
    training_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ChannelReport:
    """What pruning did: per layer widths, the layers left alone and why, totals before and after."""

    fraction: float
    ranking: str
    criterion: str
    layers: list[LayerWidth]
    left_alone: list[tuple[str, str, str]]  # (layer, class, why)
    before: Totals
    after: Totals
    flops: dict[str, Any] = field(default_factory=lambda: {"not_computed": FLOPS_NOT_COMPUTED})
    batch_size: int | None = None
    notes: list[str] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] | None = None  # --prune-scope sensitivity: each group alone (sensitivity.py)

    @property
    def param_ratio(self) -> float:
        return self.after.params / self.before.params if self.before.params else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "ranking": self.ranking,
            "criterion": self.criterion,
            "layers": [row.to_dict() for row in self.layers],
            "left_alone": [{"layer": a, "class_name": b, "reason": c} for a, b, c in self.left_alone],
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "param_ratio": round(self.param_ratio, 6),
            "flops": dict(self.flops),
            "batch_size": self.batch_size,
            "notes": list(self.notes),
            "sensitivity": self.sensitivity,
        }


@dataclass
class PruneResult:
    model: Any
    report: ChannelReport
    selection: Selection


def serialized(model: Any) -> dict[str, Any]:
    """The model's config as a `.keras` file holds it, without its compile config."""
    from kmemopt._keras import import_keras

    keras = import_keras()
    config = copy.deepcopy(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)
    return config


def model_analysis(model: Any, config: dict[str, Any] | None = None) -> Analysis:
    config = config if config is not None else serialized(model)
    try:
        return analyze(config, model)
    except NotAGraph:
        raise UsageError(
            f"Channel pruning needs a Functional or Sequential model; {model.name!r} is a "
            f"{type(model).__name__} whose config does not list its layers."
        ) from None


def layer_widths(selection: Selection) -> list[LayerWidth]:
    analysis = selection.analysis
    groups = analysis.groups
    rows = []
    by_name = {n.name: n for n in analysis.nodes}
    for name, usage in analysis.usage.items():
        node = by_name[name]
        for gid, what in ((usage.own, _what(node.class_name)), (usage.heads, "heads")):
            if gid is None:
                continue
            size = groups.size[groups.find(gid)]
            if size is None:
                continue
            pinned = groups.pinned(gid)
            because = None
            if pinned is not None:
                at, why = pinned
                because = why if at == name else f"{why} (at {at})"
            elif size <= 1:
                because = "has a single channel"
            rows.append(LayerWidth(name, node.class_name, what, int(size), selection.width(gid), because))
    for name, why in analysis.left_alone.items():
        left = by_name.get(name)
        if left is None:
            continue
        for key in ("filters", "units", "output_dim", "num_heads"):
            width = left.config.get(key)
            if isinstance(width, int):
                what = "heads" if key == "num_heads" else key
                rows.append(LayerWidth(name, left.class_name, what, width, width, why))
    order = {n.name: i for i, n in enumerate(analysis.nodes)}
    rows.sort(key=lambda r: (order.get(r.layer, 0), r.what))
    return rows


def _what(cls: str) -> str:
    if cls in ("Dense", "LSTM", "GRU", "SimpleRNN"):
        return "units"
    if cls == "Embedding":
        return "output_dim"
    if cls == "MultiHeadAttention":
        return "output_shape"
    return "filters"


def input_batches(data: Any, *, batch_size: int = 32, max_batches: int = 4) -> list[Any]:
    """Up to `max_batches` batches of model inputs from an array, a list of arrays (several inputs) or
    a dict of arrays."""
    if isinstance(data, dict):
        n = min(len(v) for v in data.values())
        return [
            {k: np.asarray(v[i : i + batch_size]) for k, v in data.items()}
            for i in range(0, min(n, batch_size * max_batches), batch_size)
        ]
    if isinstance(data, (list, tuple)):
        n = min(len(v) for v in data)
        return [
            [np.asarray(v[i : i + batch_size]) for v in data]
            for i in range(0, min(n, batch_size * max_batches), batch_size)
        ]
    arr = np.asarray(data)
    return [arr[i : i + batch_size] for i in range(0, min(len(arr), batch_size * max_batches), batch_size)]


def scores_for(
    analysis: Analysis, model: Any, criterion: Criterion, data: Any = None, labels: Any = None, loss: Any = None
) -> dict[int, np.ndarray]:
    if criterion in (Criterion.activation, Criterion.gradient) and data is None:
        raise UsageError(f"{criterion.value.capitalize()}-based channel importance needs input data; give --data.")
    if criterion is Criterion.activation:
        return activation_scores(analysis, model, input_batches(data))
    if criterion is Criterion.gradient:
        from kmemopt.passes.channels.select import gradient_scores

        ys = input_batches(labels) if labels is not None else None
        return gradient_scores(analysis, model, input_batches(data), ys, loss)
    return magnitude_scores(analysis, model, criterion)


def static_totals(model: Any, batch_size: int | None) -> Totals:
    """Parameters, and (with a batch size) the static inference and training peaks of kmemopt's profile."""
    if batch_size is None:
        return Totals(int(model.count_params()))
    from kmemopt.profiling.static import profile_model

    t = profile_model(model, batch_size=batch_size).totals
    return Totals(t.params, t.inference_peak_bytes, t.training_peak_bytes)


def flops_before_after(model: Any, new: Any, seq_len: int | None = None) -> dict[str, Any]:
    """Forward FLOPs per sample (kmemopt.profiling.flops' convention) of both models, in total and per
    layer; `{"not_computed": why}` when a shape is unknown."""
    from kmemopt.profiling.flops import CONVENTION, model_flops

    try:
        before, after = model_flops(model, seq_len=seq_len), model_flops(new, seq_len=seq_len)
    except UsageError as exc:
        return {"not_computed": str(exc)}
    b, a = before.by_path(), after.by_path()
    classes = {r.path: r.class_name for r in before.layers}
    return {
        "convention": CONVENTION,
        "before": before.total,
        "after": after.total,
        "ratio": round(after.total / before.total, 6) if before.total else None,
        "not_counted": sorted({f"{r.path} ({r.class_name})" for r in before.not_counted + after.not_counted}),
        "layers": [
            {"path": path, "class_name": classes[path], "before": b[path], "after": a.get(path)}
            for path in b
            if b[path] or a.get(path)
        ],
    }


def prune_channels(
    model: Any,
    fraction: float | Amount,
    *,
    criterion: Criterion | str = Criterion.l1,
    data: Any = None,
    batch_size: int | None = 32,
    custom_objects: dict[str, Any] | None = None,
    scores: dict[int, np.ndarray] | None = None,
    analysis: Analysis | None = None,
    seq_len: int | None = None,
    weights: dict[int, float] | None = None,
) -> PruneResult:
    """Remove whole channels (filters, units, attention heads) and rebuild a smaller plain-Keras model.

    Channels tied by the graph (residual adds, concatenations, depthwise convolutions, normalization)
    go together; whatever kmemopt cannot follow keeps its full width, and the model's inputs and
    outputs never change width. `fraction=0` rebuilds the same model (identical outputs).
    `batch_size` prices the peaks of the report with the static profile (None: parameters only).
    `scores` and `analysis`, when the caller already has them (`model_analysis`, `scores_for`), are used
    instead of being computed again; `weights` are sensitivity ranking's (sensitivity.py). The report's FLOPs are per sample (`seq_len` fills unknown input
    lengths).

    Example:
        >>> result = prune_channels(model, 0.5)
        >>> result.model.count_params() < model.count_params()
    """
    amount = fraction if isinstance(fraction, Amount) else Amount(float(fraction))
    criterion = Criterion(criterion)
    analysis = analysis if analysis is not None else model_analysis(model)
    if scores is None and amount.fraction > 0:
        scores = scores_for(analysis, model, criterion, data)
    selection = select(analysis, amount, scores, weights)
    new = rebuild(selection, model, custom_objects)
    left = [(name, _class_of(analysis, name), why) for name, why in analysis.left_alone.items()]
    report = ChannelReport(
        fraction=amount.fraction,
        ranking=amount.ranking.value,
        criterion=criterion.value,
        layers=layer_widths(selection),
        left_alone=left,
        before=static_totals(model, batch_size),
        after=static_totals(new, batch_size),
        flops=flops_before_after(model, new, seq_len),
        batch_size=batch_size,
    )
    return PruneResult(new, report, selection)


def _class_of(analysis: Analysis, name: str) -> str:
    return next((n.class_name for n in analysis.nodes if n.name == name), "?")


def pruned_model_config(config: dict[str, Any], fraction: float | Amount, model: Any = None) -> dict[str, Any]:
    """The config with the widths a uniform `fraction` gives, from the config alone (no weights).

    `model` is the same model built (unallocated is fine); without it, it is built unallocated here."""
    amount = fraction if isinstance(fraction, Amount) else Amount(float(fraction))
    config = copy.deepcopy(dict(config))
    compile_config = config.pop("compile_config", None)
    if model is None:
        from kmemopt.load.build import build_from_config

        model = build_from_config(copy.deepcopy(config))
    out = pruned_config(select(model_analysis(model, config), amount))
    if compile_config is not None:
        out["compile_config"] = compile_config
    return out
