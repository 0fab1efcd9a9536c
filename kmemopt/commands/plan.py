"""`kmemopt plan`: parse, call kmemopt.plan.run, render, exit (1 when no plan fits the budget)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kmemopt.commands._common import (
    CustomObjectsOpt,
    ModelArg,
    OptimizerOpt,
    SeqLenOpt,
    emit,
    guarded,
    parse_input_shapes,
    progress,
)


class PlanFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"  # one self-contained page with charts (docs/report.md)


class Phase(str, Enum):
    train = "train"
    infer = "infer"


APPLY = "Write and measure"


def command(
    ctx: typer.Context,
    model: ModelArg,
    budget: Annotated[str, typer.Option("--budget", help="The memory to fit in, e.g. 8GiB.", show_default=False)],
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="The batch size the step must run at.")
    ] = 32,
    phase: Annotated[Phase, typer.Option("--phase", help="Fit a training step or inference.")] = Phase.train,
    freeze: Annotated[
        Optional[str],
        typer.Option("--freeze", help="Regex of layer paths the freezing strategy freezes (default: try the last N)."),
    ] = None,
    train_last: Annotated[
        Optional[int],
        typer.Option("--train-last", min=1, help="Freezing strategy: train only the last N weighted layers."),
    ] = None,
    only: Annotated[
        Optional[str],
        typer.Option(
            "--only",
            help="Comma-separated strategies to use: batch_size, mixed_precision, remat, optimizer, lora, freeze, "
            "weight_dtype (and channel_pruning when available; distribution with --devices).",
        ),
    ] = None,
    optimizer: OptimizerOpt = None,
    devices: Annotated[
        Optional[int],
        typer.Option(
            "--devices",
            min=2,
            help="Plan for this many devices with keras.distribution (JAX): the budget is per device, and data and "
            "model parallelism are strategies.",
        ),
    ] = None,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Write the plan's model (dtype policy, trainable flags, optimizer with accumulation), verified "
            "to reload with plain Keras. Only when the plan fits.",
            rich_help_panel=APPLY,
        ),
    ] = False,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            "-o",
            help="The file --apply writes (default: <stem>.plan.keras beside the input).",
            rich_help_panel=APPLY,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite an existing output file (never the input).", rich_help_panel=APPLY),
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Run the baseline and the plan's model (the file --apply writes) in a child process and show "
            "measured beside predicted peaks.",
            rich_help_panel=APPLY,
        ),
    ] = False,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Inputs for --measure and the reload check: .npy, or .npz keyed by input name or x.",
            rich_help_panel=APPLY,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Where --measure runs: cpu, gpu or auto.", rich_help_panel=APPLY)
    ] = "cpu",
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Seconds one child process may run.", rich_help_panel=APPLY),
    ] = 900,
    max_memory: Annotated[
        Optional[str],
        typer.Option(
            "--max-memory",
            help="Memory running the model may use, e.g. 8GiB (default: half the physical memory).",
            rich_help_panel=APPLY,
        ),
    ] = None,
    input_shape: Annotated[
        Optional[list[str]],
        typer.Option("--input-shape", help="NAME=D1,D2: an input's dimensions after the batch. Repeatable."),
    ] = None,
    seq_len: SeqLenOpt = None,
    custom_objects: CustomObjectsOpt = None,
    fmt: Annotated[PlanFormat, typer.Option("--format", "-f", help="Report format.")] = PlanFormat.table,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write the report to this file instead of stdout.")
    ] = None,
) -> None:
    """Find the cheapest way to fit a training step (or inference) in a memory budget, and prove it.

    Every strategy (smaller batch with gradient accumulation, mixed precision, remat, another optimizer, LoRA, freezing, 16/8/4-bit weights) is priced by the static profile on the model rebuilt with it; the cheapest combination that fits is shown with its Keras code.

    Exit codes: 0 a plan fits, 1 no plan fits the budget, 2 usage error, 3 model rejected, 4 internal error.

    Example: kmemopt plan model.keras --budget 8GiB -b 64
    Example: kmemopt plan model.keras --budget 8GiB --apply -o model.plan.keras --measure
    Example: kmemopt plan model.keras --budget 8GiB --format html --report plan.html
    """
    with guarded(ctx):
        from kmemopt.plan.request import make_request
        from kmemopt.plan.run import run
        from kmemopt.report import to_json
        from kmemopt.report.plan import plan_markdown, render_plan
        from kmemopt.write.fileio import refuse_same_file

        refuse_same_file(report, model, "report")
        refuse_same_file(report, out, "report")
        names = [n.strip() for n in only.split(",") if n.strip()] if only else None
        with progress(f"Planning {model} ...") as update:
            request = make_request(
                budget=budget,
                batch_size=batch_size,
                phase=phase.value,
                optimizer=optimizer,
                freeze=freeze,
                train_last=train_last,
                only=names,
                apply=apply,
                out=out,
                force=force,
                measure=measure,
                data=data,
                device=device,
                input_shapes=parse_input_shapes(input_shape),
                seq_len=seq_len,
                custom_objects=custom_objects,
                max_memory=max_memory,
                timeout=timeout,
                devices=devices,
            )
            result = run(model, request, progress=update)
        data_out = result.to_dict()
        text = None
        if fmt is PlanFormat.json:
            text = to_json(data_out)
        elif fmt is PlanFormat.markdown:
            text = plan_markdown(data_out)
        elif fmt is PlanFormat.html:
            from kmemopt.report.html import plan_html

            text = plan_html(data_out)
        emit(report, lambda console: render_plan(data_out, console), text)
        if result.plan is None or not result.plan.fits:
            raise typer.Exit(1)
