"""How faithful a shrunk model stays: its outputs against the original's, on real or synthetic inputs.

Real data (`--data FILE`: .npy, or .npz keyed by input name or `x`, labels under `y`) is better than
synthetic inputs (random values of the right shape and dtype), and the report says which was used.

Each output is named as the model names it: the key of a dict-output model (keras-hub backbones:
`sequence_output`, `pooled_output`), else the output's name in `model.output_names`. Every output gets
the maximum absolute error, the relative L2 error and the cosine similarity. Top-1 agreement (and
accuracy against labels) is reported only for an output of class scores: rank 2, (batch, classes) with
more than one class, and not made by a layer that says otherwise. The layer that makes the output
(looked for through nested models) decides where it can: a Softmax, a softmax/log-softmax/sigmoid
activation, or a Dense/EinsumDense with no activation (logits) make class scores; a Dense, convolution
or RNN with another activation (the tanh of a BERT pooler, a ReLU embedding) makes features, whose
largest index means nothing, so no agreement. Any other layer (a normalization, a composite or custom
layer) says nothing, and the shape alone decides. The output's `kind` in the JSON says which:
"class_scores" or "values".
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from kmemopt.errors import GateFailed, MalformedModelError, UsageError
from kmemopt.keras_compat.layers import flatten_layers

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


CLASS_SCORES = "class_scores"
VALUES = "values"
# Activations whose rank-2 output is class scores (probabilities, log-probabilities, logits).
_SCORE_ACTIVATIONS = frozenset({"softmax", "log_softmax", "sigmoid"})
_LOGIT_LAYERS = frozenset({"Dense", "EinsumDense"})
# Layers whose `activation` is applied to their output (a composite layer's `activation`, such as a
# transformer block's feed-forward one, says nothing about what it returns).
_OUTPUT_ACTIVATION_LAYERS = _LOGIT_LAYERS | frozenset(
    {"Activation", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
    | {"SeparableConv1D", "SeparableConv2D", "DepthwiseConv1D", "DepthwiseConv2D", "SimpleRNN", "LSTM", "GRU"}
)


@dataclass(frozen=True)
class OutputSpec:
    """A model output's name, and whether the model says it is class scores (None: it does not say)."""

    name: str
    class_scores: bool | None = None


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    max_abs_error: float
    relative_l2_error: float
    cosine_similarity: float
    top1_agreement: float | None  # class-score outputs only (see the module docstring)
    kind: str = VALUES  # CLASS_SCORES or VALUES

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class GateName(str, Enum):
    """A fidelity gate; the value is the key in the JSON report."""

    min_agreement = "min_agreement"
    max_accuracy_drop = "max_accuracy_drop"


@dataclass(frozen=True)
class FidelityGate:
    """One fidelity gate's verdict: `value` held against `threshold` (fractions)."""

    gate: GateName
    threshold: float
    value: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.value, "threshold": self.threshold, "value": self.value, "passed": self.passed}


@dataclass(frozen=True)
class LayerHarm:
    """`--explain`: what one layer's pass, applied alone, does to the outputs (the first output's errors)."""

    layer: str
    top1_agreement: float | None
    relative_l2_error: float
    max_abs_error: float
    accuracy_after: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "top1_agreement": self.top1_agreement,
            "relative_l2_error": self.relative_l2_error,
            "max_abs_error": self.max_abs_error,
            "accuracy_after": self.accuracy_after,
        }


@dataclass(frozen=True)
class Fidelity:
    """The shrunk model's outputs against the original's; `gates` and `explain` are added with
    `dataclasses.replace` (`apply_gates`, the pipeline's --explain)."""

    source: str
    samples: int
    outputs: tuple[OutputFidelity, ...]
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    gates: tuple[FidelityGate, ...] = ()
    explain: tuple[LayerHarm, ...] = ()  # the layers that hurt most first
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
        return all(g.passed for g in self.gates)

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
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
            "explain": [e.to_dict() for e in self.explain],
        }


# --------------------------------------------------------------------------------------------
# inputs


def _model_inputs(model) -> list[tuple[str, tuple, str]]:
    specs = []
    for i, t in enumerate(model.inputs):
        name = getattr(t, "name", None) or f"input_{i}"
        specs.append((name, tuple(t.shape), str(t.dtype)))
    return specs


def load_inputs(
    model, data: str | os.PathLike | None, *, samples: int | None = None, seed: int = 0, seq_len: int | None = None
) -> Inputs:
    """Read `data` for the model's inputs, or make synthetic ones of the right shape and dtype."""
    specs = _model_inputs(model)
    names = tuple(s[0] for s in specs)
    if data is not None:
        return _read_data(Path(data), specs, samples)
    n = samples or DEFAULT_SYNTHETIC_SAMPLES
    from kmemopt.inputs import synthetic_array, vocabulary_size

    rng = np.random.default_rng(seed)
    vocabulary = vocabulary_size(model)
    arrays = []
    for _name, shape, dtype in specs:
        dims = tuple((seq_len or DEFAULT_SEQ_LEN) if d is None else int(d) for d in shape[1:])
        floating = "int" not in dtype and "bool" not in dtype
        arrays.append(synthetic_array(rng, (n, *dims), "float32" if floating else dtype, vocabulary))
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
    if keras.backend.backend() == "tensorflow":
        check_tensorflow_names(model)
    if keras.backend.backend() == "tensorflow" and inputs.samples > 0:
        out = _predict_tf(model, inputs, keras)
    else:
        out = model.predict(_structured_feed(model, inputs, keras), batch_size=predict_batch_size(inputs), verbose=0)
    if isinstance(out, dict):
        struct = _outputs_dict(model)  # in the model's own order, the order `output_specs` names them
        out = [out[k] for k in struct] if struct is not None and set(struct) == set(out) else list(out.values())
    if not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o, dtype=np.float32) for o in out]


# TensorFlow's name scopes accept only these names (tf.function, and so Keras's own `predict`, opens one
# per layer); Keras accepts any name without "/", so a saved model can hold a layer TensorFlow cannot run.
_TF_ROOT_SCOPE = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
_TF_SCOPE = re.compile(r"[A-Za-z0-9_.\\/>-]*")


def check_tensorflow_names(model) -> None:
    """Refuse, with the name, a model TensorFlow would fail to run deep inside tf.function."""
    named = [("model", model.name, _TF_ROOT_SCOPE)]
    named += [
        ("layer", layer.name, _TF_SCOPE)
        for layer in flatten_layers(model, include_self=False)
        if type(layer).__name__ != "InputLayer"  # never called: its name opens no scope
    ]
    for what, name, pattern in named:
        if not pattern.fullmatch(str(name)):
            raise MalformedModelError(
                f"TensorFlow cannot run this model: the {what} name {str(name)!r} is not a valid TensorFlow name "
                "scope (letters, digits and _ . - > / \\ only), and Keras's own predict fails on it the same way; "
                "rename it, or run with another Keras backend (KERAS_BACKEND=jax or torch)."
            )


def _predict_tf(model, inputs: Inputs, keras):
    """`model.predict` without Keras's predict machinery, which on TensorFlow keeps the variables'
    buffers alive after the model is dropped (measured: ResNet50's 98 MiB stay resident), so that
    shrink can free the original model once it has its outputs. Same computation: the model called
    with training=False in a `tf.function`, batch by batch."""
    import logging

    import tensorflow as tf

    # autograph=False: no generated source file in the temp folder (a killed process would leave it).
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True, autograph=False)
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
    from kmemopt.keras_compat.layers import inputs_struct

    struct = inputs_struct(model)
    if struct is None or len(keras.tree.flatten(struct)) != len(inputs.arrays):
        return inputs.feed()
    return keras.tree.pack_sequence_as(struct, list(inputs.arrays))


def _no_retracing_warning(record) -> bool:
    return "triggered tf.function retracing" not in record.getMessage()


def _outputs_dict(model) -> dict[str, Any] | None:
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and all(not isinstance(v, (dict, list, tuple)) for v in struct.values()):
        return struct
    return None


def output_specs(model) -> list[OutputSpec]:
    """The model's outputs in the order `predict` returns them: names, and class scores or not."""
    struct = _outputs_dict(model)
    if struct is not None:
        return [OutputSpec(str(k), _made_class_scores(t)) for k, t in struct.items()]
    tensors = list(getattr(model, "outputs", None) or [])
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(tensors):
        names = [f"output_{i}" for i in range(len(tensors))]
    return [OutputSpec(str(n), _made_class_scores(t)) for n, t in zip(names, tensors, strict=True)]


def _made_class_scores(tensor, depth: int = 0) -> bool | None:
    """What the layer that made `tensor` says: class scores (True), features (False), or nothing (None)."""
    from kmemopt.keras_compat.layers import keras_history

    history = keras_history(tensor)
    if history is None or depth > 16:
        return None
    layer = history.operation
    inner = getattr(layer, "outputs", None)
    if inner and history.tensor_index < len(inner) and hasattr(layer, "layers"):  # a nested model's output
        return _made_class_scores(inner[history.tensor_index], depth + 1)
    kind = type(layer).__name__
    if kind == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    if activation is None or kind not in _OUTPUT_ACTIVATION_LAYERS:
        return None
    name = getattr(activation, "__name__", "")
    if name in _SCORE_ACTIVATIONS:
        return True
    if name == "linear":
        return True if kind in _LOGIT_LAYERS else None
    return False


def _is_class_scores(a: np.ndarray, declared: bool | None) -> bool:
    return a.ndim == 2 and a.shape[1] >= 2 and declared is not False


def compare_output(name: str, ref: np.ndarray, new: np.ndarray, *, class_scores: bool | None = None) -> OutputFidelity:
    """Errors of `new` against `ref`; top-1 agreement only for class scores (`class_scores`: what the
    model says about this output, see `output_specs`; None decides by shape alone)."""
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
    scores = _is_class_scores(ref, class_scores)
    if scores:
        agreement = float(np.mean(np.argmax(ref, axis=1) == np.argmax(new, axis=1)))
    return OutputFidelity(
        name=name,
        max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
        relative_l2_error=rel,
        cosine_similarity=cos,
        top1_agreement=agreement,
        kind=CLASS_SCORES if scores else VALUES,
    )


def accuracy(
    outputs: list[np.ndarray], labels: np.ndarray | None, declared: list[bool | None] | None = None
) -> float | None:
    """Top-1 accuracy of the first class-score output against `labels` (None without either)."""
    if labels is None:
        return None
    declared = declared or [None] * len(outputs)
    scores = next((o for o, d in zip(outputs, declared, strict=False) if _is_class_scores(o, d)), None)
    if scores is None:
        return None
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)
    y = y.reshape(-1)
    return float(np.mean(np.argmax(scores, axis=1) == y))


def compare(
    model_outputs: list[OutputSpec] | list[str], ref: list[np.ndarray], new: list[np.ndarray], inputs: Inputs
) -> Fidelity:
    """Every output of `new` against `ref`. `model_outputs`: `output_specs(model)` (plain names decide
    class scores by shape alone)."""
    specs = [o if isinstance(o, OutputSpec) else OutputSpec(str(o)) for o in model_outputs]
    declared = [s.class_scores for s in specs]
    outputs = [
        compare_output(s.name, r, n, class_scores=s.class_scores) for s, r, n in zip(specs, ref, new, strict=True)
    ]
    note = None
    if inputs.source == "synthetic":
        note = (
            f"Compared on {inputs.samples} synthetic inputs (random values of the right shape and dtype); "
            "real data (--data) gives a truer picture."
        )
    return Fidelity(
        source=inputs.source,
        samples=inputs.samples,
        outputs=tuple(outputs),
        accuracy_before=accuracy(ref, inputs.labels, declared),
        accuracy_after=accuracy(new, inputs.labels, declared),
        note=note,
    )


def apply_gates(fidelity: Fidelity, *, min_agreement: float | None, max_accuracy_drop: float | None) -> Fidelity:
    """`fidelity` with each gate's verdict added to its `gates` (the caller decides what a failure does)."""
    gates = list(fidelity.gates)
    if min_agreement is not None:
        value = fidelity.top1_agreement
        if value is None:
            raise UsageError(
                "--min-agreement needs an output of class scores (batch x classes, from a softmax, sigmoid or "
                "logits layer); this model has none: use its relative error or cosine similarity instead."
            )
        gates.append(FidelityGate(GateName.min_agreement, min_agreement, value, passed=value >= min_agreement))
    if max_accuracy_drop is not None:
        drop = fidelity.accuracy_drop
        if drop is None:
            raise UsageError("--max-accuracy-drop needs labels: give --data with a 'y' array.")
        gates.append(
            FidelityGate(GateName.max_accuracy_drop, max_accuracy_drop, drop, passed=drop <= max_accuracy_drop + 1e-12)
        )
    return replace(fidelity, gates=tuple(gates))


def gate_failure(fidelity: Fidelity) -> GateFailed:
    failed = [g for g in fidelity.gates if not g.passed]
    parts = []
    for g in failed:
        if g.gate is GateName.min_agreement:
            parts.append(f"top-1 agreement {g.value:.2%} is below --min-agreement {g.threshold:.2%}")
        else:
            parts.append(f"accuracy dropped {g.value:.2%}, more than --max-accuracy-drop {g.threshold:.2%}")
    hint = ""
    if fidelity.explain:
        worst = ", ".join(e.layer for e in fidelity.explain[:3])
        hint = f"; the layers that hurt most: {worst}"
    elif failed:
        hint = "; run with --explain to find the layers that hurt most, and --skip them"
    return GateFailed("Fidelity gate failed: " + "; ".join(parts) + hint + ". Nothing was written.")
