"""Structured channel pruning (`kmemopt shrink --prune-channels`): what a smaller network does to size,
peaks and accuracy.

Trained on real data: the sample digits CNN (sample_models/digits_cnn.keras) and a residual CNN with
BatchNorm built and trained here (seeded), both on scikit-learn's digits with the samples' split
(train_test_split 25%, random_state 0, stratified). Each is pruned 50% (activation importance on the
training split) and distilled from the original on the training split's inputs (no labels; recover's
defaults: the model's own learning rate, cut 0.3x on a held-out 10% plateau, early stop); accuracy is
on the test split, which neither step sees. Training peaks at batch 32 are measured in a child process
(kmemopt.profiling.measure) and given beside the static ones, with the floor: the same model with every
prunable layer cut to one channel, measured the same way, the least any channel pruning can reach.

Structure on real architectures (keras.applications, weights=None, 224x224): 30% pruned, saved, reloaded
with plain `keras.models.load_model` and run; its parameter count against the one predicted from the
config alone (what `kmemopt plan` prices); 0% pruned must give bit-identical outputs. The int8 rows of
the same models are in the Shrink section.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

KEY = "prune"
TITLE = "Channel pruning: a smaller network"
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
FRACTION_TRAINED = 0.5
FRACTION_STRUCTURE = 0.3
MAX_EPOCHS = 60
FLOOR_FRACTION = 0.99  # every prunable layer keeps its one most important channel
APPLICATIONS = ("MobileNetV2", "ResNet50", "DenseNet121", "EfficientNetB0")


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    y = d.target.astype("int32")
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def residual_cnn(keras, x_tr, y_tr):
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((8, 8, 1), name="image")
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(inp)))
    r = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(h)))
    r = L.BatchNormalization()(L.Conv2D(32, 3, padding="same")(r))
    h = L.ReLU()(L.Add()([h, r]))
    h = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 3, strides=2, padding="same")(h)))
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, L.Dense(10, activation="softmax", name="classifier")(h), name="digits_resnet")
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=20, batch_size=32, verbose=0)
    return model


def _accuracy(model, x, y) -> float:
    return float((model.predict(x, verbose=0, batch_size=256).argmax(-1) == y).mean())


def _measured_training_peak(path: Path, batch: int = 32) -> int | None:
    from kmemopt.profiling.measure import measure

    m = measure(path, inputs=[{"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32"}], batch_size=batch)
    return m.main.training_peak_bytes


def _static(model, batch: int = 32) -> tuple[int, int]:
    from kmemopt.profiling.static import profile_model

    t = profile_model(model, batch_size=batch).totals
    return t.inference_peak_bytes, t.training_peak_bytes


def _trained_row(keras, name, model, data, work: Path, log) -> dict:
    from kmemopt.passes.channels import prune_channels
    from kmemopt.passes.channels.recover import recover

    x_tr, x_te, y_tr, y_te = data
    before_path, after_path = work / f"{name}.keras", work / f"{name}.pruned.keras"
    plain = keras.Model.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    plain.save(before_path)  # no optimizer: the fair reference
    acc_before = _accuracy(model, x_te, y_te)
    started = time.process_time()
    pruned = prune_channels(model, FRACTION_TRAINED, criterion="activation", data=x_tr, batch_size=None)
    acc_pruned = _accuracy(pruned.model, x_te, y_te)
    rec = recover(pruned.model, model, x_tr, mode="distill", epochs=MAX_EPOCHS, progress=log)
    cpu_s = time.process_time() - started
    acc_after = _accuracy(pruned.model, x_te, y_te)
    pruned.model.save(after_path)
    floor = prune_channels(plain, FLOOR_FRACTION, batch_size=None).model
    floor_path = work / f"{name}.floor.keras"
    floor.save(floor_path)
    s_before, s_after = _static(plain), _static(pruned.model)
    log(f"  measuring training peaks of {name} (child processes) ...")
    m_before, m_after = _measured_training_peak(before_path), _measured_training_peak(after_path)
    m_floor = _measured_training_peak(floor_path)
    return {
        "kind": "trained",
        "model": name,
        "fraction": FRACTION_TRAINED,
        "params_before": int(plain.count_params()),
        "params_after": int(pruned.model.count_params()),
        "file_bytes_before": before_path.stat().st_size,
        "file_bytes_after": after_path.stat().st_size,
        "static_inference_peak_before": s_before[0],
        "static_inference_peak_after": s_after[0],
        "static_training_peak_before": s_before[1],
        "static_training_peak_after": s_after[1],
        "measured_training_peak_before": m_before,
        "measured_training_peak_after": m_after,
        "floor_params": int(floor.count_params()),
        "measured_training_peak_floor": m_floor,
        "accuracy_before": acc_before,
        "accuracy_pruned": acc_pruned,
        "accuracy_after": acc_after,
        "recovery": rec.method,
        "learning_rate": rec.learning_rate,
        "epochs_run": rec.epochs_run,
        "cpu_seconds": round(cpu_s, 1),
        "test_samples": int(len(y_te)),
    }


def _structure_row(keras, name: str, work: Path, log) -> dict:
    from kmemopt.load.build import build_from_config
    from kmemopt.passes.channels import prune_channels, pruned_model_config

    model = getattr(keras.applications, name)(weights=None)
    x = np.random.default_rng(0).random((2, 224, 224, 3)).astype("float32")
    started = time.perf_counter()
    result = prune_channels(model, FRACTION_STRUCTURE, batch_size=None)
    seconds = time.perf_counter() - started
    predicted = build_from_config(pruned_model_config(keras.saving.serialize_keras_object(model), FRACTION_STRUCTURE))
    before_path, after_path = work / f"{name}.keras", work / f"{name}.pruned.keras"
    model.save(before_path)
    result.model.save(after_path)
    out = keras.models.load_model(after_path).predict(x, verbose=0)
    identity = prune_channels(model, 0.0, batch_size=None).model
    same = bool(np.array_equal(identity.predict(x, verbose=0), model.predict(x, verbose=0)))
    s_before, s_after = _static(model), _static(result.model)
    left = [r.layer for r in result.report.layers if r.kept_because]
    log(f"  {name}: {model.count_params():,} -> {result.model.count_params():,} params")
    return {
        "kind": "structure",
        "model": name,
        "fraction": FRACTION_STRUCTURE,
        "params_before": int(model.count_params()),
        "params_after": int(result.model.count_params()),
        "params_predicted": int(predicted.count_params()),
        "file_bytes_before": before_path.stat().st_size,
        "file_bytes_after": after_path.stat().st_size,
        "static_inference_peak_before": s_before[0],
        "static_inference_peak_after": s_after[0],
        "static_training_peak_before": s_before[1],
        "static_training_peak_after": s_after[1],
        "reloads_and_runs": bool(out.shape == (2, 1000) and np.isfinite(out).all()),
        "zero_percent_identical": same,
        "kept_full_width": left,
        "prune_seconds": round(seconds, 1),
    }


def run(log) -> list[dict]:
    from kmemopt._keras import import_keras

    keras = import_keras()
    data = _digits()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kmemopt-bench-prune-") as tmp:
        work = Path(tmp)
        log("prune: digits CNN (sample)")
        sample = keras.models.load_model(SAMPLES / "digits_cnn.keras")
        rows.append(_trained_row(keras, "digits CNN (sample)", sample, data, work, log))
        log("prune: digits residual CNN with BatchNorm (trained here)")
        rows.append(_trained_row(keras, "digits residual CNN", residual_cnn(keras, data[0], data[2]), data, work, log))
        for name in APPLICATIONS:
            log(f"prune: {name}")
            rows.append(_structure_row(keras, name, work, log))
            keras.backend.clear_session()
    return rows


def _x(a, b) -> str:
    return f"{b / a:.2f}x" if a and b is not None else "-"


def _mib(v) -> str:
    return "-" if v is None else f"{v / 1024**2:.1f} MiB"


def _floor(r: dict) -> str:
    if "measured_training_peak_floor" not in r:  # rows recorded before the floor was measured
        return "not measured"
    return (
        f"{_mib(r['measured_training_peak_floor'])} "
        f"({_x(r['measured_training_peak_before'], r['measured_training_peak_floor'])}, {r['floor_params']:,} params)"
    )


def markdown(rows: list[dict]) -> str:
    out = [
        f"`kmemopt shrink --prune-channels {FRACTION_TRAINED:.0%} --data train.npz --recover distill`, as a library "
        "call. Trained on digits; accuracy on the test split (neither pruning nor distillation sees it).",
        "",
        "| Model | Params | File | Static training peak @32 | Measured training peak @32 | Measured floor @32 "
        "| Accuracy before → pruned → distilled | Epochs | CPU s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in (r for r in rows if r["kind"] == "trained"):
        out.append(
            f"| {r['model']} | {r['params_before']:,} → {r['params_after']:,} ({_x(r['params_before'], r['params_after'])})"
            f" | {_x(r['file_bytes_before'], r['file_bytes_after'])}"
            f" | {_mib(r['static_training_peak_before'])} → {_mib(r['static_training_peak_after'])}"
            f" ({_x(r['static_training_peak_before'], r['static_training_peak_after'])})"
            f" | {_mib(r['measured_training_peak_before'])} → {_mib(r['measured_training_peak_after'])}"
            f" ({_x(r['measured_training_peak_before'], r['measured_training_peak_after'])})"
            f" | {_floor(r)}"
            f" | {r['accuracy_before']:.2%} → {r['accuracy_pruned']:.2%} → {r['accuracy_after']:.2%}"
            f" | {r['epochs_run']} | {r['cpu_seconds']} |"
        )
    out += [
        "",
        "Measured peaks are a training step's, above the loaded model, in a child process: TensorFlow's own "
        "per-step costs included, which dominate for models this small. The floor is the same model with every "
        "prunable layer cut to one channel, measured the same way: no channel pruning of that model can go "
        "below it.",
        "",
        f"Real architectures (random weights, 224x224), {FRACTION_STRUCTURE:.0%} of channels pruned, no training: "
        "structure only (their int8 rows are in the Shrink section).",
        "",
        "| Model | Params (predicted from the config) | File | Static inference peak @32 | Static training peak @32 "
        "| Reloads, runs | 0% identical | Kept full width |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in (r for r in rows if r["kind"] == "structure"):
        match = "=" if r["params_predicted"] == r["params_after"] else f"≠ {r['params_predicted']:,}"
        out.append(
            f"| {r['model']} | {r['params_before']:,} → {r['params_after']:,} ({_x(r['params_before'], r['params_after'])},"
            f" {match} predicted) | {_x(r['file_bytes_before'], r['file_bytes_after'])}"
            f" | {_x(r['static_inference_peak_before'], r['static_inference_peak_after'])}"
            f" | {_x(r['static_training_peak_before'], r['static_training_peak_after'])}"
            f" | {'yes' if r['reloads_and_runs'] else 'no'} | {'yes' if r['zero_percent_identical'] else 'no'}"
            f" | {', '.join(r['kept_full_width']) or '-'} |"
        )
    return "\n".join(out) + "\n"
