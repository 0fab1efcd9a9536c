"""`kmemopt shrink --prune-channels`: the step that runs first, making the model the other passes work on.

Importance is `--prune-criterion` (by default data-driven, mean |activation|, when `--data` is given,
filter magnitude (L1) otherwise); the amount is `--prune-channels`, or the smallest that reaches
`--target-params`/`--target-memory` (target.py); `--recover` trains the pruned model back on `--data`
before the fidelity gates judge it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmemopt.errors import UsageError
from kmemopt.passes.base import Action, PassResult, Reason
from kmemopt.passes.channels.select import Criterion

NAME = "prune-channels"

CRITERIA = {
    Criterion.l1: "filter L1 norm",
    Criterion.l2: "filter L2 norm",
    Criterion.bn: "BatchNormalization |gamma| (filter L1 norm where no BatchNorm follows)",
    Criterion.activation: "mean |activation| on --data",
    Criterion.gradient: "|activation x gradient| of the loss on --data",
}


def _compile_loss(compile_config: dict[str, Any] | None, labels: Any) -> Any:
    """The model's own loss (a Keras built-in named in its compile config) for gradient importance on
    labels; None when there are no labels or no such loss (the default loss is used)."""
    if labels is None or not compile_config or not isinstance(compile_config.get("loss"), (str, dict)):
        return None
    from kmemopt._keras import import_keras

    keras = import_keras()
    loss = compile_config["loss"]
    if isinstance(loss, dict) and loss.get("module") not in (None, "keras.losses"):
        return None  # only Keras's own losses: nothing the file names is imported
    try:
        return keras.losses.get(loss)
    except (ValueError, TypeError):
        return None


def criterion_of(name: str | None, *, has_data: bool) -> Criterion:
    """`--prune-criterion`: magnitude (filter L1), bn, activation or gradient; by default activation with --data,
    magnitude without."""
    if name is None:
        return Criterion.activation if has_data else Criterion.l1
    return Criterion.l1 if name == "magnitude" else Criterion(name)


@dataclass
class PruneStep:
    model: Any  # the pruned (and recovered) model
    result: PassResult  # per layer, for the passes list of the report
    info: dict[str, Any]  # ShrinkResult.channel_pruning


def prune_step(
    model: Any,
    request: Any,
    *,
    compile_config: dict[str, Any] | None = None,
    seq_len: int | None = None,
    train: bool = True,
    progress: Callable[[str], None] | None = None,
    optimizer: Any = None,
) -> PruneStep:
    """Prune `model` as `request` (a `ShrinkRequest`) asks; the model itself is not changed."""
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.channels.prune import model_analysis, prune_channels, scores_for
    from kmemopt.passes.channels.recover import recover
    from kmemopt.passes.channels.select import Amount, Ranking
    from kmemopt.passes.channels.target import search_fraction

    say = progress or (lambda message: None)
    inputs = fid.load_inputs(model, request.data, seq_len=seq_len) if request.data is not None else None
    criterion = criterion_of(getattr(request, "prune_criterion", None), has_data=inputs is not None)
    if criterion in (Criterion.activation, Criterion.gradient) and inputs is None:
        raise UsageError(f"--prune-criterion {criterion.value} ranks channels on your data; give --data.")
    ranking = Ranking(getattr(request, "prune_scope", None) or "uniform")
    target = getattr(request, "prune_target", None)
    analysis = model_analysis(model)
    feed = inputs.feed() if inputs is not None else None
    labels = inputs.labels if inputs is not None else None
    scores = scores_for(analysis, model, criterion, feed, labels, _compile_loss(compile_config, labels))
    weights, sensitivity, equal = None, None, None
    if ranking is Ranking.sensitivity:
        sensitivity, weights, equal = _sensitivity(model, request, analysis, scores, inputs, seq_len, say)
    search = None
    if target is not None:
        say(f"Searching the amount of channel pruning that reaches {target.option} {target.asked()} ...")
        search = search_fraction(
            analysis,
            target,
            ranking=ranking,
            scores=scores if ranking is not Ranking.uniform else None,
            batch_size=request.batch_size,
            optimizer=optimizer,
            seq_len=seq_len,
            input_shapes=dict(request.input_shapes) if request.input_shapes else None,
            weights=weights,
        )
        fraction = search.fraction
    elif equal is not None:
        fraction = equal.fraction
    else:
        fraction = float(request.passes.prune_channels)
    say(f"Pruning {fraction:.1%} of channels ({criterion.value} importance, {ranking.value} ranking) ...")
    pruned = prune_channels(
        model, Amount(fraction, ranking), criterion=criterion, data=feed, batch_size=None, scores=scores,
        analysis=analysis, seq_len=seq_len, weights=weights,
    )  # fmt: skip
    if sensitivity is not None:
        pruned.report.sensitivity = [m.to_dict() for m in sensitivity]
    result = PassResult(NAME)
    for row in pruned.report.layers:
        if row.after < row.before:
            result.apply(
                row.layer, row.class_name, Action.CHANNELS_PRUNED, what=row.what, before=row.before, after=row.after
            )
        else:
            why = row.kept_because or "the amount asked leaves it whole"
            result.skip(row.layer, row.class_name, Reason.CHANNELS_KEPT, what=row.what, width=row.before, why=why)
    result.notes.append(
        f"importance: {CRITERIA[criterion]}; {ranking.value} ranking; "
        f"parameters {pruned.report.before.params:,} -> {pruned.report.after.params:,}"
    )
    if sensitivity is not None and weights is None:
        result.notes.append(
            "sensitivity ranking: the sensitive groups hold too many parameters to match uniform pruning's count; "
            "pruned uniformly"
        )
    if equal is not None:
        result.notes.append(
            f"sensitivity ranking: each group loses its weight x {fraction:.1%} of its channels, the amount that "
            f"leaves at most the {equal.limit:,} parameters uniform {float(request.passes.prune_channels):.0%} would"
        )
    info: dict[str, Any] = pruned.report.to_dict()
    info["target"] = search.to_dict() if search is not None else None
    if search is not None:
        result.notes.append(
            f"{search.target.option} {search.target.asked()} (at most {search.limit:,}): the smallest amount "
            f"reaching it is {search.fraction:.1%} ({search.reached:,})"
        )
    info["recovery"] = None
    if train and request.recover is not None and inputs is not None:
        say(f"Recovering the pruned model ({request.recover}, up to {request.epochs} epochs) ...")
        rec = recover(
            pruned.model,
            model,
            inputs.feed(),
            inputs.labels,
            mode=request.recover,
            epochs=request.epochs,
            learning_rate=request.learning_rate,
            batch_size=request.batch_size,
            compile_config=compile_config,
            progress=say,
        )
        info["recovery"] = rec.to_dict()
        result.notes.append(
            f"recovery: {rec.method}; {rec.epochs_run} epoch(s)" + (", stopped early" if rec.stopped_early else "")
        )
    elif request.recover is None and fraction > 0:
        result.notes.append("not trained back: accuracy may drop a lot; --recover distill needs only inputs (--data)")
    return PruneStep(pruned.model, result, info)


def _sensitivity(model, request, analysis, scores, inputs, seq_len, say):
    """The sensitivity pass on --data (else synthetic inputs); see sensitivity.allocate_by_sensitivity."""
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.channels.sensitivity import allocate_by_sensitivity

    probe = inputs if inputs is not None else fid.load_inputs(model, None, seq_len=seq_len)
    return allocate_by_sensitivity(model, analysis, request.passes.prune_channels, scores, probe, progress=say)
