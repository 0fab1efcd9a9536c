"""Rendering. The report package is the only place that imports rich.

One module per command (profile.py, shrink.py, check.py); shared helpers live here. Renderers take a
result's `to_dict()` (the documented JSON interface), so the terminal and JSON never drift apart.
Every string that comes from a model file goes through `kmemopt.report.safe` on its way out.
"""

from __future__ import annotations

import json
from typing import Any


def to_json(data: dict[str, Any]) -> str:
    # ensure_ascii (the default) writes every control character as \uXXXX: nothing raw reaches a terminal.
    return json.dumps(data, indent=2, ensure_ascii=True) + "\n"


def render_error(console, message: str) -> None:
    """One line, always: the message may quote names from the file (controls, newlines, markup)."""
    from kmemopt.report.safe import markup

    console.print(f"[bold red]error:[/bold red] {markup(message)}", highlight=False, soft_wrap=True)


def stdout_console():
    from rich.console import Console

    # emoji=False: a name like ":warning:" is text, not an emoji code.
    console = Console(emoji=False)
    if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        console = Console(width=160, emoji=False)
    return console


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, emoji=False)


def render_to_text(render, width: int = 160) -> str:
    """Run a renderer against an in-memory console and return plain text (for --output FILE)."""
    import io

    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO(), emoji=False)
    render(console)
    return console.export_text()
