"""Estimate vs measured: kmemopt's static peaks, and the estimators people use today, against real peaks.

Six real architectures (four keras.applications with weights=None, an LSTM text classifier and a
Transformer encoder built from MultiHeadAttention) are saved to .keras files, profiled statically,
then measured with `kmemopt.profiling.measure` (one child process per batch size, CPU high-water mark
above the framework baseline). Beside kmemopt's estimate, three common rules computed the way their
authors compute them:

- StackOverflow `get_model_memory_usage`: 4 bytes x (batch x sum of every layer's output elements +
  parameters); one number for inference and training alike.
- torchinfo: input bytes + 2 x the output bytes of every leaf layer that has parameters (forward +
  backward) + parameter bytes; one number for both phases.
- `accelerate estimate-memory`: the weights for inference, 4 x the weights for training with Adam.

Set KMEMOPT_MEASURE_CACHE=FILE.json to keep measurements between runs (a model and batch size found in
the file is not measured again; the estimates are always recomputed), and KMEMOPT_BENCH_MODELS=DIR to
keep the saved .keras files. Each measurement is one child process per (model, batch size), measured
once.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

KEY = "estimate_vs_measured"
TITLE = "Estimated vs measured peak memory (CPU)"
BATCH_SIZES = (1, 8, 32)
MODELS = ("MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121", "LSTMTextClassifier", "TransformerEncoder")
# Not used to fit the memory model's runtime constants: a check of how it does on models it has not seen.
HELD_OUT = ("MobileNet", "GRUTextClassifier")
ESTIMATORS = ("kmemopt", "stackoverflow get_model_memory_usage", "torchinfo", "accelerate estimate-memory")
BAND = (0.8, 1.25)


# --------------------------------------------------------------------------------------------- models


def lstm_text_classifier(keras):
    tokens = keras.Input((200,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(20000, 128, name="embedding")(tokens)
    h = keras.layers.LSTM(128, return_sequences=True, name="lstm_1")(h)
    h = keras.layers.LSTM(64, name="lstm_2")(h)
    h = keras.layers.Dense(64, activation="relu", name="dense")(h)
    out = keras.layers.Dense(2, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="lstm_text_classifier")


def transformer_encoder(keras, seq_len=128, vocab=8000, dim=256, heads=8, ff=1024, blocks=4):
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    # Token embedding only: a position embedding needs a custom layer or a raw op, neither of which a
    # plain allowlisted .keras file holds; it would add one (B, T, dim) tensor.
    h = keras.layers.Embedding(vocab, dim, name="token_embedding")(tokens)
    for i in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attention")(h, h)
        h = keras.layers.LayerNormalization(name=f"block{i}_norm1")(keras.layers.Add(name=f"block{i}_add1")([h, a]))
        f = keras.layers.Dense(ff, activation="gelu", name=f"block{i}_ff1")(h)
        f = keras.layers.Dense(dim, name=f"block{i}_ff2")(f)
        h = keras.layers.LayerNormalization(name=f"block{i}_norm2")(keras.layers.Add(name=f"block{i}_add2")([h, f]))
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    out = keras.layers.Dense(2, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="transformer_encoder")


def gru_text_classifier(keras):
    tokens = keras.Input((100,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(5000, 64, name="embedding")(tokens)
    h = keras.layers.GRU(96, name="gru")(h)
    out = keras.layers.Dense(3, activation="softmax", name="classifier")(h)
    return keras.Model(tokens, out, name="gru_text_classifier")


def build(name: str, keras):
    keras.utils.set_random_seed(0)
    if name == "GRUTextClassifier":
        return gru_text_classifier(keras)
    if name == "LSTMTextClassifier":
        return lstm_text_classifier(keras)
    if name == "TransformerEncoder":
        return transformer_encoder(keras)
    return getattr(keras.applications, name)(weights=None)


def save_models(directory: Path, log, names=MODELS) -> dict[str, Path]:
    from kmemopt._keras import import_keras

    keras = import_keras()
    paths = {}
    for name in names:
        path = directory / f"{name}.keras"
        if not path.exists():
            log(f"  building {name}")
            model = build(name, keras)
            model.save(path)
            del model
            keras.backend.clear_session()
        paths[name] = path
    return paths


# --------------------------------------------------------------------------------------------- other estimators


def _elements(shape) -> int:
    n = 1
    for d in shape:
        if d is not None:
            n *= int(d)
    return n


def stackoverflow_estimate(model, batch_size: int) -> int:
    """`get_model_memory_usage` (StackOverflow 43137288), with `layer.output.shape` for Keras 3."""
    import numpy as np

    shapes = 0
    internal = 0.0
    for layer in model.layers:
        if type(layer).__name__ in ("Model", "Functional", "Sequential"):
            internal += stackoverflow_estimate(layer, batch_size) / 1024**3
        out = layer.output
        shape = out[0].shape if isinstance(out, (list, tuple)) else out.shape
        shapes += _elements(shape)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    total = 4.0 * (batch_size * shapes + trainable + non_trainable)
    return int(round((total / 1024**3 + internal) * 1024**3))


def torchinfo_estimate(profile, batch_size: int) -> int:
    """torchinfo's "Estimated Total Size": input + 2 x outputs of leaf layers with parameters + params."""
    inputs = sum(r.output_bytes for r in profile.layers if r.class_name == "InputLayer")
    outputs = sum(2 * r.output_bytes for r in profile.layers if r.params > 0)
    return inputs + outputs + profile.totals.param_bytes


def accelerate_estimate(profile, phase: str) -> int:
    """`accelerate estimate-memory`: model size for inference, ~4x model size for training with Adam."""
    return profile.totals.param_bytes * (4 if phase == "training" else 1)


# --------------------------------------------------------------------------------------------- run


def _cache(path: str | None) -> dict:
    if path and Path(path).exists():
        return json.loads(Path(path).read_text())
    return {}


def measure_all(paths: dict[str, Path], profiles: dict, log, cache_path: str | None) -> dict:
    from kmemopt.profiling.measure import measure

    cache = _cache(cache_path)
    for name, path in paths.items():
        for b in BATCH_SIZES:
            key = f"{name}@{b}"
            if key in cache:
                continue
            log(f"  measuring {name} at batch {b}")
            m = measure(
                path,
                inputs=[i.to_dict() for i in profiles[name].inputs],
                batch_size=b,
                layers=False,
                on_phase=lambda p, n=name: log(f"    {n}: {p}"),
            )
            run = m.main
            cache[key] = {
                "inference": run.inference_peak_bytes,
                "training": run.training_peak_bytes,
                "baseline": run.baseline_bytes,
                "load": run.load_bytes,
                "status": run.status.value,
                "method": m.method,
                "seconds": round(run.seconds, 1),
            }
            if cache_path:
                Path(cache_path).write_text(json.dumps(cache, indent=1))
    return cache


def rows_for(name: str, profile, model, measured: dict) -> list[dict]:
    rows = []
    for b in BATCH_SIZES:
        got = measured[f"{name}@{b}"]
        for phase in ("inference", "training"):
            truth = got.get(phase)
            line = profile.inference if phase == "inference" else profile.training
            estimates = {
                "kmemopt": line.at(b),
                "stackoverflow get_model_memory_usage": stackoverflow_estimate(model, b),
                "torchinfo": torchinfo_estimate(_at(profile, b), b),
                "accelerate estimate-memory": accelerate_estimate(profile, phase),
            }
            for estimator, est in estimates.items():
                rows.append(
                    {
                        "model": name,
                        "batch_size": b,
                        "phase": phase,
                        "estimator": estimator,
                        "estimated_bytes": int(est),
                        "measured_bytes": truth,
                        "device": "cpu",
                        "ratio": round(est / truth, 3) if truth else None,
                        "error_pct": round(100 * (est - truth) / truth, 1) if truth else None,
                        "method": got.get("method"),
                        "status": got.get("status"),
                        "measure_seconds": got.get("seconds"),
                        "held_out": name in HELD_OUT,
                    }
                )
    return rows


_PROFILE_AT: dict = {}


def _at(profile, b):
    """The same profile's per-layer output bytes at batch b (outputs are exact lines in B)."""
    return _PROFILE_AT[(id(profile), b)]


def run(log) -> list[dict]:
    from kmemopt.api import profile as static_profile
    from kmemopt.load.build import build_from_file  # noqa: F401  (same path as the CLI)

    cache_path = os.environ.get("KMEMOPT_MEASURE_CACHE")
    workdir = Path(os.environ.get("KMEMOPT_BENCH_MODELS") or tempfile.mkdtemp(prefix="kmemopt-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    paths = save_models(workdir, log, MODELS + HELD_OUT)
    profiles, models = {}, {}
    from kmemopt.api import open_checked

    for name, path in paths.items():
        _, model, _ = open_checked(path)
        models[name] = model
        profiles[name] = static_profile(path, batch_size=1)
        for b in BATCH_SIZES:
            _PROFILE_AT[(id(profiles[name]), b)] = static_profile(path, batch_size=b)
    measured = measure_all(paths, profiles, log, cache_path)
    rows = []
    for name in paths:
        rows += rows_for(name, profiles[name], models[name], measured)
    return rows


# --------------------------------------------------------------------------------------------- report


def _mib(n) -> str:
    return "-" if n is None else f"{n / 1024**2:,.0f}"


def markdown(rows: list[dict]) -> str:
    out = [
        "Peak memory above the framework baseline, measured on this CPU with the kernel's high-water mark",
        "(`kmemopt profile MODEL --measure --batch-sizes 1,8,32` measures the same way; one child process",
        "per batch size). Estimates are static: no weights loaded. Error = (estimate - measured) / measured.",
        "Reproduce: `make bench SUITE=estimate`.",
        "",
        "| Model | Batch | Phase | Measured (MiB) | kmemopt (MiB) | kmemopt error | StackOverflow | torchinfo | accelerate |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key: dict = {}
    for r in rows:
        by_key.setdefault((r["model"], r["batch_size"], r["phase"]), {})[r["estimator"]] = r
    for (model, b, phase), est in by_key.items():
        k = est["kmemopt"]

        def err(r):
            return "-" if r.get("error_pct") is None else f"{r['error_pct']:+.0f}%"

        label = f"{model} (held out)" if k.get("held_out") else model
        out.append(
            f"| {label} | {b} | {phase} | {_mib(k['measured_bytes'])} | {_mib(k['estimated_bytes'])} | **{err(k)}** | "
            f"{err(est['stackoverflow get_model_memory_usage'])} | {err(est['torchinfo'])} | "
            f"{err(est['accelerate estimate-memory'])} |"
        )
    outside = [
        f"{r['model']} b={r['batch_size']} {r['phase']} ({r['ratio']:.2f})"
        for r in rows
        if r["estimator"] == "kmemopt" and r.get("ratio") and not BAND[0] <= r["ratio"] <= BAND[1]
    ]
    out += ["", "kmemopt rows outside estimate/measured 0.8-1.25: " + (", ".join(outside) if outside else "none") + "."]
    secs = {(r["model"], r["batch_size"]): r.get("measure_seconds") or 0 for r in rows}
    out += [
        "",
        f"Measuring took {sum(secs.values()) / 60:.0f} min of child processes in all (one a model and batch size,",
        "inference and training in the same child); the runner's time above is computing the rows when the",
        "measurements come from KMEMOPT_MEASURE_CACHE.",
    ]
    out += [
        "",
        "StackOverflow's and torchinfo's rules give one number for both phases; accelerate's is the",
        "weights (inference) and 4x the weights (training with Adam). See docs/measure.md for the memory model.",
    ]
    out += [
        "",
        "Summary (all rows with a measurement):",
        "",
        "| Estimator | rows | within 0.8-1.25x | within 20% | median abs error | worst error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    groups = []
    for estimator in ESTIMATORS:
        rs = [r for r in rows if r["estimator"] == estimator and r.get("ratio")]
        if estimator == "kmemopt" and any(r.get("held_out") for r in rs):
            groups.append(("kmemopt (models used to fit it)", [r for r in rs if not r.get("held_out")]))
            groups.append(("kmemopt (held-out models)", [r for r in rs if r.get("held_out")]))
            groups.append(("kmemopt (all)", rs))
        else:
            groups.append((estimator, rs))
    for estimator, rs in groups:
        if not rs:
            continue
        errs = sorted(abs(r["error_pct"]) for r in rs)
        band = sum(BAND[0] <= r["ratio"] <= BAND[1] for r in rs)
        within20 = sum(abs(r["error_pct"]) <= 20 for r in rs)
        worst = max(rs, key=lambda r: abs(r["error_pct"]))
        out.append(
            f"| {estimator} | {len(rs)} | {band} | {within20} | {errs[len(errs) // 2]:.0f}% | "
            f"{worst['error_pct']:+.0f}% ({worst['model']}, b={worst['batch_size']}, {worst['phase']}) |"
        )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- refitting


def fit_constants(cache_path: str, models_dir: str, names=MODELS) -> dict[str, float]:
    """Refit the runtime constants of kmemopt/profiling/internals.py from a measurement cache.

    The loader residue (weights, largest weight, layer calls) is fitted on the measured load phase; the
    traced-graph bytes per unit on the measured peaks with the loader terms held fixed. Both by least
    squares on the relative error. `python benchmarks/suite_estimate.py --fit CACHE.json MODELS_DIR`.
    """
    import numpy as np

    import kmemopt.profiling.internals as internals
    from kmemopt.api import profile
    from kmemopt.profiling.dtypes import nbytes

    measured = json.loads(Path(cache_path).read_text())
    saved = {
        k: getattr(internals, k)
        for k in (
            "LOADER_WEIGHT_FRACTION",
            "LOADER_LARGEST_WEIGHT_FACTOR",
            "LOADER_BYTES_PER_LAYER",
            "GRAPH_BYTES_PER_UNIT_INFERENCE",
            "GRAPH_BYTES_PER_UNIT_TRAINING",
        )
    }
    try:
        for k in saved:
            setattr(internals, k, 0)
        info = {}
        for name in names:
            p = profile(Path(models_dir) / f"{name}.keras", batch_size=1)
            calls = p._graph.calls
            largest = max((nbytes(v.shape, v.dtype) for c in calls for v in c.layer.weights), default=0)
            units = sum(internals.op_units(c.layer) for c in calls)
            info[name] = (p, p.totals.param_bytes, largest, len(calls), units)
    finally:
        for k, v in saved.items():
            setattr(internals, k, v)
    rows, target = [], []
    for name, (_, w, largest, calls, _) in info.items():
        for b in BATCH_SIZES:
            load = measured[f"{name}@{b}"]["load"]
            rows.append([w / load, largest / load, calls / load])
            target.append((load - w) / load)
    (frac, big, per_layer), *_ = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)
    rows, target = [], []
    for name, (p, w, largest, calls, units) in info.items():
        loader = frac * w + big * largest + per_layer * calls
        for b in BATCH_SIZES:
            for phase, line in (("inference", p.inference), ("training", p.training)):
                truth = measured[f"{name}@{b}"][phase]
                rows.append([units / truth if phase == "inference" else 0, units / truth if phase == "training" else 0])
                target.append((truth - line.fixed_bytes - line.per_sample_bytes * b - loader) / truth)
    (g_inf, g_train), *_ = np.linalg.lstsq(np.array(rows), np.array(target), rcond=None)
    mib = 1024**2
    return {
        "LOADER_WEIGHT_FRACTION": frac,
        "LOADER_LARGEST_WEIGHT_FACTOR": big,
        "LOADER_MIB_PER_LAYER": per_layer / mib,
        "GRAPH_MIB_PER_UNIT_INFERENCE": g_inf / mib,
        "GRAPH_MIB_PER_UNIT_TRAINING": g_train / mib,
    }


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--fit":
        for key, value in fit_constants(sys.argv[2], sys.argv[3]).items():
            print(f"{key} = {value:.4f}")
    else:
        print("usage: python benchmarks/suite_estimate.py --fit MEASURE_CACHE.json MODELS_DIR")
