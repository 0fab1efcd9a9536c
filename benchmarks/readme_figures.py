"""The README's headline figures, generated from benchmarks/results.json (never typed by hand).

`make bench` rewrites the block between the README's `figures:start` and `figures:end` markers;
tests/test_bench_provenance.py fails when the README and results.json disagree. Every accuracy says
whether its rows were used to fit the memory model (in-sample) or not (held out), and every size
stands beside its fidelity.
"""

from __future__ import annotations

import re
import statistics

START = "<!-- figures:start (generated from benchmarks/results.json by benchmarks/readme_figures.py) -->"
END = "<!-- figures:end -->"
BAND = (0.8, 1.25)


def _mib(n: float) -> str:
    return f"{n / 1024**2:,.0f} MiB"


def _when(rows: list[dict]) -> str:
    """When and on what code the rows were measured, from their `measured_at` stamps."""
    stamps = {(r.get("measured_at") or {}).get("commit") or "unknown" for r in rows}
    dates = sorted({((r.get("measured_at") or {}).get("date") or "unknown")[:10] for r in rows})
    commits = ", ".join(f"`{c[:7]}`" for c in sorted(stamps))
    legacy = any("note" in (r.get("measured_at") or {}) for r in rows)  # from before per-row provenance
    where = "first recorded in" if legacy else "on"
    plural = "s" if len(stamps) > 1 else ""
    return f"measured {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}, {where} commit{plural} {commits}"


def _estimate(rows: list[dict]) -> list[str]:
    ours = [r for r in rows if r["estimator"] == "kmemopt" and r.get("ratio")]
    out = []
    for label, group in (
        ("on the rows its runtime constants were fitted on (in-sample)", [r for r in ours if not r.get("held_out")]),
        ("on held-out models it was not fitted on", [r for r in ours if r.get("held_out")]),
    ):
        if not group:
            continue
        band = sum(BAND[0] <= r["ratio"] <= BAND[1] for r in group)
        under = [r for r in group if r["ratio"] < 1]
        worst_under = min(under, key=lambda r: r["ratio"]) if under else None
        models = sorted({r["model"] for r in group})
        text = (
            f"  - {label[0].upper() + label[1:]} ({', '.join(models)}; batch 1, 8, 32; inference and training): {band} of {len(group)} rows "
            f"within {BAND[0]}-{BAND[1]}x of the measured CPU peak, median absolute error "
            f"{statistics.median(abs(r['error_pct']) for r in group):.0f}%; {len(under)} under-estimates"
        )
        if worst_under:
            text += (
                f" (the lowest {worst_under['ratio']:.2f}x: {worst_under['model']}, b={worst_under['batch_size']}, "
                f"{worst_under['phase']})"
            )
        out.append(text + ".")
    others = []
    for name in sorted({r["estimator"] for r in rows} - {"kmemopt"}):
        group = [r for r in rows if r["estimator"] == name and r.get("ratio")]
        if group:
            band = sum(BAND[0] <= r["ratio"] <= BAND[1] for r in group)
            med = statistics.median(abs(r["error_pct"]) for r in group)
            others.append(f"{name} {band} of {len(group)} (median absolute error {med:.0f}%)")
    if others:
        out.append("  - The usual rules of thumb on the same rows, in the band: " + "; ".join(others) + ".")
    return [f"- **Estimates against measurements** (static estimate vs measured peak; {_when(rows)}):", *out]


def _speed(rows: list[dict]) -> list[str]:
    by = {(r["model"], r["tool"]): r for r in rows}
    out = []
    llama = next((r for r in rows if r["model"].startswith("Llama 7B") and r["tool"] == "kmemopt profile"), None)
    floor = next((r for r in rows if r["tool"] == "import keras"), None)
    if llama:
        started = f" ({floor['seconds']:.1f} s of it the framework's start-up alone)" if floor else ""
        out.append(
            f"a {llama['params'] / 1e9:.1f}-billion-parameter Llama (declared in the file, not stored) profiles in "
            f"{llama['seconds']:.1f} s{started} with {_mib(llama['peak_rss_bytes'])} peak RSS"
        )
    load, prof = by.get(("ResNet50", "keras.models.load_model")), by.get(("ResNet50", "kmemopt profile"))
    if load and prof:
        out.append(
            f"ResNet50 profiles in {prof['seconds'] / load['seconds']:.2f}x the time and "
            f"{prof['peak_rss_bytes'] / load['peak_rss_bytes']:.2f}x the peak memory of `keras.models.load_model` "
            "alone (process start included)"
        )
    return [f"- **Fast, without loading weights** ({_when(rows)}): {'; '.join(out)}."] if out else []


def _fidelity(r: dict) -> str:
    parts = []
    if r.get("accuracy_before") is not None and r.get("accuracy_after") is not None:
        parts.append(f"accuracy {100 * r['accuracy_before']:.2f}% -> {100 * r['accuracy_after']:.2f}%")
    if r.get("top1_agreement") is not None:
        parts.append(f"{100 * r['top1_agreement']:.1f}% top-1 agreement")
    if r.get("relative_l2_error") is not None:
        parts.append(f"relative L2 {r['relative_l2_error']:.2g}")
    n = r.get("fidelity_samples")
    source = "held-out samples" if r.get("fidelity_source") == "data" else "synthetic inputs, random weights"
    return ", ".join(parts) + (f" on {n} {source}" if n else "")


SIZE_METHODS = (
    ("kmemopt int8 (portable)", "int8 (plain Keras)"),
    ("kmemopt int8 + custom layers", "int8 with kmemopt's layers"),
    ('keras native model.quantize("int8")', 'Keras\'s own `model.quantize("int8")`'),
)


TRAINED_METHODS = (
    ("kmemopt shrink --quantize int8 --allow-custom-layers (int8 convolutions)", "int8 with kmemopt's layers"),
    ("kmemopt shrink --quantize int8 (convolutions float16)", "int8 (plain Keras)"),
    ('Keras model.quantize("int8") (Dense only)', 'Keras\'s own `model.quantize("int8")`'),
)


def _trained_convs(rows: list[dict]) -> list[str]:
    """The int8 convolutions on CNNs trained on digits (benchmarks/suite_int8conv.py), held-out accuracy."""
    out = [f"  - Convolutional networks trained on real data (scikit-learn's digits; {_when(rows)}):"]
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == model}
        items = [
            f"{label} {by[m]['ratio']:.3f}x "
            f"({_fidelity({**by[m], 'fidelity_source': 'data', 'fidelity_samples': by[m]['test_samples']})})"
            for m, label in TRAINED_METHODS
            if m in by
        ]
        if items:
            out.append(f"    - {model}: " + "; ".join(items) + ".")
    return out if len(out) > 1 else []


def _shrink(rows: list[dict], trained: list[dict] | None = None) -> list[str]:
    out = [
        f"- **Smaller files, each size beside its fidelity** (file size as a fraction of the float32 file; {_when(rows)}):"
    ]
    models = [r["model"] for r in rows if r["method"].startswith("float32 reference")]
    for model in models:
        by = {r["method"]: r for r in rows if r["model"] == model}
        items = []
        for method, label in SIZE_METHODS:
            r = by.get(method)
            if r and r.get("ratio") is not None and "error" not in r:
                items.append(f"{label} {r['ratio']:.3f}x ({_fidelity(r)})")
        if items:
            out.append(f"  - {model}: " + "; ".join(items) + ".")
    if trained:
        out += _trained_convs(trained)
    mem = [
        r
        for r in rows
        if r["method"].endswith("shrink peak RSS") and not r["model"].startswith("Scaling") and "error" not in r
    ]
    big = [r for r in mem if r["float32_weight_bytes"] >= 50 * 1024**2]
    if big:
        out.append(
            "- **Shrinking without several copies of the model**: `shrink`'s peak memory above the process baseline is "
            + ", ".join(f"{r['rss_over_weights']:.2f}x the float32 weights on {r['model']}" for r in big)
            + "."
        )
    return out


def generate(results: dict) -> str:
    lines = [START]
    if results.get("estimate_vs_measured"):
        lines += _estimate(results["estimate_vs_measured"])
    if results.get("speed"):
        lines += _speed(results["speed"])
    if results.get("shrink"):
        lines += _shrink(results["shrink"], results.get("int8conv"))
    lines.append(END)
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    pattern = re.compile(re.escape(START.split(" (")[0]) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise ValueError("README.md has no figures block (figures:start ... figures:end)")
    return pattern.sub(lambda _: block, readme, count=1)
