"""The `kmemopt` command: parse, call the library, render, exit. No work is done here."""

from __future__ import annotations

import contextlib
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kmemopt import __version__
from kmemopt.errors import ExitCode, KmemoptError, UsageError, clip

app = typer.Typer(
    name="kmemopt",
    help="Memory profiler and optimizer for saved Keras models.\n\n"
    "Exit codes: 0 ok, 1 a budget or fidelity gate failed, 2 usage error or unreadable path, "
    "3 model rejected as unsafe or malformed, 4 internal error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


class Format(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


class _State:
    debug = False


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kmemopt {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Memory profiler and optimizer for saved Keras models."""
    _State.debug = debug
    _show_library_warnings()


def _stderr_console():
    from kmemopt.report import stderr_console

    return stderr_console()


def _stdout_console():
    from kmemopt.report import stdout_console

    return stdout_console()


def _show_library_warnings() -> None:
    """kmemopt's own warnings (a Keras internal missing, so a slower public path was taken) as one
    `warning:` line on stderr; every other warning as Python shows it."""
    import warnings

    from kmemopt.keras_compat.contracts import KerasCompatWarning

    shown = warnings.showwarning
    if getattr(shown, "_kmemopt", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, KerasCompatWarning):
            from kmemopt.report.safe import markup

            _stderr_console().print(
                f"[yellow]warning:[/yellow] {markup(str(message))}", highlight=False, soft_wrap=True
            )
        else:
            shown(message, category, filename, lineno, file, line)

    show._kmemopt = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def fail(exc: BaseException) -> None:
    """Print one sentence for a known error, or an internal-error line; exit with the documented code."""
    from kmemopt.report import render_error

    console = _stderr_console()
    if isinstance(exc, KmemoptError):
        if _State.debug:
            _print_traceback(console, exc)
        render_error(console, str(exc))
        raise typer.Exit(int(exc.exit_code))
    if _State.debug:
        _print_traceback(console, exc)
    render_error(
        console,
        f"internal error: {type(exc).__name__}: {clip(str(exc), 300)} "
        "(run with --debug for the traceback and report it).",
    )
    raise typer.Exit(int(ExitCode.INTERNAL))


def _print_traceback(console, exc: BaseException) -> None:
    """--debug: the traceback as text, each exception's message on one line, made safe like every
    error line (messages can quote the file's names)."""
    import traceback

    from kmemopt.report.safe import markup

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for i, link in enumerate(reversed(chain)):
        if i:
            console.print("\nDuring handling of the above exception, another exception occurred:\n", highlight=False)
        console.print("Traceback (most recent call last):", highlight=False)
        for line in "".join(traceback.format_tb(link.__traceback__)).splitlines():
            console.print(markup(line), highlight=False, soft_wrap=True)
        console.print(
            markup(f"{type(link).__module__}.{type(link).__qualname__}: {link}"), highlight=False, soft_wrap=True
        )


@contextlib.contextmanager
def guarded():
    """Turn every error into its exit code; Ctrl-C exits 130 without a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _stderr_console().print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the one place every error is caught
        fail(exc)


@contextlib.contextmanager
def progress(message: str):
    """A spinner on stderr while slow work runs (only on a terminal). Messages quote paths and names:
    shown as text, never as markup."""
    from kmemopt.report.safe import markup

    console = _stderr_console()
    if console.is_terminal:
        with console.status(markup(message)) as status:
            yield lambda text: status.update(markup(text))
    else:
        yield lambda _message: None


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values or []:
        name, sep, dims = value.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--input-shape takes NAME=D1,D2 (for example tokens=128). Received: {value!r}.")
        try:
            parsed = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise UsageError(f"--input-shape dimensions must be integers. Received: {value!r}.") from None
        if any(d < 1 for d in parsed):
            raise UsageError(f"--input-shape dimensions must be positive. Received: {value!r}.")
        shapes[name.strip()] = parsed
    return shapes


def write_output(text: str, output: Path | None) -> None:
    """Print to stdout, or write the file atomically."""
    if output is None:
        sys.stdout.write(text)
        return
    from kmemopt.write.fileio import atomic_write_text

    atomic_write_text(output, text)
    from kmemopt.report.safe import markup

    _stderr_console().print(f"wrote {markup(output)}", highlight=False)


ModelArg = Annotated[Path, typer.Argument(help="A .keras or legacy .h5 model file.", show_default=False)]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size for activations and peaks.")]
OptimizerOpt = Annotated[
    Optional[str],
    typer.Option("--optimizer", help="Optimizer for training memory (default: the file's, else adam)."),
]
InputShapeOpt = Annotated[
    Optional[list[str]],
    typer.Option("--input-shape", help="NAME=D1,D2: fill an input's unknown dimensions (after the batch). Repeatable."),
]
SeqLenOpt = Annotated[
    Optional[int], typer.Option("--seq-len", min=1, help="Fill every unknown non-batch input dimension.")
]
CustomObjectsOpt = Annotated[
    Optional[Path], typer.Option("--custom-objects", help="A Python file with your own trusted layers (it is run).")
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to this file.")]


@app.command()
def profile(
    model: ModelArg,
    batch_size: BatchOpt = 32,
    optimizer: OptimizerOpt = None,
    input_shape: InputShapeOpt = None,
    seq_len: SeqLenOpt = None,
    budget: Annotated[
        Optional[str], typer.Option("--budget", help="Memory budget, e.g. 16GiB: prints the largest batch that fits.")
    ] = None,
    custom_objects: CustomObjectsOpt = None,
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="Show only the N heaviest layers.")] = None,
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
) -> None:
    """Show where a saved model's memory goes, layer by layer, without loading its weights.

    Example: kmemopt profile model.keras --batch-size 64 --budget 16GiB
    Example: kmemopt profile model.keras --measure --batch-sizes 1,8,32
    """
    with guarded():
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
        report = result.to_dict()
        from kmemopt.report import render_to_text, to_json
        from kmemopt.report.profile import profile_markdown, render_profile

        if fmt is Format.json:
            write_output(to_json(report), output)
        elif fmt is Format.markdown:
            write_output(profile_markdown(report, top=top), output)
        elif output is not None:
            write_output(render_to_text(lambda c: render_profile(report, c, top=top)), output)
        else:
            render_profile(report, _stdout_console(), top=top)


def _register_commands() -> None:
    """Commands that live in their own modules register themselves on `app` here."""
    from kmemopt.commands import check, shrink

    check.register(app)
    shrink.register(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
