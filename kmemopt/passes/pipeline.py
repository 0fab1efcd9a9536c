"""The `kmemopt shrink` pipeline: load safely -> passes -> check fidelity -> write atomically -> reload in
a fresh process with plain Keras -> profile before and after -> report.

Nothing is written when a fidelity gate fails, and nothing half-written is ever left: the output is a
temp file beside the target until the fresh-process reload has verified it, then renamed.
(Named shrinking.py, not shrink.py, so that importing it cannot shadow the public `kmemopt.shrink`.)
"""

from __future__ import annotations

import gc
import os
import re
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kmemopt.errors import UsageError
from kmemopt.memory import release_memory
from kmemopt.passes import MixedPrecision, PassResult, QuantizeMode, ShrinkOptions, enabled_passes
from kmemopt.write import save

if TYPE_CHECKING:  # pragma: no cover
    from kmemopt.passes.fidelity import Fidelity, LayerHarm

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Side:
    """One side of the before/after comparison."""

    file_bytes: int | None
    params: int
    param_bytes: int
    inference_peak_bytes: int
    training_peak_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ShrinkResult:
    input: str | None
    output: str | None
    written: bool
    dry_run: bool
    options: ShrinkOptions
    batch_size: int
    optimizer: str
    before: Side
    after: Side | None
    layers: list[dict[str, Any]]
    passes: list[PassResult]
    fidelity: Fidelity | None = None
    reload: dict[str, Any] | None = None
    custom_layers: bool = False
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    channel_pruning: dict[str, Any] | None = None  # --prune-channels: widths, totals, recovery

    @property
    def ratio(self) -> float | None:
        if self.after is None or not self.before.file_bytes or self.after.file_bytes is None:
            return None
        return self.after.file_bytes / self.before.file_bytes

    def to_dict(self) -> dict[str, Any]:
        from kmemopt import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "kmemopt_version": __version__,
            "input": self.input,
            "output": self.output,
            "written": self.written,
            "dry_run": self.dry_run,
            "options": self.options.to_dict(),
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after else None,
            "file_ratio": self.ratio,
            "loads_with_plain_keras": not self.custom_layers,
            "needs_import_kmemopt": self.custom_layers,
            "layers": self.layers,
            "passes": [p.to_dict() for p in self.passes],
            "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None,
            "reload": self.reload,
            "elapsed_s": round(self.elapsed_s, 3),
            "warnings": list(self.warnings),
            "channel_pruning": self.channel_pruning,
        }


# --------------------------------------------------------------------------------------------
# options and paths


def make_options(
    *,
    quantize=None,
    allow_custom_layers=False,
    prune=None,
    prune_first_last=False,
    compress=False,
    mixed_precision=None,
    skip=None,
    keep_optimizer=False,
    prune_channels=None,
) -> ShrinkOptions:
    try:
        q = QuantizeMode(str(getattr(quantize, "value", quantize)).lower()) if quantize is not None else None
    except ValueError:
        raise UsageError(f"--quantize takes int8, int4, float16 or bfloat16. Received: {quantize!r}.") from None
    try:
        mp = (
            MixedPrecision(str(getattr(mixed_precision, "value", mixed_precision)).lower()) if mixed_precision else None
        )
    except ValueError:
        raise UsageError(f"--mixed-precision takes float16 or bfloat16. Received: {mixed_precision!r}.") from None
    if prune is not None:
        from kmemopt.units import parse_percent

        prune = parse_percent(prune) if isinstance(prune, str) else float(prune)
        if not 0 < prune < 1:
            raise UsageError(f"--prune takes a sparsity between 0 and 1 (or 0% and 100%). Received: {prune!r}.")
    if prune_channels is not None:
        from kmemopt.units import parse_percent

        prune_channels = parse_percent(prune_channels) if isinstance(prune_channels, str) else float(prune_channels)
        if not 0 <= prune_channels < 1:
            raise UsageError(
                f"--prune-channels takes a fraction of channels from 0 up to 1 (or 0% up to 100%). "
                f"Received: {prune_channels!r}."
            )
    if skip is not None:
        try:
            re.compile(skip)
        except re.error as exc:
            raise UsageError(f"--skip is not a valid regular expression ({exc}). Received: {skip!r}.") from None
    if allow_custom_layers and q not in (QuantizeMode.int8, QuantizeMode.int4):
        raise UsageError("--allow-custom-layers only applies with --quantize int8 or int4.")
    return ShrinkOptions(
        strip_optimizer=not keep_optimizer,
        quantize=q,
        allow_custom_layers=allow_custom_layers,
        prune=prune,
        prune_first_last=prune_first_last,
        compress=compress,
        mixed_precision=mp,
        skip=skip,
        prune_channels=prune_channels,
    )


@dataclass(frozen=True)
class ShrinkRequest:
    """Everything one shrink is asked to do, checked once (`make_request`, called by the CLI and by
    `kmemopt.shrink`) and passed unchanged to the pipeline. Defaults: strip the optimizer, nothing else.
    """

    passes: ShrinkOptions = ShrinkOptions()
    data: Path | None = None  # .npy/.npz inputs for the fidelity check; None: synthetic inputs
    samples: int | None = None  # at most this many samples (synthetic default: fidelity.DEFAULT_SYNTHETIC_SAMPLES)
    min_agreement: float | None = None  # gate: top-1 agreement at least this (a fraction)
    max_accuracy_drop: float | None = None  # gate: accuracy may drop at most this (a fraction; needs labels)
    explain: bool = False  # quantize (or prune) one layer at a time to find the layers that hurt most
    dry_run: bool = False
    force: bool = False  # overwrite an existing output (never the input)
    batch_size: int = 32  # for the peaks in the report
    optimizer: Any = None  # for the training peak (default: the file's, else adam)
    custom_objects: dict[str, Any] | str | os.PathLike | None = None
    seq_len: int | None = None
    input_shapes: Mapping[str, tuple[int, ...]] | None = None
    max_memory_bytes: int | None = None  # what running the model may take; None: `sandbox.default_max_memory()`
    timeout: float | None = None  # seconds the reload check's child may run; None: its default
    recover: str | None = None  # after --prune-channels: "distill" (inputs only) or "finetune" (labels) on `data`
    epochs: int = 5  # at most this many recovery epochs (early stop on a held-out split)
    learning_rate: float | None = None  # distillation's starting rate; None: the model's own, else 1e-3
    eval_data: Path | None = None  # the fidelity check's data when `data` trains the pruned model
    prune_target: Any = None  # channels.target.Target: prune the smallest amount reaching it (no prune_channels)
    # channel importance: magnitude, bn, activation, gradient; None: activation with data, else magnitude
    prune_criterion: str | None = None
    prune_scope: str = "uniform"  # uniform, global (one ranking, per-layer floor) or sensitivity


def _fraction(value: float | str | None) -> float | None:
    """A gate threshold: a fraction, or a percentage such as "99%"."""
    if value is None:
        return None
    from kmemopt.units import parse_percent

    return parse_percent(value) if isinstance(value, str) else float(value)


def make_request(
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
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
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
) -> ShrinkRequest:
    """A checked `ShrinkRequest` from the values `kmemopt shrink` takes (see `kmemopt.shrink`); a value
    out of range raises `UsageError` (exit 2) before anything is read."""
    from kmemopt import sandbox

    gates = _fraction(min_agreement), _fraction(max_accuracy_drop)
    passes = make_options(
        quantize=quantize,
        allow_custom_layers=allow_custom_layers,
        prune=prune,
        prune_first_last=prune_first_last,
        compress=compress,
        mixed_precision=mixed_precision,
        skip=skip,
        keep_optimizer=keep_optimizer,
        prune_channels=prune_channels,
    )
    prune_target, prune_criterion, prune_scope = _channel_choices(
        passes, data, target_params, target_memory, prune_criterion, prune_scope
    )
    if learning_rate is not None and not 0 < learning_rate < float("inf"):
        raise UsageError(f"--learning-rate must be a positive number. Received: {learning_rate!r}.")
    if recover is not None:
        recover = str(getattr(recover, "value", recover)).lower()
        if recover not in ("distill", "finetune"):
            raise UsageError(f"--recover takes distill or finetune. Received: {recover!r}.")
        if passes.prune_channels is None and prune_target is None:
            raise UsageError("--recover trains a channel-pruned model back; give --prune-channels too.")
        if data is None:
            raise UsageError(f"--recover {recover} trains on your data; give --data (a .npy or .npz file).")
    if learning_rate is not None and recover != "distill":
        raise UsageError(
            "--learning-rate sets --recover distill's rate (finetune uses the model's own); give --recover distill."
        )
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1. Received: {epochs}.")
    if batch_size < 1:
        raise UsageError(f"The batch size must be at least 1. Received: batch_size={batch_size}.")
    if samples is not None and samples < 1:
        raise UsageError(f"--samples must be at least 1. Received: {samples}.")
    max_memory_bytes = sandbox.resolve_max_memory(max_memory) if max_memory is not None else None
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds. Received: {timeout!r}.")
    return ShrinkRequest(
        passes=passes,
        data=Path(data) if data is not None else None,
        samples=samples,
        min_agreement=gates[0],
        max_accuracy_drop=gates[1],
        explain=explain,
        dry_run=dry_run,
        force=force,
        batch_size=batch_size,
        optimizer=optimizer,
        custom_objects=custom_objects,
        seq_len=seq_len,
        input_shapes=dict(input_shapes) if input_shapes else None,
        max_memory_bytes=max_memory_bytes,
        timeout=timeout,
        recover=recover,
        epochs=epochs,
        learning_rate=learning_rate,
        eval_data=Path(eval_data) if eval_data is not None else None,
        prune_target=prune_target,
        prune_criterion=prune_criterion,
        prune_scope=prune_scope,
    )


def _channel_choices(passes, data, target_params, target_memory, criterion, scope):
    """--target-params/--target-memory (one, instead of --prune-channels), --prune-criterion, --prune-scope."""
    from kmemopt.passes.channels.target import parse_target

    if target_params is not None and target_memory is not None:
        raise UsageError("Give one of --target-params and --target-memory, not both.")
    target = None
    if target_params is not None or target_memory is not None:
        if passes.prune_channels is not None:
            raise UsageError("--prune-channels sets the amount and a --target-* option searches for it; give one.")
        kind, value = ("params", target_params) if target_params is not None else ("memory", target_memory)
        target = parse_target(kind, value)
    pruning = passes.prune_channels is not None or target is not None
    if criterion is not None:
        criterion = str(getattr(criterion, "value", criterion)).lower()
        if criterion not in ("magnitude", "bn", "activation", "gradient"):
            raise UsageError(f"--prune-criterion takes magnitude, bn, activation or gradient. Received: {criterion!r}.")
        if not pruning:
            raise UsageError("--prune-criterion ranks channels to prune; give --prune-channels or a --target-* option.")
        if criterion in ("activation", "gradient") and data is None:
            raise UsageError(f"--prune-criterion {criterion} ranks channels on your data; give --data.")
    scope = "uniform" if scope is None else str(getattr(scope, "value", scope)).lower()
    if scope not in ("uniform", "global", "sensitivity"):
        raise UsageError(f"--prune-scope takes uniform, global or sensitivity. Received: {scope!r}.")
    if scope != "uniform" and not pruning:
        raise UsageError("--prune-scope sets how channels are pruned; give --prune-channels or a --target-* option.")
    return target, criterion, scope


# --------------------------------------------------------------------------------------------
# the pipeline


def _side(profile, file_bytes: int | None) -> Side:
    t = profile.totals
    return Side(
        file_bytes=file_bytes,
        params=t.params,
        param_bytes=t.param_bytes,
        inference_peak_bytes=t.inference_peak_bytes,
        training_peak_bytes=t.training_peak_bytes,
    )


def _layer_rows(before, after) -> list[dict[str, Any]]:
    after_rows = {row.path: row for row in after.layers} if after is not None else {}
    rows = []
    for row in before.layers:
        other = after_rows.get(row.path)
        rows.append(
            {
                "layer": row.path,
                "class_name": row.class_name,
                "class_name_after": other.class_name if other else None,
                "dtypes_before": list(row.param_dtypes),
                "dtypes_after": list(other.param_dtypes) if other else None,
                "param_bytes_before": row.param_bytes,
                "param_bytes_after": other.param_bytes if other else None,
            }
        )
    return rows


# Bytes shrink holds for every output element of every sample: the reference, shrunk and reloaded
# outputs (float32, 3 x 4) and, while `fidelity.compare_output` runs, float64 copies of two of them,
# their difference and its absolute value (4 x 8).
HELD_BYTES_PER_OUTPUT_ELEMENT = 3 * 4 + 4 * 8


def _data_shapes(path: Path, names: list[str]) -> list[tuple[int, ...]] | None:
    """The shapes of a --data file's arrays for the model's inputs (in `names` order), from their
    headers, reading no data; None when the file does not fit (reading it later says why, exit 2)."""
    try:
        if path.suffix == ".npy":
            shapes = [np.load(path, mmap_mode="r", allow_pickle=False).shape]
        elif path.suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
                keys = [n if n in members else "x" for n in names] if len(names) == 1 else list(names)
                shapes = []
                for key in keys:
                    with zf.open(members[key]) as fh:
                        version = np.lib.format.read_magic(fh)
                        read_header = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shapes.append(read_header(fh)[0])
        else:
            return None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not shapes or any(len(sh) < 1 for sh in shapes):
        return None
    return [tuple(int(d) for d in sh) for sh in shapes]


def _shapes_from_data(model, path: Path) -> dict[str, tuple[int, ...]] | None:
    """--input-shape values that fill the model's unknown dimensions with the --data arrays' sizes (the
    declared ones kept; reading the data later says if it does not fit); None when they cannot be read."""
    from keras import tree

    from kmemopt.keras_compat.layers import keras_history

    inputs = list(tree.flatten(model.inputs))
    names = [getattr(keras_history(x), "operation", x).name for x in inputs]
    found = _data_shapes(path, names)
    if found is None or len(found) != len(inputs):
        return None
    shapes = {}
    for x, name, shape in zip(inputs, names, found):
        declared = tuple(x.shape)[1:]
        if len(shape) - 1 != len(declared):
            return None
        shapes[name] = tuple(d if d is not None else int(given) for d, given in zip(declared, shape[1:]))
    return shapes


def _data_rows(path: Path, names: list[str]) -> tuple[int, int] | None:
    """(rows, elements per row over the model's inputs) from a --data file's array headers."""
    shapes = _data_shapes(path, names)
    if shapes is None:
        return None
    return min(sh[0] for sh in shapes), sum(int(np.prod(sh[1:], dtype=np.int64)) for sh in shapes)


def _per_sample_elements(graph, tensors) -> int:
    total = 0
    for t in tensors:
        info = graph.tensors[t]
        total += int(np.prod([int(d) for d in info.shape[1:]], dtype=np.int64))
    return total


def run_memory_estimate(profile, *, data=None, samples: int | None = None) -> tuple[int, int, int]:
    """(bytes, batch, samples): the static estimate of what shrink's fidelity run and reload check hold.

    The model runs at the batch size the fidelity check uses (`fidelity.predict_batch_size`, from the
    inputs' sizes); on top of its static inference peak at that batch, the inputs of every sample
    (float32) and HELD_BYTES_PER_OUTPUT_ELEMENT for each element of every sample's outputs.
    """
    from kmemopt.passes import fidelity as fid
    from kmemopt.profiling.static import peaks_at

    graph = profile._graph
    in_elements = _per_sample_elements(graph, graph.inputs)
    n = samples or fid.DEFAULT_SYNTHETIC_SAMPLES
    if data is not None:
        rows = _data_rows(Path(data), [i.name for i in profile.inputs])
        if rows is not None:
            n = min(rows[0], samples) if samples else rows[0]
            in_elements = rows[1]
    # The same function the run uses, on zero-sample arrays of the per-sample size (no memory).
    probe = fid.Inputs((np.empty((0, max(in_elements, 1)), dtype=np.uint8),), ("probe",), None, "synthetic")
    batch = min(fid.predict_batch_size(probe), max(n, 1))
    out_elements = _per_sample_elements(graph, graph.outputs)
    held = n * (4 * in_elements + HELD_BYTES_PER_OUTPUT_ELEMENT * out_elements)
    return peaks_at(profile, batch)[0] + held, batch, n


def check_run_memory(profile, *, data=None, samples: int | None = None, max_memory_bytes: int) -> None:
    """Refuse (exit 3, RUN-MEMORY) before anything runs when the fidelity run would pass the limit."""
    from kmemopt import sandbox

    estimate, batch, n = run_memory_estimate(profile, data=data, samples=samples)
    sandbox.refuse_over_limit(
        estimate,
        max_memory_bytes,
        f"fidelity check on {n:,} samples at batch {batch}",
        "Give --max-memory to raise the limit, or fewer --samples.",
    )


def _has_unknown_dims(model) -> bool:
    return any(d is None for t in model.inputs for d in tuple(t.shape)[1:])


def _output_names(model):
    """The outputs as fidelity names them (dict keys for keras-hub backbones), with their kind."""
    from kmemopt.passes import fidelity as fid

    return fid.output_specs(model)


def _run_passes(
    model,
    options: ShrinkOptions,
    keras,
    file_info: dict,
    *,
    rebuild: bool = True,
    release_source: bool = False,
    weights_source: Any = None,
):
    """Plan every enabled pass and (with `rebuild`) build the rewritten model.

    With `release_source` the original model's weights are freed as they are copied (all of them first
    when `weights_source`, the open file, can read them back one layer at a time): only for a model
    shrink loaded itself and needs no more (the caller's own model is never touched).
    """
    from kmemopt.passes.rewrite import RewriteContext

    passes = enabled_passes(options)
    ctx = RewriteContext.from_model(model, options, keras)
    ctx.file_info = file_info
    ctx.release_source = release_source
    ctx.weights_source = weights_source
    if release_source:
        model.predict_function = None  # its traced graph holds the variables' arrays ...
        gc.collect()  # ... and is only freed by a collection (reference cycles)
    ctx.will_rewrite = any(p.rewrites_weights(options) for p in passes)
    results = [PassResult(p.name) for p in passes]
    for p, r in zip(passes, results, strict=True):
        p.prepare(ctx, r)
    if rebuild:
        ctx.rebuild()
        for p, r in zip(passes, results, strict=True):
            p.finish(ctx, r)
    return ctx, results


def _explain(
    model, options: ShrinkOptions, keras, results: list[PassResult], inputs, ref, names
) -> tuple[LayerHarm, ...]:
    """Quantize (or prune) one layer at a time and measure what each does to the outputs alone."""
    from kmemopt.passes import fidelity as fid

    paths: list[str] = []
    for r in results:
        if r.name in ("quantize", "prune"):
            paths.extend(a.layer for a in r.applied if a.layer not in paths)
    rows: list[LayerHarm] = []
    for path in paths:
        ctx, _ = _run_passes(model, replace(options, only=frozenset({path}), mixed_precision=None), keras, {})
        out = fid.predict(ctx.new_model, inputs)
        f = fid.compare(names, ref, out, inputs)
        first = f.outputs[0]
        rows.append(
            fid.LayerHarm(
                layer=path,
                top1_agreement=f.top1_agreement,
                relative_l2_error=first.relative_l2_error,
                max_abs_error=first.max_abs_error,
                accuracy_after=f.accuracy_after,
            )
        )
        del ctx
    rows.sort(key=lambda r: -(r.relative_l2_error or 0.0))
    return tuple(rows)


def shrink(
    path_or_model: Any,
    out: str | os.PathLike | None = None,
    request: ShrinkRequest = ShrinkRequest(),
    *,
    progress: Callable[[str], None] | None = None,
) -> ShrinkResult:
    """Write a slimmer copy of a model and report what changed and how faithful it stays.

    `request.max_memory_bytes` (default: half the physical memory, see `kmemopt.sandbox`) caps what
    running the model may take: the fidelity run is refused before it starts when the static estimate
    is over it (exit 3, RUN-MEMORY), and the reload check's child runs under it; `request.timeout`
    (seconds, default 900) bounds that child. `progress` is told what runs now, one line at a time.
    """
    from kmemopt import sandbox
    from kmemopt._keras import import_keras
    from kmemopt.api import open_model, profile
    from kmemopt.passes import fidelity as fid
    from kmemopt.profiling.static import _optimizer_identifier, profile_model
    from kmemopt.write.fileio import atomic_path

    started = time.perf_counter()
    say = progress or (lambda message: None)
    options = request.passes
    seq_len = request.seq_len  # both filled below when the model's inputs leave a dimension unknown
    input_shapes = dict(request.input_shapes) if request.input_shapes else None
    limit = sandbox.resolve_max_memory(request.max_memory_bytes)
    src: Path | None = None
    target: Path | None
    if isinstance(path_or_model, (str, os.PathLike)):
        # Keras is imported after the file's own checks (open_checked): a file refused by its bytes
        # or its config never costs a framework import.
        src = Path(path_or_model)
        target = Path(out) if out is not None else save.default_output(src)
    elif isinstance(path_or_model, import_keras().Model):
        if out is None and not request.dry_run:
            raise UsageError("shrink() of an in-memory model needs an output path: shrink(model, 'out.keras').")
        target = Path(out) if out is not None else None
    else:
        raise UsageError(f"shrink() takes a path or a keras.Model. Received: {type(path_or_model).__name__}.")
    if target is not None and not request.dry_run:
        save.check_output(src, target, request.force)

    stored = None  # the open input file while the original may still be read back from it
    try:
        warnings: list[str] = []
        say("Profiling the model (after the safety checks) ...")
        if src is not None:
            from kmemopt.api import open_checked

            # The architecture, built without its weights: the static profile, and the memory check
            # below, come before anything is allocated or run.
            model_file, static_model, _ = open_checked(src, request.custom_objects)
            if not request.dry_run:
                from kmemopt.load.trust import check_loadable

                # Weights the file does not store are refused as such before the run's memory is weighed.
                check_loadable(model_file, static_model)
            compiled = bool(model_file.compile_config)
            file_info = {
                "compiled": compiled,
                "optimizer_variables": len(model_file.optimizer_weights),
                "optimizer_bytes": model_file.composition.optimizer_bytes,
            }
            opt_ident = (
                request.optimizer if request.optimizer is not None else _optimizer_identifier(model_file, None)[0]
            )
            before_bytes = model_file.file_bytes
        else:
            static_model, model_file = path_or_model, None
            file_info = {
                "compiled": getattr(static_model, "optimizer", None) is not None and static_model.optimizer.built,
                "optimizer_variables": 0,
                "optimizer_bytes": 0,
            }
            opt_ident = request.optimizer if request.optimizer is not None else "adam"
            before_bytes = None
        keras = import_keras()  # imported already by the build (open_checked) or the caller's model
        if request.data is not None and seq_len is None and not input_shapes and _has_unknown_dims(static_model):
            # The fidelity run feeds the user's arrays: size the peaks (and the RUN-MEMORY check) by them.
            input_shapes = _shapes_from_data(static_model, Path(request.data)) or input_shapes
        if seq_len is None and not input_shapes and _has_unknown_dims(static_model):
            # Peaks need every dimension; shrink's job is the file, so pick one and say so.
            seq_len = fid.DEFAULT_SEQ_LEN
            warnings.append(
                f"The model has inputs of unknown length; peaks and synthetic inputs use length {seq_len} "
                "(set --seq-len or --input-shape)."
            )
        before_profile = profile_model(
            static_model,
            model_file=model_file,
            batch_size=request.batch_size,
            optimizer=opt_ident,
            seq_len=seq_len,
            input_shapes=input_shapes,
        )
        del static_model
        if not request.dry_run:
            check_run_memory(before_profile, data=request.data, samples=request.samples, max_memory_bytes=limit)
        say("Loading the model ...")
        if src is not None:
            model, stored = open_model(
                src, custom_objects=request.custom_objects, compile=(not options.strip_optimizer) and compiled
            )
        else:
            model = path_or_model
        opt_name = (
            opt_ident
            if isinstance(opt_ident, str)
            else str(opt_ident.get("class_name", "optimizer"))
            if isinstance(opt_ident, dict)
            else type(opt_ident).__name__
        )
        before = _side(before_profile, before_bytes)

        pruned = None  # --prune-channels runs first: the other passes work on the smaller model
        if options.prune_channels is not None or request.prune_target is not None:
            from kmemopt.passes.channels.step import prune_step

            pruned = prune_step(
                model,
                request,
                compile_config=model_file.compile_config if model_file is not None else None,
                seq_len=seq_len,
                train=not request.dry_run,
                progress=say,
                optimizer=opt_ident,
            )
            if request.recover is not None and request.eval_data is None:
                warnings.append(
                    "Fidelity is measured on --data, which the pruned model was trained on; give --eval-data "
                    "for held-out figures."
                )

        say("Planning the passes ...")

        def result(**fields) -> ShrinkResult:
            common = dict(
                input=str(src) if src else None,
                output=None,
                written=False,
                dry_run=False,
                options=options,
                batch_size=request.batch_size,
                optimizer=opt_name,
                before=before,
                after=None,
                elapsed_s=time.perf_counter() - started,
                warnings=warnings,
                channel_pruning=pruned.info if pruned is not None else None,
            )
            return ShrinkResult(**{**common, **fields})

        if request.dry_run:
            ctx, results = _run_passes(pruned.model if pruned else model, options, keras, file_info, rebuild=False)
            return result(
                output=str(target) if target else None,
                dry_run=True,
                layers=_layer_rows(before_profile, None),
                passes=([pruned.result] if pruned else []) + results,
                custom_layers=any(p.int8_class is not None for p in ctx.plan.values()),
            )

        eval_data = request.eval_data if request.eval_data is not None else request.data
        inputs = fid.load_inputs(model, eval_data, samples=request.samples, seq_len=seq_len)
        names = _output_names(model)
        say(f"Running the original model on {inputs.samples} {inputs.source} inputs ...")
        ref = fid.predict(model, inputs)
        if pruned is not None:  # the reference is the original's; from here on, the pruned model
            model = pruned.model

        say("Applying the passes ...")
        ctx, results = _run_passes(
            model,
            options,
            keras,
            file_info,
            # A pruned model is kmemopt's own, not the file's: its weights are not read back from the file.
            release_source=src is not None and not request.explain and pruned is None,
            weights_source=stored if pruned is None else None,
        )
        if pruned is not None:
            results.insert(0, pruned.result)
        if stored is not None:
            stored.close()  # only the rebuild reads the file again
        new_model = ctx.new_model
        custom = any(p.int8_class is not None for p in ctx.plan.values())

        if new_model is not model and not request.explain:
            # The original's weights are no longer needed: free them before running the new one (its
            # slots hold its layers, and so its variables, too).
            ctx.model, ctx.slots = None, []
            del model
            release_memory()

        say("Measuring fidelity ...")
        new_out = fid.predict(new_model, inputs)
        fidelity = fid.compare(names, ref, new_out, inputs)
        fidelity = fid.apply_gates(
            fidelity, min_agreement=request.min_agreement, max_accuracy_drop=request.max_accuracy_drop
        )
        if request.explain:
            say("Explaining: one layer at a time ...")
            fidelity = replace(fidelity, explain=_explain(model, options, keras, results, inputs, ref, names))

        def partial(after=None, output=None, written=False, reload=None) -> ShrinkResult:
            return result(
                output=output,
                written=written,
                after=after,
                layers=_layer_rows(before_profile, after_profile),
                passes=results,
                fidelity=fidelity,
                reload=reload,
                custom_layers=custom,
            )

        after_profile = None
        if not fidelity.passed:
            exc = fid.gate_failure(fidelity)
            exc.result = partial()
            raise exc
        ctx.model, ctx.slots = None, []
        model = None  # noqa: F841  (free the original, if --explain still held it, before writing)
        release_memory()

        assert target is not None  # only a dry run has no output path, and it returned above
        say(f"Writing {target} ...")
        # The reload check's child loads custom layers from their file (a dict cannot cross to it).
        custom_file = request.custom_objects if isinstance(request.custom_objects, (str, os.PathLike)) else None
        with atomic_path(target, replace=request.force) as tmp:
            save.save_container(new_model, tmp, compress=ctx.compress)
            say("Reloading the written file in a fresh process with plain Keras ...")
            reloaded, reload_info = save.verify_reload(
                tmp,
                inputs,
                new_out,
                custom_layers=custom,
                custom_objects=custom_file,
                max_memory_bytes=limit,
                timeout_s=request.timeout,
            )
            # The report's errors are the reloaded file's; the gates and --explain were decided above.
            fidelity = replace(
                fid.compare(names, ref, reloaded, inputs), gates=fidelity.gates, explain=fidelity.explain
            )
            say("Profiling the result ...")
            after_profile = profile(
                tmp,
                batch_size=request.batch_size,
                optimizer=opt_ident,
                custom_objects=request.custom_objects,
                seq_len=seq_len,
                input_shapes=input_shapes,
            )
            after = _side(after_profile, tmp.stat().st_size)
        return partial(after=after, output=str(target), written=True, reload=reload_info)
    finally:
        if stored is not None:
            stored.close()
