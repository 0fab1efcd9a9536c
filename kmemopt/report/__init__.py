"""Rendering. The report package is the only place that imports rich.

One module per command (profile.py, shrink.py, check.py); shared helpers live here. Renderers take a
result's `to_dict()` (the documented JSON interface), so the terminal and JSON never drift apart.
"""

from __future__ import annotations

import json
from typing import Any


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


def render_error(console, message: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def stdout_console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        console = Console(width=160)
    return console


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def render_to_text(render, width: int = 160) -> str:
    """Run a renderer against an in-memory console and return plain text (for --output FILE)."""
    import io

    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO())
    render(console)
    return console.export_text()
