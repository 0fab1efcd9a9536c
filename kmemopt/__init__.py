"""kmemopt: where a Keras model's memory goes, and how to make it smaller.

The package imports nothing heavy at import time (`kmemopt --help` stays instant); Keras is imported
by the functions below when they are called.

Example:
    >>> import kmemopt
    >>> result = kmemopt.profile("model.keras", batch_size=64)
    >>> result.totals.training_peak_bytes
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from kmemopt.gate.budgets import CheckReport
    from kmemopt.passes.pipeline import ShrinkResult
    from kmemopt.profiling.static import ProfileResult

__all__ = ["__version__", "check", "load_model", "plan", "profile", "shrink"]


def profile(
    path_or_model: Any,
    *,
    batch_size: int = 32,
    optimizer: Any = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    seq_len: int | None = None,
    budget: int | str | None = None,
    custom_objects: dict[str, Any] | str | None = None,
    xla: bool | None = None,
) -> ProfileResult:
    """Profile a saved model file (`.keras` or legacy `.h5`) or an in-memory `keras.Model`.

    Weights are never read from a file: the architecture is rebuilt without allocating variables
    after the config passed kmemopt's allowlist. Returns a `ProfileResult` (see `to_dict()`).
    `xla`: on the JAX backend, also report XLA's own accounting of the compiled steps (None: for a
    model file, unless KMEMOPT_XLA=0; compiling a training step can take minutes).

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
        xla=xla,
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


def shrink(
    path_or_model: Any,
    out: str | os.PathLike | None = None,
    *,
    quantize: str | None = None,
    allow_custom_layers: bool = False,
    prune: float | str | None = None,
    prune_first_last: bool = False,
    compress: bool = False,
    mixed_precision: str | None = None,
    skip: str | None = None,
    keep_optimizer: bool = False,
    data: str | os.PathLike | None = None,
    samples: int | None = None,
    min_agreement: float | str | None = None,
    max_accuracy_drop: float | str | None = None,
    explain: bool = False,
    dry_run: bool = False,
    force: bool = False,
    batch_size: int = 32,
    optimizer: Any = None,
    custom_objects: dict[str, Any] | str | os.PathLike | None = None,
    seq_len: int | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    max_memory: int | str | None = None,
    timeout: float | None = None,
    prune_channels: float | str | None = None,
    recover: str | None = None,
    epochs: int = 5,
    learning_rate: float | None = None,
    eval_data: str | os.PathLike | None = None,
    target_params: float | str | None = None,
    target_memory: int | str | None = None,
    prune_criterion: str | None = None,
    prune_scope: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ShrinkResult:
    """Write a slimmer copy of a model (default `<stem>.slim.keras` beside it) and report on it.

    `path_or_model` is a `.keras`/`.h5` file or an in-memory `keras.Model` (then `out` is required,
    unless `dry_run`). The arguments are `kmemopt shrink`'s options:

    - passes, in the order they apply: `prune_channels` (a fraction of channels, 0.5 or "50%", removed:
      a smaller network; first, so the other passes work on it) with `recover` ("distill" from the
      original on `data`'s inputs, or "finetune" on its labels, at most `epochs` epochs; distill starts
      at `learning_rate`, default the model's own, else 1e-3) and
      `eval_data` (the fidelity data when `data` trains); instead of `prune_channels`, `target_params`
      ("0.3x" or a count) or `target_memory` ("0.5x" or "2GiB" of static training peak) prune the
      smallest amount that reaches it; `prune_criterion` ("magnitude", "bn", "activation", "gradient") and
      `prune_scope` ("uniform", "global", "sensitivity") choose which channels go; `keep_optimizer` (saved optimizer state is
      dropped unless True), `prune` (a sparsity, 0.5 or "50%"; implies `compress`) with `prune_first_last`,
      `quantize` ("int8", "int4", "float16", "bfloat16"), `allow_custom_layers` (int8 convolutions
      with kmemopt's own layers), `mixed_precision` ("float16", "bfloat16"), `compress` (deflate),
      `skip` (a regex of layer paths left alone by every pass);
    - fidelity: `data` (.npy, or .npz keyed by input name or x, labels under y; default synthetic
      inputs), `samples` (at most this many), the gates `min_agreement` (top-1 agreement, 0.99 or
      "99%") and `max_accuracy_drop` (needs labels), `explain` (one layer at a time);
    - output and run: `dry_run` (report only, write nothing), `force` (overwrite an existing output,
      never the input), `batch_size`, `optimizer`, `seq_len` and `input_shapes` for the peaks in the
      report, `custom_objects` (a dict, or a Python file of trusted layers), `max_memory` (bytes or
      "8GiB" that running the model may take; default half the physical memory), `timeout` (seconds
      the fresh-process reload check may run), `progress` (called with one line as each step starts).

    Returns a `ShrinkResult` (`to_dict()` is the documented JSON); a failed fidelity gate raises
    `kmemopt.errors.GateFailed` (its `.result` holds the report) and writes nothing; a bad option
    raises `kmemopt.errors.UsageError` before anything is read.

    Example:
        >>> r = kmemopt.shrink("sample_models/digits_mlp.keras", "mlp.slim.keras", quantize="int8")
        >>> r.after.file_bytes / r.before.file_bytes
    """
    from kmemopt.passes.pipeline import make_request
    from kmemopt.passes.pipeline import shrink as _shrink

    request = make_request(
        quantize=quantize,
        allow_custom_layers=allow_custom_layers,
        prune=prune,
        prune_first_last=prune_first_last,
        compress=compress,
        mixed_precision=mixed_precision,
        skip=skip,
        keep_optimizer=keep_optimizer,
        data=data,
        samples=samples,
        min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop,
        explain=explain,
        dry_run=dry_run,
        force=force,
        batch_size=batch_size,
        optimizer=optimizer,
        custom_objects=custom_objects,
        seq_len=seq_len,
        input_shapes=input_shapes,
        max_memory=max_memory,
        timeout=timeout,
        prune_channels=prune_channels,
        recover=recover,
        epochs=epochs,
        learning_rate=learning_rate,
        eval_data=eval_data,
        target_params=target_params,
        target_memory=target_memory,
        prune_criterion=prune_criterion,
        prune_scope=prune_scope,
    )
    return _shrink(path_or_model, out, request, progress=progress)


# Files written with --allow-custom-layers name kmemopt's layers: register them with Keras as soon as
# Keras is imported (now, if it already is), without importing Keras here.
from kmemopt import _layers_hook  # noqa: E402

_layers_hook.install()

# `kmemopt.plan(...)`: the plan package is callable (see its docstring: a function of that name would be
# replaced by the package as soon as any of its modules is imported). It imports nothing heavy.
from kmemopt import plan  # noqa: E402
