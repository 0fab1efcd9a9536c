"""The shrink report: before/after, per-layer dtypes and bytes, passes, fidelity. From `to_dict()`."""

from __future__ import annotations

from typing import Any

from kmemopt.report.safe import markdown, markdown_code, markup
from kmemopt.units import format_bytes

SIDE_ROWS = (
    ("File", "file_bytes"),
    ("Parameters", "param_bytes"),
    ("Inference peak", "inference_peak_bytes"),
    ("Training peak", "training_peak_bytes"),
)


def _ratio(before: int | None, after: int | None) -> str:
    if not before or after is None:
        return "-"
    return f"{after / before:.3f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _dtypes(values: list[str] | None) -> str:
    return "-" if values is None else ("/".join(values) or "-")


def _headline(data: dict[str, Any], quote=markup) -> str:
    """The last line; `quote` makes the output path safe for the format (rich markup or Markdown)."""
    if data["dry_run"]:
        return "Dry run: nothing was written."
    if not data["written"]:
        return "Nothing was written (a fidelity gate failed)."
    text = f"Wrote {quote(data['output'])}"
    if data.get("file_ratio") is not None:
        text += f" ({data['file_ratio']:.3f}x the input file)"
    if data["needs_import_kmemopt"]:
        text += ". It uses kmemopt's int8 layers: `import kmemopt` before keras.models.load_model."
    else:
        text += ". It loads with plain keras.models.load_model."
    return text


def _changed_layers(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r
        for r in data["layers"]
        if r["param_bytes_before"]
        and (
            r["param_bytes_after"] != r["param_bytes_before"]
            or r["dtypes_after"] != r["dtypes_before"]
            or r["class_name_after"] != r["class_name"]
        )
    ]


def channel_rows(cp: dict[str, Any], all_layers: bool) -> list[dict[str, Any]]:
    """--prune-channels rows: the layers that changed width or kept it for a reason."""
    return [r for r in cp["layers"] if all_layers or r["after"] < r["before"] or r["kept_because"]]


def channel_summary(cp: dict[str, Any]) -> list[str]:
    b, a = cp["before"]["params"], cp["after"]["params"]
    lines = [f"Parameters {b:,} → {a:,} ({_ratio(b, a)}); FLOPs per sample: {_channel_flops(cp.get('flops'))}"]
    sens = [row for row in cp.get("sensitivity") or [] if row["kept_at_probe"] < row["size"]]
    if sens:
        ranked = sorted(sens, key=lambda row: -row["relative_l2"])
        shown = ", ".join(f"{'+'.join(row['layers'])} {row['relative_l2']:.3g}" for row in ranked[:3])
        lines.append(
            f"Sensitivity (each group pruned alone, output relative L2), most sensitive first: {shown}"
            + (f"; least: {'+'.join(ranked[-1]['layers'])} {ranked[-1]['relative_l2']:.3g}" if len(ranked) > 3 else "")
        )
    rec = cp.get("recovery")
    if rec:
        early = ", stopped early" if rec["stopped_early"] else ""
        lines.append(f"Recovered by {rec['method']}: {rec['epochs_run']} epoch(s){early}")
    return lines


def _channel_flops(flops: Any) -> str:
    """The channel report's FLOPs (2 x multiply-adds, per sample) before → after, and what was not counted."""
    from kmemopt.profiling.flops import format_flops

    if not isinstance(flops, dict) or "before" not in flops:
        why = flops.get("not_computed") if isinstance(flops, dict) else flops
        return f"not computed ({why})" if why and why != "not computed" else "not computed"
    b, a = int(flops["before"]), int(flops["after"])
    text = f"{format_flops(b)} → {format_flops(a)} ({_ratio(b, a)})"
    missing = flops.get("not_counted") or []
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        text += f"; not counted: {', '.join(missing[:5])}{more}"
    return text


def _render_channels(data: dict[str, Any], console, all_layers: bool) -> None:
    from rich.table import Table

    cp = data.get("channel_pruning")
    if not cp:
        return
    ct = Table(
        title=f"Channels ({_pct(cp['fraction'])} asked, {markup(cp['criterion'])} importance)",
        title_justify="left",
        header_style="bold",
    )
    for col in ("Layer", "Class", "Width", "Before", "After", "Kept because"):
        ct.add_column(col, justify="right" if col in ("Before", "After") else "left", overflow="fold")
    for r in channel_rows(cp, all_layers):
        ct.add_row(
            markup(r["layer"]),
            markup(r["class_name"]),
            markup(r["what"]),
            f"{r['before']:,}",
            f"{r['after']:,}",
            markup(r["kept_because"] or ""),
        )
    console.print(ct)
    for line in channel_summary(cp):
        console.print(markup(line), highlight=False)


def render_shrink(data: dict[str, Any], console, *, all_layers: bool = False) -> None:
    from rich.table import Table

    before, after = data["before"], data["after"] or {}
    table = Table(
        title=f"{markup(data['input'] or 'model')}  ·  batch {data['batch_size']}  ·  optimizer {markup(data['optimizer'])}",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("", justify="left")
    for col in ("Before", "After", "Ratio"):
        table.add_column(col, justify="right")
    for label, key in SIDE_ROWS:
        table.add_row(
            label, format_bytes(before.get(key)), format_bytes(after.get(key)), _ratio(before.get(key), after.get(key))
        )
    console.print(table)

    rows = data["layers"] if all_layers else _changed_layers(data)
    if rows:
        lt = Table(
            title="Layers" + ("" if all_layers else " with weights that changed"),
            title_justify="left",
            header_style="bold",
        )
        for col in ("Layer", "Class", "Dtype before", "Dtype after", "Bytes before", "Bytes after"):
            lt.add_column(col, justify="right" if col.startswith("Bytes") else "left", overflow="fold")
        for r in rows:
            cls = (
                markup(r["class_name"])
                if r["class_name_after"] in (None, r["class_name"])
                else f"{markup(r['class_name'])} → {markup(r['class_name_after'])}"
            )
            lt.add_row(
                markup(r["layer"]),
                cls,
                markup(_dtypes(r["dtypes_before"])),
                markup(_dtypes(r["dtypes_after"])),
                format_bytes(r["param_bytes_before"]),
                format_bytes(r["param_bytes_after"]),
            )
        console.print(lt)

    for p in data["passes"]:
        applied = ", ".join(f"{markup(a['layer'])} ({markup(a['action'])})" for a in p["applied"][:12])
        more = len(p["applied"]) - 12
        line = f"[bold]{markup(p['name'])}[/bold]: applied {len(p['applied'])}"
        if applied:
            line += f": {applied}" + (f", … {more} more" if more > 0 else "")
        console.print(line, highlight=False)
        reasons: dict[str, int] = {}
        for s in p["skipped"]:
            reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
        for reason, n in reasons.items():
            console.print(f"    skipped {n}: {markup(reason)}", highlight=False)
        for note in p["notes"]:
            console.print(f"    note: {markup(note)}", highlight=False)
    _render_channels(data, console, all_layers)

    fid = data.get("fidelity")
    if fid:
        ft = Table(
            title=f"Fidelity ({markup(fid['source'])}, {fid['samples']} samples)",
            title_justify="left",
            header_style="bold",
        )
        for col in ("Output", "Max abs error", "Relative L2", "Cosine", "Top-1 agreement"):
            ft.add_column(col, justify="left" if col == "Output" else "right")
        for o in fid["outputs"]:
            ft.add_row(
                markup(o["name"]),
                _num(o["max_abs_error"]),
                _num(o["relative_l2_error"]),
                _num(o["cosine_similarity"]),
                _pct(o["top1_agreement"]),
            )
        console.print(ft)
        if fid["accuracy_before"] is not None:
            console.print(f"Accuracy: {_pct(fid['accuracy_before'])} → {_pct(fid['accuracy_after'])}", highlight=False)
        for g in fid["gates"]:
            verdict = "[green]pass[/green]" if g["passed"] else "[red]FAIL[/red]"
            console.print(f"Gate {g['gate']}: {_pct(g['value'])} vs {_pct(g['threshold'])} {verdict}", highlight=False)
        if fid["explain"]:
            et = Table(title="One layer at a time (worst first)", title_justify="left", header_style="bold")
            for col in ("Layer", "Relative L2", "Top-1 agreement", "Accuracy"):
                et.add_column(col, justify="left" if col == "Layer" else "right")
            for e in fid["explain"][:15]:
                et.add_row(
                    markup(e["layer"]),
                    _num(e["relative_l2_error"]),
                    _pct(e["top1_agreement"]),
                    _pct(e["accuracy_after"]),
                )
            console.print(et)
        if fid.get("note"):
            console.print(f"[dim]{markup(fid['note'])}[/dim]", highlight=False)
    for warning in data.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {markup(warning)}", highlight=False)
    if data.get("reload"):
        console.print(
            f"Verified: reloaded with {markup(data['reload']['loaded_with'])}, outputs reproduced.", highlight=False
        )
    console.print(_headline(data) + f"  ({data['elapsed_s']:.1f} s)", highlight=False)


def shrink_markdown(data: dict[str, Any]) -> str:
    before, after = data["before"], data["after"] or {}
    out = [
        f"## kmemopt shrink: {markdown(data['input'] or 'model')}",
        "",
        _headline(data, markdown),
        "",
        "| | Before | After | Ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, key in SIDE_ROWS:
        out.append(
            f"| {label} | {format_bytes(before.get(key))} | {format_bytes(after.get(key))} | "
            f"{_ratio(before.get(key), after.get(key))} |"
        )
    rows = _changed_layers(data)
    if rows:
        out += [
            "",
            "| Layer | Class | Dtype before | Dtype after | Bytes before | Bytes after |",
            "|---|---|---|---|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {markdown_code(r['layer'])} | {markdown(r['class_name'])} | {markdown(_dtypes(r['dtypes_before']))} "
                f"| {markdown(_dtypes(r['dtypes_after']))} "
                f"| {format_bytes(r['param_bytes_before'])} | {format_bytes(r['param_bytes_after'])} |"
            )
    out += ["", "### Passes", ""]
    for p in data["passes"]:
        out.append(f"- **{markdown(p['name'])}**: applied {len(p['applied'])}, skipped {len(p['skipped'])}")
        for s in p["skipped"]:
            out.append(f"  - skipped {markdown_code(s['layer'], table=False)}: {markdown(s['reason'])}")
        for note in p["notes"]:
            out.append(f"  - note: {markdown(note)}")
    cp = data.get("channel_pruning")
    if cp:
        out += [
            "",
            "### Channels",
            "",
            "| Layer | Class | Width | Before | After | Kept because |",
            "|---|---|---|---:|---:|---|",
        ]
        for r in channel_rows(cp, False):
            out.append(
                f"| {markdown_code(r['layer'])} | {markdown(r['class_name'])} | {markdown(r['what'])} "
                f"| {r['before']:,} | {r['after']:,} | {markdown(r['kept_because'] or '')} |"
            )
        out += [""] + [markdown(line) for line in channel_summary(cp)]
    fid = data.get("fidelity")
    if fid:
        out += [
            "",
            f"### Fidelity ({markdown(fid['source'])}, {fid['samples']} samples)",
            "",
            "| Output | Max abs error | Relative L2 | Cosine | Top-1 agreement |",
            "|---|---:|---:|---:|---:|",
        ]
        for o in fid["outputs"]:
            out.append(
                f"| {markdown_code(o['name'])} | {_num(o['max_abs_error'])} | {_num(o['relative_l2_error'])} | "
                f"{_num(o['cosine_similarity'])} | {_pct(o['top1_agreement'])} |"
            )
        if fid["accuracy_before"] is not None:
            out += ["", f"Accuracy: {_pct(fid['accuracy_before'])} → {_pct(fid['accuracy_after'])}"]
        if fid.get("note"):
            out += ["", markdown(fid["note"])]
    for warning in data.get("warnings", []):
        out += ["", f"> warning: {markdown(warning)}"]
    return "\n".join(out) + "\n"
