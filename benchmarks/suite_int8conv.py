"""int8 convolutions judged where it matters: convolutional networks trained on real data.

Two networks trained here on scikit-learn's digits (8x8 images), seeded and with TensorFlow's op
determinism on, on the split the sample models use (train_test_split 25%, random_state 0,
stratified; 1,347 training and 450 test images):
  - a residual CNN (ResNet-style: 3x3 convolutions with BatchNorm, identity and 1x1-projection
    shortcuts, a strided stage);
  - a depthwise-separable CNN (MobileNetV2-style inverted residual blocks: 1x1 expand, 3x3
    DepthwiseConv2D, 1x1 project, identity shortcuts; one SeparableConv2D block).
Each is saved without its optimizer (the float32 reference), then shrunk three ways:
  - Keras's own `model.quantize("int8")`: Dense layers only (what Keras quantizes);
  - `kmemopt shrink --quantize int8`: Dense int8 through Keras, the convolutions stored float16 (portable);
  - `kmemopt shrink --quantize int8 --allow-custom-layers`: the convolutions too become kmemopt's int8
    layers (per-output-channel scales; the file loads after `import kmemopt`).
Every written file is loaded back here and run on the 450 test images, which no step trains or
calibrates on: accuracy before/after, top-1 agreement with the float32 model and the relative L2
error of its outputs are computed from those predictions (not taken from shrink's own report).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

KEY = "int8conv"
TITLE = "int8 convolutions on trained CNNs"
EPOCHS = 20
REFERENCE = "float32 reference (plain Keras, no optimizer)"
KERAS_NATIVE = 'Keras model.quantize("int8") (Dense only)'
KMEMOPT_PORTABLE = "kmemopt shrink --quantize int8 (convolutions float16)"
KMEMOPT_CONV = "kmemopt shrink --quantize int8 --allow-custom-layers (int8 convolutions)"
METHODS = (REFERENCE, KERAS_NATIVE, KMEMOPT_PORTABLE, KMEMOPT_CONV)


def digits():
    """scikit-learn's digits as (x_train, x_test, y_train, y_test), images (8, 8, 1) in [0, 1]: the
    split of sample_models/ and benchmarks/suite_prune.py."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = d.target.astype("int32")
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def residual_cnn(keras):
    """ResNet-style: a 32-channel stem and block at 8x8, a strided 64-channel block with a 1x1
    projection shortcut, a 64-channel identity block, global pooling, a Dense classifier."""
    L = keras.layers

    def conv_bn(h, filters, strides=1, relu=True, name=""):
        h = L.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(h)
        h = L.BatchNormalization(name=f"{name}_bn")(h)
        return L.ReLU(name=f"{name}_relu")(h) if relu else h

    def block(h, filters, strides, name):
        shortcut = h
        if strides != 1 or h.shape[-1] != filters:
            shortcut = L.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(h)
            shortcut = L.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
        r = conv_bn(h, filters, strides, name=f"{name}_a")
        r = conv_bn(r, filters, relu=False, name=f"{name}_b")
        return L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([shortcut, r]))

    inp = keras.Input((8, 8, 1), name="image")
    h = conv_bn(inp, 32, name="stem")
    h = block(h, 32, 1, "block1")
    h = block(h, 64, 2, "block2")
    h = block(h, 64, 1, "block3")
    h = L.GlobalAveragePooling2D(name="pool")(h)
    out = L.Dense(10, activation="softmax", name="classifier")(L.Dense(64, activation="relu", name="fc")(h))
    return keras.Model(inp, out, name="digits_resnet_small")


def separable_cnn(keras):
    """MobileNetV2-style: a 3x3 stem, inverted residual blocks (1x1 expand x4, 3x3 depthwise, 1x1
    linear project, identity shortcut where the shape allows), one SeparableConv2D block, a 1x1 head."""
    L = keras.layers

    def inverted(h, filters, strides, name):
        c = h.shape[-1]
        x = L.ReLU(6.0, name=f"{name}_expand_relu")(
            L.BatchNormalization(name=f"{name}_expand_bn")(L.Conv2D(4 * c, 1, use_bias=False, name=f"{name}_expand")(h))
        )
        x = L.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
        x = L.ReLU(6.0, name=f"{name}_dw_relu")(L.BatchNormalization(name=f"{name}_dw_bn")(x))
        x = L.BatchNormalization(name=f"{name}_project_bn")(
            L.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
        )
        return L.Add(name=f"{name}_add")([h, x]) if strides == 1 and c == filters else x

    inp = keras.Input((8, 8, 1), name="image")
    h = L.ReLU(6.0, name="stem_relu")(
        L.BatchNormalization(name="stem_bn")(L.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inp))
    )
    h = inverted(h, 32, 1, "ir1")
    h = inverted(h, 64, 2, "ir2")
    h = inverted(h, 64, 1, "ir3")
    h = L.SeparableConv2D(96, 3, padding="same", use_bias=False, name="sep")(h)
    h = L.ReLU(6.0, name="sep_relu")(L.BatchNormalization(name="sep_bn")(h))
    h = L.ReLU(6.0, name="head_relu")(
        L.BatchNormalization(name="head_bn")(L.Conv2D(256, 1, use_bias=False, name="head")(h))
    )
    h = L.GlobalAveragePooling2D(name="pool")(h)
    out = L.Dense(10, activation="softmax", name="classifier")(L.Dropout(0.2, name="dropout")(h))
    return keras.Model(inp, out, name="digits_mobilenet_small")


MODELS = (
    ("digits ResNet-style CNN", residual_cnn),
    ("digits MobileNetV2-style CNN", separable_cnn),
)


def train(keras, build, x_tr, y_tr):
    """`build`'s model trained reproducibly: fixed seed, deterministic ops, no shuffling randomness
    beyond the seed."""
    keras.utils.set_random_seed(0)
    model = build(keras)
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=EPOCHS, batch_size=32, verbose=0)
    return model


def agreement(ref: np.ndarray, new: np.ndarray) -> float:
    """The fraction of samples whose top-1 class is the same in both outputs."""
    return float(np.mean(ref.argmax(-1) == new.argmax(-1)))


def relative_l2(ref: np.ndarray, new: np.ndarray) -> float:
    """||new - ref|| / ||ref|| over the whole output batch."""
    return float(np.linalg.norm((new - ref).ravel()) / np.linalg.norm(ref.ravel()))


def layer_counts(model) -> dict[str, int]:
    """How many layers of a loaded model store their kernels (`kernel`, `depthwise_kernel`,
    `pointwise_kernel`) in int8, in float16, or in float32."""
    counts = {"int8": 0, "float16": 0, "float32": 0}
    for layer in model._flatten_layers(include_self=False):
        dtypes = {str(v.dtype) for v in layer.weights if v.path.rsplit("/", 1)[-1].endswith("kernel")}
        if dtypes:
            counts["int8" if "int8" in dtypes else "float16" if "float16" in dtypes else "float32"] += 1
    return counts


def _row(keras, name: str, method: str, path: Path, ref_bytes: int, ref_out, data, extra: dict) -> dict:
    x_te, y_te = data
    model = keras.models.load_model(path, compile=False)
    out = model.predict(x_te, verbose=0, batch_size=256)
    row = {
        "model": name,
        "method": method,
        "params": int(model.count_params()),
        "file_bytes": path.stat().st_size,
        "reference_bytes": ref_bytes,
        "ratio": path.stat().st_size / ref_bytes,
        "accuracy_before": float((ref_out.argmax(-1) == y_te).mean()),
        "accuracy_after": float((out.argmax(-1) == y_te).mean()),
        "top1_agreement": agreement(ref_out, out),
        "relative_l2_error": relative_l2(ref_out, out),
        "test_samples": int(len(y_te)),
        "kernels": layer_counts(model),
        **extra,
    }
    return row


def run(log) -> list[dict]:
    import warnings

    import kmemopt  # registers kmemopt's int8 layers for keras.models.load_model
    from kmemopt._keras import import_keras

    keras = import_keras()
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    x_tr, x_te, y_tr, y_te = digits()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kmemopt-bench-int8conv-") as tmp:
        work = Path(tmp)
        test_npz = work / "digits_test.npz"
        np.savez(test_npz, image=x_te, y=y_te)
        for name, build in MODELS:
            log(f"int8conv: training {name} ({EPOCHS} epochs)")
            started = time.process_time()
            model = train(keras, build, x_tr, y_tr)
            cpu = round(time.process_time() - started, 1)
            stem = build.__name__
            reference = work / f"{stem}.keras"
            plain = keras.Model.from_config(model.get_config())
            plain.set_weights(model.get_weights())
            plain.save(reference)  # no optimizer: the fair float32 reference
            ref_bytes = reference.stat().st_size
            ref_model = keras.models.load_model(reference, compile=False)
            ref_out = ref_model.predict(x_te, verbose=0, batch_size=256)
            data = (x_te, y_te)
            rows.append(
                _row(
                    keras,
                    name,
                    REFERENCE,
                    reference,
                    ref_bytes,
                    ref_out,
                    data,
                    {"train_cpu_seconds": cpu, "epochs": EPOCHS},
                )
            )
            log(f"  float32: {ref_bytes:,} B, accuracy {rows[-1]['accuracy_after']:.4f}")

            native = keras.models.load_model(reference, compile=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                native.quantize("int8")
            native_path = work / f"{stem}.native.keras"
            native.save(native_path)
            rows.append(_row(keras, name, KERAS_NATIVE, native_path, ref_bytes, ref_out, data, {}))
            log(f"  keras int8: {rows[-1]['ratio']:.3f}x, accuracy {rows[-1]['accuracy_after']:.4f}")

            for method, custom in ((KMEMOPT_PORTABLE, False), (KMEMOPT_CONV, True)):
                out = work / f"{stem}.{'conv' if custom else 'portable'}.keras"
                result = kmemopt.shrink(reference, out, quantize="int8", allow_custom_layers=custom, data=test_npz)
                extra = {
                    "shrink_reported_top1_agreement": result.fidelity.top1_agreement,
                    "shrink_reported_accuracy_after": result.fidelity.accuracy_after,
                }
                rows.append(_row(keras, name, method, out, ref_bytes, ref_out, data, extra))
                log(f"  {method}: {rows[-1]['ratio']:.3f}x, accuracy {rows[-1]['accuracy_after']:.4f}")
            keras.backend.clear_session()
    return rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def markdown(rows: list[dict]) -> str:
    out = [
        "Convolutional networks trained here on scikit-learn's digits (seeded, deterministic ops, "
        f"{EPOCHS} epochs, Adam; the split of the sample models: 1,347 training and 450 test images). "
        "Every file is loaded back and run on the test images, which nothing trains or calibrates on: "
        "accuracy before → after is held-out accuracy, top-1 agreement and relative L2 compare the "
        "outputs with the float32 model's. Ratio: file size against the float32 file saved without its "
        "optimizer. Kernels: layers whose kernel is stored in int8 / float16 / float32.",
        "",
        "| Model | Method | File (KiB) | Ratio | Kernels int8/f16/f32 | Accuracy before → after | Top-1 agreement | Rel. L2 |",
        "|---|---|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        k = r.get("kernels", {})
        out.append(
            f"| {r['model']} | {r['method']} | {r['file_bytes'] / 1024:,.1f} | {r['ratio']:.3f}x "
            f"| {k.get('int8', 0)}/{k.get('float16', 0)}/{k.get('float32', 0)} "
            f"| {_pct(r['accuracy_before'])} → {_pct(r['accuracy_after'])} | {_pct(r['top1_agreement'])} "
            f"| {r['relative_l2_error']:.4f} |"
        )
    references = [r for r in rows if r["method"] == REFERENCE]
    if references:
        out += [
            "",
            "The float32 weights are "
            + "; ".join(
                f"{r['params'] * 4 / 1024:,.1f} KiB of the {r['model']}'s {r['file_bytes'] / 1024:,.1f} KiB file"
                for r in references
            )
            + ": the rest (config, HDF5 structure) does not shrink, nor do BatchNorm's weights (kept float32 by "
            "every method), so networks this small shrink less than their kernels do. Training CPU time: "
            + "; ".join(f"{r['model']} {r['train_cpu_seconds']:.0f} s" for r in references if "train_cpu_seconds" in r)
            + ".",
        ]
    return "\n".join(out) + "\n"
