"""How faithful a shrunk model stays: its outputs against the original's, on real or synthetic inputs.

Real data (`--data FILE`: .npy, or .npz keyed by input name or `x`, labels under `y`) is better than
synthetic inputs (random values of the right shape and dtype), and the report says which was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmemopt.errors import GateFailed, UsageError

DEFAULT_SYNTHETIC_SAMPLES = 64
DEFAULT_SEQ_LEN = 16
PREDICT_BATCH = 32
# Inputs per predict batch are capped at this many elements: a large image model then runs one sample
# at a time, which keeps its activations (and shrink's peak memory) small; small models still batch.
PREDICT_BATCH_ELEMENTS = 2**18


@dataclass(frozen=True)
class Inputs:
    """Model inputs (one array per model input, in order), optional labels, and where they came from."""

    arrays: tuple[np.ndarray, ...]
    names: tuple[str, ...]
    labels: np.ndarray | None
    source: str  # "data" or "synthetic"
    path: str | None = None

    @property
    def samples(self) -> int:
        return int(self.arrays[0].shape[0]) if self.arrays else 0

    def feed(self):
        return self.arrays[0] if len(self.arrays) == 1 else list(self.arrays)


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    max_abs_error: float
    relative_l2_error: float
    cosine_similarity: float
    top1_agreement: float | None  # classifier-like outputs only (rank 2, several classes)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Fidelity:
    source: str
    samples: int
    outputs: list[OutputFidelity]
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)
    explain: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    @property
    def top1_agreement(self) -> float | None:
        for out in self.outputs:
            if out.top1_agreement is not None:
                return out.top1_agreement
        return None

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return self.accuracy_before - self.accuracy_after

    @property
    def passed(self) -> bool:
        return all(g["passed"] for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.samples,
            "note": self.note,
            "outputs": [o.to_dict() for o in self.outputs],
            "top1_agreement": self.top1_agreement,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "accuracy_drop": self.accuracy_drop,
            "gates": list(self.gates),
            "passed": self.passed,
            "explain": list(self.explain),
        }


# --------------------------------------------------------------------------------------------
# inputs


def _model_inputs(model) -> list[tuple[str, tuple, str]]:
    specs = []
    for i, t in enumerate(model.inputs):
        name = getattr(t, "name", None) or f"input_{i}"
        specs.append((name, tuple(t.shape), str(t.dtype)))
    return specs


def _vocab_size(model) -> int:
    sizes = [int(layer.input_dim) for layer in model._flatten_layers() if hasattr(layer, "input_dim")]
    return max(2, min(sizes)) if sizes else 2


def load_inputs(
    model, data: str | Path | None, *, samples: int | None = None, seed: int = 0, seq_len: int | None = None
) -> Inputs:
    """Read `data` for the model's inputs, or make synthetic ones of the right shape and dtype."""
    specs = _model_inputs(model)
    names = tuple(s[0] for s in specs)
    if data is not None:
        return _read_data(Path(data), specs, samples)
    n = samples or DEFAULT_SYNTHETIC_SAMPLES
    rng = np.random.default_rng(seed)
    arrays = []
    for _name, shape, dtype in specs:
        dims = tuple((seq_len or DEFAULT_SEQ_LEN) if d is None else int(d) for d in shape[1:])
        if "int" in dtype:
            arrays.append(rng.integers(0, _vocab_size(model), size=(n, *dims)).astype(dtype))
        elif "bool" in dtype:
            arrays.append(rng.integers(0, 2, size=(n, *dims)).astype(bool))
        else:
            arrays.append(rng.standard_normal((n, *dims)).astype("float32"))
    return Inputs(tuple(arrays), names, None, "synthetic")


def _read_data(path: Path, specs, samples: int | None) -> Inputs:
    if not path.is_file():
        raise UsageError(f"The data file {path} does not exist; give a .npy or .npz file.")
    names = tuple(s[0] for s in specs)
    labels = None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = set(npz.files)
                arrays = []
                for name in names:
                    if name in keys:
                        arrays.append(npz[name])
                    elif len(names) == 1 and "x" in keys:
                        arrays.append(npz["x"])
                    else:
                        raise UsageError(
                            f"{path} has no array for the model input {name!r}; key it by input name "
                            f"(or 'x' for a single input). Received keys: {sorted(keys)}."
                        )
                if "y" in keys:
                    labels = npz["y"]
        elif path.suffix == ".npy":
            if len(names) != 1:
                raise UsageError(f"The model has {len(names)} inputs; give an .npz keyed by input name.")
            arrays = [np.load(path, allow_pickle=False)]
        else:
            raise UsageError(f"--data takes a .npy or .npz file. Received: {path.name}.")
    except (ValueError, OSError) as exc:
        raise UsageError(f"Cannot read {path} as NumPy data: {exc}.") from None
    n = min(a.shape[0] for a in arrays)
    if samples is not None:
        n = min(n, samples)
    fixed = []
    for arr, (name, shape, dtype) in zip(arrays, specs, strict=True):
        if arr.ndim != len(shape) or any(
            d is not None and int(d) != a for d, a in zip(shape[1:], arr.shape[1:], strict=True)
        ):
            raise UsageError(
                f"The data for input {name!r} has shape {arr.shape}; the model expects (N, "
                f"{', '.join('?' if d is None else str(d) for d in shape[1:])})."
            )
        fixed.append(arr[:n].astype(dtype if "float" not in dtype else "float32"))
    if labels is not None:
        labels = labels[:n]
    return Inputs(tuple(fixed), names, labels, "data", str(path))


# --------------------------------------------------------------------------------------------
# comparison


def predict_batch_size(inputs: Inputs) -> int:
    per_sample = sum(int(np.prod(a.shape[1:])) for a in inputs.arrays) or 1
    return max(1, min(PREDICT_BATCH, PREDICT_BATCH_ELEMENTS // per_sample))


def predict(model, inputs: Inputs) -> list[np.ndarray]:
    """The model's outputs on `inputs` (inference mode), as float32 arrays in output order."""
    from kmemopt._keras import import_keras

    keras = import_keras()
    if keras.backend.backend() == "tensorflow" and inputs.samples > 0:
        out = _predict_tf(model, inputs, keras)
    else:
        out = model.predict(_structured_feed(model, inputs, keras), batch_size=predict_batch_size(inputs), verbose=0)
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o, dtype=np.float32) for o in out]


def _predict_tf(model, inputs: Inputs, keras):
    """`model.predict` without Keras's predict machinery, which on TensorFlow keeps the variables'
    buffers alive after the model is dropped (measured: ResNet50's 98 MiB stay resident), so that
    shrink can free the original model once it has its outputs. Same computation: the model called
    with training=False in a `tf.function`, batch by batch."""
    import logging

    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    feed, size, n = _structured_feed(model, inputs, keras), predict_batch_size(inputs), inputs.samples
    parts = []
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addFilter(_no_retracing_warning)  # one function per model is traced on purpose
    try:
        for start in range(0, n, size):
            batch = keras.tree.map_structure(lambda a, s=start: a[s : s + size], feed)
            parts.append(keras.tree.map_structure(lambda t: np.asarray(t), call(batch)))
    finally:
        tf_logger.removeFilter(_no_retracing_warning)
        del call  # its traced graph refers to the model's variables
    return keras.tree.map_structure(lambda *xs: np.concatenate(xs, axis=0), *parts)


def _structured_feed(model, inputs: Inputs, keras):
    """The arrays in the structure the model is called with (a dict for dict-input models such as
    keras-hub backbones); `inputs.arrays` follow `model.inputs`, which is that structure flattened."""
    struct = getattr(model, "_inputs_struct", None)
    if struct is None or len(keras.tree.flatten(struct)) != len(inputs.arrays):
        return inputs.feed()
    return keras.tree.pack_sequence_as(struct, list(inputs.arrays))


def _no_retracing_warning(record) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


def _classifier_like(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[1] >= 2


def compare_output(name: str, ref: np.ndarray, new: np.ndarray) -> OutputFidelity:
    ref = np.asarray(ref, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    diff = new - ref
    ref_norm = float(np.linalg.norm(ref))
    new_norm = float(np.linalg.norm(new))
    rel = float(np.linalg.norm(diff)) / ref_norm if ref_norm > 0 else (0.0 if not diff.any() else math.inf)
    cos = (
        float(np.dot(ref.ravel(), new.ravel()) / (ref_norm * new_norm))
        if ref_norm and new_norm
        else (1.0 if ref_norm == new_norm else 0.0)
    )
    agreement = None
    if _classifier_like(ref):
        agreement = float(np.mean(np.argmax(ref, axis=1) == np.argmax(new, axis=1)))
    return OutputFidelity(
        name=name,
        max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
        relative_l2_error=rel,
        cosine_similarity=cos,
        top1_agreement=agreement,
    )


def accuracy(outputs: list[np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None or not outputs or not _classifier_like(outputs[0]):
        return None
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)
    y = y.reshape(-1)
    return float(np.mean(np.argmax(outputs[0], axis=1) == y))


def compare(model_output_names: list[str], ref: list[np.ndarray], new: list[np.ndarray], inputs: Inputs) -> Fidelity:
    outputs = [compare_output(name, r, n) for name, r, n in zip(model_output_names, ref, new, strict=True)]
    note = None
    if inputs.source == "synthetic":
        note = (
            f"Compared on {inputs.samples} synthetic inputs (random values of the right shape and dtype); "
            "real data (--data) gives a truer picture."
        )
    return Fidelity(
        source=inputs.source,
        samples=inputs.samples,
        outputs=outputs,
        accuracy_before=accuracy(ref, inputs.labels),
        accuracy_after=accuracy(new, inputs.labels),
        note=note,
    )


def apply_gates(fidelity: Fidelity, *, min_agreement: float | None, max_accuracy_drop: float | None) -> None:
    """Record each gate's verdict on `fidelity.gates` (the caller decides what a failure does)."""
    if min_agreement is not None:
        value = fidelity.top1_agreement
        if value is None:
            raise UsageError("--min-agreement needs a classifier-like output (batch x classes); this model has none.")
        fidelity.gates.append(
            {"gate": "min_agreement", "threshold": min_agreement, "value": value, "passed": value >= min_agreement}
        )
    if max_accuracy_drop is not None:
        drop = fidelity.accuracy_drop
        if drop is None:
            raise UsageError("--max-accuracy-drop needs labels: give --data with a 'y' array.")
        fidelity.gates.append(
            {
                "gate": "max_accuracy_drop",
                "threshold": max_accuracy_drop,
                "value": drop,
                "passed": drop <= max_accuracy_drop + 1e-12,
            }
        )


def gate_failure(fidelity: Fidelity) -> GateFailed:
    failed = [g for g in fidelity.gates if not g["passed"]]
    parts = []
    for g in failed:
        if g["gate"] == "min_agreement":
            parts.append(f"top-1 agreement {g['value']:.2%} is below --min-agreement {g['threshold']:.2%}")
        else:
            parts.append(f"accuracy dropped {g['value']:.2%}, more than --max-accuracy-drop {g['threshold']:.2%}")
    hint = ""
    if fidelity.explain:
        worst = ", ".join(e["layer"] for e in fidelity.explain[:3])
        hint = f"; the layers that hurt most: {worst}"
    elif failed:
        hint = "; run with --explain to find the layers that hurt most, and --skip them"
    return GateFailed("Fidelity gate failed: " + "; ".join(parts) + hint + ". Nothing was written.")
