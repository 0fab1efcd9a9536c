"""The HTML reports: one self-contained page a command (profile, shrink, check), charts in inline SVG.

Every number on a page is read from the result's `to_dict()` (the JSON `--format json` prints) and
nothing else; sums are of those numbers. The charts are SVG written here, not a charting library: a
ResNet50 profile page is a few hundred kilobytes, needs no script to draw, works offline and under
a Content-Security-Policy that forbids every network request (docs/report.md says more).

Strings from the model file are data: every one goes through `_e` (`visible`, then `html.escape`
with quotes), in text, attributes and SVG `<title>`s alike. Numbers are formatted here, never taken
as text from the file.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from kmemopt.report.safe import visible
from kmemopt.units import format_bytes, format_count

# The colours of the memory terms, shared by every chart and legend.
TERMS = (
    ("weights", "Weights", "#4e79a7"),
    ("optimizer", "Optimizer state", "#f28e2b"),
    ("gradients", "Gradients", "#e15759"),
    ("runtime", "Runtime", "#bab0ac"),
    ("activations", "Activations kept", "#59a14f"),
    ("transient", "Transient", "#edc948"),
)
COLOUR = {key: colour for key, _, colour in TERMS}
KIND_TEXT = {
    "exact": "counted from the architecture or the file: exact",
    "estimated": "kmemopt's static memory model: an estimate",
    "measured": "measured in a child process that ran the model",
}


def _e(value: Any) -> str:
    """A string from the model file (or any text) as HTML text or a quoted attribute value."""
    return html.escape(visible(value), quote=True)


def _kind(kind: str) -> str:
    return f'<span class="kind {kind}" title="{_e(KIND_TEXT[kind])}">{kind}</span>'


def _n(value: float) -> str:
    """An SVG coordinate: one decimal is plenty and keeps the page small."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _figure(ident: str, label: str, value: int | None, kind: str, fmt=format_bytes) -> str:
    """A headline number: the raw value in data-value (tests read it), the formatted one shown."""
    raw = "" if value is None else str(int(value))
    return (
        f'<div class="figure" id="{ident}" data-value="{raw}"><div class="label">{_e(label)} {_kind(kind)}</div>'
        f'<div class="value" title="{_e(f"{value:,}" if value is not None else "-")}">{_e(fmt(value))}</div></div>'
    )


def _nice_step(vmax: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten of the axis unit)."""
    if vmax <= 0:
        return 1.0
    unit = 1024 ** max(0, min(4, int(_log1024(vmax))))
    raw = vmax / unit / ticks
    power = 10 ** _floor_log10(raw)
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw:
            return m * power * unit
    return 10 * power * unit


def _log1024(v: float) -> float:
    import math

    return math.log(v, 1024) if v > 0 else 0.0


def _floor_log10(v: float) -> int:
    import math

    return math.floor(math.log10(v)) if v > 0 else 0


class _Axes:
    """A plot area in an SVG of `width` x `height`: data -> pixels, and the y axis in bytes."""

    def __init__(self, width: int, height: int, xmax: float, ymax: float, xmin: float = 0.0):
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = 78, 16, 16, 34
        self.xmin, self.xmax, self.ymax = xmin, max(xmax, xmin + 1e-9), max(ymax, 1)

    def x(self, v: float) -> float:
        return self.left + (v - self.xmin) / (self.xmax - self.xmin) * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        return self.height - self.bottom - v / self.ymax * (self.height - self.top - self.bottom)

    def y_axis(self) -> str:
        step = _nice_step(self.ymax)
        out = []
        v = 0.0
        while v <= self.ymax * 1.0001:
            y = _n(self.y(v))
            out.append(
                f'<line class="grid" x1="{self.left}" x2="{self.width - self.right}" y1="{y}" y2="{y}"/>'
                f'<text class="tick" x="{self.left - 6}" y="{y}" text-anchor="end" dy="0.32em">{_e(format_bytes(v))}</text>'
            )
            v += step
        return "".join(out)

    def svg(self, ident: str, label: str, body: str) -> str:
        return (
            f'<svg id="{ident}" class="chart" role="img" aria-label="{_e(label)}" viewBox="0 0 {self.width} {self.height}" '
            f'width="{self.width}" height="{self.height}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
        )


def _legend(items: Sequence[tuple[str, str, str]]) -> str:
    """(colour, name, text) swatches under a chart."""
    return (
        '<ul class="legend">'
        + "".join(
            f'<li><span class="swatch" style="background:{c}"></span>{_e(name)} <span class="muted">{_e(text)}</span></li>'
            for c, name, text in items
        )
        + "</ul>"
    )


# ---------------------------------------------------------------------------------------------- page

_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--bg:#fff;--soft:#f5f7fa}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;max-width:1120px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.muted{color:var(--muted)}.sub{color:var(--muted);margin:0 0 16px;overflow-wrap:anywhere}
.figures{display:flex;flex-wrap:wrap;gap:10px}.figure{background:var(--soft);border:1px solid var(--line);border-radius:6px;
padding:8px 12px;min-width:150px}.figure .label{font-size:12px;color:var(--muted)}.figure .value{font-size:20px;font-weight:600}
.kind{font-size:10px;border-radius:3px;padding:0 4px;margin-left:2px;text-transform:uppercase;letter-spacing:.03em;vertical-align:1px}
.kind.exact{background:#dcebdc;color:#1e5a22}.kind.estimated{background:#fff0cc;color:#7a5600}.kind.measured{background:#dde8f7;color:#1f4f8f}
svg.chart{max-width:100%;height:auto;display:block;margin:6px 0}svg .grid{stroke:#e6e9ee;stroke-width:1}
svg .tick{font-size:11px;fill:var(--muted)}svg .note{font-size:12px;fill:var(--fg)}svg .phase{stroke:#8a94a3;stroke-dasharray:3 3}
svg .hit{fill:transparent}svg .hit:hover{fill:rgba(0,0,0,.07)}svg .peak{stroke:#b3261e;stroke-width:1.5;stroke-dasharray:5 3}
svg .measured{stroke:#1f4f8f;stroke-width:2;stroke-dasharray:7 3}svg .budget{stroke:#b3261e;stroke-width:1.5;stroke-dasharray:4 4}
ul.legend{list-style:none;padding:0;margin:4px 0 0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{padding:3px 6px;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:var(--soft);position:sticky;top:0}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" ▲"}table.sortable th[aria-sort=descending]::after{content:" ▼"}
td.name{overflow-wrap:anywhere;min-width:180px;max-width:320px}td.shape{white-space:nowrap}.bar{display:flex;height:10px;width:140px;background:#eef1f5;border-radius:2px;overflow:hidden}
.bar span{display:block;height:100%}tr.peak td{background:#fdecea}
.status-pass{color:#1e7a2a;font-weight:600}.status-fail,.status-error{color:#b3261e;font-weight:600}.status-warn{color:#8a6100;font-weight:600}
.scroll{max-height:560px;overflow:auto;border:1px solid var(--line)}footer{margin-top:28px;font-size:12px;color:var(--muted)}
ul.plain{padding-left:18px;margin:4px 0}code{font-size:12px;background:var(--soft);padding:0 3px;border-radius:3px}
"""

# Sorts a table by the clicked column: numeric on data-sort when both cells have one, else text.
_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('thead th').forEach(function (o) { o.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute('data-sort');
        return v !== null && v !== '' && !isNaN(Number(v)) ? Number(v) : cell.textContent.trim().toLowerCase();
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

# No network request can leave the page: every fetch is refused by the browser, not just absent.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _page(kind: str, title: str, subtitle: str, body: str, version: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head>"
        f'<body data-report="{_e(kind)}"><h1>{_e(title)}</h1><p class="sub">{subtitle}</p>{body}'
        f"<footer>kmemopt {_e(version)}. Units: KiB, MiB, GiB are 1024-based. {_kind('exact')} {_e(KIND_TEXT['exact'])}; "
        f"{_kind('estimated')} {_e(KIND_TEXT['estimated'])}; {_kind('measured')} {_e(KIND_TEXT['measured'])}. "
        "Every number on this page is from the report's JSON (<code>--format json</code>).</footer>"
        f"<script>{_JS}</script></body></html>\n"
    )


def _num_cell(value: int | float | None, shown: str | None = None, title: str | None = None) -> str:
    raw = "" if value is None else str(value)
    text = shown if shown is not None else ("-" if value is None else format_bytes(value))
    tip = f' title="{_e(title)}"' if title else (f' title="{value:,} bytes"' if isinstance(value, int) else "")
    return f'<td class="num" data-sort="{raw}"{tip}>{_e(text)}</td>'


# ---------------------------------------------------------------------------------------------- profile


def _measured_run(data: dict[str, Any], batch_size: int) -> dict[str, Any] | None:
    m = data.get("measured") or {}
    return next((r for r in m.get("runs") or [] if r.get("batch_size") == batch_size and r.get("status") == "ok"), None)


def _step_terms(step: dict[str, Any], totals: dict[str, Any]) -> dict[str, int]:
    """One timeline step's stack, bottom to top (the fixed terms are the profile's totals)."""
    return {
        "weights": totals["param_bytes"],
        "optimizer": totals["optimizer_bytes"],
        "gradients": 0 if step["phase"] == "forward" else totals["gradient_bytes"],
        "runtime": totals.get("runtime_training_bytes") or 0,
        "activations": step["activations"],
        "transient": step["transient"],
    }


def timeline_svg(data: dict[str, Any]) -> str:
    """The training step: stacked memory terms per step, phases marked, the peak and the measured peak."""
    tl = data.get("timeline")
    if not tl or not tl.get("steps"):
        return '<p class="muted">No timeline: this profile was made without its layer graph.</p>'
    totals, steps = data["totals"], tl["steps"]
    stacks = [_step_terms(s, totals) for s in steps]
    peak_i = tl["peak_step"]
    run = _measured_run(data, data["batch_size"])
    measured = run["training_peak_bytes"] if run else None
    top = max([tl["peak_bytes"], measured or 0])
    ax = _Axes(1040, 360, len(steps), top * 1.1)
    body = [ax.y_axis()]
    lower = [0] * len(steps)
    for key, _, colour in TERMS:
        upper = [lo + st[key] for lo, st in zip(lower, stacks)]
        if any(u != lo for u, lo in zip(upper, lower)):
            pts = []
            for i, v in enumerate(upper):
                pts += [f"{_n(ax.x(i))},{_n(ax.y(v))}", f"{_n(ax.x(i + 1))},{_n(ax.y(v))}"]
            for i in range(len(lower) - 1, -1, -1):
                pts += [f"{_n(ax.x(i + 1))},{_n(ax.y(lower[i]))}", f"{_n(ax.x(i))},{_n(ax.y(lower[i]))}"]
            body.append(f'<path class="term {key}" fill="{colour}" d="M{" L".join(pts)} Z"/>')
        lower = upper
    # phase boundaries and names
    first: dict[str, int] = {}
    for i, s in enumerate(steps):
        first.setdefault(s["phase"], i)
    for phase, i in first.items():
        x = _n(ax.x(i))
        body.append(f'<line class="phase" x1="{x}" x2="{x}" y1="{ax.top}" y2="{ax.height - ax.bottom}"/>')
        last = phase == steps[-1]["phase"] and i == len(steps) - 1  # the one-step update: name it at the end
        lx, anchor = (ax.width - ax.right, "end") if last else (ax.x(i) + 4, "start")
        body.append(
            f'<text class="tick" x="{_n(lx)}" y="{ax.height - ax.bottom + 16}" text-anchor="{anchor}">{phase}</text>'
        )
    # hover: one transparent column a step, its numbers in the title
    for i, (s, st) in enumerate(zip(steps, stacks)):
        where = f"{s['phase']} · {visible(s['layer'])}" if s["layer"] is not None else "optimizer update"
        parts = ", ".join(f"{name.lower()} {format_bytes(st[key])}" for key, name, _ in TERMS if st[key])
        tip = f"step {i + 1}: {where}: {format_bytes(sum(st.values()))} ({parts})"
        body.append(
            f'<rect class="hit" x="{_n(ax.x(i))}" y="{ax.top}" width="{_n(max(ax.x(i + 1) - ax.x(i), 0.5))}" '
            f'height="{ax.height - ax.top - ax.bottom}"><title>{_e(tip)}</title></rect>'
        )
    # the peak
    peak = steps[peak_i]
    px, py = ax.x(peak_i + 0.5), ax.y(tl["peak_bytes"])
    anchor = "end" if px > ax.width / 2 else "start"
    dx = -8 if anchor == "end" else 8
    body.append(f'<line class="peak" x1="{ax.left}" x2="{ax.width - ax.right}" y1="{_n(py)}" y2="{_n(py)}"/>')
    body.append(
        f'<circle id="timeline-peak" cx="{_n(px)}" cy="{_n(py)}" r="4.5" fill="#b3261e" data-value="{tl["peak_bytes"]}"/>'
    )
    body.append(
        f'<text class="note" x="{_n(px + dx)}" y="{_n(py - 8)}" text-anchor="{anchor}">estimated peak '
        f"{_e(format_bytes(tl['peak_bytes']))} at {_e(peak['layer'])} ({peak['phase']})</text>"
    )
    if measured is not None:
        my = _n(ax.y(measured))
        body.append(
            f'<line class="measured" id="timeline-measured" x1="{ax.left}" x2="{ax.width - ax.right}" y1="{my}" y2="{my}" '
            f'data-value="{measured}"><title>measured training peak {_e(format_bytes(measured))}</title></line>'
        )
        body.append(
            f'<text class="note" x="{ax.width - ax.right - 4}" y="{_n(ax.y(measured) + 14)}" text-anchor="end">'
            f"measured peak {_e(format_bytes(measured))}</text>"
        )
    svg = ax.svg("timeline", "Memory over one training step", "".join(body))
    legend = [(c, name, "") for key, name, c in TERMS if any(st[key] for st in stacks)]
    if measured is not None:
        legend.append(("#1f4f8f", "Measured peak", format_bytes(measured)))
    return svg + _legend(legend)


def batch_svg(data: dict[str, Any]) -> str:
    """Inference and training peak against the batch size, the budget, the measured points."""
    lines, b = data["batch_line"], data["batch_size"]
    budget = (data.get("budget") or {}).get("budget_bytes")
    runs = [r for r in (data.get("measured") or {}).get("runs") or [] if r.get("status") == "ok"]
    bmax = max([2 * b] + [r["batch_size"] for r in runs])
    if data.get("budget") and data["budget"]["max_training_batch"]:
        bmax = max(bmax, min(int(data["budget"]["max_training_batch"] * 1.25) + 1, 16 * b))

    def at(phase: str, batch: int) -> int:
        return lines[phase]["fixed_bytes"] + lines[phase]["per_sample_bytes"] * batch

    points = [at("training", bmax), budget or 0] + [r.get("training_peak_bytes") or 0 for r in runs]
    ax = _Axes(1040, 300, bmax, max(points) * 1.1, xmin=0)
    body = [ax.y_axis()]
    step = max(1, round(bmax / 8))
    for t in range(0, bmax + 1, step):
        body.append(
            f'<text class="tick" x="{_n(ax.x(t))}" y="{ax.height - ax.bottom + 16}" text-anchor="middle">{t}</text>'
        )
    for phase, colour in (("inference", "#4e79a7"), ("training", "#e15759")):
        body.append(
            f'<line class="line-{phase}" x1="{_n(ax.x(1))}" y1="{_n(ax.y(at(phase, 1)))}" x2="{_n(ax.x(bmax))}" '
            f'y2="{_n(ax.y(at(phase, bmax)))}" stroke="{colour}" stroke-width="2.5"><title>{phase} peak = '
            f"{_e(format_bytes(lines[phase]['fixed_bytes']))} + B × {_e(format_bytes(lines[phase]['per_sample_bytes']))}"
            "</title></line>"
        )
        body.append(
            f'<circle cx="{_n(ax.x(b))}" cy="{_n(ax.y(at(phase, b)))}" r="4" fill="{colour}">'
            f"<title>{phase} peak at batch {b}: {_e(format_bytes(at(phase, b)))} (estimated)</title></circle>"
        )
    body.append(
        f'<line class="phase" x1="{_n(ax.x(b))}" x2="{_n(ax.x(b))}" y1="{ax.top}" y2="{ax.height - ax.bottom}"/>'
        f'<text class="tick" x="{_n(ax.x(b) + 4)}" y="{ax.top + 10}">batch {b} (profiled)</text>'
    )
    if budget:
        y = _n(ax.y(budget))
        body.append(
            f'<line class="budget" id="batch-budget" x1="{ax.left}" x2="{ax.width - ax.right}" y1="{y}" y2="{y}" '
            f'data-value="{budget}"/><text class="note" x="{ax.left + 6}" y="{_n(ax.y(budget) - 6)}">budget '
            f"{_e(format_bytes(budget))}</text>"
        )
    for r in runs:
        for phase, colour in (("inference", "#4e79a7"), ("training", "#e15759")):
            v = r.get(f"{phase}_peak_bytes")
            if v is None:
                continue
            body.append(
                f'<rect class="measured-point" x="{_n(ax.x(r["batch_size"]) - 4.5)}" y="{_n(ax.y(v) - 4.5)}" width="9" '
                f'height="9" fill="#fff" stroke="{colour}" stroke-width="2"><title>measured {phase} peak at batch '
                f"{r['batch_size']}: {_e(format_bytes(v))}</title></rect>"
            )
    legend = [
        ("#4e79a7", "Inference peak", "estimated"),
        ("#e15759", "Training peak", "estimated"),
    ]
    if budget:
        legend.append(("#b3261e", "Budget", format_bytes(budget)))
    if runs:
        legend.append(("#ffffff", "□ Measured", f"{len(runs)} batch size(s)"))
    return ax.svg("batch-chart", "Peak memory against the batch size", "".join(body)) + _legend(legend)


def composition_svg(data: dict[str, Any]) -> str:
    f = data.get("file")
    if not f:
        return '<p class="muted">No file: the model was profiled from memory.</p>'
    parts = [
        ("weights", "Weights", f["weights_bytes"], "#4e79a7"),
        ("optimizer", "Optimizer state", f["optimizer_bytes"], "#f28e2b"),
        ("config", "Config", f["config_bytes"], "#76b7b2"),
        ("assets", "Assets", f["assets_bytes"], "#b07aa1"),
        ("overhead", "Container overhead", f["overhead_bytes"], "#bab0ac"),
    ]
    size = max(f["file_bytes"], 1)
    width, x = 1040, 0.0
    rects = []
    for key, name, n, colour in parts:
        if not n:
            continue
        w = n / size * width
        rects.append(
            f'<rect class="file-{key}" x="{_n(x)}" y="0" width="{_n(max(w, 1))}" height="26" fill="{colour}" '
            f'data-value="{n}"><title>{name}: {_e(format_bytes(n))} ({n / size:.1%})</title></rect>'
        )
        x += w
    svg = (
        f'<svg id="file-chart" class="chart" role="img" aria-label="What the file holds" viewBox="0 0 {width} 26" '
        f'width="{width}" height="26" xmlns="http://www.w3.org/2000/svg">{"".join(rects)}</svg>'
    )
    return svg + _legend([(c, name, f"{format_bytes(n)} ({n / size:.1%})") for _, name, n, c in parts if n])


def _shape(shape: Any) -> str:
    from kmemopt.report.profile import _shape as shape_text

    return shape_text(shape)


def _layer_total(row: dict[str, Any]) -> int:
    return row["param_bytes"] + row["activation_bytes"] + row["gradient_bytes"] + row["optimizer_bytes"]


def layers_table(data: dict[str, Any]) -> str:
    rows = data["layers"]
    heaviest = max((_layer_total(r) for r in rows), default=0) or 1
    peak_layer = None
    tl = data.get("timeline")
    if tl and tl.get("steps"):
        peak_layer = tl["steps"][tl["peak_step"]]["layer"]
    head = (
        '<table class="sortable" id="layers"><thead><tr><th class="num">#</th><th>Layer</th><th>Class</th>'
        '<th>Output shape</th><th class="num">Params</th><th class="num">Weights</th>'
        '<th class="num">Activations kept</th><th class="num">Gradients</th><th class="num">Optimizer</th>'
        '<th class="num">Total</th><th>Share</th></tr></thead><tbody>'
    )
    out = [head]
    for i, r in enumerate(rows, start=1):
        total = _layer_total(r)
        tip = (
            f"{visible(r['path'])}: weights {format_bytes(r['param_bytes'])}, activations kept "
            f"{format_bytes(r['activation_bytes'])}, gradients {format_bytes(r['gradient_bytes'])}, optimizer "
            f"{format_bytes(r['optimizer_bytes'])}"
        )
        bar = "".join(
            f'<span style="width:{r[k] / heaviest * 100:.2f}%;background:{COLOUR[c]}"></span>'
            for k, c in (
                ("param_bytes", "weights"),
                ("activation_bytes", "activations"),
                ("gradient_bytes", "gradients"),
                ("optimizer_bytes", "optimizer"),
            )
            if r[k]
        )
        calls = f" ×{r['calls']}" if r.get("calls", 0) > 1 else ""
        cls = ' class="peak"' if r["path"] == peak_layer else ""
        out.append(
            f'<tr{cls} title="{_e(tip)}"><td class="num" data-sort="{i}">{i}</td><td class="name">{_e(r["path"])}{calls}</td>'
            f"<td>{_e(r['class_name'])}</td><td class='shape'>{_e(_shape(r['output_shape']))}</td>"
            + _num_cell(r["params"], f"{r['params']:,}", f"{r['params']:,} parameters")
            + _num_cell(r["param_bytes"])
            + _num_cell(r["activation_bytes"])
            + _num_cell(r["gradient_bytes"])
            + _num_cell(r["optimizer_bytes"])
            + _num_cell(total)
            + f'<td data-sort="{total}"><div class="bar">{bar}</div></td></tr>'
        )
    t = data["totals"]
    out.append(
        "</tbody><tfoot><tr><th></th><th>Total</th><th></th><th></th>"
        f'<th class="num" id="total-params" data-value="{t["params"]}">{t["params"]:,}</th>'
        f'<th class="num" id="total-weights" data-value="{t["param_bytes"]}">{_e(format_bytes(t["param_bytes"]))}</th>'
        f'<th class="num" id="total-activations" data-value="{t["activation_bytes"]}">{_e(format_bytes(t["activation_bytes"]))}</th>'
        f'<th class="num" id="total-gradients" data-value="{t["gradient_bytes"]}">{_e(format_bytes(t["gradient_bytes"]))}</th>'
        f'<th class="num" id="total-optimizer" data-value="{t["optimizer_bytes"]}">{_e(format_bytes(t["optimizer_bytes"]))}</th>'
        "<th></th><th></th></tr></tfoot></table>"
    )
    return '<div class="scroll">' + "".join(out) + "</div>"


_DEVICE_PARTS = (
    ("params", "Weights", "#4e79a7", "exact"),
    ("gradients", "Gradients", "#59a14f", "exact"),
    ("optimizer", "Optimizer state", "#f28e2b", "exact"),
    ("activations", "Activations kept", "#e15759", "estimated"),
    ("step", "Backward step + pending all-reduce", "#edc948", "estimated"),
    ("runtime", "Runtime allowance", "#bab0ac", "estimated"),
)


def _device_parts(d: dict[str, Any]) -> dict[str, int]:
    """One device's training peak split into the stacked bars' parts (they sum to the peak)."""
    parts = {
        "params": d["param_bytes"],
        "gradients": d["gradient_bytes"],
        "optimizer": d["optimizer_bytes"],
        "activations": d["activation_bytes"],
        "runtime": d.get("runtime_training_bytes", 0),
    }
    parts["step"] = max(0, d["training_peak_bytes"] - sum(parts.values()))
    return parts


def distribution_html(dist: dict[str, Any]) -> str:
    """`--devices N`: one stacked bar per group of devices holding the same bytes (the training peak's
    parts), then the report's sentences, escaped."""
    from kmemopt.report.distribution import summary_lines

    groups: list[tuple[str, dict[str, Any]]] = []
    for d in dist["per_device"]:
        if groups and groups[-1][1] == {k: v for k, v in d.items() if k != "device"}:
            start = groups[-1][0].split("-")[0]
            groups[-1] = (f"{start}-{d['device']}", groups[-1][1])
        else:
            groups.append((str(d["device"]), {k: v for k, v in d.items() if k != "device"}))
    top = max((d["training_peak_bytes"] for _, d in groups), default=0) or 1
    width, label_w, bar_h, gap = 1040, 90, 24, 8
    rows = []
    for i, (ids, d) in enumerate(groups):
        y = i * (bar_h + gap)
        x = float(label_w)
        rows.append(f'<text x="0" y="{_n(y + bar_h * 0.7)}" font-size="12">devices {_e(ids)}</text>')
        parts = _device_parts(d)
        for key, name, colour, _ in _DEVICE_PARTS:
            n = parts[key]
            if not n:
                continue
            w = n / top * (width - label_w)
            rows.append(
                f'<rect class="device-{key}" x="{_n(x)}" y="{_n(y)}" width="{_n(max(w, 1))}" height="{bar_h}" '
                f'fill="{colour}" data-device="{_e(ids)}" data-value="{n}"><title>{_e(name)}: '
                f"{_e(format_bytes(n))}</title></rect>"
            )
            x += w
    height = max(len(groups) * (bar_h + gap) - gap, bar_h)
    svg = (
        f'<svg id="device-chart" class="chart" role="img" aria-label="Training peak per device" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f"{''.join(rows)}</svg>"
    )
    first = _device_parts(groups[0][1]) if groups else {}
    legend = _legend([(c, name, f"{format_bytes(first.get(k, 0))} ({kind})") for k, name, c, kind in _DEVICE_PARTS])
    sentences = '<ul class="plain">' + "".join(f"<li>{_e(line.strip())}</li>" for line in summary_lines(dist)) + "</ul>"
    return (
        f'<h2 id="distribution">Per device ({_e(dist["kind"])} parallel over {int(dist["devices"])} devices)</h2>'
        f'<p class="muted">Each device\'s training peak, by part: weights, gradients and optimizer state '
        f"{_kind('exact')} (JAX's shards), activations and the step {_kind('estimated')}.</p>"
        + svg
        + legend
        + sentences
    )


def profile_html(data: dict[str, Any]) -> str:
    """The profile page: headline figures, the training-step timeline, per-layer table, batch line, file."""
    t, model = data["totals"], data["model"]
    b = data["batch_size"]
    opt = data["optimizer"]
    sub = (
        f"{_e(model.get('path') or model['name'])} · {_e(model['format'])} · batch {b} · optimizer "
        f"{_e(opt['name'])} ({_e(opt['source'])})"
    )
    measured = data.get("measured") or {}
    figures = [
        _figure("params", "Parameters", t["params"], "exact", lambda v: f"{v:,} ({format_count(v)})"),
        _figure("weights", "Weights", t["param_bytes"], "exact"),
        _figure("gradients", "Gradients", t["gradient_bytes"], "exact"),
        _figure("optimizer-state", "Optimizer state", t["optimizer_bytes"], "exact"),
        _figure("inference-peak", f"Inference peak (batch {b})", t["inference_peak_bytes"], "estimated"),
        _figure("training-peak", f"Training peak (batch {b})", t["training_peak_bytes"], "estimated"),
    ]
    run = _measured_run(data, b)
    if run:
        figures.append(_figure("measured-inference", "Inference peak", run["inference_peak_bytes"], "measured"))
        figures.append(_figure("measured-training", "Training peak", run["training_peak_bytes"], "measured"))
    if model.get("file_bytes") is not None:
        figures.append(_figure("file-size", "File", model["file_bytes"], "exact"))
    body = ['<div class="figures">' + "".join(figures) + "</div>"]
    body.append(
        "<h2>One training step</h2>"
        '<p class="muted">The static estimate spread over the step: the forward pass in call order (activations '
        "kept for the backward pass pile up; tensors nothing keeps are transient), the backward pass in reverse "
        "order (every gradient buffer and kept activation held, as the estimate holds them, plus one layer's "
        "gradients in flight), then the optimizer update. Its highest step is the estimated training peak. "
        "Hover a step for its numbers.</p>"
    )
    body.append(timeline_svg(data))
    body.append(
        "<h2>Layers</h2>"
        f'<p class="muted">Bytes at batch {b}; click a column to sort, hover a row for its numbers. Weights, '
        f"gradients and optimizer state {_kind('exact')}; activations kept {_kind('estimated')}. The row of the "
        "peak's layer is tinted.</p>"
    )
    body.append(layers_table(data))
    if t.get("optimizer_global_bytes"):
        body.append(
            f'<p class="muted">Optimizer globals (counters, learning rate), in no layer row: '
            f"{_e(format_bytes(t['optimizer_global_bytes']))}.</p>"
        )
    lines = data["batch_line"]
    body.append(
        "<h2>Batch size</h2>"
        f'<p class="muted">Peak = fixed + B × per-sample {_kind("estimated")}: inference '
        f"{_e(format_bytes(lines['inference']['fixed_bytes']))} + B × {_e(format_bytes(lines['inference']['per_sample_bytes']))}, "
        f"training {_e(format_bytes(lines['training']['fixed_bytes']))} + B × "
        f"{_e(format_bytes(lines['training']['per_sample_bytes']))}; exact to the memory model at batch {b}, where the "
        "profile was made (at another batch size the peak may move to another layer).</p>"
    )
    body.append(batch_svg(data))
    if data.get("budget"):
        fit = data["budget"]
        body.append(
            f'<p id="budget-fit" data-inference="{fit["max_inference_batch"]}" data-training="{fit["max_training_batch"]}">'
            f"Budget {_e(format_bytes(fit['budget_bytes']))}: largest batch for inference "
            f"<b>{fit['max_inference_batch']:,}</b>, for training <b>{fit['max_training_batch']:,}</b> {_kind('estimated')}.</p>"
        )
    if measured:
        body.append("<h2>Measured</h2>")
        body.append(_measured_table(measured))
    if data.get("distribution"):
        body.append(distribution_html(data["distribution"]))
    body.append(f"<h2>The file {_kind('exact')}</h2>")
    body.append(composition_svg(data))
    notes = list(data.get("warnings", []))
    if notes:
        body.append('<h2>Warnings</h2><ul class="plain">' + "".join(f"<li>{_e(w)}</li>" for w in notes) + "</ul>")
    return _page(
        "profile", f"kmemopt profile: {model['name']}", sub, "".join(body), str(data.get("kmemopt_version", ""))
    )


def _measured_table(m: dict[str, Any]) -> str:
    method = "kernel high-water mark" if m.get("method") == "vmhwm" else "RSS sampling"
    out = [
        f'<p class="muted">On {_e(m.get("device"))} ({method}); memory above a framework baseline of '
        f"{_e(format_bytes(m.get('baseline_bytes')))}. Status: {_e(m.get('status'))}.</p>",
        '<table id="measured-runs"><thead><tr><th class="num">Batch</th><th>Status</th>'
        '<th class="num">Inference peak</th><th class="num">Estimate</th><th class="num">Training peak</th>'
        '<th class="num">Estimate</th><th class="num">After load</th></tr></thead><tbody>',
    ]
    for r in m.get("runs") or []:
        out.append(
            f'<tr><td class="num">{r["batch_size"]}</td><td>{_e(r["status"])}'
            + (f' <span class="muted">{_e(r.get("message", ""))}</span>' if r.get("message") else "")
            + "</td>"
            + _num_cell(r.get("inference_peak_bytes"))
            + _num_cell(r.get("estimated_inference_bytes"))
            + _num_cell(r.get("training_peak_bytes"))
            + _num_cell(r.get("estimated_training_bytes"))
            + _num_cell(r.get("load_bytes"))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- shrink


def _ratio(before: int | None, after: int | None) -> str:
    if not before or after is None:
        return "-"
    return f"{after / before:.3f}×"


def _channels_html(data: dict[str, Any]) -> str:
    """--prune-channels: each layer's width before -> after, and why a layer kept its width."""
    from kmemopt.report.shrink import channel_rows, channel_summary

    cp = data.get("channel_pruning")
    if not cp:
        return ""
    out = [
        f'<h2 id="channels">Channels ({_e(cp["fraction"])} of each prunable group asked, '
        f"{_e(cp['criterion'])} importance)</h2>",
        f'<p class="muted">Widths before → after {_kind("exact")}; layers left whole say why.</p>',
        '<div class="scroll"><table class="sortable" id="channel-layers"><thead><tr><th>Layer</th><th>Class</th>'
        '<th>Width</th><th class="num">Before</th><th class="num">After</th><th>Kept because</th></tr></thead><tbody>',
    ]
    for r in channel_rows(cp, all_layers=False):
        out.append(
            f'<tr data-before="{int(r["before"])}" data-after="{int(r["after"])}"><td class="name">{_e(r["layer"])}</td>'
            f"<td>{_e(r['class_name'])}</td><td>{_e(r['what'])}</td>"
            f'<td class="num">{int(r["before"]):,}</td><td class="num">{int(r["after"]):,}</td>'
            f"<td>{_e(r['kept_because'] or '')}</td></tr>"
        )
    out.append("</tbody></table></div>")
    out += [f"<p>{_e(line)}</p>" for line in channel_summary(cp)]
    return "".join(out)


def shrink_html(data: dict[str, Any]) -> str:
    """The shrink page: before/after figures, per-layer bytes and dtypes, passes with reasons, fidelity."""
    before, after = data["before"], data["after"] or {}
    sides = (
        ("file", "File", "file_bytes", "exact"),
        ("param-memory", "Weights", "param_bytes", "exact"),
        ("inference-peak", "Inference peak", "inference_peak_bytes", "estimated"),
        ("training-peak", "Training peak", "training_peak_bytes", "estimated"),
    )
    head = '<table id="sides"><thead><tr><th></th><th class="num">Before</th><th class="num">After</th><th class="num">Ratio</th><th></th></tr></thead><tbody>'
    rows = [head]
    for ident, label, key, kind in sides:
        b, a = before.get(key), after.get(key)
        rows.append(
            f'<tr id="side-{ident}" data-before="{"" if b is None else b}" data-after="{"" if a is None else a}">'
            f"<td>{label}</td>"
            + _num_cell(b)
            + _num_cell(a)
            + f'<td class="num">{_ratio(b, a)}</td><td>{_kind(kind)}</td></tr>'
        )
    rows.append("</tbody></table>")
    body = ["".join(rows)]
    body.append(_before_after_svg(data, sides))
    layer_rows = data["layers"]
    changed = [
        r
        for r in layer_rows
        if r["param_bytes_before"]
        and (
            r["param_bytes_after"] != r["param_bytes_before"]
            or r["dtypes_after"] != r["dtypes_before"]
            or r["class_name_after"] not in (None, r["class_name"])
        )
    ]
    body.append(
        f"<h2>Layers with weights ({len(changed)} of {sum(1 for r in layer_rows if r['param_bytes_before'])} changed)</h2>"
        f'<p class="muted">Weight bytes before → after {_kind("exact")}; click a column to sort.</p>'
    )
    heaviest = max((r["param_bytes_before"] or 0 for r in layer_rows), default=0) or 1
    t = [
        '<div class="scroll"><table class="sortable" id="shrink-layers"><thead><tr><th>Layer</th><th>Class</th>'
        '<th>Dtype before</th><th>Dtype after</th><th class="num">Bytes before</th><th class="num">Bytes after</th>'
        '<th class="num">Ratio</th><th>Before / after</th></tr></thead><tbody>'
    ]
    for r in layer_rows:
        if not r["param_bytes_before"]:
            continue
        b, a = r["param_bytes_before"], r["param_bytes_after"]
        cls = _e(r["class_name"])
        if r["class_name_after"] not in (None, r["class_name"]):
            cls += " → " + _e(r["class_name_after"])
        bars = (
            f'<div class="bar"><span style="width:{b / heaviest * 100:.2f}%;background:#bab0ac"></span></div>'
            f'<div class="bar"><span style="width:{(a or 0) / heaviest * 100:.2f}%;background:#4e79a7"></span></div>'
        )
        t.append(
            f'<tr><td class="name">{_e(r["layer"])}</td><td>{cls}</td><td>{_e("/".join(r["dtypes_before"] or []) or "-")}</td>'
            f"<td>{_e('/'.join(r['dtypes_after'] or []) or '-')}</td>"
            + _num_cell(b)
            + _num_cell(a)
            + f'<td class="num" data-sort="{(a / b) if a is not None and b else ""}">{_ratio(b, a)}</td>'
            + f'<td data-sort="{a or 0}">{bars}</td></tr>'
        )
    t.append("</tbody></table></div>")
    body.append("".join(t))
    body.append(_channels_html(data))
    body.append("<h2>Passes</h2>")
    for p in data["passes"]:
        body.append(
            f'<h3 class="pass" data-applied="{len(p["applied"])}" data-skipped="{len(p["skipped"])}">{_e(p["name"])}: '
            f"applied {len(p['applied'])}, skipped {len(p['skipped'])}</h3>"
        )
        items = []
        for a in p["applied"]:
            detail = ", ".join(f"{_e(k)}={_e(v)}" for k, v in (a.get("detail") or {}).items())
            items.append(
                f"<li>applied <code>{_e(a['layer'])}</code> ({_e(a.get('class_name'))}): {_e(a.get('action'))}"
                + (f' <span class="muted">{detail}</span>' if detail else "")
                + "</li>"
            )
        for s in p["skipped"]:
            items.append(
                f"<li>skipped <code>{_e(s['layer'])}</code> ({_e(s.get('class_name'))}): {_e(s.get('reason'))}</li>"
            )
        items += [f"<li>note: {_e(n)}</li>" for n in p["notes"]]
        if items:
            body.append(
                f"<details{' open' if len(items) <= 12 else ''}><summary>{len(items)} entries</summary>"
                f'<ul class="plain">{"".join(items)}</ul></details>'
            )
    body.append(_fidelity_html(data.get("fidelity")))
    if data.get("warnings"):
        body.append(
            '<h2>Warnings</h2><ul class="plain">' + "".join(f"<li>{_e(w)}</li>" for w in data["warnings"]) + "</ul>"
        )
    if data["dry_run"]:
        head_line = "Dry run: nothing was written."
    elif not data["written"]:
        head_line = "Nothing was written (a fidelity gate failed)."
    else:
        head_line = f"Wrote {_e(data['output'])}" + (
            f" ({data['file_ratio']:.3f}× the input file)." if data.get("file_ratio") is not None else "."
        )
        head_line += (
            " It uses kmemopt's int8 layers: import kmemopt before keras.models.load_model."
            if data.get("needs_import_kmemopt")
            else " It loads with plain keras.models.load_model."
        )
    sub = (
        f"{_e(data['input'] or 'model')} · batch {data['batch_size']} · optimizer {_e(data['optimizer'])} · {head_line}"
    )
    return _page(
        "shrink",
        f"kmemopt shrink: {data['input'] or 'model'}",
        sub,
        "".join(body),
        str(data.get("kmemopt_version", "")),
    )


def _before_after_svg(data: dict[str, Any], sides) -> str:
    before, after = data["before"], data["after"] or {}
    values = [v for _, _, key, _ in sides for v in (before.get(key), after.get(key)) if v]
    top = max(values, default=1)
    width, row = 1040, 40
    out = []
    for i, (_, label, key, _kind_name) in enumerate(sides):
        y = i * row
        out.append(f'<text class="tick" x="0" y="{y + 14}">{label}</text>')
        for j, (side, colour) in enumerate(((before, "#bab0ac"), (after, "#4e79a7"))):
            v = side.get(key)
            if v is None:
                continue
            w = v / top * (width - 260)
            out.append(
                f'<rect class="side-bar" x="130" y="{y + 3 + j * 16}" width="{_n(max(w, 1))}" height="13" fill="{colour}">'
                f"<title>{label} {'after' if j else 'before'}: {_e(format_bytes(v))}</title></rect>"
                f'<text class="tick" x="{_n(136 + w)}" y="{y + 13 + j * 16}">{_e(format_bytes(v))}</text>'
            )
    svg = (
        f'<svg id="before-after" class="chart" role="img" aria-label="Before and after" viewBox="0 0 {width} {len(sides) * row}" '
        f'width="{width}" height="{len(sides) * row}" xmlns="http://www.w3.org/2000/svg">{"".join(out)}</svg>'
    )
    return svg + _legend([("#bab0ac", "Before", ""), ("#4e79a7", "After", "")])


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def _fidelity_html(fid: dict[str, Any] | None) -> str:
    if not fid:
        return '<h2>Fidelity</h2><p class="muted">Not checked.</p>'
    out = [
        f'<h2>Fidelity {_kind("measured")}</h2><p class="muted">Original against shrunk outputs on '
        f"{_e(fid['source'])}, {fid['samples']} samples.</p>",
        '<table id="fidelity"><thead><tr><th>Output</th><th class="num">Max abs error</th><th class="num">Relative L2</th>'
        '<th class="num">Cosine</th><th class="num">Top-1 agreement</th></tr></thead><tbody>',
    ]
    for o in fid["outputs"]:
        out.append(
            f'<tr><td>{_e(o["name"])}</td><td class="num">{_g(o["max_abs_error"])}</td>'
            f'<td class="num">{_g(o["relative_l2_error"])}</td><td class="num">{_g(o["cosine_similarity"])}</td>'
            f'<td class="num">{_pct(o["top1_agreement"])}</td></tr>'
        )
    out.append("</tbody></table>")
    if fid.get("accuracy_before") is not None:
        out.append(f"<p>Accuracy: {_pct(fid['accuracy_before'])} → {_pct(fid['accuracy_after'])}</p>")
    for gate in fid.get("gates") or []:
        verdict = '<span class="status-pass">pass</span>' if gate["passed"] else '<span class="status-fail">FAIL</span>'
        out.append(f"<p>Gate {_e(gate['gate'])}: {_pct(gate['value'])} against {_pct(gate['threshold'])} {verdict}</p>")
    if fid.get("explain"):
        out.append(
            '<table id="fidelity-explain"><thead><tr><th>Layer (one at a time, worst first)</th>'
            '<th class="num">Relative L2</th><th class="num">Top-1 agreement</th></tr></thead><tbody>'
        )
        for e in fid["explain"]:
            out.append(
                f'<tr><td class="name">{_e(e["layer"])}</td><td class="num">{_g(e.get("relative_l2_error"))}</td>'
                f'<td class="num">{_pct(e.get("top1_agreement"))}</td></tr>'
            )
        out.append("</tbody></table>")
    if fid.get("note"):
        out.append(f'<p class="muted">{_e(fid["note"])}</p>')
    return "".join(out)


# ---------------------------------------------------------------------------------------------- check


def check_html(data: dict[str, Any]) -> str:
    """The check page: each budget's value against its limit and baseline, with the delta; the layer diff."""
    from kmemopt.report.check import _delta, _fmt, _headline, _limit, _reason, _summary, _what

    rows = [
        '<table class="sortable" id="budgets"><thead><tr><th>Model</th><th>Metric</th><th class="num">Value</th>'
        '<th class="num">Limit</th><th class="num">Baseline</th><th class="num">Delta</th><th>Against the limit</th>'
        "<th>Status</th><th>Details</th></tr></thead><tbody>"
    ]
    kind = "measured" if data.get("estimate") == "measured" else "estimated"
    for r in data["budgets"]:
        exact = r["metric"] in ("file_size", "params", "param_memory")
        bar = ""
        if r.get("value") is not None and (r.get("limit") or r.get("baseline")):
            ref = r.get("limit") or r.get("baseline")
            top = max(ref, r["value"]) or 1
            colour = "#b3261e" if r["status"] in ("fail", "error") else "#4e79a7"
            bar = (
                f'<svg class="bullet" viewBox="0 0 160 14" width="160" height="14" xmlns="http://www.w3.org/2000/svg">'
                f'<rect x="0" y="3" width="{_n(r["value"] / top * 160)}" height="8" fill="{colour}"/>'
                f'<line x1="{_n(ref / top * 160 - 1)}" x2="{_n(ref / top * 160 - 1)}" y1="0" y2="14" stroke="#1d2330" stroke-width="2"/>'
                f"<title>{_e(_fmt(r, 'value'))} against {_e('limit ' + _fmt(r, 'limit') if r.get('limit') else 'baseline ' + _fmt(r, 'baseline'))}</title></svg>"
            )
        rows.append(
            f'<tr class="budget" data-status="{_e(r["status"])}"><td class="name">{_e(r["model"])}</td>'
            f"<td>{_e(_what(r))} {_kind('exact' if exact else kind)}</td>"
            + _num_cell(r.get("value"), _fmt(r, "value"), None)
            + _num_cell(r.get("limit"), _limit(r), None)
            + _num_cell(r.get("baseline"), _fmt(r, "baseline"), None)
            + _num_cell(r.get("delta"), _delta(r), None)
            + f'<td>{bar}</td><td class="status-{_e(r["status"])}">{_e(r["status"])}</td><td>{_e(_reason(r))}</td></tr>'
        )
    rows.append("</tbody></table>")
    body = ["".join(rows)]
    why = data.get("why")
    if why:
        body.append(why_html(why))
    for err in data.get("errors") or []:
        body.append(f'<p class="status-error">{_e(err["model"])} was not checked: {_e(err["message"])}</p>')
    status = "pass" if data["passed"] else "fail"
    sub = (
        f'<span id="verdict" class="status-{status}" data-verdict="{_e(data["verdict"])}">check {_e(_headline(data))}</span>: '
        f"{_e(_summary(data))}."
        + (f" Baseline: {_e(data['baseline'])}." if data.get("baseline") else "")
        + (f" Config: {_e(data['config'])}." if data.get("config") else "")
    )
    return _page("check", "kmemopt check", sub, "".join(body), str(data.get("kmemopt_version", "")))


def why_html(why: list[dict[str, Any]]) -> str:
    """The per-layer diff against the baseline (`check --why`), one table a model."""
    out = ["<h2>Why: layers against the baseline</h2>"]
    for model in why:
        out.append(
            f'<h3 class="why-model" data-delta="{model["delta_bytes"]}">{_e(model["model"])}: '
            f"{_e(format_bytes(model['before_bytes']))} → {_e(format_bytes(model['after_bytes']))} "
            f"({_e(_signed(model['delta_bytes']))}) at batch {model['batch_size']} {_kind('estimated')}</h3>"
        )
        if model.get("note"):
            out.append(f'<p class="muted">{_e(model["note"])}</p>')
        if not model["layers"]:
            out.append('<p class="muted">No layer changed.</p>')
            continue
        out.append(
            '<table class="sortable why"><thead><tr><th>Layer</th><th>Class</th><th>Change</th>'
            '<th class="num">Before</th><th class="num">After</th><th class="num">Delta</th>'
            '<th class="num">Weights Δ</th><th class="num">Activations Δ</th></tr></thead><tbody>'
        )
        for r in model["layers"]:
            out.append(
                f'<tr><td class="name">{_e(r["layer"])}</td><td>{_e(r.get("class_name") or "")}</td><td>{_e(r["change"])}</td>'
                + _num_cell(r["before_bytes"])
                + _num_cell(r["after_bytes"])
                + _num_cell(r["delta_bytes"], _signed(r["delta_bytes"]))
                + _num_cell(r["param_delta_bytes"], _signed(r["param_delta_bytes"]))
                + _num_cell(r["activation_delta_bytes"], _signed(r["activation_delta_bytes"]))
                + "</tr>"
            )
        out.append("</tbody></table>")
    return "".join(out)


def _signed(n: int | None) -> str:
    if n is None:
        return "-"
    return ("+" if n >= 0 else "-") + format_bytes(abs(n))


# ---------------------------------------------------------------------------------------------- plan


def _plan_bars(data: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """The chart's rows (kind, label, bytes, css class): baseline, each strategy alone, the plan;
    measured peaks (--measure) right under the prediction they belong to."""
    kind = "training" if data["phase"] == "train" else "inference"
    measured = data.get("measured") or {}
    rows = [("baseline", f"Baseline (batch {data['batch_size']})", data["baseline"][f"{kind}_peak_bytes"], "estimated")]
    base_m = (measured.get("baseline") or {}).get("measured_peak_bytes")
    if base_m is not None:
        rows.append(("baseline-measured", "Baseline, measured", base_m, "measured"))
    for i, s in enumerate(data["strategies"]):
        rows.append((f"strategy-{i}", f"{s['name']}: {s['label']}", s["predicted_peak_bytes"], "estimated"))
    plan = data.get("plan")
    if plan:
        rows.append(
            (
                "plan",
                "Plan" if plan["fits"] else "Plan (closest; does not fit)",
                plan["predicted_peak_bytes"],
                "estimated",
            )
        )
        plan_m = (measured.get("plan") or {}).get("measured_peak_bytes")
        if plan_m is not None:
            rows.append(("plan-measured", "Plan, measured", plan_m, "measured"))
    return rows


def plan_svg(data: dict[str, Any]) -> str:
    """Every predicted peak (baseline, each strategy alone, the plan) as a bar, the budget as a line."""
    rows = _plan_bars(data)
    budget = data["budget_bytes"]
    top = max([budget] + [v for _, _, v, _ in rows]) * 1.08
    width, row, left, right, head = 1040, 22, 330, 90, 22
    height = head + row * len(rows) + 24
    scale = (width - left - right) / top
    colours = {"baseline": "#bab0ac", "plan": "#59a14f", "measured": "#1f4f8f"}
    out = []
    step = _nice_step(top)
    v = 0.0
    while v <= top * 1.0001:
        x = _n(left + v * scale)
        out.append(
            f'<line class="grid" x1="{x}" x2="{x}" y1="{head}" y2="{height - 20}"/>'
            f'<text class="tick" x="{x}" y="{height - 6}" text-anchor="middle">{_e(format_bytes(v))}</text>'
        )
        v += step
    for i, (ident, label, value, kind) in enumerate(rows):
        y = head + i * row
        if kind == "measured":
            colour = colours["measured"]
        elif ident in ("baseline", "plan"):
            colour = colours[ident]
        else:
            colour = "#4e79a7" if value <= budget else "#e15759"
        short = visible(label)
        short = short if len(short) <= 52 else short[:51] + "…"
        w = max(value * scale, 1)
        out.append(
            f'<text class="tick" x="{left - 8}" y="{y + 15}" text-anchor="end">{_e(short)}</text>'
            f'<rect class="peak-bar {kind}" id="bar-{ident}" x="{left}" y="{y + 4}" width="{_n(w)}" height="14" '
            f'fill="{colour}" data-value="{value}"><title>{_e(label)}: {_e(format_bytes(value))} ({kind})</title></rect>'
            f'<text class="tick" x="{_n(left + w + 5)}" y="{y + 15}">{_e(format_bytes(value))}</text>'
        )
    bx = _n(left + budget * scale)
    out.append(
        f'<line class="budget" id="plan-budget" x1="{bx}" x2="{bx}" y1="{head - 6}" y2="{height - 20}" '
        f'data-value="{budget}"><title>budget {_e(format_bytes(budget))}</title></line>'
        f'<text class="note" x="{bx}" y="{head - 8}" text-anchor="middle">budget {_e(format_bytes(budget))}</text>'
    )
    svg = (
        f'<svg id="plan-chart" class="chart" role="img" aria-label="Predicted peaks against the budget" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f"{''.join(out)}</svg>"
    )
    legend = [
        (colours["baseline"], "Baseline", "estimated"),
        ("#4e79a7", "Strategy alone, under the budget", "estimated"),
        ("#e15759", "Strategy alone, over the budget", "estimated"),
        (colours["plan"], "Plan", "estimated"),
        ("#b3261e", "Budget", format_bytes(budget)),
    ]
    if any(kind == "measured" for *_, kind in rows):
        legend.append((colours["measured"], "Measured", "--measure"))
    return svg + _legend(legend)


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None) or "-"


def _breakdown_table(b: dict[str, Any], ident: str) -> str:
    terms = (
        ("param_bytes", "Weights", "exact"),
        ("gradient_bytes", "Gradients", "exact"),
        ("optimizer_bytes", "Optimizer state", "exact"),
        ("activation_bytes", "Activations kept", "estimated"),
        ("transient_bytes", "Transient", "estimated"),
        ("runtime_bytes", "Runtime", "estimated"),
        ("peak_bytes", "Peak", "estimated"),
    )
    out = [f'<table id="{ident}"><tbody>']
    for key, label, kind in terms:
        out.append(f'<tr id="{ident}-{key}"><td>{label} {_kind(kind)}</td>' + _num_cell(b[key]) + "</tr>")
    out.append("</tbody></table>")
    if b.get("estimated_terms"):
        out.append(f'<p class="muted">Estimated terms: {_e(", ".join(b["estimated_terms"]))}.</p>')
    return "".join(out)


def plan_html(data: dict[str, Any]) -> str:
    """The plan page: baseline, budget and plan figures, every strategy's peak against the budget,
    the strategies table, the plan's Keras code and command, the measurement and the written file."""
    from kmemopt.report.plan import baseline_line, cost_text, headline

    model, plan = data["model"], data.get("plan")
    kind = "training" if data["phase"] == "train" else "inference"
    measured = data.get("measured") or {}
    figures = [
        _figure("budget", "Budget", data["budget_bytes"], "exact"),
        _figure("baseline-peak", f"Baseline {kind} peak", data["baseline"][f"{kind}_peak_bytes"], "estimated"),
    ]
    if plan:
        figures.append(_figure("plan-peak", "Plan's predicted peak", plan["predicted_peak_bytes"], "estimated"))
    for key, label in (("baseline", "Baseline"), ("plan", "Plan")):
        m = measured.get(key) or {}
        if m.get("measured_peak_bytes") is not None:
            figures.append(_figure(f"measured-{key}", f"{label}, measured", m["measured_peak_bytes"], "measured"))
    status = "pass" if plan and plan["fits"] else "fail"
    body = [
        '<div class="figures">' + "".join(figures) + "</div>",
        f'<p id="plan-verdict" class="status-{status}" data-fits="{str(bool(plan and plan["fits"])).lower()}">'
        f"{_e(headline(data))}</p>",
        f"<h2>Peaks against the budget {_kind('estimated')}</h2>"
        f'<p class="muted">The {kind} peak each strategy reaches alone at its own setting, priced by the static '
        "profile on the model rebuilt with it; the plan combines them. Hover a bar for its number.</p>",
        plan_svg(data),
        f'<h2>Each strategy alone</h2><p class="muted">Click a column to sort. Peak and saving {_kind("estimated")} '
        "(a negative saving costs memory); the cost column says how its risk is known.</p>",
    ]
    t = [
        '<div class="scroll"><table class="sortable" id="strategies"><thead><tr><th>Strategy</th><th>Setting</th>'
        '<th>Settings</th><th class="num">Predicted peak</th><th class="num">Saving</th><th>Cost</th>'
        "<th>In the file</th></tr></thead><tbody>"
    ]
    for s in data["strategies"]:
        t.append(
            f'<tr class="strategy"><td>{_e(s["name"])}</td><td class="name">{_e(s["label"])}</td>'
            f"<td><code>{_e(_settings_text(s['settings']))}</code></td>"
            + _num_cell(s["predicted_peak_bytes"])
            + _num_cell(s["saving_bytes"], ("-" + format_bytes(-s["saving_bytes"])) if s["saving_bytes"] < 0 else None)
            + f"<td>{_e(cost_text(s['cost']))}</td><td>{'yes' if s['applies_to_file'] else 'no'}</td></tr>"
        )
    t.append("</tbody></table></div>")
    body.append("".join(t))
    if plan:
        body.append("<h2>The plan" + ("" if plan["fits"] else " (closest; does not fit)") + "</h2>")
        body.append(
            '<ul class="plain" id="plan-strategies">'
            + "".join(
                f"<li><b>{_e(s['label'])}</b> <span class='muted'>{_e(cost_text(s['cost']))}</span></li>"
                for s in plan["strategies"]
            )
            + "</ul>"
        )
        body.append(_breakdown_table(plan["breakdown"], "plan-breakdown"))
        body.append(f'<h3>Keras code</h3><pre id="plan-code"><code>{_e_code(plan["keras_code"])}</code></pre>')
        body.append(f'<h3>Command</h3><pre id="plan-command"><code>{_e(plan["command"])}</code></pre>')
    if measured:
        body.append(_plan_measured_table(data))
    output = data.get("output")
    if output:
        held = ", ".join(s["label"] for s in output["in_file"]) or "nothing but the compiled optimizer"
        items = [f"<li>not in the file: {_e(s['label'])} ({_e(s['why'])})</li>" for s in output["not_in_file"]]
        if output.get("reload"):
            items.append(f"<li>Verified: reloaded with {_e(output['reload']['loaded_with'])}.</li>")
        body.append(
            f"<h2>The written file</h2><p>Wrote <code>{_e(output['path'])}</code>: it holds {_e(held)}.</p>"
            + (f'<ul class="plain">{"".join(items)}</ul>' if items else "")
        )
    if data.get("notes"):
        body.append('<h2>Notes</h2><ul class="plain">' + "".join(f"<li>{_e(n)}</li>" for n in data["notes"]) + "</ul>")
    search = data.get("search") or {}
    if search:
        body.append(
            f'<p class="muted">{search["combinations"]} combinations priced, {search["builds"]} model builds, '
            f"{search['seconds']:.1f} s.</p>"
        )
    sub = f"{_e(model['path'] or model['name'])} · {_e(data['phase'])} · batch {data['batch_size']} · {_e(baseline_line(data))}"
    return _page(
        "plan",
        f"kmemopt plan: {model['path'] or model['name']}",
        sub,
        "".join(body),
        str(data.get("kmemopt_version", "")),
    )


def _e_code(text: str) -> str:
    """Code as escaped lines, each made visible on its own (a name cannot add a line)."""
    return "\n".join(_e(line) for line in (text or "").split("\n"))


def _plan_measured_table(data: dict[str, Any]) -> str:
    measured = data["measured"]
    out = [
        f'<h2>Measured {_kind("measured")}</h2><p class="muted">On {_e(measured.get("device") or "-")}: each '
        "measured peak beside its prediction.</p>",
        '<table id="plan-measured"><thead><tr><th></th><th class="num">Batch</th><th class="num">Predicted</th>'
        '<th class="num">Measured</th><th class="num">Error</th><th>Budget</th></tr></thead><tbody>',
    ]
    for label, key in (("Baseline", "baseline"), ("Plan", "plan")):
        m = measured.get(key)
        if not m:
            continue
        value = m.get("measured_peak_bytes")
        ok = value is not None and value <= data["budget_bytes"]
        error = m.get("error_pct")
        out.append(
            f'<tr id="measured-row-{key}"><td>{label}</td><td class="num">{m["batch_size"]}</td>'
            + _num_cell(m.get("predicted_peak_bytes"))
            + _num_cell(value, None if value is not None else str(m.get("status") or "-"))
            + f'<td class="num">{"-" if error is None else f"{error:+.1f}%"}</td>'
            + f'<td class="status-{"pass" if ok else "fail"}">{"under" if ok else "over"}</td></tr>'
        )
    out.append("</tbody></table>")
    plan_m = measured.get("plan") or {}
    if plan_m.get("not_measured"):
        out.append(
            f'<p class="muted">Not in the measured run (not in the file): {_e(", ".join(plan_m["not_measured"]))}.</p>'
        )
    if measured.get("plan_not_measured"):
        out.append(f'<p class="muted">Plan not measured: {_e(measured["plan_not_measured"])}</p>')
    return "".join(out)
