"""kmemopt: where a Keras model's memory goes, and how to make it smaller.

The package imports nothing heavy at import time (`kmemopt --help` stays instant); Keras is imported
by the functions below when they are called.

Example:
    >>> import kmemopt
    >>> result = kmemopt.profile("model.keras", batch_size=64)
    >>> result.totals.training_peak_bytes
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from kmemopt.gate.budgets import CheckReport
    from kmemopt.profiling.static import ProfileResult

__all__ = ["__version__", "check", "load_model", "profile", "shrink"]


def profile(
    path_or_model: Any,
    *,
    batch_size: int = 32,
    optimizer: Any = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    budget: int | str | None = None,
    custom_objects: dict[str, Any] | str | None = None,
) -> ProfileResult:
    """Profile a saved model file (`.keras` or legacy `.h5`) or an in-memory `keras.Model`.

    Weights are never read from a file: the architecture is rebuilt without allocating variables
    after the config passed kmemopt's allowlist. Returns a `ProfileResult` (see `to_dict()`).

    Example:
        >>> r = kmemopt.profile("sample_models/digits_cnn.keras", batch_size=64, budget="2 GiB")
        >>> r.totals.params, r.budget.max_training_batch
    """
    from kmemopt.api import profile as _profile

    return _profile(
        path_or_model,
        batch_size=batch_size,
        optimizer=optimizer,
        input_shapes=input_shapes,
        seq_len=seq_len,
        budget=budget,
        custom_objects=custom_objects,
    )


def load_model(path: Any, *, custom_objects: dict[str, Any] | str | None = None, compile: bool = False):
    """Load a model with its weights, after the same safety checks `profile` applies.

    Example:
        >>> model = kmemopt.load_model("sample_models/digits_mlp.keras")
    """
    from kmemopt.api import load_model as _load

    return _load(path, custom_objects=custom_objects, compile=compile)


def check(
    paths: Any = (),
    *,
    config: Any = None,
    max_file_size: int | str | None = None,
    max_params: int | str | None = None,
    max_param_memory: int | str | None = None,
    max_inference_memory: int | str | None = None,
    max_training_memory: int | str | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    baseline: Any = None,
    max_increase: float | str | None = None,
    min_increase: int | str | None = None,
    seq_len: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    custom_objects: dict[str, Any] | str | None = None,
    measure: bool = False,
    use_config: bool = True,
    cwd: Any = None,
) -> CheckReport:
    """Check model files against memory and size budgets (what `kmemopt check` runs).

    Budgets come from the `max_*` arguments (for `paths`, files or globs) and from `[tool.kmemopt]` in
    the nearest pyproject.toml above `cwd` (or `config`; `use_config=False` ignores it). A budget that
    fails is reported, not raised: read `report.passed` and `report.exit_code()`. Usage errors (a bad
    size, a glob matching nothing) raise `kmemopt.errors.UsageError`.

    Example:
        >>> report = kmemopt.check("models/*.keras", max_file_size="50 MB", max_training_memory="6 GiB")
        >>> report.passed, [r.value for r in report.results]
    """
    import os

    from kmemopt.gate.check import check as _check

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return _check(
        paths,
        config=config,
        max_file_size=max_file_size,
        max_params=max_params,
        max_param_memory=max_param_memory,
        max_inference_memory=max_inference_memory,
        max_training_memory=max_training_memory,
        batch_size=batch_size,
        optimizer=optimizer,
        baseline=baseline,
        max_increase=max_increase,
        min_increase=min_increase,
        seq_len=seq_len,
        input_shapes=input_shapes,
        custom_objects=custom_objects,
        measure=measure,
        use_config=use_config,
        cwd=cwd,
    )


def shrink(path_or_model: Any, out: Any = None, **options: Any):
    """Write a slimmer copy of a model (default `<stem>.slim.keras` beside it) and report on it.

    Options mirror `kmemopt shrink` (quantize="int8", allow_custom_layers=True, prune=0.5,
    compress=True, mixed_precision="float16", skip="regex", keep_optimizer=True, data="x.npz",
    min_agreement=0.99, max_accuracy_drop=0.01, explain=True, dry_run=True, force=True, ...).
    Returns a `ShrinkResult` (`to_dict()` is the documented JSON); a failed fidelity gate raises
    `kmemopt.errors.GateFailed` (its `.result` holds the report) and writes nothing.

    Example:
        >>> r = kmemopt.shrink("sample_models/digits_mlp.keras", "mlp.slim.keras", quantize="int8")
        >>> r.after.file_bytes / r.before.file_bytes
    """
    from kmemopt.passes.pipeline import shrink as _shrink

    return _shrink(path_or_model, out, **options)


# Files written with --allow-custom-layers name kmemopt's layers: register them with Keras as soon as
# Keras is imported (now, if it already is), without importing Keras here.
from kmemopt import _layers_hook  # noqa: E402

_layers_hook.install()
