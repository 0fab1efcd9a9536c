"""`kmemopt check`: find the config, expand the globs, profile each model once, hold it against its budgets.

The glue between files and the pure budget logic in `kmemopt.gate.budgets`. Models are profiled statically
(no weight is read, so a check takes seconds) once per (batch size, optimizer, input shapes); parameter
budgets need no shapes (the unallocated build's weights). A model rejected as unsafe or malformed is
recorded and the other models are still checked, and the report's exit code is then 3; a budget that
needs an argument not given (--seq-len) is recorded the same way, with exit code 2.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kmemopt.errors import MalformedModelError, UnsafeModelError, UsageError
from kmemopt.gate import budgets as bg
from kmemopt.gate.budgets import Budget, CheckReport, Config, Metric, Overrides

CONFIG_NAME = "pyproject.toml"
_WEIGHT_METRICS = (Metric.params, Metric.param_memory)  # exact from the unallocated build: no shapes needed
_GLOB_CHARS = set("*?[")


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"No such config file: {path}.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder; --config takes a pyproject.toml (or another TOML file).") from None
    except OSError as exc:
        raise UsageError(f"Cannot read {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}.") from None


def _kmemopt_table(data: dict[str, Any]) -> Any:
    tool = data.get("tool")
    return tool.get("kmemopt") if isinstance(tool, dict) else None


def find_config(start: str | os.PathLike) -> Path | None:
    """The nearest pyproject.toml with a [tool.kmemopt] table, from `start` upwards (like ruff's)."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file() and _kmemopt_table(_load_toml(candidate)) is not None:
            return candidate
    return None


def load_config(path: str | os.PathLike, name: str | None = None) -> Config:
    """Read [tool.kmemopt] from a TOML file; globs in it are relative to the file's folder.

    `name` is how messages and reports call the file (default: the path as given)."""
    path = Path(path)
    table = _kmemopt_table(_load_toml(path))
    config = bg.config_from_table(table, name or str(path), str(path.resolve().parent))
    return replace(config, path=str(path))


def display_path(path: Path, cwd: Path, root: Path | None = None) -> str:
    """Relative to the working directory when inside it, else to the config's folder (the project root,
    what CI annotations and baselines want), else absolute."""
    for folder in (cwd, root):
        if folder is None:
            continue
        try:
            return path.resolve().relative_to(Path(folder).resolve()).as_posix()
        except ValueError:
            continue
    return str(path)


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def expand(pattern: str, base: Path) -> list[Path]:
    """Files a glob (or a plain path) names, relative to `base`; `**` crosses folders. Sorted."""
    full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
    if not _is_glob(pattern):
        return [Path(full)]
    return [Path(p) for p in sorted(glob.glob(full, recursive=True)) if os.path.isfile(p)]


@dataclass(frozen=True)
class Check:
    """One budget on one model file."""

    path: Path
    model: str  # as displayed
    budget: Budget


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _baseline_targets(baseline: bg.Baseline, cwd: Path) -> list[Path]:
    """The model files a baseline names, relative to the working directory: what a check with a baseline and
    neither paths nor config budgets compares."""
    targets = []
    for name in baseline.models():
        path = Path(name) if os.path.isabs(name) else cwd / name
        if not path.is_file():
            raise UsageError(
                f"The baseline {baseline.source} names {name}, which is not a file here (from {cwd}); "
                "give the model files to check, e.g. kmemopt check models/*.keras --baseline main.json."
            )
        targets.append(path)
    return targets


def plan(
    paths: Sequence[str],
    config: Config | None,
    overrides: Overrides,
    cwd: Path,
    baseline: bg.Baseline | None = None,
) -> list[Check]:
    """Which budgets apply to which files.

    - No paths: every config budget on the files its glob matches (a glob matching nothing is a usage
      error: a budget that checks nothing must not pass silently).
    - Paths (or globs, relative to the working directory): the config budgets whose glob matches each
      file, plus the flag budgets.
    - A `--max-METRIC` flag replaces the config budgets of that metric; its targets are the paths, or
      every file the config's budgets name.
    - With a baseline, every metric it holds for a target is compared too (against --max-increase), unless a
      budget above already covers that metric; with neither paths nor config budgets, the targets are the
      files the baseline names.
    """
    cfg_budgets = [bg.apply_overrides(b, overrides) for b in (config.budgets if config else ())]
    base = Path(config.path).resolve().parent if config and config.path else None
    checks: list[Check] = []
    if paths:
        targets: list[Path] = []
        for pattern in paths:
            found = expand(pattern, cwd)
            if not found:
                raise UsageError(f"The glob {pattern!r} matches no file (from {cwd}).")
            for f in found:
                if not f.exists():
                    raise UsageError(f"No such file: {pattern}. Check the path and try again.")
            targets += found
        targets = _dedupe(targets)
        for budget in cfg_budgets:
            matched = {p.resolve() for p in expand(budget.model, Path(budget.base or cwd))}
            checks += [Check(t, display_path(t, cwd, base), budget) for t in targets if t.resolve() in matched]
    else:
        for budget in cfg_budgets:
            found = [f for f in expand(budget.model, Path(budget.base or cwd)) if f.exists()]
            if not found:
                raise UsageError(
                    f"{budget.source}: model = {budget.model!r} matches no file (relative to {budget.base}); "
                    "a budget that checks nothing would pass silently."
                )
            checks += [Check(f, display_path(f, cwd, base), budget) for f in found]
        targets = _dedupe(c.path for c in checks)
        if not targets and baseline is not None:
            targets = _dedupe(_baseline_targets(baseline, cwd))

    if overrides.limits:
        if not targets:
            raise UsageError(
                "Give the model files to check (paths or globs), e.g. kmemopt check models/*.keras --max-file-size 50MB."
            )
        flagged = {m for m, _, _ in overrides.limits}
        checks = [c for c in checks if c.budget.metric not in flagged]
        for metric, limit, text in overrides.limits:
            checks += [
                Check(t, display_path(t, cwd, base), bg.flag_budget(metric, limit, t.name, overrides, text))
                for t in targets
            ]

    if baseline is not None:
        for t in targets:
            shown = display_path(t, cwd, base)
            covered = {c.budget.metric for c in checks if c.path.resolve() == t.resolve()}
            checks += [
                Check(t, shown, bg.baseline_budget(e, shown, overrides))
                for e in baseline.entries_for(shown)
                if e.metric not in covered
            ]

    if not checks:
        if paths and baseline is not None:
            raise UsageError(
                f"No budget applies to the given files and the baseline {baseline.source} holds none of them: pass "
                "a limit (e.g. --max-file-size 50MB) or a baseline written from these models."
            )
        if paths:
            raise UsageError(
                "No budget applies to the given files: pass a limit (e.g. --max-file-size 50MB) or add a "
                "[[tool.kmemopt.budget]] whose model glob matches them."
            )
        where = f" in {config.path}" if config and config.path else ""
        raise UsageError(
            f"Nothing to check: no [[tool.kmemopt.budget]]{where} and no limit given. "
            "Example: kmemopt check model.keras --max-file-size 50MB"
        )
    uncovered = [t for t in targets if not any(c.path.resolve() == t.resolve() for c in checks)]
    if uncovered:
        held = f" and the baseline {baseline.source} holds no value for it" if baseline is not None else ""
        raise UsageError(
            f"No budget applies to {display_path(uncovered[0], cwd, base)}{held}; add one or drop the path."
        )
    order = {t.resolve(): i for i, t in enumerate(targets)}
    return sorted(checks, key=lambda c: order.get(c.path.resolve(), len(order)))


def _load_baseline(path: Path, name: str) -> bg.Baseline:
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"No such baseline file: {path}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read the baseline {path}: {exc}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"The baseline {path} is not JSON ({exc}).") from None
    return bg.baseline_from_json(data, name)


def _profile_value(metric: Metric, result) -> int:
    t = result.totals
    return {
        Metric.inference_memory: t.inference_peak_bytes,
        Metric.training_memory: t.training_peak_bytes,
    }[metric]


def _not_evaluated(check: Check, exc: UsageError) -> str:
    """Why one budget of a model could not be evaluated (an argument it needs is missing), with the fix."""
    in_config = check.budget.source != check.budget.metric.flag
    hint = " (in [[tool.kmemopt.budget]]: seq_len = N or input_shapes = {name = [...]})"
    return f"{exc.message}{hint if in_config and '--seq-len' in exc.message else ''}"


def measurement() -> Callable[..., Any]:
    """The measurement (`kmemopt.profiling.measure.measure_profile`), or a usage error saying it is missing."""
    try:
        from kmemopt.profiling.measure import measure_profile
    except ImportError:
        raise UsageError(
            "--measure is unavailable: this build of kmemopt has no measurement (kmemopt.profiling.measure). "
            "Run the check without --measure (static estimates)."
        ) from None
    return measure_profile


def _measured_value(metric: Metric, data: dict[str, Any]) -> int | str:
    """The measured peak, or why it could not be measured."""
    measured = data.get("measured") or {}
    key = "inference_peak_bytes" if metric is Metric.inference_memory else "training_peak_bytes"
    status = measured.get("status", "ok")
    value = measured.get(key)
    if status != "ok" or value is None:
        run: dict[str, Any] = next(iter(measured.get("runs") or []), {})
        why = run.get("message") or measured.get("message") or "no value"
        return f"could not be measured ({status}): {why}"
    return int(value)


def evaluate_checks(
    checks: Sequence[Check],
    *,
    baseline: bg.Baseline | None = None,
    custom_objects: dict[str, Any] | None = None,
    on_model: Callable[[str], None] | None = None,
    config: str | None = None,
    measure: Callable[..., Any] | None = None,
    custom_objects_file: str | os.PathLike | None = None,
    why: bool = False,
) -> CheckReport:
    """Profile each model once per budget key and hold every value against its budget.

    Only memory budgets need input shapes (and a batch size): the parameter budgets count the
    weights of the unallocated build, the file size reads the file. A budget that cannot be evaluated
    because an argument it needs is missing (--seq-len on a text model) gets an error verdict and the
    report exit code 2; the model's other budgets, and the other models, are still checked.

    With `measure` (see `measurement()`), inference and training memory are measured in a child
    process instead of estimated; a budget whose model could not be measured (over the child's memory
    or time limit, or a crash) fails, with the reason, rather than passing on a guess.

    Each model's per-layer bytes are kept in the report when a profile was made (so the report's JSON can
    be a later `--why` baseline); with `why`, every model is profiled (at its first budget's batch size)
    and compared layer by layer with the baseline's layers.
    """
    from kmemopt.api import open_checked, profile
    from kmemopt.load.archive import read_model_file

    results: list[bg.BudgetResult] = []
    errors: list[bg.ModelError] = []
    layers: list[bg.ModelLayers] = []
    diffs: list[dict[str, Any]] = []
    by_path: dict[Path, list[Check]] = {}
    for c in checks:
        by_path.setdefault(c.path.resolve(), []).append(c)
    for path, group in by_path.items():
        model = group[0].model
        if on_model is not None:
            on_model(model)
        static: dict[tuple, Any] = {}  # budget key -> ProfileResult
        measured: dict[tuple, dict[str, Any]] = {}  # budget key -> measured profile's to_dict()
        unusable: dict[tuple, UsageError] = {}  # budget key -> why its profile could not be made
        weights: tuple[int, int] | None = None  # (parameters, bytes)
        not_evaluated: dict[int, str] = {}  # index in group -> why (a missing argument)

        try:
            file_bytes = read_model_file(path).file_bytes  # bounded archive checks first, even for file_size
            for i, c in enumerate(group):  # memory budgets first: their profiles also count the parameters
                b = c.budget
                if not b.metric.needs_batch:
                    continue
                key = b.key()
                try:
                    if key in unusable:
                        raise unusable[key]
                    if key not in static:
                        batch, optimizer, seq_len, shapes = key
                        static[key] = profile(
                            path,
                            batch_size=batch,
                            optimizer=optimizer,
                            seq_len=seq_len,
                            input_shapes=dict(shapes) or None,
                            custom_objects=custom_objects,
                        )
                    if measure is not None and key not in measured:
                        measured[key] = measure(
                            static[key], path, optimizer=key[1], custom_objects=custom_objects_file
                        ).to_dict()
                except UsageError as exc:
                    unusable.setdefault(key, exc)
                    not_evaluated[i] = _not_evaluated(c, exc)
            counted = [i for i, c in enumerate(group) if c.budget.metric in _WEIGHT_METRICS]
            if counted and static:
                t = next(iter(static.values())).totals
                weights = (t.params, t.param_bytes)
            elif counted:
                try:
                    from kmemopt.profiling.dtypes import weight_totals

                    weights = weight_totals(open_checked(path, custom_objects)[1])
                except UsageError as exc:
                    not_evaluated.update({i: _not_evaluated(group[i], exc) for i in counted})
            mine, why_note = _model_layers(group, static, why, path, custom_objects)
        except (UnsafeModelError, MalformedModelError) as exc:
            errors.append(bg.ModelError(model, exc.message, exc.rule, exc.where))
            results += [bg.not_checked(c.budget, model, str(exc)) for c in group]
            continue
        if mine is not None:
            layers.append(replace(mine, model=model))
        if why:
            diffs.append(_why(model, mine, baseline, why_note))
        for reason in dict.fromkeys(not_evaluated.values()):  # each reason once, in order
            errors.append(bg.ModelError(model, reason, exit_code=int(UsageError.exit_code)))
        for i, c in enumerate(group):
            b = c.budget
            if i in not_evaluated:
                results.append(bg.not_checked(b, model, not_evaluated[i]))
                continue
            optimizer = None
            if b.metric is Metric.file_size:
                value = file_bytes
            elif b.metric in _WEIGHT_METRICS:
                assert weights is not None  # counted above, or this budget is in not_evaluated
                value = weights[0] if b.metric is Metric.params else weights[1]
            else:
                result = static[b.key()]
                value, optimizer = _profile_value(b.metric, result), result.optimizer.get("name")
                if measure is not None:
                    peak = _measured_value(b.metric, measured[b.key()])
                    if isinstance(peak, str):
                        results.append(bg.unmeasured(b, model, peak, optimizer))
                        continue
                    value = peak
            base_value = baseline.lookup(model, b.metric, b.batch_size, optimizer) if baseline is not None else None
            results.append(bg.evaluate(b, model, int(value), base_value, optimizer))
    return CheckReport(
        results=tuple(results),
        errors=tuple(errors),
        config=config,
        baseline=baseline.source if baseline is not None else None,
        estimate="measured" if measure is not None else "static",
        layers=tuple(layers),
        why=tuple(diffs) if why else None,
    )


def _model_layers(
    group: Sequence[Check], static: dict[tuple, Any], why: bool, path: Path, custom_objects
) -> tuple[bg.ModelLayers | None, str | None]:
    """The model's per-layer bytes from its first profile; with `why` and no profile yet, one is made at the
    first budget's batch size. (None, why not) when it cannot be made (an argument it needs is missing)."""
    result = next(iter(static.values()), None)
    if result is None and why:
        from kmemopt.api import profile

        batch, optimizer, seq_len, shapes = group[0].budget.key()
        try:
            result = profile(
                path,
                batch_size=batch,
                optimizer=optimizer,
                seq_len=seq_len,
                input_shapes=dict(shapes) or None,
                custom_objects=custom_objects,
            )
        except UsageError as exc:
            return None, f"no per-layer profile of this model: {exc.message}"
    if result is None:
        return None, None
    rows = tuple(
        bg.LayerBytes(
            r.path,
            r.class_name,
            r.param_bytes,
            r.gradient_bytes,
            r.optimizer_bytes,
            r.activation_bytes,
            r.activation_bytes_per_sample,
        )
        for r in result.layers
    )
    return bg.ModelLayers(group[0].model, result.batch_size, rows), None


def _why(model: str, mine: bg.ModelLayers | None, baseline: bg.Baseline | None, note: str | None) -> dict[str, Any]:
    """The --why entry of one model: its layers against the baseline's, or a note saying why there is none."""
    before = baseline.layers_for(model) if baseline is not None else None
    if mine is None:
        empty = bg.ModelLayers(model, before.batch_size if before else bg.DEFAULT_BATCH_SIZE, ())
        return {**bg.layer_diff(None, empty, model, note), "after_bytes": None}
    if baseline is None:
        note = "no baseline to compare with (--baseline FILE.json)"
    elif before is None:
        note = (
            f"the baseline {baseline.source} holds no per-layer data for this model; write one with "
            "`kmemopt profile MODEL --format json` (or `kmemopt check --why --format json`)"
        )
    return bg.layer_diff(before, mine, model, note)


def check(
    paths: Sequence[str | os.PathLike] = (),
    *,
    config: str | os.PathLike | None = None,
    max_file_size: Any = None,
    max_params: Any = None,
    max_param_memory: Any = None,
    max_inference_memory: Any = None,
    max_training_memory: Any = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    baseline: str | os.PathLike | None = None,
    max_increase: Any = None,
    min_increase: Any = None,
    seq_len: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    custom_objects: dict[str, Any] | str | os.PathLike | None = None,
    measure: bool = False,
    use_config: bool = True,
    cwd: str | os.PathLike | None = None,
    on_model: Callable[[str], None] | None = None,
    why: bool = False,
) -> CheckReport:
    """Check model files against budgets; see `kmemopt.check` for the documented API."""
    measure_fn = measurement() if measure else None
    if measure_fn is not None and isinstance(custom_objects, dict):
        raise UsageError("With measure=True, custom_objects must be a file path (the measuring process loads it).")
    here = Path(cwd) if cwd is not None else Path.cwd()
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise UsageError(f"--batch-size must be at least 1. Received: {batch_size!r}.")
    overrides = Overrides(
        limits=bg.parse_limit_flags(
            {
                Metric.file_size: max_file_size,
                Metric.params: max_params,
                Metric.param_memory: max_param_memory,
                Metric.inference_memory: max_inference_memory,
                Metric.training_memory: max_training_memory,
            }
        ),
        batch_size=batch_size,
        optimizer=optimizer,
        max_increase=bg.parse_percent_at(max_increase, "--max-increase") if max_increase is not None else None,
        min_increase_bytes=_parse_floor(min_increase) if min_increase is not None else None,
        seq_len=seq_len,
        input_shapes=tuple(sorted((k, tuple(v)) for k, v in (input_shapes or {}).items())),
    )
    cfg: Config | None = None
    if config is not None:
        path = Path(config) if Path(config).is_absolute() else here / config
        cfg = load_config(path, display_path(path, here, path.parent))
    elif use_config:
        found = find_config(here)
        cfg = load_config(found, display_path(found, here, found.parent)) if found else None
    root = Path(cfg.path).resolve().parent if cfg is not None and cfg.path else None

    base: bg.Baseline | None = None
    if baseline is not None:
        path = Path(baseline) if Path(baseline).is_absolute() else here / baseline
        base = _load_baseline(path, display_path(path, here, root))
    elif cfg is not None and cfg.baseline:
        path = Path(cfg.path).resolve().parent / cfg.baseline
        base = _load_baseline(path, display_path(path, here, root))

    checks = plan([os.fspath(p) for p in paths], cfg, overrides, here, base)
    if base is None:
        compare_only = [c.budget for c in checks if c.budget.max is None]
        if compare_only:
            raise UsageError(
                f"{compare_only[0].source} has no 'max' and only compares with a baseline, but none was given "
                "(--baseline FILE.json)."
            )
    from kmemopt.api import resolve_custom_objects

    objects = resolve_custom_objects(custom_objects)
    return evaluate_checks(
        checks,
        baseline=base,
        custom_objects=objects,
        on_model=on_model,
        measure=measure_fn,
        # A dict of custom objects with measure=True was refused above: the measuring child needs a file.
        custom_objects_file=(
            Path(here, custom_objects).resolve()
            if measure_fn and custom_objects and not isinstance(custom_objects, dict)
            else None
        ),
        config=display_path(Path(cfg.path), here, root) if cfg is not None and cfg.path else None,
        why=why,
    )


def _parse_floor(value: Any) -> int:
    from kmemopt.units import parse_size

    try:
        return parse_size(value)
    except UsageError as exc:
        raise UsageError(f"--min-increase: {exc.message}") from None
