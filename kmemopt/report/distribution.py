"""The per-device section of the profile report (`--devices N`), from `to_dict()["distribution"]`."""

from __future__ import annotations

from typing import Any

from kmemopt.report.safe import markdown, markup
from kmemopt.units import format_bytes

_COLUMNS = (
    ("param_bytes", "Weights"),
    ("gradient_bytes", "Gradients"),
    ("optimizer_bytes", "Optimizer"),
    ("activation_bytes", "Activations*"),
    ("inference_peak_bytes", "Inference peak*"),
    ("training_peak_bytes", "Training peak*"),
)


def _groups(per_device: list[dict]) -> list[tuple[str, dict]]:
    """Devices holding the same bytes, as one row each ("0-7" when all eight do)."""
    groups: list[tuple[list[int], dict]] = []
    for d in per_device:
        key = {k: d[k] for k, _ in _COLUMNS}
        if groups and groups[-1][1] == key and groups[-1][0][-1] == d["device"] - 1:
            groups[-1][0].append(d["device"])
        else:
            groups.append(([d["device"]], key))
    return [(f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0]), key) for ids, key in groups]


def _layout(data: dict[str, Any]) -> str:
    lay = data["layout"]
    if lay["name"] == "auto":
        return (
            f"auto (weights of at least {format_bytes(lay['threshold_bytes'])} sharded on their largest dimension "
            f"the model axis divides; {len(lay['rules'])} sharded)"
        )
    if lay["name"] == "file":
        return f"file {lay['file']} ({len(lay['rules'])} rules)"
    return "every variable replicated"


def summary_lines(data: dict[str, Any]) -> list[str]:
    """The distribution in plain sentences (no markup: the caller escapes)."""
    mesh = "x".join(str(n) for n in data["mesh"]["shape"])
    axes = ", ".join(data["mesh"]["axis_names"])
    kind = "DataParallel" if data["kind"] == "data" else "ModelParallel"
    lines = [
        f"{kind} over {data['devices']} devices: mesh {mesh} ({axes}), batch {data['batch_size']} = "
        f"{data['batch_per_device']} per device; layout: {_layout(data)}.",
        "Weights, gradients and optimizer state per device are exact; * activations and peaks are estimates.",
    ]
    pending = data["per_device"][0].get("allreduce_pending_bytes", 0)
    if pending:
        lines.append(
            f"Local gradients awaiting their all-reduce over the batch axis add {format_bytes(pending)} a device "
            "to the training peak (beyond the activations they overlap)."
        )
    lines += [f"note: {w}" for w in data.get("warnings", [])]
    lines += verification_lines(data)
    return lines


def verification_lines(data: dict[str, Any]) -> list[str]:
    v = data.get("verified")
    if not v:
        return []
    got = {name: next(iter(v["measured"][name].values())) for name in ("weights", "gradients", "optimizer")}
    verdict = "equal kmemopt's on every device" if v["equal"] else "DIFFER: " + "; ".join(v["mismatches"][:3])
    lines = [
        f"Verified on JAX ({len(v['devices'])} virtual CPU devices, {v['seconds']:.0f} s): shards of weights "
        f"{format_bytes(got['weights'])}, gradients {format_bytes(got['gradients'])}, optimizer "
        f"{format_bytes(got['optimizer'])} per device {verdict}."
    ]
    c = v["compared"]
    xla = v["xla"]
    lines.append(
        f"  XLA per device: training step {format_bytes(xla['training']['total_bytes'])} (kmemopt's tensors "
        f"{format_bytes(c['kmemopt_training_tensor_bytes'])}, {_x(c['training_ratio'])}); forward+backward "
        f"temporaries {format_bytes(c['xla_activation_bytes'])} (kmemopt's activations "
        f"{format_bytes(c['kmemopt_activation_bytes'])}, {_x(c['activation_ratio'])})"
    )
    if c.get("xla_one_device_activation_bytes") is not None:
        lines.append(
            f"  XLA for one device running {data['batch_per_device']} sample(s) unsharded: temporaries "
            f"{format_bytes(c['xla_one_device_activation_bytes'])} (kmemopt {_x(c['activation_ratio_one_device'])})"
        )
    return lines


def _x(ratio: float | None) -> str:
    return f"{ratio:.2f}x XLA's" if ratio is not None else "-"


def render_distribution(data: dict[str, Any], console) -> None:
    """A short table: one row per group of devices holding the same bytes, then the sentences."""
    from rich import box
    from rich.table import Table

    table = Table(title="Per device", title_justify="left", box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("Devices", no_wrap=True)
    for _, title in _COLUMNS:
        table.add_column(title, justify="right", no_wrap=True)
    for ids, row in _groups(data["per_device"]):
        table.add_row(ids, *(format_bytes(row[k]) for k, _ in _COLUMNS))
    console.print(table)
    for line in summary_lines(data):
        console.print(markup(line), highlight=False)


def distribution_markdown(data: dict[str, Any]) -> str:
    out = [
        "### Per device",
        "",
        "| Devices | " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|---|" + "---:|" * len(_COLUMNS),
    ]
    for ids, row in _groups(data["per_device"]):
        out.append(f"| {ids} | " + " | ".join(format_bytes(row[k]) for k, _ in _COLUMNS) + " |")
    out.append("")
    out += [f"- {markdown(line.strip())}" for line in summary_lines(data)]
    return "\n".join(out)
