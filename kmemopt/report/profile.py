"""The profile report: terminal table and Markdown, both from `ProfileResult.to_dict()`."""

from __future__ import annotations

from typing import Any

from kmemopt.report.safe import markdown, markdown_code, markup, visible
from kmemopt.units import format_bytes, format_count


def _shape(shape: Any) -> str:
    if shape is None:
        return "-"
    if shape and isinstance(shape[0], list):
        return ", ".join(_shape(s) for s in shape)
    return (
        "("
        + ", ".join("B" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(shape))
        + ")"
    )


def _mem_unit(n: int) -> str:
    return "GiB" if n >= 1024**3 else "MiB" if n >= 1024**2 else "KiB"


def _bar(share: float, width: int = 10) -> str:
    full = int(round(share * width))
    return "█" * full + "·" * (width - full)


def _top_layers(layers: list[dict], top: int | None) -> tuple[list[dict], int]:
    if top is None or len(layers) <= top:
        return layers, 0
    weight = sorted(layers, key=lambda r: r["param_bytes"] + r["activation_bytes"] + r["optimizer_bytes"], reverse=True)
    keep = {id(r) for r in weight[:top]}
    return [r for r in layers if id(r) in keep], len(layers) - top


def render_profile(data: dict[str, Any], console, *, top: int | None = None) -> None:
    """The profile as a rich table: per-layer bytes with a share bar, totals, peaks, batch line."""
    from rich.table import Table
    from rich.text import Text

    totals = data["totals"]
    model = data["model"]
    b = data["batch_size"]
    unit = _mem_unit(max(totals["training_peak_bytes"], 1))
    factor = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]

    def u(n: int) -> str:  # one unit for the whole table, named in the headers
        return f"{n / factor:,.1f}" if n else "0"

    title = f"{markup(model['name'])}  ·  {markup(model['format'])}"
    if model.get("file_bytes") is not None:
        title += f"  ·  file {format_bytes(model['file_bytes'])}"
    title += f"  ·  batch {b}  ·  optimizer {markup(data['optimizer']['name'])} ({data['optimizer']['source']})"
    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    table.add_column("Layer", overflow="fold")
    table.add_column(
        "Class", no_wrap=True, min_width=max((len(visible(r["class_name"])) for r in data["layers"]), default=5)
    )
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    table.add_column("Dtype")
    table.add_column(f"Weights ({unit})", justify="right")
    table.add_column(f"Activations ({unit})", justify="right")
    table.add_column(f"Grads ({unit})", justify="right")
    table.add_column(f"Optimizer ({unit})", justify="right")
    table.add_column("Share", justify="left", no_wrap=True)
    measured_layers = (data.get("measured") or {}).get("layers") or {}
    if measured_layers:  # --measure: the real outputs of one forward pass beside the estimate
        table.add_column(f"Measured out ({unit})", justify="right")
        table.add_column("Out error", justify="right")

    def measured_cells(row) -> list[str]:
        if not measured_layers:
            return []
        got = measured_layers.get(row["path"])
        if got is None:
            return ["-", "-"]
        return [u(got), _error(row["output_bytes"], got)]

    layers, hidden = _top_layers(data["layers"], top)
    denominator = max(
        totals["param_bytes"] + totals["activation_bytes"] + totals["gradient_bytes"] + totals["optimizer_bytes"], 1
    )
    heaviest = max(
        (r["param_bytes"] + r["activation_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"] for r in data["layers"]),
        default=0,
    )
    for row in layers:
        mine = row["param_bytes"] + row["activation_bytes"] + row["gradient_bytes"] + row["optimizer_bytes"]
        share = mine / denominator
        style = "bold red" if mine == heaviest and mine > 0 else ("yellow" if share >= 0.10 else "")
        table.add_row(
            markup(row["path"]) + (f" ×{row['calls']}" if row["calls"] > 1 else ""),
            markup(row["class_name"]),
            _shape(row["output_shape"]),
            f"{row['params']:,}",
            markup("+".join(row["param_dtypes"])) or "-",
            u(row["param_bytes"]),
            u(row["activation_bytes"]),
            u(row["gradient_bytes"]),
            u(row["optimizer_bytes"]),
            Text(f"{_bar(share)} {share:5.1%}"),
            *measured_cells(row),
            style=style,
        )
    if totals["optimizer_global_bytes"]:
        table.add_row(
            "(optimizer globals)",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            u(totals["optimizer_global_bytes"]),
            "",
            *(["", ""] if measured_layers else []),
        )
    table.add_section()
    table.add_row(
        "Total",
        "",
        "",
        f"{totals['params']:,}",
        "",
        u(totals["param_bytes"]),
        u(totals["activation_bytes"]),
        u(totals["gradient_bytes"]),
        u(totals["optimizer_bytes"]),
        "",
        *(["", ""] if measured_layers else []),
        style="bold",
    )
    console.print(table)
    if hidden:
        console.print(f"… {hidden} lighter layers hidden (--top); the totals include them.")

    count = f" ({format_count(totals['params'])})" if totals["params"] >= 1000 else ""
    console.print(
        f"Parameters: {totals['params']:,}{count}: "
        f"{totals['trainable_params']:,} trainable, {totals['non_trainable_params']:,} non-trainable."
    )
    lines = data["batch_line"]
    console.print(
        f"[bold]Inference peak[/bold] at batch {b}: [bold]{format_bytes(totals['inference_peak_bytes'])}[/bold]"
        f"  = {format_bytes(lines['inference']['fixed_bytes'])} + B × {format_bytes(lines['inference']['per_sample_bytes'])}"
        f"  (runtime {format_bytes(totals.get('runtime_inference_bytes'))}: TensorFlow's own costs for this model, "
        "docs/measure.md)"
    )
    console.print(
        f"[bold]Training peak[/bold]  at batch {b}: [bold]{format_bytes(totals['training_peak_bytes'])}[/bold]"
        f"  = {format_bytes(lines['training']['fixed_bytes'])} + B × {format_bytes(lines['training']['per_sample_bytes'])}"
        f"  (weights {format_bytes(totals['param_bytes'])}, gradients {format_bytes(totals['gradient_bytes'])}, "
        f"optimizer {format_bytes(totals['optimizer_bytes'])}, activations kept {format_bytes(totals['activation_bytes'])}, "
        f"backward transient {format_bytes(totals['backward_transient_bytes'])}, "
        f"runtime {format_bytes(totals.get('runtime_training_bytes'))})"
    )
    if data.get("budget"):
        fit = data["budget"]
        console.print(
            f"Budget {format_bytes(fit['budget_bytes'])}: largest batch for inference "
            f"[bold]{fit['max_inference_batch']:,}[/bold], for training [bold]{fit['max_training_batch']:,}[/bold]."
        )
    if data.get("file"):
        f = data["file"]
        size = max(f["file_bytes"], 1)
        parts = [
            ("weights", f["weights_bytes"]),
            ("optimizer state", f["optimizer_bytes"]),
            ("config", f["config_bytes"]),
            ("assets", f["assets_bytes"]),
            ("container overhead", f["overhead_bytes"]),
        ]
        console.print(
            f"File {format_bytes(f['file_bytes'])}: "
            + ", ".join(f"{name} {format_bytes(n)} ({n / size:.0%})" for name, n in parts if n)
        )
    console.print(
        "[dim]Weights, gradients and optimizer state are exact; activations and peaks are static estimates "
        "(see README, 'Memory model'). Units: KiB/MiB/GiB = 1024-based.[/dim]"
    )
    for line in measured_lines(data):
        console.print(markup(line), highlight=False)
    for warning in data.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {markup(warning)}", highlight=False)


def _error(estimated: int | None, measured: int | None) -> str:
    if not estimated or not measured:
        return "-"
    return f"{100.0 * (estimated - measured) / measured:+.0f}%"


def measured_lines(data: dict[str, Any]) -> list[str]:
    """The measured peaks beside the estimates, as plain sentences (terminal and Markdown)."""
    m = data.get("measured")
    if not m:
        return []
    lines = [
        f"Measured on {m['device']} ({'kernel high-water mark' if m.get('method') == 'vmhwm' else 'RSS sampling'}; "
        f"model memory above a framework baseline of {format_bytes(m.get('baseline_bytes'))}), status {m['status']}:"
    ]
    for run in m.get("runs", []):
        b = run["batch_size"]
        if run["status"] != "ok":
            lines.append(f"  batch {b}: not measured ({run['status']}): {run.get('message', '')}")
            continue
        lines.append(
            f"  batch {b}: inference peak {format_bytes(run['inference_peak_bytes'])} "
            f"(estimate {format_bytes(run.get('estimated_inference_bytes'))}, "
            f"error {_error(run.get('estimated_inference_bytes'), run['inference_peak_bytes'])}); "
            f"training peak {format_bytes(run['training_peak_bytes'])} "
            f"(estimate {format_bytes(run.get('estimated_training_bytes'))}, "
            f"error {_error(run.get('estimated_training_bytes'), run['training_peak_bytes'])}); "
            f"after load {format_bytes(run.get('load_bytes'))}"
        )
        if run.get("gpu"):
            for phase, g in run["gpu"].items():
                lines.append(
                    f"    GPU {phase}: allocator peak {format_bytes(g['allocator_peak_bytes'])}, NVML used "
                    f"{format_bytes(g['nvml_used_bytes'])} (NVML also counts the CUDA context and memory the "
                    "allocator reserved but did not use)"
                )
    fit, static = m.get("fit"), m.get("static_line")
    if fit and static:
        for phase in ("inference", "training"):
            if phase in fit:
                lines.append(
                    f"  {phase} line: measured {format_bytes(fit[phase]['fixed_bytes'])} + B × "
                    f"{format_bytes(fit[phase]['per_sample_bytes'])}; estimated "
                    f"{format_bytes(static[phase]['fixed_bytes'])} + B × {format_bytes(static[phase]['per_sample_bytes'])}"
                )
    return lines


def profile_markdown(data: dict[str, Any], top: int | None = None) -> str:
    totals = data["totals"]
    model = data["model"]
    out = [f"## kmemopt profile: {markdown(model['name'])}", ""]
    out.append(
        f"- File: {markdown_code(model.get('path'), table=False)} ({markdown(model['format'])}, {format_bytes(model.get('file_bytes'))})"
    )
    out.append(
        f"- Batch size: {data['batch_size']}; optimizer: {markdown(data['optimizer']['name'])} "
        f"({data['optimizer']['source']})"
    )
    out.append(f"- Parameters: {totals['params']:,} ({totals['trainable_params']:,} trainable)")
    out.append(f"- **Inference peak: {format_bytes(totals['inference_peak_bytes'])}** (static estimate)")
    out.append(f"- **Training peak: {format_bytes(totals['training_peak_bytes'])}** (static estimate)")
    if data.get("budget"):
        fit = data["budget"]
        out.append(
            f"- Budget {format_bytes(fit['budget_bytes'])}: max batch {fit['max_inference_batch']:,} (inference), "
            f"{fit['max_training_batch']:,} (training)"
        )
    out += [
        "",
        "| Layer | Class | Output shape | Params | Weights | Activations | Gradients | Optimizer |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    layers, hidden = _top_layers(data["layers"], top)
    for row in layers:
        out.append(
            f"| {markdown_code(row['path'])} | {markdown(row['class_name'])} | {_shape(row['output_shape'])} | {row['params']:,} | "
            f"{format_bytes(row['param_bytes'])} | {format_bytes(row['activation_bytes'])} | "
            f"{format_bytes(row['gradient_bytes'])} | {format_bytes(row['optimizer_bytes'])} |"
        )
    if hidden:
        out.append(f"| … {hidden} lighter layers hidden | | | | | | | |")
    out.append(
        f"| **Total** | | | **{totals['params']:,}** | **{format_bytes(totals['param_bytes'])}** | "
        f"**{format_bytes(totals['activation_bytes'])}** | **{format_bytes(totals['gradient_bytes'])}** | "
        f"**{format_bytes(totals['optimizer_bytes'])}** |"
    )
    measured = measured_lines(data)
    if measured:
        out += ["", markdown(measured[0]), ""] + [f"- {markdown(line.strip())}" for line in measured[1:]]
    for warning in data.get("warnings", []):
        out.append(f"\n> warning: {markdown(warning)}")
    return "\n".join(out) + "\n"
