"""`kmemopt profile`: parse, call kmemopt.api.profile (and the measurement on request), render, exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kmemopt.commands._common import (
    CustomObjectsOpt,
    Format,
    FormatOpt,
    ModelArg,
    OptimizerOpt,
    OutputOpt,
    SeqLenOpt,
    emit,
    guarded,
    parse_input_shapes,
    progress,
)
from kmemopt.errors import UsageError


def command(
    ctx: typer.Context,
    model: ModelArg,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Batch size for activations and peaks.")
    ] = 32,
    optimizer: OptimizerOpt = None,
    input_shape: Annotated[
        Optional[list[str]],
        typer.Option(
            "--input-shape", help="NAME=D1,D2: fill an input's unknown dimensions (after the batch). Repeatable."
        ),
    ] = None,
    seq_len: SeqLenOpt = None,
    budget: Annotated[
        Optional[str], typer.Option("--budget", help="Memory budget, e.g. 16GiB: prints the largest batch that fits.")
    ] = None,
    custom_objects: CustomObjectsOpt = None,
    top: Annotated[
        Optional[int],
        typer.Option(
            "--top",
            min=0,
            help="Show the N heaviest layers, the rest summed in one row (default: 25 for models of over 50 "
            "layers; 0 shows all).",
        ),
    ] = None,
    fmt: FormatOpt = Format.table,
    output: OutputOpt = None,
    measure: Annotated[
        bool,
        typer.Option("--measure", help="Also run the model for real (in a child process) and show measured peaks."),
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="Where to measure: cpu, gpu or auto (a GPU when one is visible).")
    ] = "cpu",
    gpu_index: Annotated[int, typer.Option("--gpu-index", min=0, help="Which GPU to measure on.")] = 0,
    batch_sizes: Annotated[
        Optional[str],
        typer.Option(
            "--batch-sizes", help="Measure several batch sizes, e.g. 1,8,32, and fit fixed + per-sample bytes."
        ),
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Inputs for --measure: .npy, or .npz keyed by input name or x.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds one measuring child may run (per batch size).")
    ] = 900,
    max_memory: Annotated[
        Optional[str],
        typer.Option(
            "--max-memory",
            help="Memory running the model may use, e.g. 8GiB: over it by the static estimate, exit 3 "
            "before anything runs; the child is stopped past it (default: half the physical memory).",
        ),
    ] = None,
    devices: Annotated[
        Optional[int],
        typer.Option("--devices", min=1, help="Per-device memory over N devices with keras.distribution (JAX)."),
    ] = None,
    distribution: Annotated[
        Optional[str],
        typer.Option(
            "--distribution", help="data (DataParallel) or model (ModelParallel with a LayoutMap); with --devices."
        ),
    ] = None,
    layout: Annotated[
        Optional[str],
        typer.Option("--layout", help="Model parallel: auto (shard big weights) or a FILE of regex -> axes rules."),
    ] = None,
    mesh: Annotated[
        Optional[str], typer.Option("--mesh", help="Model parallel: BATCHxMODEL devices, e.g. 2x4 (default 1xN).")
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="Also distribute the model for real on N virtual JAX CPU devices and show its shards."
        ),
    ] = False,
) -> None:
    """Show where a saved model's memory goes, layer by layer, without loading its weights.

    Example: kmemopt profile model.keras --batch-size 64 --budget 16GiB
    Example: kmemopt profile model.keras --measure --batch-sizes 1,8,32
    Example: kmemopt profile model.keras --format html -o report.html
    Example: kmemopt profile model.keras --devices 8 --distribution model --layout auto
    """
    with guarded(ctx):
        from kmemopt.api import profile as run_profile
        from kmemopt.units import parse_size
        from kmemopt.write.fileio import refuse_same_file

        refuse_same_file(output, model, "report")

        budget_bytes = parse_size(budget) if budget is not None else None
        shapes = parse_input_shapes(input_shape)
        with progress(f"Profiling {model} ..."):
            result = run_profile(
                model,
                batch_size=batch_size,
                optimizer=optimizer,
                input_shapes=shapes,
                seq_len=seq_len,
                budget=budget_bytes,
                custom_objects=custom_objects,
                xla=None,  # XLA's accounting on JAX, unless KMEMOPT_XLA=0 (the other commands skip it)
            )
        if measure or batch_sizes:
            from kmemopt.profiling.measure import Device, measure_profile, parse_batch_sizes

            if device not in {d.value for d in Device}:
                raise UsageError(f"--device takes cpu, gpu or auto. Received: {device!r}.")
            with progress(f"Measuring {model} ...") as update:
                result = measure_profile(
                    result,
                    model,
                    batch_sizes=parse_batch_sizes(batch_sizes),
                    optimizer=optimizer,
                    custom_objects=custom_objects,
                    data=data,
                    device=device,
                    gpu_index=gpu_index,
                    timeout_s=timeout,
                    max_memory_bytes=parse_size(max_memory) if max_memory else None,
                    on_phase=lambda p: update(f"Measuring {model}: {p} ..."),
                )
        if devices is not None or distribution is not None or mesh is not None or layout is not None or verify:
            from kmemopt.profiling.distribution import distribute

            with progress(f"Distributing {model} ..."):
                result = distribute(
                    result,
                    model,
                    devices=devices,
                    kind=distribution,
                    layout=layout,
                    mesh=mesh,
                    verify=verify,
                    optimizer=optimizer,
                )
        report = result.to_dict()
        from kmemopt.report import to_json
        from kmemopt.report.profile import profile_markdown, render_profile

        text = None
        if fmt is Format.json:
            text = to_json(report)
        elif fmt is Format.markdown:
            text = profile_markdown(report, top=top)
        elif fmt is Format.html:
            from kmemopt.report.html import profile_html

            text = profile_html(report)
        emit(output, lambda console: render_profile(report, console, top=top), text)
