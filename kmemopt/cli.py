"""The `kmemopt` command: the Typer app, its global options, and the commands it registers.

Each command lives in `kmemopt.commands.<name>` as a `command(...)` function (parse, call the library,
render, exit through `kmemopt.commands._common.guarded`). Only `kmemopt.__main__` and the console
script import this module.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kmemopt import __version__
from kmemopt.commands import check, plan, profile, shrink
from kmemopt.commands._common import GlobalOptions, show_library_warnings

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


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"kmemopt {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    """Memory profiler and optimizer for saved Keras models."""
    ctx.obj = GlobalOptions(debug=debug)
    show_library_warnings()


app.command("profile")(profile.command)
app.command("check")(check.command)
app.command("shrink")(shrink.command)
app.command("plan")(plan.command)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
