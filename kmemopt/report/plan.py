"""The plan report: baseline and budget, every strategy priced alone, the chosen plan with its Keras code
and command, the written file and the measurement when there are. From `PlanResult.to_dict()`.

Layer paths reach the report through the freeze pattern, the code and the command: every string is
shown through `kmemopt.report.safe`, code line by line (each line made visible on its own).
"""

from __future__ import annotations

import re
from typing import Any

from kmemopt.report.safe import markdown, markdown_code, markup, visible
from kmemopt.units import format_bytes


def _saving(n: int | None) -> str:
    return format_bytes(n)  # negative: the strategy costs memory


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def cost_text(cost: dict[str, Any]) -> str:
    """The cost column: what it costs in compute, what no longer trains, the accuracy risk and how known."""
    parts = [cost.get("extra_compute"), cost.get("not_trained"), cost.get("accuracy_risk")]
    text = "; ".join(p for p in parts if p)
    evidence = cost.get("evidence")
    if evidence and evidence != "measured":
        text += f" ({evidence})" if text else evidence
    return text or "-"


def headline(data: dict[str, Any]) -> str:
    """One sentence: does the baseline fit, and what the plan does (plain text; names quoted by caller)."""
    budget = format_bytes(data["budget_bytes"])
    devices = data.get("devices")
    plan = data["plan"]
    if plan is None:
        return f"No strategy applies to this model in the {data['phase']} phase."
    peak = format_bytes(plan["predicted_peak_bytes"])
    spread = [s for s in plan.get("strategies") or [] if s.get("name") == "distribution"]
    if devices:
        where = f"{devices} x {budget}"
        if plan["fits"]:
            how = f" with {spread[0]['label']}" if spread else " (one device is enough)"
            return f"Plan: fits on {where}{how}: {peak} predicted per device."
        return f"No plan fits on {where}; the closest reaches {peak} per device."
    if plan["fits"]:
        return f"Plan: {peak} predicted, within the {budget} budget."
    return f"No plan fits the {budget} budget; the closest reaches {peak}."


def baseline_line(data: dict[str, Any]) -> str:
    base = data["baseline"]
    kind = "training" if data["phase"] == "train" else "inference"
    peak = base[f"{kind}_peak_bytes"]
    verdict = "fits" if base["fits"] else f"over the budget by {format_bytes(peak - data['budget_bytes'])}"
    return (
        f"Baseline at batch {data['batch_size']}: {kind} peak "
        f"{format_bytes(peak)} ({verdict}; budget {format_bytes(data['budget_bytes'])})"
    )


def _lines(text: str) -> list[str]:
    """Code as lines, each made visible on its own (a name cannot add a line)."""
    return [visible(line) for line in (text or "").split("\n")]


def render_plan(data: dict[str, Any], console) -> None:
    from rich.table import Table

    model = data["model"]
    title = f"{markup(model['path'] or model['name'])}  ·  {data['phase']}  ·  batch {data['batch_size']}"
    console.print(f"[bold]{title}[/bold]", highlight=False)
    console.print(markup(baseline_line(data)), highlight=False)

    table = Table(title="Each strategy alone", title_justify="left", header_style="bold")
    table.add_column("Strategy", overflow="fold", max_width=16)
    table.add_column("Setting", overflow="fold", max_width=28)
    table.add_column("Peak", justify="right", no_wrap=True)
    table.add_column("Saving", justify="right", no_wrap=True)
    table.add_column("File", justify="center", no_wrap=True)
    table.add_column("Cost", overflow="fold", ratio=1)
    for row in data["strategies"]:
        saving = row["saving_bytes"]
        style = "red" if saving < 0 else None
        table.add_row(
            markup(row["name"]),
            markup(row["label"]),
            format_bytes(row["predicted_peak_bytes"]),
            f"[{style}]{_saving(saving)}[/{style}]" if style else _saving(saving),
            "yes" if row["applies_to_file"] else "no",
            markup(cost_text(row["cost"])),
        )
    console.print(table)

    plan = data["plan"]
    verdict = "[green]fits[/green]" if plan and plan["fits"] else "[red]does not fit[/red]"
    console.print(f"[bold]{markup(headline(data))}[/bold] {verdict if plan else ''}", highlight=False)
    if plan:
        for s in plan["strategies"]:
            console.print(f"  • {markup(s['label'])}  [dim]{markup(cost_text(s['cost']))}[/dim]", highlight=False)
        b = plan["breakdown"]
        console.print(
            f"  weights {format_bytes(b['param_bytes'])}, gradients {format_bytes(b['gradient_bytes'])}, "
            f"optimizer {format_bytes(b['optimizer_bytes'])}, activations {format_bytes(b['activation_bytes'])}, "
            f"runtime {format_bytes(b['runtime_bytes'])}"
            + (f"  [dim](estimated: {markup(', '.join(b['estimated_terms']))})[/dim]" if b["estimated_terms"] else ""),
            highlight=False,
        )
        console.print("\n[bold]Keras code[/bold]", highlight=False)
        for line in _lines(plan["keras_code"]):
            console.print("  " + markup(line), highlight=False)
        console.print("\n[bold]Command[/bold]", highlight=False)
        console.print("  " + markup(plan["command"]), highlight=False)

    measured = data.get("measured")
    if measured:
        mt = Table(
            title=f"Measured ({markup(measured.get('device') or '-')})", title_justify="left", header_style="bold"
        )
        for col in ("", "Batch", "Predicted", "Measured", "Error", "Budget"):
            mt.add_column(col, justify="left" if not col else "right")
        for label, key in (("Baseline", "baseline"), ("Plan", "plan")):
            m = measured.get(key)
            if not m:
                continue
            value = m["measured_peak_bytes"]
            ok = value is not None and value <= data["budget_bytes"]
            mt.add_row(
                label,
                str(m["batch_size"]),
                format_bytes(m["predicted_peak_bytes"]),
                format_bytes(value) if value is not None else markup(str(m.get("status") or "-")),
                _pct(m["error_pct"]),
                "[green]under[/green]" if ok else "[red]over[/red]",
            )
        console.print(mt)
        plan_m = measured.get("plan") or {}
        if plan_m.get("not_measured"):
            console.print(
                f"[dim]Not in the measured run (not in the file): {markup(', '.join(plan_m['not_measured']))}[/dim]",
                highlight=False,
            )
        if measured.get("plan_not_measured"):
            console.print(f"[dim]Plan not measured: {markup(measured['plan_not_measured'])}[/dim]", highlight=False)

    output = data.get("output")
    if output:
        held = ", ".join(s["label"] for s in output["in_file"]) or "nothing but the compiled optimizer"
        console.print(f"\nWrote {markup(output['path'])}: it holds {markup(held)}.", highlight=False)
        for s in output["not_in_file"]:
            console.print(f"  not in the file: {markup(s['label'])} ({markup(s['why'])})", highlight=False)
        if output.get("reload"):
            console.print(f"  Verified: reloaded with {markup(output['reload']['loaded_with'])}.", highlight=False)
    for note in data.get("notes", []):
        console.print(f"[dim]note: {markup(note)}[/dim]", highlight=False)
    search = data.get("search") or {}
    if search:
        console.print(
            f"[dim]{search['combinations']} combinations priced, {search['builds']} model builds, "
            f"{search['seconds']:.1f} s[/dim]",
            highlight=False,
        )


def _fence(text: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _code_block(text: str, language: str, *, one_line: bool = False) -> list[str]:
    lines = [visible(text)] if one_line else _lines(text)
    fence = _fence("\n".join(lines))
    return [fence + language, *lines, fence]


def plan_markdown(data: dict[str, Any]) -> str:
    model = data["model"]
    out = [
        f"## kmemopt plan: {markdown(model['path'] or model['name'])}",
        "",
        markdown(baseline_line(data)),
        "",
        f"**{markdown(headline(data))}**",
        "",
        "| Strategy | Setting | Peak | Saving | In file | Cost |",
        "|---|---|---:|---:|:---:|---|",
    ]
    for row in data["strategies"]:
        out.append(
            f"| {markdown(row['name'])} | {markdown(row['label'])} | {format_bytes(row['predicted_peak_bytes'])} "
            f"| {_saving(row['saving_bytes'])} | {'yes' if row['applies_to_file'] else 'no'} "
            f"| {markdown(cost_text(row['cost']))} |"
        )
    plan = data["plan"]
    if plan:
        out += ["", "### Plan" + ("" if plan["fits"] else " (closest; does not fit)"), ""]
        out += [f"- {markdown(s['label'])}: {markdown(cost_text(s['cost']))}" for s in plan["strategies"]]
        out += ["", *_code_block(plan["keras_code"], "python"), "", *_code_block(plan["command"], "sh", one_line=True)]
    measured = data.get("measured")
    if measured:
        out += ["", "### Measured", "", "| | Batch | Predicted | Measured | Error |", "|---|---:|---:|---:|---:|"]
        for label, key in (("Baseline", "baseline"), ("Plan", "plan")):
            m = measured.get(key)
            if m:
                out.append(
                    f"| {label} | {m['batch_size']} | {format_bytes(m['predicted_peak_bytes'])} "
                    f"| {format_bytes(m['measured_peak_bytes'])} | {_pct(m['error_pct'])} |"
                )
    output = data.get("output")
    if output:
        out += ["", f"Wrote {markdown_code(output['path'], table=False)}."]
        out += [f"- not in the file: {markdown(s['label'])} ({markdown(s['why'])})" for s in output["not_in_file"]]
    for note in data.get("notes", []):
        out += ["", f"> {markdown(note)}"]
    return "\n".join(out) + "\n"
