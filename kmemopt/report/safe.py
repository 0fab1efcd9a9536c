"""Strings from a model file are data: shown as they are, never as markup, never as a second line.

A layer, class, output or file name can hold anything a JSON string can: terminal escape sequences
(ESC, BEL, OSC titles), newlines that fake a second line of output, rich markup, Markdown links or
HTML. `visible` is the one rule for all of them: every control, format and line-separator character is
written as its Python escape (`\\x1b`, `\\n`, `\\u202e`), everything else is kept. The other helpers
add what one output format needs on top (rich markup, Markdown, GitHub workflow commands); JSON and
XML need only `visible` because their serializers already quote the rest.
"""

from __future__ import annotations

import re
from typing import Any

# What GitHub-flavoured Markdown would read as syntax inside a table cell or a sentence: emphasis,
# code spans, links and images, raw HTML and entities, table pipes, strike-through, headings.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&!#])")


def _escape_char(c: str) -> str:
    return c.encode("unicode_escape").decode("ascii")


def visible(text: Any) -> str:
    """`text` with every non-printable character made visible: one line, no terminal escape sequences.

    Example: visible("evil\\nok") == "evil\\\\nok"; visible("\\x1b[2J") == "\\\\x1b[2J".
    """
    text = "" if text is None else str(text)
    if text.isprintable():  # the usual case: nothing to do
        return text
    # isprintable() is False for controls (Cc), format characters such as bidi overrides (Cf),
    # surrogates, private-use and unassigned code points, line/paragraph separators and non-ASCII spaces.
    return "".join(c if c.isprintable() or c == " " else _escape_char(c) for c in text)


def markup(text: Any) -> str:
    """For rich: `visible`, then rich markup escaped (a name like "[bold red]x" prints as written)."""
    from rich.markup import escape

    return escape(visible(text))


def markdown(text: Any) -> str:
    """For Markdown (a table cell or a sentence): `visible`, then every character Markdown would read as
    syntax backslash-escaped, so a name cannot add a link, HTML, a code span or a table column."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", visible(text))


def markdown_code(text: Any, *, table: bool = True) -> str:
    """A Markdown code span showing `text` literally: `visible`, a backtick fence longer than any run of
    backticks inside (CommonMark's rule), and, in a table cell, pipes escaped (GFM splits cells first)."""
    text = visible(text)
    if not text:
        return ""
    if table:
        text = text.replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def github_data(text: Any) -> str:
    """For the message of a GitHub Actions workflow command (::error ...::MESSAGE)."""
    return visible(text).replace("%", "%25")


def github_property(text: Any) -> str:
    """For a property of a GitHub Actions workflow command (file=..., title=...)."""
    return github_data(text).replace(":", "%3A").replace(",", "%2C")
