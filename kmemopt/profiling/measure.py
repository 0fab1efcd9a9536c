"""Real peak memory, measured in a child process and set beside the static estimate.

The parent (this module) never imports the framework: it hands a JSON spec to
`kmemopt.profiling._child.measure_in_child` through `kmemopt.sandbox` (a child with a scratch folder and
its own KERAS_HOME, a memory limit, a timeout, killed with its parent) and gets one JSON result back.
Before any child starts, the static training peak at each batch size is compared with the memory
limit (over it: exit 3, RUN-MEMORY). A child that still passes `--max-memory` or `--timeout` is
stopped and reported as exceeding, not as a crash; its other failures come back by type.

Every `*_peak_bytes` counts the model's memory above the framework baseline (the child's resident
memory after the framework has started and warmed up on a tiny model): the same quantity the static
`totals` estimate. See docs/measure.md for what is and is not counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmemopt.errors import UsageError

if TYPE_CHECKING:
    from kmemopt.profiling.line import Line
    from kmemopt.profiling.static import ProfileResult

DEFAULT_TIMEOUT_S = 900  # kmemopt.sandbox.DEFAULT_TIMEOUT_S
GPU_MISSING = "no NVIDIA GPU is visible"


class Device(str, Enum):
    cpu = "cpu"
    gpu = "gpu"
    auto = "auto"


class Status(str, Enum):
    ok = "ok"
    exceeded_memory = "exceeded_memory"
    timeout = "timeout"
    failed = "failed"


@dataclass(frozen=True)
class Run:
    """One batch size, measured in its own child process."""

    batch_size: int
    inference_peak_bytes: int | None
    training_peak_bytes: int | None
    baseline_bytes: int | None = None
    load_bytes: int | None = None
    status: Status = Status.ok
    message: str = ""
    seconds: float = 0.0
    gpu: dict[str, Any] | None = None
    loss: str | None = None
    losses: tuple[str, ...] = ()  # one a flattened output, as trained

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch_size": self.batch_size,
            "status": self.status.value,
            "baseline_bytes": self.baseline_bytes,
            "load_bytes": self.load_bytes,
            "inference_peak_bytes": self.inference_peak_bytes,
            "training_peak_bytes": self.training_peak_bytes,
            "loss": self.loss,
            "losses": list(self.losses),
            "seconds": round(self.seconds, 2),
        }
        if self.message:
            out["message"] = self.message
        if self.gpu:
            out["gpu"] = self.gpu
        return out


@dataclass(frozen=True)
class Fit:
    """Least-squares line through the measured peaks: bytes = fixed + per_sample * B."""

    fixed_bytes: int
    per_sample_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"fixed_bytes": self.fixed_bytes, "per_sample_bytes": self.per_sample_bytes}


@dataclass(frozen=True)
class Measurement:
    device: str
    method: str  # "vmhwm" (kernel high-water mark) or "sampling"
    batch_size: int
    runs: tuple[Run, ...]
    layers: dict[str, int] = field(default_factory=dict)
    layers_batch_size: int | None = None
    allocator_peak_bytes: int | None = None
    nvml_used_bytes: int | None = None
    nvml_process_bytes: int | None = None
    fit: dict[str, Fit] | None = None
    backend: str = "tensorflow"  # the Keras backend the children ran on

    def run_at(self, batch_size: int) -> Run | None:
        return next((r for r in self.runs if r.batch_size == batch_size), None)

    @property
    def main(self) -> Run:
        return self.run_at(self.batch_size) or self.runs[-1]

    @property
    def status(self) -> Status:
        bad = [r.status for r in self.runs if r.status is not Status.ok]
        return bad[0] if bad else Status.ok

    def to_dict(self) -> dict[str, Any]:
        main = self.main
        out: dict[str, Any] = {
            "device": self.device,
            "backend": self.backend,
            "method": self.method,
            "status": self.status.value,
            "batch_size": main.batch_size,
            "baseline_bytes": main.baseline_bytes,
            "load_bytes": main.load_bytes,
            "inference_peak_bytes": main.inference_peak_bytes,
            "training_peak_bytes": main.training_peak_bytes,
            "layers": dict(self.layers),
            "layers_batch_size": self.layers_batch_size,
            "runs": [r.to_dict() for r in self.runs],
            "fit": {k: v.to_dict() for k, v in self.fit.items()} if self.fit else None,
        }
        if self.device == "gpu":
            out["allocator_peak_bytes"] = self.allocator_peak_bytes
            out["nvml_used_bytes"] = self.nvml_used_bytes
            out["nvml_process_bytes"] = self.nvml_process_bytes
        return out


@dataclass(frozen=True)
class MeasuredProfile:
    """A `Measurement` set beside the static profile's estimate: what `measure_profile` returns.

    `to_dict()` is the `measured` object of `kmemopt profile --measure -f json`: the measurement's own
    JSON plus, at each measured batch size, the estimate (read off the static lines) and its error.
    """

    measurement: Measurement
    inference_line: Line  # the static profile's lines (ProfileResult.inference / .training)
    training_line: Line

    @property
    def status(self) -> Status:
        return self.measurement.status

    def to_dict(self) -> dict[str, Any]:
        out = self.measurement.to_dict()
        inference, training = self.inference_line, self.training_line
        for run in out["runs"]:
            b = run["batch_size"]
            run["estimated_inference_bytes"] = inference.at(b)
            run["estimated_training_bytes"] = training.at(b)
            run["inference_error_pct"] = compare(inference.at(b), run["inference_peak_bytes"])
            run["training_error_pct"] = compare(training.at(b), run["training_peak_bytes"])
        b = out["batch_size"]
        out["estimated"] = {"inference_peak_bytes": inference.at(b), "training_peak_bytes": training.at(b)}
        out["error_pct"] = {
            "inference": compare(inference.at(b), out["inference_peak_bytes"]),
            "training": compare(training.at(b), out["training_peak_bytes"]),
        }
        if out.get("fit"):
            out["static_line"] = {"inference": inference.to_dict(), "training": training.to_dict()}
        return out


@dataclass(frozen=True)
class ChildMeasurement:
    """What one measuring child sends back (one batch size), read from its JSON."""

    method: str  # "vmhwm" or "sampling"
    baseline_bytes: int | None
    load_bytes: int | None
    inference_peak_bytes: int | None
    training_peak_bytes: int | None
    loss: str | None
    losses: tuple[str, ...]
    gpu: dict[str, Any] | None
    layers: dict[str, int]
    layers_batch_size: int | None
    peak_rss_bytes: int  # the child's whole resident peak, seen by the sandbox
    backend: str = "tensorflow"

    @classmethod
    def from_child(cls, value: dict[str, Any], peak_rss_bytes: int) -> ChildMeasurement:
        row = (value.get("runs") or [{}])[0]
        return cls(
            method=value.get("method", "vmhwm"),
            baseline_bytes=value.get("baseline_bytes"),
            load_bytes=value.get("load_bytes"),
            inference_peak_bytes=row.get("inference_peak_bytes"),
            training_peak_bytes=row.get("training_peak_bytes"),
            loss=row.get("loss"),
            losses=tuple(row.get("losses") or ()),
            gpu=value.get("gpu"),
            layers=dict(value.get("layers") or {}),
            layers_batch_size=value.get("layers_batch_size"),
            peak_rss_bytes=peak_rss_bytes,
            backend=value.get("backend", "tensorflow"),
        )


# --------------------------------------------------------------------------------------------- device


def visible_gpus() -> int:
    """How many GPUs NVML sees (0 when NVML or its driver library is missing)."""
    try:
        import pynvml
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def resolve_device(device: Device | str, gpu_index: int = 0) -> str:
    """'cpu' or 'gpu'; asking for a GPU that is not there is a usage error (exit 2)."""
    device = Device(device)
    if device is Device.cpu:
        return "cpu"
    count = visible_gpus()
    if device is Device.auto:
        return "gpu" if count > gpu_index else "cpu"
    if count == 0:
        raise UsageError(f"--device gpu was asked but {GPU_MISSING} (NVML finds none); use --device cpu.")
    if gpu_index >= count:
        raise UsageError(f"--gpu-index {gpu_index} is out of range: NVML sees {count} GPU(s).")
    return "gpu"


def default_max_memory() -> int:
    """The shared default limit (half of physical memory; see kmemopt.sandbox)."""
    from kmemopt.sandbox import default_max_memory as default

    return default()


# --------------------------------------------------------------------------------------------- fitting


def fit_line(points: Sequence[tuple[int, int | None]]) -> Fit | None:
    """Least squares bytes = fixed + per_sample * B over (B, bytes); None with fewer than two batch sizes.

    A point whose bytes are None (that batch size was not measured) is left out.
    """
    pts = [(b, y) for b, y in points if y is not None]
    if len({b for b, _ in pts}) < 2:
        return None
    n = len(pts)
    mean_b = sum(b for b, _ in pts) / n
    mean_y = sum(y for _, y in pts) / n
    sxx = sum((b - mean_b) ** 2 for b, _ in pts)
    sxy = sum((b - mean_b) * (y - mean_y) for b, y in pts)
    slope = sxy / sxx
    return Fit(int(round(mean_y - slope * mean_b)), int(round(slope)))


# --------------------------------------------------------------------------------------------- child


def run_child(
    spec: dict[str, Any],
    *,
    timeout_s: float,
    max_memory_bytes: int,
    on_phase: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
) -> ChildMeasurement:
    """Run one measuring child and return what it measured. Past a limit, `sandbox.RunLimitExceeded`
    (rule RUN-MEMORY or RUN-TIME); any other failure is raised by type (a kmemopt error keeps its
    exit code)."""
    from kmemopt import sandbox

    child_env = dict(env or {})
    if spec.get("device") == "cpu":
        child_env["CUDA_VISIBLE_DEVICES"] = ""
    elif spec.get("device") == "gpu":
        # The framework then sees the chosen card as GPU:0; NVML ignores this variable and keeps
        # the machine's numbering, so the child's NVML queries use gpu_index unchanged.
        child_env["CUDA_VISIBLE_DEVICES"] = str(spec.get("gpu_index", 0))
    done = sandbox.run_child(
        "kmemopt.profiling._child:measure_in_child",
        spec,
        max_memory_bytes=max_memory_bytes,
        timeout_s=timeout_s,
        what="the measuring child",
        env=child_env,
        on_phase=on_phase,
        data_limit=spec.get("device") != "gpu",
        private_keras_home=True,
    )
    return ChildMeasurement.from_child(done.value, done.peak_rss_bytes)


def measure(
    path: str | os.PathLike,
    *,
    inputs: Sequence[dict[str, Any]],
    batch_size: int = 32,
    batch_sizes: Sequence[int] | None = None,
    optimizer: Any = "adam",
    custom_objects: str | os.PathLike | None = None,
    loss: Any = None,
    data: str | os.PathLike | None = None,
    device: Device | str = Device.cpu,
    gpu_index: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_memory_bytes: int | None = None,
    layers: bool = True,
    on_phase: Callable[[str], None] | None = None,
) -> Measurement:
    """Measure a saved model's real peaks, one child process per batch size.

    `inputs`: [{"name", "shape" (batch first, None), "dtype"}] as the static profile resolved them;
    `loss`: the file's compiled loss (a name or serialized config), else a default from the output layer.
    Example: measure("m.keras", inputs=[{"name": "x", "shape": [None, 16], "dtype": "float32"}], batch_size=8)
    """
    resolved = resolve_device(device, gpu_index)
    if data is not None and not Path(data).is_file():
        raise UsageError(f"--data {data} is not a readable file (.npy, or .npz keyed by input name or 'x').")
    if data is not None and Path(data).suffix not in (".npy", ".npz"):
        raise UsageError(f"--data takes a .npy or .npz file. Received: {data}.")
    sizes = list(dict.fromkeys(batch_sizes or [batch_size]))
    if any(b < 1 for b in sizes):
        raise UsageError(f"Batch sizes must be at least 1. Received: {sizes}.")
    max_memory = int(max_memory_bytes) if max_memory_bytes else default_max_memory()
    if isinstance(optimizer, str) or optimizer is None or isinstance(optimizer, dict):
        opt_spec = optimizer or "adam"
    else:  # an Optimizer instance: its serialized config travels to the child
        from keras import saving

        opt_spec = saving.serialize_keras_object(optimizer)
    runs: list[Run] = []
    layer_bytes: dict[str, int] = {}
    layers_batch = None
    method = "vmhwm"
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")  # the children's (kmemopt.sandbox passes it on)
    gpu_main: dict[str, Any] = {}
    for b in sizes:
        spec = {
            "path": str(Path(path).resolve()),
            "custom_objects": str(Path(custom_objects).resolve()) if custom_objects else None,
            "loss": loss,
            "optimizer": opt_spec,
            "inputs": [dict(x) for x in inputs],
            "batch_sizes": [b],
            "data": str(Path(data).resolve()) if data else None,
            "device": resolved,
            "gpu_index": gpu_index,
            "layers": layers and b == (batch_size if batch_size in sizes else sizes[-1]),
        }

        from kmemopt.sandbox import RULE_TIME, RunLimitExceeded

        started = time.monotonic()
        try:
            child = run_child(spec, timeout_s=timeout_s, max_memory_bytes=max_memory, on_phase=on_phase)
        except RunLimitExceeded as exc:  # reported as that batch size's status, not raised
            status = Status.timeout if exc.rule == RULE_TIME else Status.exceeded_memory
            seconds = time.monotonic() - started
            runs.append(Run(b, None, None, status=status, message=exc.message, seconds=seconds))
            continue
        seconds = time.monotonic() - started
        method = child.method
        backend = child.backend
        runs.append(
            Run(
                batch_size=b,
                inference_peak_bytes=child.inference_peak_bytes,
                training_peak_bytes=child.training_peak_bytes,
                baseline_bytes=child.baseline_bytes,
                load_bytes=child.load_bytes,
                seconds=seconds,
                gpu=child.gpu,
                loss=child.loss,
                losses=child.losses,
            )
        )
        if child.layers:
            layer_bytes = child.layers
            layers_batch = child.layers_batch_size
        if child.gpu and b == batch_size:
            gpu_main = child.gpu
    fit = None
    if len(sizes) > 1:
        fits = {
            "inference": fit_line([(r.batch_size, r.inference_peak_bytes) for r in runs]),
            "training": fit_line([(r.batch_size, r.training_peak_bytes) for r in runs]),
        }
        fit = {k: v for k, v in fits.items() if v is not None} or None
    allocator = nvml_used = nvml_proc = None
    if resolved == "gpu" and gpu_main:
        phases = [v for k, v in gpu_main.items() if k != "load"]
        if phases:
            allocator = max(p["allocator_peak_bytes"] for p in phases)
            nvml_used = max(p["nvml_used_bytes"] for p in phases)
            nvml_proc = max(p["nvml_process_bytes"] for p in phases)
    return Measurement(
        device=resolved,
        method=method,
        batch_size=batch_size if batch_size in sizes else sizes[-1],
        runs=tuple(runs),
        layers=layer_bytes,
        layers_batch_size=layers_batch,
        allocator_peak_bytes=allocator,
        nvml_used_bytes=nvml_used,
        nvml_process_bytes=nvml_proc,
        fit=fit,
        backend=backend,
    )


def compare(estimated: int | None, measured: int | None) -> float | None:
    """Error of an estimate in percent of the measurement: +10.0 means 10 % too high."""
    if not estimated or not measured or measured <= 0:
        return None
    return round(100.0 * (estimated - measured) / measured, 1)


def measure_profile(
    result: ProfileResult,
    path: str | os.PathLike,
    *,
    batch_sizes: Sequence[int] | None = None,
    optimizer: Any = None,
    custom_objects=None,
    data=None,
    device: Device | str = Device.cpu,
    gpu_index: int = 0,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_memory_bytes: int | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> ProfileResult:
    """Measure the model a static `ProfileResult` describes; return the result with `measured` filled.

    `measured` is a `MeasuredProfile`; its `to_dict()` (the JSON's `measured` object) is the
    measurement with `estimated` and `error_pct` (per phase, at the measured batch size) and, for each
    run, the static estimate at that batch size, so each figure sits beside its estimate.
    """
    import dataclasses

    ident = optimizer
    if ident is None:
        ident = result.optimizer.get("name") or "adam"
        if result.optimizer.get("source") == "file":
            ident = {
                "class_name": result.optimizer["name"],
                "config": result.optimizer.get("config", {}),
                "module": "keras.optimizers",
            }
    loss = None
    if Path(path).exists():
        # Weights the file does not store are refused for what they are (HDF5-SHAPE-BOMB, HDF5-RATIO)
        # before the memory they would take is weighed against the limit. One read (a child process).
        from kmemopt.load.archive import read_model_file
        from kmemopt.load.trust import check_stored

        model_file = read_model_file(path)
        check_stored(model_file, result.totals.param_bytes)
        loss = (model_file.compile_config or {}).get("loss")
    check_run_memory(result, batch_sizes or [result.batch_size], max_memory_bytes)
    m = measure(
        path,
        inputs=[i.to_dict() for i in result.inputs],
        batch_size=result.batch_size,
        batch_sizes=batch_sizes,
        optimizer=ident,
        custom_objects=custom_objects,
        loss=loss,
        data=data,
        device=device,
        gpu_index=gpu_index,
        timeout_s=timeout_s,
        max_memory_bytes=max_memory_bytes,
        on_phase=on_phase,
    )
    measured = MeasuredProfile(m, inference_line=result.inference, training_line=result.training)
    return dataclasses.replace(result, measured=measured)


def check_run_memory(result, batch_sizes: Sequence[int], max_memory_bytes: int | None) -> None:
    """Refuse (exit 3, RUN-MEMORY) before any child starts when a measured step would pass the limit.

    Each child runs an inference and a training step at its batch size: the static training peak (the
    larger) at each batch size is compared with the limit the child will run under.
    """
    from kmemopt.profiling.static import peaks_at
    from kmemopt.sandbox import refuse_over_limit, resolve_max_memory

    limit = resolve_max_memory(max_memory_bytes)
    for b in sorted(set(batch_sizes)):
        refuse_over_limit(
            max(peaks_at(result, b)),
            limit,
            f"a measured training step at batch {b}",
            "Give --max-memory to raise the limit, or a smaller --batch-size / --batch-sizes.",
        )


def parse_batch_sizes(text: str | None) -> list[int] | None:
    """'1,8,32' -> [1, 8, 32]."""
    if text is None:
        return None
    try:
        sizes = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(
            f"--batch-sizes takes integers separated by commas, e.g. 1,8,32. Received: {text!r}."
        ) from None
    if not sizes or any(b < 1 for b in sizes):
        raise UsageError(f"--batch-sizes must list batch sizes of at least 1. Received: {text!r}.")
    return sizes
