"""CI budgets: the config model, baselines and verdicts. Pure: no I/O, no Keras, no rich.

`kmemopt.gate.check` reads files and profiles models; this module only turns what it is handed
(a parsed `[tool.kmemopt]` table, flag values, measured numbers, a parsed baseline JSON) into
typed budgets and results.

A budget fails when its value is above `max`, or (with a baseline) when it grew by more than
`max_increase` of the baseline value *and* by more than the `min_increase` floor. A `warn` budget is
reported but never fails the check; the verdict is the worst error-level result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from kmemopt.errors import ExitCode, UsageError
from kmemopt.units import format_bytes, format_count, parse_count, parse_percent, parse_size

SCHEMA_VERSION = 1


class Metric(str, Enum):
    file_size = "file_size"
    params = "params"
    param_memory = "param_memory"
    inference_memory = "inference_memory"
    training_memory = "training_memory"

    @property
    def is_count(self) -> bool:
        return self is Metric.params

    @property
    def unit(self) -> str:
        return "count" if self.is_count else "bytes"

    @property
    def needs_batch(self) -> bool:
        return self in (Metric.inference_memory, Metric.training_memory)

    @property
    def needs_profile(self) -> bool:
        """file_size needs only the file; every other metric needs the (unallocated) model."""
        return self is not Metric.file_size

    @property
    def flag(self) -> str:
        return "--max-" + self.value.replace("_", "-")

    def format_value(self, value: int | float | None, si: bool = False) -> str:
        """`value` in this metric's unit ("-" when unknown); named apart from `str.format`, which a str enum has."""
        if value is None:
            return "-"
        if self.is_count:
            return f"{value:,}"
        return format_si(value) if si else format_bytes(value)


class Level(str, Enum):
    error = "error"
    warn = "warn"


class Status(str, Enum):
    passed = "pass"
    failed = "fail"  # an error-level budget failed: the check fails
    warned = "warn"  # a warn-level budget failed: reported only
    error = "error"  # the model could not be checked (rejected as unsafe or malformed)


DEFAULT_BATCH_SIZE = 32
METRICS = ", ".join(m.value for m in Metric)
BUDGET_KEYS = {
    "model",
    "metric",
    "max",
    "level",
    "batch_size",
    "optimizer",
    "max_increase",
    "min_increase",
    "seq_len",
    "input_shapes",
}


@dataclass(frozen=True)
class Budget:
    """One limit on one metric of the models a pattern names.

    `model` is a glob or path as written (relative to `base`, the config file's folder, or the
    working directory for command-line paths). `max` and `min_increase` are bytes, or a count for
    `params`; `max_increase` is a fraction (0.05 for "5%"). `source` says where the budget came from,
    for messages ("--max-params", "pyproject.toml budget #2").
    """

    model: str
    metric: Metric
    max: int | None = None
    level: Level = Level.error
    batch_size: int = DEFAULT_BATCH_SIZE
    optimizer: str | None = None
    max_increase: float | None = None
    min_increase: int | None = None
    seq_len: int | None = None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    source: str = "flags"
    base: str | None = None
    limit_text: str | None = None  # the limit as written ("600 KB"), shown as is

    @property
    def si(self) -> bool:
        """Show bytes in SI units (kB, MB) when the limit was written in them, IEC (KiB, MiB) otherwise."""
        return uses_si(self.limit_text)

    def key(self) -> tuple:
        """Budgets with equal keys need the same profile of a model."""
        return (self.batch_size, self.optimizer, self.seq_len, self.input_shapes)

    def describe(self) -> str:
        """'training_memory (batch 32, adam)' — the metric and what it depends on."""
        extra = []
        if self.metric.needs_batch:
            extra.append(f"batch {self.batch_size}")
        if self.metric is Metric.training_memory and self.optimizer:
            extra.append(self.optimizer)
        return f"{self.metric.value} ({', '.join(extra)})" if extra else self.metric.value


def uses_si(text: Any) -> bool:
    unit = "".join(c for c in str(text or "") if c.isalpha()).lower()
    return unit in ("k", "kb", "m", "mb", "g", "gb", "t", "tb")


def format_si(n: int | float) -> str:
    """'623.9 kB': decimal units, for limits written in them."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for name, factor in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= factor:
            return f"{sign}{n / factor:,.1f} {name}"
    return f"{sign}{int(n)} B"


def _parse_limit(metric: Metric, value: Any, where: str) -> int:
    try:
        return parse_count(value) if metric.is_count else parse_size(value)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def parse_percent_at(value: Any, where: str) -> float:
    try:
        return parse_percent(value)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.message}") from None


def parse_metric(value: Any, where: str) -> Metric:
    try:
        return Metric(str(value).strip())
    except ValueError:
        raise UsageError(f"{where}: unknown metric {value!r}; use one of {METRICS}.") from None


def _positive_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where}: {what} must be a positive integer. Received: {value!r}.")
    return value


def _input_shapes(value: Any, where: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: input_shapes must be a table like {{tokens = [128]}}. Received: {value!r}.")
    shapes = []
    for name, dims in value.items():
        if not isinstance(dims, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims
        ):
            raise UsageError(f"{where}: input_shapes.{name} must be a list of positive integers. Received: {dims!r}.")
        shapes.append((str(name), tuple(dims)))
    return tuple(sorted(shapes))


def budget_from_entry(entry: Any, index: int, source: str, base: str | None = None) -> Budget:
    """A `[[tool.kmemopt.budget]]` table -> Budget. `index` counts from 1, for messages."""
    where = f"{source} budget #{index}"
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: each [[tool.kmemopt.budget]] must be a table. Received: {entry!r}.")
    unknown = sorted(set(entry) - BUDGET_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(BUDGET_KEYS))}.")
    for key in ("model", "metric"):
        if key not in entry:
            raise UsageError(f"{where}: the {key!r} key is missing.")
    model = entry["model"]
    if not isinstance(model, str) or not model.strip():
        raise UsageError(f"{where}: model must be a path or glob. Received: {model!r}.")
    metric = parse_metric(entry["metric"], where)
    try:
        level = Level(str(entry.get("level", "error")))
    except ValueError:
        raise UsageError(f"{where}: level must be 'error' or 'warn'. Received: {entry.get('level')!r}.") from None
    budget = Budget(
        model=model.strip(),
        metric=metric,
        max=_parse_limit(metric, entry["max"], f"{where} max") if "max" in entry else None,
        limit_text=str(entry["max"]) if "max" in entry else None,
        level=level,
        batch_size=_positive_int(entry.get("batch_size", DEFAULT_BATCH_SIZE), "batch_size", where),
        optimizer=str(entry["optimizer"]) if entry.get("optimizer") is not None else None,
        max_increase=parse_percent_at(entry["max_increase"], f"{where} max_increase")
        if "max_increase" in entry
        else None,
        min_increase=_parse_limit(metric, entry["min_increase"], f"{where} min_increase")
        if "min_increase" in entry
        else None,
        seq_len=_positive_int(entry["seq_len"], "seq_len", where) if "seq_len" in entry else None,
        input_shapes=_input_shapes(entry["input_shapes"], where) if "input_shapes" in entry else (),
        source=where,
        base=base,
    )
    if budget.max is None and budget.max_increase is None:
        raise UsageError(f"{where}: give 'max', 'max_increase' (against a baseline), or both.")
    return budget


@dataclass(frozen=True)
class Config:
    """The `[tool.kmemopt]` table: budgets, and an optional default baseline file (relative to base)."""

    path: str  # the file it was read from, as messages name it
    budgets: tuple[Budget, ...] = ()
    baseline: str | None = None


def config_from_table(table: Any, source: str, base: str | None) -> Config:
    """`[tool.kmemopt]` (already parsed TOML) -> Config. `source` names the file in messages."""
    if table is None:
        return Config(path=source)
    if not isinstance(table, dict):
        raise UsageError(f"{source}: [tool.kmemopt] must be a table.")
    unknown = sorted(set(table) - {"budget", "baseline"})
    if unknown:
        raise UsageError(f"{source}: unknown key(s) in [tool.kmemopt]: {', '.join(unknown)}; known: budget, baseline.")
    entries = table.get("budget", [])
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise UsageError(f"{source}: budgets are written [[tool.kmemopt.budget]] (a list of tables).")
    baseline = table.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise UsageError(f"{source}: baseline must be a path. Received: {baseline!r}.")
    budgets = tuple(budget_from_entry(e, i, source, base) for i, e in enumerate(entries, start=1))
    return Config(path=source, budgets=budgets, baseline=baseline)


@dataclass(frozen=True)
class Overrides:
    """What the command line says on top of (or instead of) the config. None = not given."""

    limits: tuple[tuple[Metric, int, str], ...] = ()  # the --max-METRIC flags: metric, parsed, as written
    batch_size: int | None = None
    optimizer: str | None = None
    max_increase: float | None = None
    min_increase_bytes: int | None = None  # the --min-increase floor applies to byte metrics
    seq_len: int | None = None
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()


def parse_limit_flags(values: dict[Metric, Any]) -> tuple[tuple[Metric, int, str], ...]:
    """{Metric: "6 GiB"} from the --max-* flags -> parsed limits, naming the flag when one is malformed."""
    return tuple((m, _parse_limit(m, v, m.flag), str(v)) for m, v in values.items() if v is not None)


def apply_overrides(budget: Budget, o: Overrides) -> Budget:
    """Flags override the config: batch size, optimizer, input shapes, the baseline thresholds."""
    changes: dict[str, Any] = {}
    if o.batch_size is not None:
        changes["batch_size"] = o.batch_size
    if o.optimizer is not None:
        changes["optimizer"] = o.optimizer
    if o.seq_len is not None:
        changes["seq_len"] = o.seq_len
    if o.input_shapes:
        changes["input_shapes"] = o.input_shapes
    if o.max_increase is not None:
        changes["max_increase"] = o.max_increase
    if o.min_increase_bytes is not None and not budget.metric.is_count:
        changes["min_increase"] = o.min_increase_bytes
    return replace(budget, **changes) if changes else budget


def flag_budget(metric: Metric, limit: int, model: str, o: Overrides, text: str | None = None) -> Budget:
    budget = Budget(model=model, metric=metric, max=limit, source=metric.flag, limit_text=text)
    return apply_overrides(budget, o)


# ---------------------------------------------------------------------------------------------
# Baselines


def _optimizer_key(name: Any) -> str | None:
    return str(name).lower() if name else None


@dataclass(frozen=True)
class BaselineEntry:
    model: str
    metric: Metric
    value: int
    batch_size: int | None = None
    optimizer: str | None = None  # lower-cased optimizer name (training_memory only)
    # peak(B) = fixed + B * per_sample, when the baseline came from a profile: any batch size matches.
    line: tuple[int, int] | None = None

    def value_at(self, batch_size: int) -> int | None:
        if not self.metric.needs_batch or self.batch_size == batch_size:
            return self.value
        if self.line is not None:
            return self.line[0] + self.line[1] * batch_size
        return None


def _entries_from_profile(data: dict[str, Any], where: str) -> list[BaselineEntry]:
    try:
        model = data["model"]
        path = model.get("path") or model.get("name")
        totals = data["totals"]
        batch = int(data["batch_size"])
        opt = _optimizer_key((data.get("optimizer") or {}).get("name"))
        lines = data.get("batch_line") or {}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise UsageError(
            f"{where} is not a `kmemopt profile --format json` output (model, totals, batch_size)."
        ) from None

    def line(phase: str) -> tuple[int, int] | None:
        item = lines.get(phase)
        return (int(item["fixed_bytes"]), int(item["per_sample_bytes"])) if item else None

    out = [
        BaselineEntry(path, Metric.params, int(totals["params"])),
        BaselineEntry(path, Metric.param_memory, int(totals["param_bytes"])),
        BaselineEntry(
            path, Metric.inference_memory, int(totals["inference_peak_bytes"]), batch, None, line("inference")
        ),
        BaselineEntry(path, Metric.training_memory, int(totals["training_peak_bytes"]), batch, opt, line("training")),
    ]
    if model.get("file_bytes") is not None:
        out.append(BaselineEntry(path, Metric.file_size, int(model["file_bytes"])))
    return out


def _entries_from_check(data: dict[str, Any], where: str) -> list[BaselineEntry]:
    out = []
    for row in data.get("budgets", []):
        try:
            if row.get("value") is None:
                continue
            metric = Metric(row["metric"])
            out.append(
                BaselineEntry(
                    row["model"],
                    metric,
                    int(row["value"]),
                    int(row["batch_size"]) if metric.needs_batch else None,
                    _optimizer_key(row.get("optimizer")) if metric is Metric.training_memory else None,
                )
            )
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{where} has a budget row kmemopt cannot read: {row!r}.") from None
    return out


def _components(path: str) -> list[str]:
    return [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")]


def _common_suffix(a: str, b: str) -> int:
    ca, cb = _components(a), _components(b)
    n = 0
    while n < min(len(ca), len(cb)) and ca[-1 - n] == cb[-1 - n]:
        n += 1
    return n


@dataclass(frozen=True)
class LayerBytes:
    """What one layer holds in a training step: its weights, their gradients and optimizer state, and the
    activations it keeps for the backward pass (a line in the batch size, as the profile counts them)."""

    path: str
    class_name: str
    param_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # at the batch size of the ModelLayers holding it
    activation_bytes_per_sample: int = 0

    def weight_bytes(self) -> int:
        return self.param_bytes + self.gradient_bytes + self.optimizer_bytes

    def activations_at(self, batch_size: int, profiled_at: int) -> int:
        fixed = self.activation_bytes - self.activation_bytes_per_sample * profiled_at
        return fixed + self.activation_bytes_per_sample * batch_size

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelLayers:
    """A model's per-layer bytes at one batch size: what `check --why` compares."""

    model: str
    batch_size: int
    layers: tuple[LayerBytes, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "batch_size": self.batch_size, "layers": [r.to_dict() for r in self.layers]}


def model_layers(model: str, batch_size: Any, rows: Any, where: str) -> ModelLayers:
    """Per-layer rows of a profile or check JSON (their `layers`) -> ModelLayers."""
    try:
        return ModelLayers(
            model,
            int(batch_size),
            tuple(
                LayerBytes(
                    str(r["path"]),
                    str(r.get("class_name") or ""),
                    int(r["param_bytes"]),
                    int(r.get("gradient_bytes") or 0),
                    int(r.get("optimizer_bytes") or 0),
                    int(r.get("activation_bytes") or 0),
                    int(r.get("activation_bytes_per_sample") or 0),
                )
                for r in rows
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UsageError(f"{where} has per-layer rows kmemopt cannot read (layers of {model!r}).") from None


def _best_match(model: str, names: list[str]) -> str | None:
    """The one name sharing the longest tail of path components with `model` (None: none, or a tie)."""
    scored = [(_common_suffix(model, n), n) for n in dict.fromkeys(names)]
    best = max((score for score, _ in scored), default=0)
    winners = [n for score, n in scored if score == best]
    return winners[0] if best and len(winners) == 1 else None


@dataclass(frozen=True)
class Baseline:
    """Earlier values (for example from the main branch) to compute deltas against."""

    source: str
    entries: tuple[BaselineEntry, ...] = field(default=())
    layers: tuple[ModelLayers, ...] = field(default=())

    def models(self) -> list[str]:
        return list(dict.fromkeys(e.model for e in self.entries))

    def entries_for(self, model: str) -> list[BaselineEntry]:
        """Every value the baseline holds for `model` (matched as `lookup` matches), one a metric."""
        name = _best_match(model, self.models())
        out: dict[Metric, BaselineEntry] = {}
        for e in self.entries:
            if e.model == name:
                out.setdefault(e.metric, e)
        return list(out.values())

    def layers_for(self, model: str) -> ModelLayers | None:
        name = _best_match(model, [m.model for m in self.layers])
        return next((m for m in self.layers if m.model == name), None)

    def lookup(self, model: str, metric: Metric, batch_size: int, optimizer: str | None) -> int | None:
        """The baseline value for a model's metric, or None when the baseline does not have it.

        Models match by path; a baseline written elsewhere (another checkout, an absolute path)
        matches by the longest common tail of path components, when that tail is unique.
        """
        candidates = [e for e in self.entries if e.metric is metric]
        if metric is Metric.training_memory and optimizer:
            candidates = [e for e in candidates if e.optimizer in (None, _optimizer_key(optimizer))]
        scored = [(_common_suffix(model, e.model), e) for e in candidates]
        best = max((s for s, _ in scored), default=0)
        if best == 0:
            return None
        models = {e.model for s, e in scored if s == best}
        if len(models) > 1:
            return None  # ambiguous: two baseline models end the same way
        for score, entry in scored:
            if score == best:
                value = entry.value_at(batch_size)
                if value is not None:
                    return value
        return None


def baseline_from_json(data: Any, source: str) -> Baseline:
    """A parsed `profile --format json` output, a list of them, or a `check --format json` output."""
    docs = data if isinstance(data, list) else [data]
    entries: list[BaselineEntry] = []
    layers: list[ModelLayers] = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise UsageError(f"{source} is neither a kmemopt profile nor a kmemopt check JSON output.")
        if "budgets" in doc:
            entries += _entries_from_check(doc, source)
            for item in doc.get("layers") or []:  # per-layer bytes, written when the check profiled a model
                if isinstance(item, dict):
                    layers.append(
                        model_layers(str(item.get("model")), item.get("batch_size"), item.get("layers"), source)
                    )
        elif "totals" in doc:
            found = _entries_from_profile(doc, source)
            entries += found
            if isinstance(doc.get("layers"), list) and found:
                layers.append(model_layers(found[0].model, doc["batch_size"], doc["layers"], source))
        else:
            raise UsageError(
                f"{source} is neither a `kmemopt profile --format json` nor a `kmemopt check --format json` output."
            )
    return Baseline(source=source, entries=tuple(entries), layers=tuple(layers))


def baseline_budget(entry: BaselineEntry, model: str, o: Overrides) -> Budget:
    """The budget a baseline value implies for a model: no limit of its own, the --max-increase against the
    baseline (none given: the value and its delta are reported, never failed). Memory metrics keep the
    baseline's batch size unless --batch-size says otherwise, so like is compared with like."""
    budget = apply_overrides(Budget(model=model, metric=entry.metric, source="--baseline"), o)
    if o.batch_size is None and entry.batch_size is not None:
        budget = replace(budget, batch_size=entry.batch_size)
    return budget


# ---------------------------------------------------------------------------------------------
# Why: the per-layer diff against the baseline


WHY_CHANGES = ("grew", "shrank", "new", "removed")


def layer_diff(before: ModelLayers | None, after: ModelLayers, model: str, note: str | None = None) -> dict[str, Any]:
    """Which layers of `model` grew or shrank against the baseline, by how much; new and removed ones.

    A layer's bytes are its weights, gradients and optimizer state plus the activations it keeps, at the
    current batch size (a baseline profiled at another batch size is moved along its per-sample line).
    Layers match by path. Rows are sorted by the size of the change, largest first; unchanged ones are left
    out. With no baseline layers, `layers` is empty and `note` says why.
    """
    b = after.batch_size
    now = {r.path: r for r in after.layers}
    then = {r.path: r for r in before.layers} if before is not None else {}

    def total(r: LayerBytes, at: int) -> int:
        return r.weight_bytes() + r.activations_at(b, at)

    rows: list[dict[str, Any]] = []
    if before is not None:
        for path in list(then) + [p for p in now if p not in then]:
            old, new = then.get(path), now.get(path)
            old_bytes = total(old, before.batch_size) if old else 0
            new_bytes = total(new, b) if new else 0
            old_w = old.weight_bytes() if old else 0
            new_w = new.weight_bytes() if new else 0
            if old is None:
                change = "new"
            elif new is None:
                change = "removed"
            elif new_bytes != old_bytes:
                change = "grew" if new_bytes > old_bytes else "shrank"
            else:
                continue
            either = new if new is not None else old
            rows.append(
                {
                    "layer": path,
                    "class_name": either.class_name if either is not None else "",
                    "change": change,
                    "before_bytes": old_bytes if old else None,
                    "after_bytes": new_bytes if new else None,
                    "delta_bytes": new_bytes - old_bytes,
                    "param_delta_bytes": new_w - old_w,
                    "activation_delta_bytes": (new_bytes - new_w) - (old_bytes - old_w),
                }
            )
        rows.sort(key=lambda r: (-abs(int(r["delta_bytes"])), str(r["layer"])))
    before_bytes = sum(total(r, before.batch_size) for r in before.layers) if before is not None else None
    after_bytes = sum(total(r, b) for r in after.layers)
    counts = {c: sum(1 for r in rows if r["change"] == c) for c in WHY_CHANGES}
    return {
        "model": model,
        "batch_size": b,
        "before_bytes": before_bytes,
        "after_bytes": after_bytes,
        "delta_bytes": after_bytes - before_bytes if before_bytes is not None else None,
        **counts,
        "note": note,
        "layers": rows,
    }


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class BudgetResult:
    budget: Budget
    model: str  # the model file, as displayed (relative to the working directory when inside it)
    value: int | None
    status: Status
    reasons: tuple[str, ...] = ()
    optimizer: str | None = None  # the optimizer the profile used (training_memory)
    baseline: int | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.passed

    @property
    def delta(self) -> int | None:
        if self.value is None or self.baseline is None:
            return None
        return self.value - self.baseline

    @property
    def delta_percent(self) -> float | None:
        if self.delta is None or not self.baseline:
            return None
        return round(100.0 * self.delta / self.baseline, 3)

    def message(self) -> str:
        """One sentence for annotations and failure elements."""
        b = self.budget
        if self.status is Status.error:
            return f"{self.model}: not checked: {self.error}"
        head = f"{self.model}: {b.describe()} is {b.metric.format_value(self.value, b.si)}"
        if self.reasons:
            return f"{head}; " + "; ".join(self.reasons)
        limit = f" (limit {b.metric.format_value(b.max, b.si)})" if b.max is not None else ""
        return f"{head}{limit}: within budget"

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        return {
            "model": self.model,
            "metric": b.metric.value,
            "unit": b.metric.unit,
            "value": self.value,
            "limit": b.max,
            "limit_text": b.limit_text,
            "passed": self.passed,
            "status": self.status.value,
            "level": b.level.value,
            "batch_size": b.batch_size if b.metric.needs_batch else None,
            "optimizer": self.optimizer if b.metric is Metric.training_memory else None,
            "source": b.source,
            "baseline": self.baseline,
            "delta": self.delta,
            "delta_percent": self.delta_percent,
            "max_increase": b.max_increase,
            "min_increase": b.min_increase,
            "reasons": list(self.reasons),
            "error": self.error,
        }


def evaluate(
    budget: Budget, model: str, value: int, baseline: int | None, optimizer: str | None = None
) -> BudgetResult:
    """Hold one value against its budget (and its baseline, if any)."""
    reasons = []

    def fmt(v):
        return budget.metric.format_value(v, budget.si)

    if budget.max is not None and value > budget.max:
        reasons.append(f"over the limit of {budget.limit_text or fmt(budget.max)} by {fmt(value - budget.max)}")
    if budget.max_increase is not None and baseline is not None:
        delta = value - baseline
        allowed = max(budget.max_increase * baseline, budget.min_increase or 0)
        if delta > allowed:
            pct = f"{100.0 * delta / baseline:+.1f}%" if baseline else "from 0"
            floor = f", floor {fmt(budget.min_increase)}" if budget.min_increase else ""
            reasons.append(
                f"grew {fmt(delta)} ({pct}) over the baseline {fmt(baseline)}; "
                f"allowed +{100.0 * budget.max_increase:g}%{floor}"
            )
    if not reasons:
        status = Status.passed
    else:
        status = Status.failed if budget.level is Level.error else Status.warned
    return BudgetResult(budget, model, value, status, tuple(reasons), optimizer, baseline)


def unmeasured(budget: Budget, model: str, why: str, optimizer: str | None = None) -> BudgetResult:
    """A budget whose value could not be measured fails at its level: a gate never passes on a guess."""
    status = Status.failed if budget.level is Level.error else Status.warned
    return BudgetResult(budget, model, None, status, (why,), optimizer)


def not_checked(budget: Budget, model: str, error: str) -> BudgetResult:
    return BudgetResult(budget, model, None, Status.error, (), None, None, error)


@dataclass(frozen=True)
class ModelError:
    """A model (or some of its budgets) not checked: rejected (exit 3), or an argument it needs is
    missing, such as --seq-len for a memory budget on a text model (exit 2)."""

    model: str
    message: str
    rule: str | None = None
    where: str | None = None
    exit_code: int = int(ExitCode.UNSAFE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "message": self.message,
            "rule": self.rule,
            "where": self.where,
            "exit_code": self.exit_code,
        }


@dataclass(frozen=True)
class CheckReport:
    """Every budget's result. The exit code: a rejected model (3) > a budget that needs an argument (2) >
    an error-level failure (1) > pass (0)."""

    results: tuple[BudgetResult, ...]
    errors: tuple[ModelError, ...] = ()
    config: str | None = None
    baseline: str | None = None
    estimate: str = "static"
    layers: tuple[ModelLayers, ...] = ()  # per-layer bytes of each model profiled (a later --why's baseline)
    why: tuple[dict[str, Any], ...] | None = None  # the per-layer diff against the baseline (--why)

    @property
    def passed(self) -> bool:
        return not self.errors and all(
            r.status is not Status.failed and r.status is not Status.error for r in self.results
        )

    @property
    def verdict(self) -> str:
        if self.errors or any(r.status is Status.error for r in self.results):
            return "error"
        return "pass" if self.passed else "fail"

    def exit_code(self, exit_zero: bool = False) -> int:
        """0 pass, 1 an error-level budget failed (0 with exit_zero), 2 a budget needs an argument (such as
        --seq-len), 3 a model was rejected."""
        if self.verdict == "error":
            return max((e.exit_code for e in self.errors), default=int(ExitCode.UNSAFE))
        if self.verdict == "fail" and not exit_zero:
            return int(ExitCode.GATE_FAILED)
        return int(ExitCode.OK)

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for r in self.results:
            counts[r.status.value] += 1
        return {
            "total": len(self.results),
            "passed": counts["pass"],
            "failed": counts["fail"],
            "warned": counts["warn"],
            "errors": counts["error"],
        }

    def to_dict(self) -> dict[str, Any]:
        from kmemopt import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "kmemopt_version": __version__,
            "passed": self.passed,
            "verdict": self.verdict,
            "summary": self.counts(),
            "config": self.config,
            "baseline": self.baseline,
            "estimate": self.estimate,
            "budgets": [r.to_dict() for r in self.results],
            "errors": [e.to_dict() for e in self.errors],
            "layers": [m.to_dict() for m in self.layers],
            "why": list(self.why) if self.why is not None else None,
        }


def format_value(metric: str, value: int | float | None, si: bool = False) -> str:
    """Format a JSON row's value by its metric name (for the renderers)."""
    if value is None:
        return "-"
    if metric == Metric.params.value:
        return format_count(int(value))
    return format_si(value) if si else format_bytes(value)
