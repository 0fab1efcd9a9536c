"""Renderers for `kmemopt check`: terminal table, Markdown, GitHub workflow commands, JUnit XML.

Each takes the report's `to_dict()` (the documented JSON), so every format says the same thing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from kmemopt.gate.budgets import format_value, uses_si
from kmemopt.report.safe import github_data, github_property, markdown, markdown_code, markup, visible

_STATUS_STYLE = {"pass": "green", "fail": "bold red", "warn": "yellow", "error": "bold magenta"}
_STATUS_MARK = {"pass": "✅ pass", "fail": "❌ fail", "warn": "⚠️ warn", "error": "⛔ error"}


def _what(row: dict[str, Any]) -> str:
    """'training_memory (batch 32, Adam)'."""
    extra = []
    if row.get("batch_size") is not None:
        extra.append(f"batch {row['batch_size']}")
    if row.get("optimizer"):
        extra.append(str(row["optimizer"]))
    return f"{row['metric']} ({', '.join(extra)})" if extra else row["metric"]


def _si(row: dict[str, Any]) -> bool:
    return uses_si(row.get("limit_text"))


def _fmt(row: dict[str, Any], key: str) -> str:
    return format_value(row["metric"], row.get(key), _si(row))


def _delta(row: dict[str, Any]) -> str:
    if row.get("delta") is None:
        return "-"
    sign = "+" if row["delta"] >= 0 else "-"
    text = sign + format_value(row["metric"], abs(row["delta"]), _si(row))
    if row.get("delta_percent") is not None:
        text += f" ({row['delta_percent']:+.1f}%)"
    return text


def _limit(row: dict[str, Any]) -> str:
    parts = []
    if row.get("limit") is not None:
        parts.append(row.get("limit_text") or _fmt(row, "limit"))
    if row.get("max_increase") is not None and row.get("baseline") is not None:
        parts.append(f"+{100 * row['max_increase']:g}%")
    return ", ".join(parts) or "-"


def _reason(row: dict[str, Any]) -> str:
    if row.get("error"):
        return row["error"]
    return "; ".join(row.get("reasons") or [])


def _summary(data: dict[str, Any]) -> str:
    s = data["summary"]
    parts = [f"{s['total']} budget{'s' if s['total'] != 1 else ''}", f"{s['passed']} passed"]
    if s["failed"]:
        parts.append(f"{s['failed']} failed")
    if s["warned"]:
        parts.append(f"{s['warned']} warned")
    if s["errors"]:
        parts.append(f"{s['errors']} not checked")
    return ", ".join(parts)


def _headline(data: dict[str, Any]) -> str:
    if data["verdict"] != "error":
        return {"pass": "passed", "fail": "FAILED"}[data["verdict"]]
    if any(e.get("exit_code", 3) == 3 for e in data.get("errors") or [{}]):
        return "ERROR (a model was rejected)"
    return "ERROR (a budget could not be evaluated)"


def render_check(data: dict[str, Any], console) -> None:
    """The terminal table: one row a budget."""
    from rich.table import Table

    show_baseline = data.get("baseline") is not None
    title = "kmemopt check" + (" (measured memory)" if data.get("estimate") == "measured" else "")
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("model", overflow="fold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("limit", justify="right")
    if show_baseline:
        table.add_column("baseline", justify="right")
        table.add_column("delta", justify="right")
    table.add_column("status")
    table.add_column("level")
    for row in data["budgets"]:
        cells = [markup(row["model"]), markup(_what(row)), _fmt(row, "value"), markup(_limit(row))]
        if show_baseline:
            cells += [_fmt(row, "baseline"), _delta(row)]
        style = _STATUS_STYLE[row["status"]]
        cells += [f"[{style}]{row['status']}[/{style}]", markup(row["level"])]
        table.add_row(*cells)
    console.print(table)
    for row in data["budgets"]:
        if row["status"] != "pass":
            style = _STATUS_STYLE[row["status"]]
            console.print(
                f"[{style}]{row['status']}[/{style}] {markup(row['model'])} {markup(_what(row))}: {markup(_reason(row))}",
                highlight=False,
                soft_wrap=True,
            )
    style = _STATUS_STYLE["pass" if data["passed"] else ("error" if data["verdict"] == "error" else "fail")]
    console.print(f"[{style}]check {_headline(data)}[/{style}]: {_summary(data)}.", highlight=False)
    if data.get("why"):
        render_why(data, console)


def check_markdown(data: dict[str, Any]) -> str:
    """For pull-request comments and $GITHUB_STEP_SUMMARY."""
    mark = {"pass": "✅", "fail": "❌", "error": "⛔"}[data["verdict"]]
    lines = [f"## {mark} kmemopt check {_headline(data)}", "", f"{_summary(data)}."]
    if data.get("baseline"):
        lines.append(f"Baseline: {markdown_code(data['baseline'], table=False)}.")
    lines.append("")
    head = ["model", "metric", "value", "limit"]
    if data.get("baseline"):
        head += ["baseline", "delta"]
    head += ["status", "level", "details"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---:" if h in ("value", "limit", "baseline", "delta") else "---" for h in head) + "|")
    for row in data["budgets"]:
        cells = [markdown_code(row["model"]), markdown(_what(row)), _fmt(row, "value"), markdown(_limit(row))]
        if data.get("baseline"):
            cells += [_fmt(row, "baseline"), _delta(row)]
        cells += [_STATUS_MARK[row["status"]], markdown(row["level"]), markdown(_reason(row))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if data.get("why"):
        lines.append(why_markdown(data))
    how = "Static estimates" if data.get("estimate") == "static" else "Measured"
    lines.append(f"_{how} by kmemopt {markdown(data.get('kmemopt_version', ''))}._")
    return "\n".join(lines) + "\n"


def check_github(data: dict[str, Any]) -> str:
    """GitHub Actions workflow commands: an annotation on the model file for each budget not passing."""
    command = {"fail": "error", "error": "error", "warn": "warning"}
    lines = []
    for row in data["budgets"]:
        if row["status"] == "pass":
            continue
        title = f"kmemopt budget {row['metric']}" if row["status"] != "error" else "kmemopt: model not checked"
        message = f"{_what(row)} = {_fmt(row, 'value')}: {_reason(row)}"
        if row["status"] == "error":
            message = _reason(row)
        lines.append(
            f"::{command[row['status']]} file={github_property(row['model'])},title={github_property(title)}::"
            + github_data(message)
        )
    notice = f"kmemopt check {_headline(data)}: {_summary(data)}"
    lines.append(f"::{'notice' if data['passed'] else 'error'} title=kmemopt check::{github_data(notice)}")
    if data.get("why"):
        lines.append(why_github(data).rstrip("\n"))
    return "\n".join(lines) + "\n"


def check_junit(data: dict[str, Any]) -> str:
    """JUnit XML: one testcase a budget; a failure element for each failing one (warn-level: system-out).

    ElementTree quotes &, <, > and quotes; `visible` removes what XML 1.0 cannot hold at all (control
    characters, surrogates, U+FFFE/U+FFFF) and what a reader would take for a new line."""
    s = data["summary"]
    failures, errors = str(s["failed"]), str(s["errors"])
    suites = ET.Element("testsuites", name="kmemopt check", tests=str(s["total"]), failures=failures, errors=errors)
    suite = ET.SubElement(
        suites, "testsuite", name="kmemopt check", tests=str(s["total"]), failures=failures, errors=errors, skipped="0"
    )
    for row in data["budgets"]:
        model, what, reason = visible(row["model"]), visible(_what(row)), visible(_reason(row))
        case = ET.SubElement(suite, "testcase", classname=model, name=what, file=model)
        detail = (
            f"{what} = {_fmt(row, 'value')} (limit {visible(_limit(row))}, "
            f"baseline {_fmt(row, 'baseline')}, delta {_delta(row)})"
        )
        if row["status"] == "fail":
            failure = ET.SubElement(case, "failure", message=reason, type="BudgetExceeded")
            failure.text = detail
        elif row["status"] == "error":
            error = ET.SubElement(case, "error", message=reason, type="ModelRejected")
            error.text = reason
        else:
            out = ET.SubElement(case, "system-out")
            out.text = detail + (f"\nwarning: {reason}" if row["status"] == "warn" else "")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# ---------------------------------------------------------------------------------------------
# --why: the per-layer diff against the baseline

WHY_SHOWN = 10  # layers shown before the rest is folded (Markdown <details>) or cut (table, annotations)


def _signed(n: int | None) -> str:
    from kmemopt.units import format_bytes

    if n is None:
        return "-"
    return ("+" if n >= 0 else "-") + format_bytes(abs(n))


def _why_headline(model: dict[str, Any]) -> str:
    from kmemopt.units import format_bytes

    counts = ", ".join(f"{model[c]} {c}" for c in ("grew", "shrank", "new", "removed") if model.get(c))
    if model.get("before_bytes") is None or model.get("after_bytes") is None:
        return f"batch {model['batch_size']}" + (f"; {counts}" if counts else "")
    return (
        f"{format_bytes(model['before_bytes'])} → {format_bytes(model['after_bytes'])} "
        f"({_signed(model['delta_bytes'])}) at batch {model['batch_size']}" + (f"; {counts}" if counts else "")
    )


def _why_cells(row: dict[str, Any]) -> list[str]:
    from kmemopt.units import format_bytes

    return [
        row["change"],
        format_bytes(row["before_bytes"]),
        format_bytes(row["after_bytes"]),
        _signed(row["delta_bytes"]),
        _signed(row["param_delta_bytes"]),
        _signed(row["activation_delta_bytes"]),
    ]


WHY_HEAD = ["change", "before", "after", "delta", "weights Δ", "activations Δ"]


def render_why(data: dict[str, Any], console, *, top: int = WHY_SHOWN) -> None:
    """The per-layer diff as terminal tables, one a model (the largest changes first)."""
    from rich.table import Table

    for model in data.get("why") or []:
        console.print(f"[bold]why[/bold] {markup(model['model'])}: {markup(_why_headline(model))}", highlight=False)
        if model.get("note"):
            console.print(f"  [dim]{markup(model['note'])}[/dim]", highlight=False)
        rows = model["layers"]
        if not rows:
            continue
        table = Table(show_lines=False, header_style="bold")
        table.add_column("layer", overflow="fold")
        table.add_column("class")
        for head in WHY_HEAD:
            table.add_column(head, justify="left" if head == "change" else "right")
        for row in rows[:top]:
            table.add_row(markup(row["layer"]), markup(row["class_name"]), *_why_cells(row))
        console.print(table)
        if len(rows) > top:
            console.print(f"  … {len(rows) - top} more changed layers (--format markdown or json lists them all)")


def why_markdown(data: dict[str, Any], *, top: int = WHY_SHOWN) -> str:
    """The diff for a pull-request comment: the largest changes in a table, the rest folded in <details>."""
    out = ["### Why: layers against the baseline", ""]
    head = "| layer | class | " + " | ".join(WHY_HEAD) + " |"
    rule = "|---|---|---|" + "---:|" * (len(WHY_HEAD) - 1)
    for model in data.get("why") or []:
        out.append(f"**{markdown_code(model['model'], table=False)}**: {markdown(_why_headline(model))}")
        out.append("")
        if model.get("note"):
            out += [f"_{markdown(model['note'])}_", ""]
        rows = model["layers"]
        if not rows:
            continue

        def table(part: list[dict[str, Any]]) -> list[str]:
            return [head, rule] + [
                "| " + " | ".join([markdown_code(r["layer"]), markdown(r["class_name"]), *_why_cells(r)]) + " |"
                for r in part
            ]

        out += table(rows[:top]) + [""]
        if len(rows) > top:
            out += [f"<details><summary>{len(rows) - top} more changed layers</summary>", ""]
            out += table(rows[top:]) + ["", "</details>", ""]
    return "\n".join(out) + "\n"


def why_github(data: dict[str, Any], *, top: int = WHY_SHOWN) -> str:
    """Workflow commands: a notice for each of the largest growths (GitHub shows ten a step), the full
    list in a collapsed log group."""
    lines = []
    for model in data.get("why") or []:
        rows = model["layers"]
        for row in [r for r in rows if r["delta_bytes"] > 0][:top]:
            message = f"{row['layer']} ({row['class_name']}) {row['change']} {_signed(row['delta_bytes'])}"
            lines.append(
                f"::notice file={github_property(model['model'])},title={github_property('kmemopt: layer ' + row['change'])}::"
                + github_data(message)
            )
        lines.append(f"::group::kmemopt why {github_data(model['model'])}: {github_data(_why_headline(model))}")
        if model.get("note"):
            lines.append(github_data(model["note"]))
        for row in rows:
            lines.append(github_data(f"{row['change']:8} {_signed(row['delta_bytes']):>12}  {row['layer']}"))
        lines.append("::endgroup::")
    return "\n".join(lines) + "\n"
