"""`kmemopt check`: memory and size budgets for CI. Parse, call kmemopt.gate.check, render, exit."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kmemopt.commands._common import (
    CustomObjectsOpt,
    OptimizerOpt,
    OutputOpt,
    SeqLenOpt,
    emit,
    guarded,
    parse_input_shapes,
    progress,
    stderr_console,
)


class CheckFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"
    github = "github"
    junit = "junit"
    html = "html"


def _budget_option(metric: str, example: str) -> Any:
    """The `--max-<metric>` option: the metadata of an `Annotated[Optional[str], ...]` parameter.

    A call is fine inside `Annotated[...]` (its metadata is any value); a call that returns the whole
    `Annotated` type is not a type a checker can read.
    """
    return typer.Option(
        f"--max-{metric}",
        help=f"Fail when the {metric.replace('-', ' ')} exceeds this (e.g. {example}).",
        rich_help_panel="Budgets",
    )


def command(
    ctx: typer.Context,
    paths: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Model files or globs. Default: the budgets in pyproject.toml \\[tool.kmemopt].", show_default=False
        ),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", help="A TOML file with \\[tool.kmemopt] (default: pyproject.toml, searched upwards)."),
    ] = None,
    max_file_size: Annotated[Optional[str], _budget_option("file-size", "50MB")] = None,
    max_params: Annotated[Optional[str], _budget_option("params", "25M")] = None,
    max_param_memory: Annotated[Optional[str], _budget_option("param-memory", "100MiB")] = None,
    max_inference_memory: Annotated[Optional[str], _budget_option("inference-memory", "2GiB")] = None,
    max_training_memory: Annotated[Optional[str], _budget_option("training-memory", "6GiB")] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", "-b", min=1, help="Batch size for memory budgets (default: the config's, else 32)."
        ),
    ] = None,
    optimizer: OptimizerOpt = None,
    seq_len: SeqLenOpt = None,
    input_shape: Annotated[
        Optional[list[str]],
        typer.Option("--input-shape", help="NAME=D1,D2: fill an input's unknown dimensions. Repeatable."),
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option(
            "--baseline",
            help="A `profile --format json` or `check --format json` output to compare with.",
            rich_help_panel="Baseline",
        ),
    ] = None,
    max_increase: Annotated[
        Optional[str],
        typer.Option(
            "--max-increase",
            help="Fail when a value grew more than this over the baseline (e.g. 5%).",
            rich_help_panel="Baseline",
        ),
    ] = None,
    min_increase: Annotated[
        Optional[str],
        typer.Option(
            "--min-increase",
            help="...and by more than this many bytes, for byte metrics (a noise floor, e.g. 1MB).",
            rich_help_panel="Baseline",
        ),
    ] = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure", help="Use memory measured in a child process (docs/measure.md) instead of the static estimate."
        ),
    ] = False,
    custom_objects: CustomObjectsOpt = None,
    why: Annotated[
        bool,
        typer.Option(
            "--why",
            help="Also show which layers grew or shrank against the baseline, new and removed ones (per-layer diff).",
            rich_help_panel="Baseline",
        ),
    ] = False,
    fmt: Annotated[CheckFormat, typer.Option("--format", "-f", help="Output format.")] = CheckFormat.table,
    output: OutputOpt = None,
    exit_zero: Annotated[
        bool, typer.Option("--exit-zero", help="Exit 0 even when a budget fails (report only).")
    ] = False,
) -> None:
    """Fail (exit 1) when a model outgrows its memory or size budget; every budget is evaluated.

    Example: kmemopt check models/*.keras --max-file-size 50MB --max-training-memory 6GiB -b 32
    Example: kmemopt check --baseline main.json --max-increase 5% --why --format markdown

    With no arguments, checks the \\[\\[tool.kmemopt.budget]] entries of pyproject.toml.

    Exit codes: 0 all budgets pass, 1 an error-level budget fails, 2 usage or config error (or a memory budget on a model that needs --seq-len; the others are still checked), 3 a model was rejected as unsafe or malformed (the other models are still checked), 4 internal error.
    """
    with guarded(ctx):
        from kmemopt.gate.check import check as run_check

        shapes = parse_input_shapes(input_shape)
        with progress("Checking ...") as update:
            report = run_check(
                paths or (),
                config=config,
                max_file_size=max_file_size,
                max_params=max_params,
                max_param_memory=max_param_memory,
                max_inference_memory=max_inference_memory,
                max_training_memory=max_training_memory,
                batch_size=batch_size,
                optimizer=optimizer,
                baseline=baseline,
                max_increase=max_increase,
                min_increase=min_increase,
                seq_len=seq_len,
                input_shapes=shapes,
                custom_objects=custom_objects,
                measure=measure,
                on_model=lambda name: update(f"Checking {name} ..."),
                why=why,
            )
        report_dict = report.to_dict()
        from kmemopt.report import render_error, to_json
        from kmemopt.report.check import check_github, check_junit, check_markdown, render_check
        from kmemopt.report.html import check_html

        text_formats = {
            CheckFormat.json: to_json,
            CheckFormat.markdown: check_markdown,
            CheckFormat.github: check_github,
            CheckFormat.junit: check_junit,
            CheckFormat.html: check_html,
        }
        text = text_formats[fmt](report_dict) if fmt in text_formats else None
        emit(output, lambda console: render_check(report_dict, console), text)
        console = stderr_console()
        for err in report.errors:
            rule = f"[{err.rule}] " if err.rule else ""
            render_error(console, f"{err.model} was not checked: {rule}{err.message}")
        code = report.exit_code(exit_zero=exit_zero)
        if code:
            raise typer.Exit(code)
