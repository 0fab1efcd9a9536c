"""A quick sensitivity pass: how much the model's outputs move when one channel group alone is pruned.

Each prunable channel group is pruned alone at the probe amount (its lowest-importance channels go, as
the real pruning would remove them), the model is rebuilt and run on a few batches (the user's data,
or synthetic inputs), and its outputs are compared with the original's: relative L2 error (the
sensitivity) and, for class scores, top-1 agreement. The allocation then gives each group a weight,
the mean sensitivity over its own (clipped to [1/`SPREAD`, `SPREAD`]): under `--prune-scope
sensitivity` a group loses weight x fraction of its channels, so a sensitive group is pruned less and
an insensitive one more. The fraction itself is then searched so that the model has no more
parameters than uniform pruning at the asked amount would leave (step.py): the same parameter
target, spent where it hurts least.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kmemopt.passes.channels.graph import Analysis
from kmemopt.passes.channels.select import Amount, Selection

SPREAD = 4.0  # the largest ratio of a group's weight to the mean (either way)
PROBE_SAMPLES = 64  # inputs each probe runs on


@dataclass(frozen=True)
class GroupSensitivity:
    """One group pruned alone at `probe_fraction` (`kept` of `size` channels left): how far the outputs
    moved, and the weight the allocation gives it."""

    group: int
    layers: tuple[str, ...]  # the layers that make its channels
    size: int
    kept: int
    relative_l2: float
    top1_agreement: float | None
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "size": self.size,
            "kept_at_probe": self.kept,
            "relative_l2": round(self.relative_l2, 6),
            "top1_agreement": None if self.top1_agreement is None else round(self.top1_agreement, 6),
            "weight": round(self.weight, 6),
        }


def probe_inputs(inputs: Any, samples: int = PROBE_SAMPLES) -> Any:
    """The first `samples` rows of a fidelity `Inputs` (the probes run many times: a few batches do)."""
    from dataclasses import replace

    arrays = tuple(a[:samples] for a in inputs.arrays)
    labels = inputs.labels[:samples] if inputs.labels is not None else None
    return replace(inputs, arrays=arrays, labels=labels)


def measure_sensitivity(
    analysis: Analysis,
    model: Any,
    fraction: float,
    scores: dict[int, np.ndarray] | None,
    inputs: Any,
    *,
    custom_objects: dict[str, Any] | None = None,
    progress: Any = None,
) -> list[GroupSensitivity]:
    """Each prunable channel group pruned alone at `fraction`, against the original on `inputs` (a
    fidelity `Inputs`); weights set by `allocate`."""
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.channels.rewrite import rebuild

    say = progress or (lambda message: None)
    groups = analysis.groups
    reference = fid.predict(model, inputs)
    amount = Amount(fraction)
    out: list[GroupSensitivity] = []
    channel_groups = [g for g in analysis.prunable() if groups.kind[g] == "channels"]
    for i, g in enumerate(channel_groups):
        size = int(groups.size[g] or 0)
        k = amount.keep(size)
        makers = tuple(dict.fromkeys(groups.makers[g]))
        if k >= size:
            out.append(GroupSensitivity(g, makers, size, k, 0.0, None))
            continue
        if scores is not None and g in scores:
            kept = np.sort(np.argsort(-np.asarray(scores[g], dtype=np.float64), kind="stable")[:k])
        else:
            kept = np.arange(k)
        say(f"Sensitivity {i + 1}/{len(channel_groups)}: {', '.join(makers)} alone at {fraction:.0%} ...")
        pruned = rebuild(Selection(analysis, {g: kept}), model, custom_objects)
        compared = [
            fid.compare_output(str(j), r, n) for j, (r, n) in enumerate(zip(reference, fid.predict(pruned, inputs)))
        ]
        rel = float(np.mean([c.relative_l2_error for c in compared]))
        top1 = [c.top1_agreement for c in compared if c.top1_agreement is not None]
        out.append(GroupSensitivity(g, makers, size, k, rel, float(np.mean(top1)) if top1 else None))
    return allocate(out)


def allocate(measured: list[GroupSensitivity]) -> list[GroupSensitivity]:
    """Weights: the mean sensitivity over the group's, clipped to [1/SPREAD, SPREAD] (all 1 when nothing
    moved the outputs)."""
    from dataclasses import replace

    values = [m.relative_l2 for m in measured if m.kept < m.size]
    mean = float(np.mean(values)) if values else 0.0
    if mean <= 0:
        return [replace(m, weight=1.0) for m in measured]
    out = []
    for m in measured:
        ratio = mean / m.relative_l2 if m.relative_l2 > 0 else SPREAD
        out.append(replace(m, weight=float(min(SPREAD, max(1.0 / SPREAD, ratio)))))
    return out


def weights_of(measured: list[GroupSensitivity]) -> dict[int, float]:
    return {m.group: m.weight for m in measured}


PROBE_FRACTION = 0.5  # the amount each group is probed at when no amount is asked (a --target-* option)


def allocate_by_sensitivity(
    model: Any,
    analysis: Analysis,
    fraction: float | None,
    scores: dict[int, np.ndarray] | None,
    inputs: Any,
    *,
    progress: Any = None,
) -> tuple[list[GroupSensitivity], dict[int, float] | None, Any]:
    """The sensitivity pass on (the first `PROBE_SAMPLES` of) `inputs`, the groups' weights, and, for an
    asked `fraction`, the search (`target.Search`) for the sensitivity-weighted amount that keeps no more
    parameters than uniform pruning at `fraction`. Weights None: even the most pruning of the insensitive
    groups cannot match uniform pruning's count (prune uniformly instead)."""
    from kmemopt.errors import UsageError
    from kmemopt.load.build import build_from_config
    from kmemopt.passes.channels.rewrite import pruned_config
    from kmemopt.passes.channels.select import Ranking, select
    from kmemopt.passes.channels.target import Target, search_fraction

    say = progress or (lambda message: None)
    at = float(fraction) if fraction is not None else PROBE_FRACTION
    measured = measure_sensitivity(analysis, model, at, scores, probe_inputs(inputs), progress=say)
    weights = weights_of(measured)
    if fraction is None or at <= 0:
        return measured, weights, None
    uniform = int(build_from_config(pruned_config(select(analysis, Amount(at), scores))).count_params())
    say(f"Searching the sensitivity-weighted amount with the parameters of uniform {at:.0%} ({uniform:,}) ...")
    try:
        equal = search_fraction(
            analysis, Target("params", value=uniform), ranking=Ranking.sensitivity, scores=scores, weights=weights
        )
    except UsageError:
        return measured, None, None
    return measured, weights, equal
