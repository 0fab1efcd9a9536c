"""`kmemopt shrink`: parse, call kmemopt.passes.pipeline, render, exit."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kmemopt.commands._common import (
    CustomObjectsOpt,
    Format,
    ModelArg,
    emit,
    guarded,
    parse_input_shapes,
    progress,
)


class QuantizeChoice(str, Enum):
    int8 = "int8"
    int4 = "int4"
    float16 = "float16"
    bfloat16 = "bfloat16"


class MixedChoice(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"


class CriterionChoice(str, Enum):
    magnitude = "magnitude"
    bn = "bn"
    activation = "activation"
    gradient = "gradient"


class ScopeChoice(str, Enum):
    uniform = "uniform"
    global_ = "global"
    sensitivity = "sensitivity"


class RecoverChoice(str, Enum):
    distill = "distill"
    finetune = "finetune"


PASSES = "Passes (applied in this order)"
FIDELITY = "Fidelity"


def command(
    ctx: typer.Context,
    model: ModelArg,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Output .keras file (default: <stem>.slim.keras beside the input)."),
    ] = None,
    keep_optimizer: Annotated[
        bool,
        typer.Option(
            "--keep-optimizer/--strip-optimizer",
            help="Keep or drop saved optimizer state (dropped by default).",
            rich_help_panel=PASSES,
        ),
    ] = False,
    prune: Annotated[
        Optional[str],
        typer.Option(
            "--prune",
            help="Magnitude-prune kernels to this sparsity (0.5 or 50%); implies --compress.",
            rich_help_panel=PASSES,
        ),
    ] = None,
    prune_channels: Annotated[
        Optional[str],
        typer.Option(
            "--prune-channels",
            help="Remove this fraction of channels (50%): a smaller network, rebuilt from plain Keras layers; "
            "runs first.",
            rich_help_panel=PASSES,
        ),
    ] = None,
    target_params: Annotated[
        Optional[str],
        typer.Option(
            "--target-params",
            help="Prune the fewest channels that bring the parameters to this (0.3x, or a count like 2M).",
            rich_help_panel=PASSES,
        ),
    ] = None,
    target_memory: Annotated[
        Optional[str],
        typer.Option(
            "--target-memory",
            help="Prune the fewest channels that bring the static training peak (at --batch-size) to this "
            "(2GiB or 0.5x).",
            rich_help_panel=PASSES,
        ),
    ] = None,
    prune_criterion: Annotated[
        Optional[CriterionChoice],
        typer.Option(
            "--prune-criterion",
            help="Channel importance: magnitude (filter L1), bn (BatchNorm |gamma|), activation or gradient "
            "(|activation x gradient|; both need --data). Default: activation with --data, else magnitude.",
            rich_help_panel=PASSES,
        ),
    ] = None,
    prune_scope: Annotated[
        ScopeChoice,
        typer.Option(
            "--prune-scope",
            help="uniform: every layer loses the same fraction; global: one ranking, each layer keeps 10%; "
            "sensitivity: each group pruned alone first (on --data or synthetic inputs), sensitive ones lose less.",
            rich_help_panel=PASSES,
        ),
    ] = ScopeChoice.uniform,
    recover: Annotated[
        Optional[RecoverChoice],
        typer.Option(
            "--recover",
            help="Train the pruned model back on --data: distill (inputs only) or finetune (labels).",
            rich_help_panel=PASSES,
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="At most this many --recover epochs.", rich_help_panel=PASSES)
    ] = 5,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate",
            help="--recover distill's starting learning rate (default: the one the model was trained with, "
            "else 1e-3); it is cut 0.3x when the held-out loss stalls.",
            rich_help_panel=PASSES,
        ),
    ] = None,
    prune_first_last: Annotated[
        bool,
        typer.Option(
            "--prune-first-last", help="Also prune the first and last weighted layers.", rich_help_panel=PASSES
        ),
    ] = False,
    quantize: Annotated[
        Optional[QuantizeChoice],
        typer.Option(
            "--quantize",
            "-q",
            help="int8/int4 (Keras; other float kernels stored float16) or float16/bfloat16 storage.",
            rich_help_panel=PASSES,
        ),
    ] = None,
    allow_custom_layers: Annotated[
        bool,
        typer.Option(
            "--allow-custom-layers",
            help="Quantize convolutions to int8 with kmemopt's layers (load after `import kmemopt`).",
            rich_help_panel=PASSES,
        ),
    ] = False,
    mixed_precision: Annotated[
        Optional[MixedChoice],
        typer.Option(
            "--mixed-precision",
            help="Set a mixed dtype policy for training (lowers the training peak, not the file).",
            rich_help_panel=PASSES,
        ),
    ] = None,
    compress: Annotated[
        bool, typer.Option("--compress", help="Write the container with deflate (lossless).", rich_help_panel=PASSES)
    ] = False,
    skip: Annotated[
        Optional[str],
        typer.Option(
            "--skip", help="Leave layers whose path matches this regex alone in every pass.", rich_help_panel=PASSES
        ),
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help=".npy, or .npz keyed by input name or x (labels under y). Default: synthetic inputs.",
            rich_help_panel=FIDELITY,
        ),
    ] = None,
    eval_data: Annotated[
        Optional[Path],
        typer.Option(
            "--eval-data",
            help="Data for the fidelity check and gates when --data trains (--recover); default: --data.",
            rich_help_panel=FIDELITY,
        ),
    ] = None,
    samples: Annotated[
        Optional[int],
        typer.Option(
            "--samples", min=1, help="Use at most this many samples (synthetic default 64).", rich_help_panel=FIDELITY
        ),
    ] = None,
    min_agreement: Annotated[
        Optional[str],
        typer.Option(
            "--min-agreement",
            help="Gate: top-1 agreement at least this (0.99 or 99%); else exit 1, write nothing.",
            rich_help_panel=FIDELITY,
        ),
    ] = None,
    max_accuracy_drop: Annotated[
        Optional[str],
        typer.Option(
            "--max-accuracy-drop",
            help="Gate: accuracy may drop at most this (0.01 or 1%); needs labels.",
            rich_help_panel=FIDELITY,
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Quantize one layer at a time to find the layers that hurt most.",
            rich_help_panel=FIDELITY,
        ),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what the passes would do; write nothing.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing output file (never the input).")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Batch size for the peaks in the report.")
    ] = 32,
    seq_len: Annotated[
        Optional[int],
        typer.Option("--seq-len", min=1, help="Fill unknown input dimensions (peaks and synthetic inputs)."),
    ] = None,
    input_shape: Annotated[
        Optional[list[str]],
        typer.Option("--input-shape", help="NAME=D1,D2: an input's dimensions after the batch. Repeatable."),
    ] = None,
    custom_objects: CustomObjectsOpt = None,
    max_memory: Annotated[
        Optional[str],
        typer.Option(
            "--max-memory",
            help="Memory running the model may use, e.g. 8GiB: over it by the static estimate, exit 3 "
            "before anything runs (default: half the physical memory).",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds the fresh-process reload check may run.")
    ] = 900,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Report format.")] = Format.table,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write the report to this file instead of stdout.")
    ] = None,
    all_layers: Annotated[
        bool, typer.Option("--all-layers", help="List every layer, not only those that changed.")
    ] = False,
) -> None:
    """Write a slimmer copy of a model, verified to load and to stay faithful, with a before/after report.

    Example: kmemopt shrink model.keras --quantize int8 --data test.npz --min-agreement 99%
    """
    with guarded(ctx):
        from kmemopt.errors import GateFailed
        from kmemopt.passes.pipeline import make_request
        from kmemopt.passes.pipeline import shrink as run_shrink
        from kmemopt.report import to_json
        from kmemopt.report.shrink import render_shrink, shrink_markdown
        from kmemopt.write.fileio import refuse_same_file

        def render(result) -> None:
            data = result.to_dict()
            text = None
            if fmt is Format.json:
                text = to_json(data)
            elif fmt is Format.markdown:
                text = shrink_markdown(data)
            elif fmt is Format.html:
                from kmemopt.report.html import shrink_html

                text = shrink_html(data)
            emit(report, lambda console: render_shrink(data, console, all_layers=all_layers), text)

        request = make_request(
            quantize=quantize,
            allow_custom_layers=allow_custom_layers,
            prune=prune,
            prune_first_last=prune_first_last,
            compress=compress,
            mixed_precision=mixed_precision,
            skip=skip,
            keep_optimizer=keep_optimizer,
            data=data,
            samples=samples,
            min_agreement=min_agreement,
            max_accuracy_drop=max_accuracy_drop,
            explain=explain,
            dry_run=dry_run,
            force=force,
            batch_size=batch_size,
            custom_objects=custom_objects,
            seq_len=seq_len,
            input_shapes=parse_input_shapes(input_shape),
            max_memory=max_memory,
            timeout=timeout,
            prune_channels=prune_channels,
            recover=recover,
            epochs=epochs,
            learning_rate=learning_rate,
            eval_data=eval_data,
            target_params=target_params,
            target_memory=target_memory,
            prune_criterion=prune_criterion,
            prune_scope=prune_scope,
        )
        refuse_same_file(report, model, "report")
        refuse_same_file(report, out, "report")
        with progress("Shrinking ...") as update:
            try:
                result = run_shrink(model, out, request, progress=update)
            except GateFailed as exc:
                if exc.result is not None:
                    render(exc.result)
                raise
        render(result)
