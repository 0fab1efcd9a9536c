"""What every command shares: the one error-to-exit-code mapping, output, progress, shared options.

Commands import this module, never `kmemopt.cli` (which imports the commands to register them).
Nothing heavy is imported at module level: `kmemopt --help` stays instant.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from kmemopt.errors import ExitCode, KmemoptError, UsageError, clip

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console


class Format(str, Enum):
    """Output formats of `profile` and `shrink` (`check` adds its CI formats)."""

    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"  # one self-contained page with charts (docs/report.md)


@dataclass(frozen=True)
class GlobalOptions:
    """The options given before the command (`kmemopt --debug profile ...`): the app's callback keeps
    them as the context's `obj`, which every command's context inherits."""

    debug: bool = False


def global_options(ctx: typer.Context) -> GlobalOptions:
    """The global options of the command `ctx` runs (the defaults when none were kept)."""
    return ctx.obj if isinstance(ctx.obj, GlobalOptions) else GlobalOptions()


def stderr_console() -> Console:
    from kmemopt.report import stderr_console as make

    return make()


def stdout_console() -> Console:
    from kmemopt.report import stdout_console as make

    return make()


def show_library_warnings() -> None:
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

            stderr_console().print(f"[yellow]warning:[/yellow] {markup(str(message))}", highlight=False, soft_wrap=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show._kmemopt = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def fail(exc: BaseException, *, debug: bool = False) -> None:
    """Print one sentence for a known error, or an internal-error line (`debug`: the traceback
    first); exit with the documented code."""
    from kmemopt.report import render_error

    console = stderr_console()
    if isinstance(exc, KmemoptError):
        if debug:
            _print_traceback(console, exc)
        render_error(console, str(exc))
        raise typer.Exit(int(exc.exit_code))
    if debug:
        _print_traceback(console, exc)
    render_error(
        console,
        f"internal error: {type(exc).__name__}: {clip(str(exc), 300)} "
        "(run with --debug for the traceback and report it).",
    )
    raise typer.Exit(int(ExitCode.INTERNAL))


def _print_traceback(console: Console, exc: BaseException) -> None:
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
def guarded(ctx: typer.Context) -> Iterator[None]:
    """The one error-to-exit-code mapping: every error becomes its documented exit code (with a
    traceback under `kmemopt --debug`); Ctrl-C exits 130 without a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        stderr_console().print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the one place every error is caught
        fail(exc, debug=global_options(ctx).debug)


@contextlib.contextmanager
def progress(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while slow work runs (only on a terminal); yields a function that updates
    its text. Messages quote paths and names: shown as text, never as markup."""
    from kmemopt.report.safe import markup

    console = stderr_console()
    if console.is_terminal:
        with console.status(markup(message)) as status:
            yield lambda text: status.update(markup(text))
    else:
        yield lambda _message: None


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    """`--input-shape NAME=D1,D2` values as {name: dims}."""
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

    stderr_console().print(f"wrote {markup(output)}", highlight=False)


def emit(output: Path | None, render: Callable[[Console], None], text: str | None = None) -> None:
    """A report: `text` (a JSON or Markdown report) to `output` or stdout; without `text`, the table
    `render` draws, on the terminal or as plain text in `output`."""
    if text is not None:
        write_output(text, output)
    elif output is not None:
        from kmemopt.report import render_to_text

        write_output(render_to_text(render), output)
    else:
        render(stdout_console())


# Options several commands share (each command keeps its own help where the meaning differs).
ModelArg = Annotated[Path, typer.Argument(help="A .keras or legacy .h5 model file.", show_default=False)]
CustomObjectsOpt = Annotated[
    Optional[Path], typer.Option("--custom-objects", help="A Python file with your own trusted layers (it is run).")
]
OptimizerOpt = Annotated[
    Optional[str],
    typer.Option("--optimizer", help="Optimizer for training memory (default: the file's, else adam)."),
]
SeqLenOpt = Annotated[
    Optional[int], typer.Option("--seq-len", min=1, help="Fill every unknown non-batch input dimension.")
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the report to this file.")]
