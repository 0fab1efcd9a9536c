"""`kmemopt shrink --prune-channels`: the step that runs first, making the model the other passes work on.

Importance is data-driven (mean |activation|) when `--data` is given, filter magnitude (L1) otherwise;
`--recover` trains the pruned model back on `--data` before the fidelity gates judge it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmemopt.passes.base import Action, PassResult, Reason

NAME = "prune-channels"


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
) -> PruneStep:
    """Prune `model` as `request` (a `ShrinkRequest`) asks; the model itself is not changed."""
    from kmemopt.passes import fidelity as fid
    from kmemopt.passes.channels.prune import prune_channels
    from kmemopt.passes.channels.recover import recover
    from kmemopt.passes.channels.select import Criterion

    say = progress or (lambda message: None)
    fraction = float(request.passes.prune_channels)
    inputs = fid.load_inputs(model, request.data, seq_len=seq_len) if request.data is not None else None
    criterion = Criterion.activation if inputs is not None else Criterion.l1
    say(f"Pruning {fraction:.0%} of channels ({criterion.value} importance) ...")
    pruned = prune_channels(
        model, fraction, criterion=criterion, data=inputs.feed() if inputs is not None else None, batch_size=None
    )
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
        f"importance: {'mean |activation| on --data' if inputs is not None else 'filter L1 norm (no --data)'}; "
        f"parameters {pruned.report.before.params:,} -> {pruned.report.after.params:,}"
    )
    info: dict[str, Any] = pruned.report.to_dict()
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
