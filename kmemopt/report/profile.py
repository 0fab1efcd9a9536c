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


# Models with more layers than this show only the DEFAULT_TOP heaviest by default (--top 0: all).
TOP_ABOVE = 50
DEFAULT_TOP = 25
_SUMMED = ("params", "param_bytes", "activation_bytes", "gradient_bytes", "optimizer_bytes", "output_bytes")


def _weight(r: dict) -> int:
    return r["param_bytes"] + r["activation_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"]


def _top_layers(layers: list[dict], top: int | None) -> tuple[list[dict], dict | None]:
    """The `top` heaviest layers in model order, and one row summing the others (None when none is left
    out). `top` None: all of a small model, the DEFAULT_TOP heaviest of a big one; 0: all."""
    if top is None:
        top = DEFAULT_TOP if len(layers) > TOP_ABOVE else 0
    if not top or len(layers) <= top:
        return layers, None
    keep = {id(r) for r in sorted(layers, key=_weight, reverse=True)[:top]}
    rest = [r for r in layers if id(r) not in keep]
    summed = {key: sum(r[key] for r in rest) for key in _SUMMED}
    summed["count"] = len(rest)
    return [r for r in layers if id(r) in keep], summed


def render_profile(data: dict[str, Any], console, *, top: int | None = None) -> None:
    """The profile as a rich table: per-layer bytes with a share bar, totals, peaks, batch line."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    totals = data["totals"]
    model = data["model"]
    b = data["batch_size"]
    layers, rest = _top_layers(data["layers"], top)
    # One unit for the whole table, named in the headers: the heaviest cell's, so a layer reads 98.0, not 0.1.
    cells = [r[k] for r in layers for k in ("param_bytes", "activation_bytes", "gradient_bytes", "optimizer_bytes")]
    unit = _mem_unit(max(cells + [1]))
    factor = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]
    # Under 140 columns the table drops what is said elsewhere: the dtype column when there is one dtype (it
    # goes in the title), gradients (the trainable weights' bytes; totals below), the share bar (the percent
    # stays), and parameter counts in short form: 100 columns stay readable.
    narrow = console.width < 140
    dtypes = {d for r in data["layers"] for d in r["param_dtypes"]}
    show_dtype = not narrow or len(dtypes) > 1
    show_grads = not narrow

    def u(n: int) -> str:
        if n and n < 0.05 * factor:
            return "<0.1"
        return f"{n / factor:,.1f}" if n else "0"

    title = f"{markup(model['name'])}  ·  {markup(model['format'])}"
    if model.get("file_bytes") is not None:
        title += f"  ·  file {format_bytes(model['file_bytes'])}"
    title += f"  ·  batch {b}  ·  optimizer {markup(data['optimizer']['name'])} ({data['optimizer']['source']})"
    if not show_dtype and dtypes:
        title += f"  ·  weights {markup('+'.join(sorted(dtypes)))}"
    title += f"  ·  bytes in {unit}"
    table = Table(
        title=title,
        title_justify="left",
        show_lines=False,
        header_style="bold",
        box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD,
        pad_edge=not narrow,
    )
    table.add_column("Layer", overflow="fold", ratio=1, min_width=12)
    table.add_column(
        "Class",
        no_wrap=True,
        overflow="ellipsis",
        max_width=16 if narrow else None,
        min_width=min(max((len(visible(r["class_name"])) for r in layers), default=5), 16 if narrow else 40),
    )
    table.add_column(
        "Shape" if narrow else "Output shape", no_wrap=narrow, overflow="ellipsis", max_width=18 if narrow else None
    )
    table.add_column("Params", justify="right", no_wrap=True)
    if show_dtype:
        table.add_column("Dtype")
    table.add_column("Weights", justify="right", no_wrap=True)
    table.add_column("Activ." if narrow else "Activations", justify="right", no_wrap=True)
    if show_grads:
        table.add_column("Grads", justify="right", no_wrap=True)
    table.add_column("Optim." if narrow else "Optimizer", justify="right", no_wrap=True)
    table.add_column("Share", justify="right" if narrow else "left", no_wrap=True)
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

    denominator = max(
        totals["param_bytes"] + totals["activation_bytes"] + totals["gradient_bytes"] + totals["optimizer_bytes"], 1
    )
    heaviest = max(
        (r["param_bytes"] + r["activation_bytes"] + r["gradient_bytes"] + r["optimizer_bytes"] for r in data["layers"]),
        default=0,
    )

    def count(n: int) -> str:
        return format_count(n) if narrow and n >= 10_000 else f"{n:,}"

    def add(name: str, cls: str, shape: str, params: str, dtype: str, r: dict, share: str | Text, *extra, style=""):
        cells = [name, cls, shape, params] + ([dtype] if show_dtype else [])
        cells += [u(r["param_bytes"]), u(r["activation_bytes"])]
        cells += [u(r["gradient_bytes"])] if show_grads else []
        table.add_row(*cells, u(r["optimizer_bytes"]), share, *extra, style=style)

    def share_cell(share: float) -> str | Text:
        return f"{share:.1%}" if narrow else Text(f"{_bar(share)} {share:5.1%}")

    for row in layers:
        mine = row["param_bytes"] + row["activation_bytes"] + row["gradient_bytes"] + row["optimizer_bytes"]
        share = mine / denominator
        style = "bold red" if mine == heaviest and mine > 0 else ("yellow" if share >= 0.10 else "")
        add(
            markup(row["path"]) + (f" ×{row['calls']}" if row["calls"] > 1 else ""),
            markup(row["class_name"]),
            _shape(row["output_shape"]),
            count(row["params"]),
            markup("+".join(row["param_dtypes"])) or "-",
            row,
            share_cell(share),
            *measured_cells(row),
            style=style,
        )
    if rest is not None:
        mine = sum(rest[k] for k in ("param_bytes", "activation_bytes", "gradient_bytes", "optimizer_bytes"))
        add(
            f"… {rest['count']} other layers",
            "",
            "",
            count(rest["params"]),
            "",
            rest,
            share_cell(mine / denominator),
            *(["", ""] if measured_layers else []),
            style="dim",
        )
    if totals["optimizer_global_bytes"]:
        zero = {"param_bytes": 0, "activation_bytes": 0, "gradient_bytes": 0}
        add(
            "(optimizer globals)",
            "",
            "",
            "",
            "",
            {**zero, "optimizer_bytes": totals["optimizer_global_bytes"]},
            "",
            *(["", ""] if measured_layers else []),
        )
    table.add_section()
    add(
        "Total",
        "",
        "",
        count(totals["params"]),
        "",
        totals,
        "",
        *(["", ""] if measured_layers else []),
        style="bold",
    )
    console.print(table)
    if rest is not None:
        console.print(
            f"{len(layers)} heaviest of {len(data['layers'])} layers shown, the other {rest['count']} summed in one "
            "row (--top N; --top 0 shows all)."
        )

    short = f" ({format_count(totals['params'])})" if totals["params"] >= 1000 else ""
    console.print(
        f"Parameters: {totals['params']:,}{short}: "
        f"{totals['trainable_params']:,} trainable, {totals['non_trainable_params']:,} non-trainable."
    )
    lines = data["batch_line"]
    # Each figure on a line of its own: nothing here wraps in 100 columns.
    console.print(
        f"[bold]Inference peak[/bold] at batch {b}: [bold]{format_bytes(totals['inference_peak_bytes'])}[/bold]"
        f"  = {format_bytes(lines['inference']['fixed_bytes'])} + B × {format_bytes(lines['inference']['per_sample_bytes'])}"
    )
    console.print(
        f"  runtime {format_bytes(totals.get('runtime_inference_bytes'))} (TensorFlow's own costs, docs/measure.md)"
    )
    console.print(
        f"[bold]Training peak[/bold]  at batch {b}: [bold]{format_bytes(totals['training_peak_bytes'])}[/bold]"
        f"  = {format_bytes(lines['training']['fixed_bytes'])} + B × {format_bytes(lines['training']['per_sample_bytes'])}"
    )
    console.print(
        f"  weights {format_bytes(totals['param_bytes'])}, gradients {format_bytes(totals['gradient_bytes'])}, "
        f"optimizer {format_bytes(totals['optimizer_bytes'])}, activations kept {format_bytes(totals['activation_bytes'])},"
    )
    console.print(
        f"  backward transient {format_bytes(totals['backward_transient_bytes'])}, "
        f"runtime {format_bytes(totals.get('runtime_training_bytes'))}"
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
    for line in measured_lines(data) + xla_lines(data):
        console.print(markup(line), highlight=False)
    for warning in data.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {markup(warning)}", highlight=False)
    if data.get("distribution"):
        from kmemopt.report.distribution import render_distribution

        render_distribution(data["distribution"], console)


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


def xla_lines(data: dict[str, Any]) -> list[str]:
    """XLA's own accounting of the compiled steps beside kmemopt's tensors (JAX backend), as sentences."""
    x = data.get("xla_estimate")
    if not x:
        return []
    lines = [
        f"XLA's own accounting of the compiled steps ({x['platform']}, batch {x['batch_size']}, loss {x['loss']}):"
    ]
    compared = x.get("compared") or {}
    for phase in ("inference", "training"):
        step = x[phase]
        ours = compared.get(f"kmemopt_{phase}_tensor_bytes")
        ratio = compared.get(f"{phase}_ratio")
        lines.append(
            f"  {phase} {format_bytes(step['total_bytes'])} = arguments {format_bytes(step['argument_bytes'])} + "
            f"outputs {format_bytes(step['output_bytes'] - step['alias_bytes'])} (not aliased) + temporaries "
            f"{format_bytes(step['temp_bytes'])}; kmemopt's tensors {format_bytes(ours)}"
            + (f" ({ratio:.2f}x XLA's)" if ratio is not None else "")
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
    layers, rest = _top_layers(data["layers"], top)
    for row in layers:
        out.append(
            f"| {markdown_code(row['path'])} | {markdown(row['class_name'])} | {_shape(row['output_shape'])} | {row['params']:,} | "
            f"{format_bytes(row['param_bytes'])} | {format_bytes(row['activation_bytes'])} | "
            f"{format_bytes(row['gradient_bytes'])} | {format_bytes(row['optimizer_bytes'])} |"
        )
    if rest is not None:
        out.append(
            f"| … {rest['count']} other layers | | | {rest['params']:,} | {format_bytes(rest['param_bytes'])} | "
            f"{format_bytes(rest['activation_bytes'])} | {format_bytes(rest['gradient_bytes'])} | "
            f"{format_bytes(rest['optimizer_bytes'])} |"
        )
    out.append(
        f"| **Total** | | | **{totals['params']:,}** | **{format_bytes(totals['param_bytes'])}** | "
        f"**{format_bytes(totals['activation_bytes'])}** | **{format_bytes(totals['gradient_bytes'])}** | "
        f"**{format_bytes(totals['optimizer_bytes'])}** |"
    )
    for extra in (measured_lines(data), xla_lines(data)):
        if extra:
            out += ["", markdown(extra[0]), ""] + [f"- {markdown(line.strip())}" for line in extra[1:]]
    for warning in data.get("warnings", []):
        out.append(f"\n> warning: {markdown(warning)}")
    if data.get("distribution"):
        from kmemopt.report.distribution import distribution_markdown

        out += ["", distribution_markdown(data["distribution"])]
    return "\n".join(out) + "\n"
